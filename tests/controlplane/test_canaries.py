"""Canaries at the control plane, against a real dev server and protocol-level hosts
(tests/servers/agentsim): delivery only after a lease, what an agent may report, who may
call what, decoys kept out of copy accounting, and a changed decoy becoming a high
incident at once although the rules run only every 60 s here."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from custos.controlplane.pki import ROLES
from custos.core.canaries import config_canary_id
from custos.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    canaries_pb2,
    canaries_pb2_grpc,
    custody_pb2,
    custody_pb2_grpc,
    incidents_pb2,
    incidents_pb2_grpc,
)
from tests.servers.agentsim import SimHost, enroll
from tests.servers.custos import DevServer

REGISTERED = b"\x07" * 4096  # a registered weight file's bytes (pushed below)
HALTED = b"\x09" * 4096  # the bytes of model m2, halted by the last test


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    base = tmp_path_factory.mktemp("canaries")
    cfg = base / "cp.toml"
    cfg.write_text("[rules]\ninterval_s = 60\n")  # rounds are rare: canary alerts must not wait for one
    srv = DevServer(base / "cp", extra=["--config", str(cfg)]).start()
    try:
        srv.cli("model", "register", "m1", "--training-flops", "3e26", check=True)
        w = base / "w"
        w.mkdir()
        (w / "x.safetensors").write_bytes(REGISTERED)
        srv.cli("push", "m1", str(w), check=True)
        srv.cli("model", "register", "m2", "--training-flops", "3e26", check=True)
        w2 = base / "w2"
        w2.mkdir()
        (w2 / "y.safetensors").write_bytes(HALTED)
        srv.cli("push", "m2", str(w2), check=True)
        yield srv
    finally:
        srv.stop()


def channel(server: DevServer, role: str) -> grpc.Channel:
    d = Path(server.env["CUSTOS_CERT_DIR"])
    creds = grpc.ssl_channel_credentials(Path(server.env["CUSTOS_CA"]).read_bytes(),
                                         (d / f"{role}.key").read_bytes(), (d / f"{role}.pem").read_bytes())
    return grpc.secure_channel(server.env["CUSTOS_ADDR"], creds)


@pytest.fixture
def api(server: DevServer) -> Iterator[Callable[[str], Any]]:
    opened: list[grpc.Channel] = []

    def make(role: str = "security-team") -> Any:
        ch = channel(server, role)
        opened.append(ch)
        return canaries_pb2_grpc.CanariesStub(ch)

    yield make
    for ch in opened:
        ch.close()


@pytest.fixture
def hosts(server: DevServer) -> Iterator[Callable[[str], SimHost]]:
    made: list[SimHost] = []

    def make(name: str) -> SimHost:
        h = enroll(server.env, f"{name}-{time.monotonic_ns() % 10**9}")
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def first(h: SimHost, timeout: float = 15.0) -> custody_pb2.ControlMessage:
    msg = h.inbox.get(timeout=timeout)
    assert msg is not None, f"stream closed: {h.error}"
    return msg


def find(stub: Any, cid: str) -> Any:
    """The canary ``cid``, or None (yet)."""
    return next((c for c in stub.List(canaries_pb2.ListCanariesRequest(), timeout=10).canaries if c.id == cid),
                None)


def wait_state(stub: Any, cid: str, state: str, timeout: float = 10.0) -> Any:
    return wait_for(lambda: (c := find(stub, cid)) is not None and c.state == state and c, timeout,
                    f"canary {cid} {state}")


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def planted(cid: str, d: str, files: dict[str, bytes]) -> custody_pb2.AgentMessage:
    return custody_pb2.AgentMessage(canary=custody_pb2.CanaryPlanted(canary_id=cid, dir=d, files=[
        custody_pb2.CanaryFile(path=f"{d}/{n}", size=len(b), sha256=hashlib.sha256(b).hexdigest())
        for n, b in files.items()]))


def audit_actions(server: DevServer) -> list[tuple[str, str, str]]:
    ch = channel(server, "auditor")
    try:
        evs = audit_pb2_grpc.AuditStub(ch).ListEvents(audit_pb2.ListEventsRequest(limit=5000), timeout=10).events
        return [(e.action, e.object, e.result) for e in evs]
    finally:
        ch.close()


def test_plant_reaches_a_leased_stream_and_the_agents_answer_is_recorded(server: DevServer, api: Any,
                                                                         hosts: Any) -> None:
    h = hosts("gpu-c1")
    h.open_stream(server.env["CUSTOS_ADDR"])
    assert first(h).WhichOneof("msg") == "lease"
    resp = api().Plant(canaries_pb2.PlantCanaryRequest(host=h.name, path="/models/llama-ft", model="m1"), timeout=10)
    assert resp.canary.state == "pending" and resp.delivered
    req = h.next_of("plant_canary")
    assert (req.canary_id, req.path, req.model) == (resp.canary.id, "/models/llama-ft", "m1")
    files = {"model-00001-of-00002.safetensors": b"\x01" * 2048, "config.json": b"{}"}
    h.send(planted(req.canary_id, req.path, files))
    c = wait_state(api(), req.canary_id, "planted")
    assert sorted(f.path for f in c.files) == sorted(f"/models/llama-ft/{n}" for n in files)
    assert c.origin == "control-plane" and c.created_by == "dev-security-team" and c.planted_at_unix_ns > 0
    # Reported again on every connection: no new audit event for the same answer.
    before = [a for a in audit_actions(server) if a[1] == f"canary/{c.id}"]
    h.send(planted(req.canary_id, req.path, files))
    h.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat()))
    h.next_of("lease")
    assert [a for a in audit_actions(server) if a[1] == f"canary/{c.id}"] == before
    assert [a[0] for a in before] == ["PlantCanary", "CanaryPlanted"]


def test_a_canary_waits_for_its_host_and_never_comes_before_the_lease(server: DevServer, api: Any,
                                                                      hosts: Any) -> None:
    h = hosts("gpu-c2")
    resp = api().Plant(canaries_pb2.PlantCanaryRequest(host=h.name, path="/data/decoy"), timeout=10)
    assert not resp.delivered
    h.open_stream(server.env["CUSTOS_ADDR"])
    # The stream's first message is its lease (an agent reconnects on anything else).
    assert first(h).WhichOneof("msg") == "lease"
    assert h.next_of("plant_canary").canary_id == resp.canary.id
    h.send(custody_pb2.AgentMessage(canary=custody_pb2.CanaryPlanted(
        canary_id=resp.canary.id, dir="/data/decoy", error="/data/decoy is under none of this agent's scan roots")))
    c = wait_state(api(), resp.canary.id, "failed")
    assert "scan roots" in c.error and not c.files


@pytest.mark.parametrize(("host", "path", "model", "code"), [
    ("", "/models/x", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("Bad_Host", "/models/x", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("no-such-host", "/models/x", "", grpc.StatusCode.NOT_FOUND),
    ("@host", "", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "models/x", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "/models/../etc", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "//models/x", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "/models/x/", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "/", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "/models/x\ny", "", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "/m" * 600, "", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "/models/x", "no-such-model", grpc.StatusCode.NOT_FOUND),
    ("@host", "/models/x", "m\x01", grpc.StatusCode.INVALID_ARGUMENT),
    ("@host", "/models/taken", "", grpc.StatusCode.ALREADY_EXISTS),
])
def test_bad_plant_requests_change_nothing(server: DevServer, api: Any, hosts: Any, host: str, path: str,
                                           model: str, code: grpc.StatusCode) -> None:
    h = hosts("gpu-c3")
    stub = api()
    stub.Plant(canaries_pb2.PlantCanaryRequest(host=h.name, path="/models/taken"), timeout=10)
    before = list(stub.List(canaries_pb2.ListCanariesRequest(), timeout=10).canaries)
    with pytest.raises(grpc.RpcError) as err:
        stub.Plant(canaries_pb2.PlantCanaryRequest(host=h.name if host == "@host" else host, path=path,
                                                   model=model), timeout=10)
    assert err.value.code() == code, err.value.details()
    assert list(stub.List(canaries_pb2.ListCanariesRequest(), timeout=10).canaries) == before


def test_a_removed_host_gets_no_canary(server: DevServer, api: Any, hosts: Any) -> None:
    h = hosts("gpu-c4")
    assert server.cli("host", "remove", h.name).returncode == 0
    with pytest.raises(grpc.RpcError) as err:
        api().Plant(canaries_pb2.PlantCanaryRequest(host=h.name, path="/models/x"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("role", ROLES)
def test_who_may_plant_list_and_remove(server: DevServer, api: Any, hosts: Any, role: str) -> None:
    h = hosts("gpu-c5")
    cid = api().Plant(canaries_pb2.PlantCanaryRequest(host=h.name, path="/models/roles"), timeout=10).canary.id
    stub = api(role)
    allowed = {"Plant": role in ("security-team", "admin"), "Remove": role in ("security-team", "admin"),
               "List": role in ("security-team", "auditor", "admin")}
    calls = {"Plant": lambda: stub.Plant(canaries_pb2.PlantCanaryRequest(host=h.name, path="/models/r2"),
                                         timeout=10),
             "List": lambda: stub.List(canaries_pb2.ListCanariesRequest(), timeout=10),
             "Remove": lambda: stub.Remove(canaries_pb2.RemoveCanaryRequest(id=cid), timeout=10)}
    for name, call in calls.items():
        if allowed[name]:
            call()
        else:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, (role, name)
    if not allowed["Remove"]:
        assert find(api(), cid).state == "pending"


def test_forged_canary_reports_change_nothing(server: DevServer, api: Any, hosts: Any) -> None:
    a, b = hosts("gpu-c6"), hosts("gpu-c7")
    for h in (a, b):
        h.open_stream(server.env["CUSTOS_ADDR"])
        assert first(h).WhichOneof("msg") == "lease"
    cid = api().Plant(canaries_pb2.PlantCanaryRequest(host=a.name, path="/models/a"), timeout=10).canary.id
    a.next_of("plant_canary")
    good = {"model.safetensors": b"\x02" * 1024}
    cases = [
        planted(cid, "/models/a", good),                                  # another host's canary
        planted("0123456789abcdef", "/models/b", good),                   # an id nobody asked for
        planted(config_canary_id(a.name, "/models/b"), "/models/b", good),  # a's config id, claimed by b
    ]
    for msg in cases:
        b.send(msg)
    forged_dir = [
        planted(cid, "/models/elsewhere", good),                          # its own canary, another place
        planted(cid, "/models/a", {"../../etc/passwd": b"x"}),            # a file out of the directory
        custody_pb2.AgentMessage(canary=custody_pb2.CanaryPlanted(canary_id=cid, dir="/models/a", files=[
            custody_pb2.CanaryFile(path="/models/a/x.safetensors", size=1, sha256="zz")])),  # not a hash
        custody_pb2.AgentMessage(canary=custody_pb2.CanaryPlanted(canary_id=cid, dir="/models/a")),  # no files
        planted("NOT-AN-ID", "/models/a", good),
    ]
    for msg in forged_dir:
        a.send(msg)
    for h in (a, b):  # every report above was read (the stream reads in order) and refused
        h.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat()))
        h.next_of("lease")
    c = find(api(), cid)
    assert c.state == "pending" and c.host == a.name and not c.files
    names = {c.id for c in api().List(canaries_pb2.ListCanariesRequest(), timeout=10).canaries}
    assert "0123456789abcdef" not in names and config_canary_id(a.name, "/models/b") not in names
    # Its own config canary: recorded (origin agent-config) — unless the "decoy" holds registered bytes.
    own = config_canary_id(b.name, "/models/b")
    b.send(planted(own, "/models/b", good))
    assert wait_state(api(), own, "planted").origin == "agent-config"
    hidden = config_canary_id(b.name, "/models/hide")
    b.send(planted(hidden, "/models/hide", {"model.safetensors": REGISTERED}))
    c = wait_for(lambda: next((c for c in api().List(canaries_pb2.ListCanariesRequest(host=b.name),
                                                     timeout=10).canaries if c.id == hidden), None), 10, "refused")
    assert c.state == "failed" and "registered weights" in c.error and not c.files


def alerts_of(server: DevServer, host: str) -> list[custody_pb2.Alert]:
    ch = channel(server, "security-team")
    try:
        return list(custody_pb2_grpc.AlertsStub(ch).ListAlerts(custody_pb2.ListAlertsRequest(host=host),
                                                               timeout=10).alerts)
    finally:
        ch.close()


def incidents_of(server: DevServer, host: str) -> list[incidents_pb2.Incident]:
    ch = channel(server, "security-team")
    try:
        out = incidents_pb2_grpc.IncidentsStub(ch).ListIncidents(incidents_pb2.ListIncidentsRequest(), timeout=10)
        return [i for i in out.incidents if host in i.hosts]
    finally:
        ch.close()


def test_decoys_are_no_copies_and_a_changed_decoy_is_a_high_incident_at_once(server: DevServer, api: Any,
                                                                             hosts: Any) -> None:
    h = hosts("gpu-c8")
    h.open_stream(server.env["CUSTOS_ADDR"])
    assert first(h).WhichOneof("msg") == "lease"
    d = "/models/qwen"
    decoy = b"\x00" * 8 + b"decoy" * 100_000
    cid = config_canary_id(h.name, d)
    h.send(planted(cid, d, {"model-00001-of-00001.safetensors": decoy}))
    wait_state(api(), cid, "planted")

    def report(data: bytes) -> None:
        h.send(custody_pb2.AgentMessage(inventory=custody_pb2.Inventory(full=True, files=[
            custody_pb2.FileRecord(path=f"{d}/model-00001-of-00001.safetensors", size=len(data), form="plaintext",
                                   sha256=hashlib.sha256(data).hexdigest()),
            custody_pb2.FileRecord(path="/models/real/x.safetensors", size=len(REGISTERED), form="plaintext",
                                   sha256=hashlib.sha256(REGISTERED).hexdigest())])))
        h.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat()))
        h.next_of("lease")

    report(decoy)
    time.sleep(0.5)
    alerts = alerts_of(server, h.name)
    # The registered file is a copy (outside m1's custody policy: an alert); the decoy is nothing.
    assert any(a.rule == "unauthorized-copy" for a in alerts)
    assert not [a for a in alerts if a.rule in ("unregistered-weights", "canary-opened")], alerts
    # Someone wrote to the decoy: its bytes are no longer the planted ones.
    changed = decoy + b"!"
    t0 = time.monotonic()
    report(changed)
    inc = wait_for(lambda: [i for i in incidents_of(server, h.name)
                            if any(a.rule == "canary-opened" for a in i.alerts)], 5, "a canary incident")
    took = time.monotonic() - t0
    assert took < 5.0
    alert = next(a for a in inc[0].alerts if a.rule == "canary-opened")
    assert alert.severity == "high" and inc[0].severity == "high" and cid in alert.detail
    assert any(a.rule == "unregistered-weights" for a in alerts_of(server, h.name))  # now it is a file like any


def test_remove_is_audited_and_final(server: DevServer, api: Any, hosts: Any) -> None:
    h = hosts("gpu-c9")
    stub = api()
    cid = stub.Plant(canaries_pb2.PlantCanaryRequest(host=h.name, path="/models/gone"), timeout=10).canary.id
    c = stub.Remove(canaries_pb2.RemoveCanaryRequest(id=cid[:8]), timeout=10).canary
    assert c.state == "removed" and c.removed_by == "dev-security-team" and c.removed_at_unix_ns > 0
    with pytest.raises(grpc.RpcError) as err:
        stub.Remove(canaries_pb2.RemoveCanaryRequest(id=cid), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    for bad, code in (("", grpc.StatusCode.INVALID_ARGUMENT), ("xyz", grpc.StatusCode.INVALID_ARGUMENT),
                      ("ffffffffffffffff", grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as err:
            stub.Remove(canaries_pb2.RemoveCanaryRequest(id=bad), timeout=10)
        assert err.value.code() == code
    # A removed canary is not sent to its host, and the host reporting it changes nothing.
    h.open_stream(server.env["CUSTOS_ADDR"])
    assert first(h).WhichOneof("msg") == "lease"
    h.send(planted(cid, "/models/gone", {"model.safetensors": b"\x03" * 64}))
    h.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat()))
    assert first(h).WhichOneof("msg") == "lease"  # the heartbeat's answer, and nothing before it
    assert find(stub, cid).state == "removed"
    events = [(a, r) for a, o, r in audit_actions(server) if o == f"canary/{cid}"]
    assert [a for a, _ in events] == ["PlantCanary", "RemoveCanary", "RemoveCanary"]
    assert events[1][1].startswith("ok") and events[2][1].startswith("error: FailedPrecondition")  # refused, recorded
    # The CLI speaks the same service.
    out = json.loads(server.cli("canary", "list", "--host", h.name, "-o", "json", check=True).stdout)
    assert [(c["id"], c["state"]) for c in out] == [(cid, "removed")]


async def test_a_kick_ends_the_pause_between_rounds_and_stop_still_wins() -> None:
    import asyncio

    from custos.controlplane.periodic import pause

    stop, wake = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    loop.call_later(0.05, wake.set)
    await pause(30, stop, wake)
    assert loop.time() - t0 < 5
    wake.clear()
    loop.call_later(0.05, stop.set)
    await pause(30, stop, wake)
    assert loop.time() - t0 < 10
    await pause(0.01, stop)  # stop set: returns at once


def test_a_host_owing_an_order_gets_it_first_and_its_canaries_only_after_a_lease(server: DevServer, api: Any,
                                                                                 hosts: Any) -> None:
    # The host holds m2's bytes; m2 is halted while it is away: its lease is held back until it acks.
    h = hosts("gpu-c10")
    h.open_stream(server.env["CUSTOS_ADDR"])
    assert first(h).WhichOneof("msg") == "lease"
    h.send(custody_pb2.AgentMessage(inventory=custody_pb2.Inventory(full=True, files=[
        custody_pb2.FileRecord(path="/data/m2/y.safetensors", size=len(HALTED), form="plaintext",
                               sha256=hashlib.sha256(HALTED).hexdigest())])))
    h.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat()))
    h.next_of("lease")
    h.close()
    oid = server.propose("halt", "m2")
    server.sign(oid, 1, 2, 3)
    cid = api().Plant(canaries_pb2.PlantCanaryRequest(host=h.name, path="/models/owed"), timeout=10).canary.id
    # Reconnecting: the order it missed comes first, and nothing else until it has a lease.
    h.inbox = type(h.inbox)()
    h.outbox = type(h.outbox)()
    h.open_stream(server.env["CUSTOS_ADDR"])
    msg = first(h)
    assert msg.WhichOneof("msg") == "order", msg.WhichOneof("msg")
    h.send(custody_pb2.AgentMessage(ack=custody_pb2.OrderAck(
        order_id=oid, verified=True, outcome="halted", received_unix_ns=time.time_ns(), done_unix_ns=time.time_ns())))
    h.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat()))
    kinds = []
    while (k := first(h).WhichOneof("msg")) != "lease":
        kinds.append(k)
    assert "plant_canary" not in kinds
    h.close()
    # The next connection has its lease from the start: the canary follows it.
    h.inbox = type(h.inbox)()
    h.outbox = type(h.outbox)()
    h.open_stream(server.env["CUSTOS_ADDR"])
    assert first(h).WhichOneof("msg") == "lease"
    assert h.next_of("plant_canary").canary_id == cid
