"""One scenario per rule that triggers it, against a real control plane: the alert, the
incident it joins, its category and its 72-hour deadline. (Vault's audit log:
test_vault_audit.py; normal traffic that must not trigger: test_normal_traffic.py.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from custos.controlplane.audit import Caller
from custos.controlplane.store.base import Txn
from custos.core.audit_chain import Event
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.rules import UnwrapRateConfig, alert_id, lease_lapses, unauthorized_unwraps, unwrap_rate
from tests.controlplane.incidents.conftest import HOUR, Plane, tree, weights


def the_incident(plane: Plane, alert: dict[str, Any], category: str) -> dict[str, Any]:
    """The one incident the alert joined; checks its category and its 72-hour clock."""
    found = [i for i in plane.incidents(include_closed=True) if alert["id"] in [a["id"] for a in i["alerts"]]]
    assert len(found) == 1, f"alert {alert['rule']} joined {len(found)} incidents"
    inc = found[0]
    assert inc["category"] == category
    assert inc["status"] == "open"
    assert inc["discovered_at_ns"] <= alert["at_ns"]
    assert inc["report_deadline_ns"] == inc["discovered_at_ns"] + 72 * HOUR
    assert inc["seconds_left"] > 71 * 3600 - 60
    return inc


def only(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(alerts) == 1, alerts
    return alerts[0]


def test_unwrap_by_agent_outside_custody_policy(plane: Plane, tmp_path: Path) -> None:
    plane.model("m1", hosts=["gpu-*"])
    aid = plane.push("m1", weights(tmp_path / "w", 1))
    plane.pull(plane.enroll("gpu-1"), aid, tmp_path / "ok")
    laptop = plane.enroll("laptop-7")
    plane.pull(laptop, aid, tmp_path / "stolen")
    plane.round()
    a = only(plane.alerts("unwrap-unauthorized"))
    assert (a["host"], a["principal"], a["model"], a["artifact_id"]) == ("laptop-7", "laptop-7", "m1", aid)
    assert "outside the model's custody hosts ['gpu-*']" in a["detail"]
    ev = [e for e in plane.events() if e.seq in a["evidence"]]
    # The result names the access grant the release was under.
    assert [(e.action, e.principal, e.result.split("; grant ")[0]) for e in ev] == [
        ("UnwrapDataKey", "laptop-7", "ok: pull")]
    assert a["at_ns"] == ev[0].time_ns
    inc = the_incident(plane, a, "c2")
    assert inc["model"]["name"] == "m1" and inc["model"]["covered"] and inc["hosts"] == ["laptop-7"]
    assert inc["discovered_at_ns"] == ev[0].time_ns


def test_unwrap_by_a_role_other_than_security_team(plane: Plane, tmp_path: Path) -> None:
    # The API's authz table refuses this role; the rule is the second line should it ever be let through.
    plane.model("m1", hosts=["gpu-*"])
    aid = plane.push("m1", weights(tmp_path / "w", 2))
    plane.unwrap(Caller(principal="mallory", role="auditor", host="10.6.6.6", request_id="x"), aid)
    plane.round()
    a = only(plane.alerts("unwrap-unauthorized"))
    assert (a["principal"], a["host"]) == ("mallory", "10.6.6.6") and "role 'auditor'" in a["detail"]
    the_incident(plane, a, "c2")


@pytest.mark.parametrize("kind", ["host", "principal"])
def test_unwrap_rate_above_baseline(plane_factory: Any, tmp_path: Path, kind: str) -> None:
    limits = {"max_per_host": 3, "max_per_principal": 1000} if kind == "host" else \
        {"max_per_host": 1000, "max_per_principal": 3}
    plane: Plane = plane_factory(rules={"unwrap_rate": {"window_s": 600, **limits}})
    plane.model("m1", hosts=["gpu-*"])
    aid = plane.push("m1", weights(tmp_path / "w", 3))
    gpu = plane.enroll("gpu-1")
    for _ in range(3):
        plane.unwrap(gpu, aid)
    plane.round()
    assert plane.alerts("unwrap-rate") == [], "three handouts are within the baseline"
    plane.unwrap(gpu, aid)
    plane.round()
    a = only(plane.alerts("unwrap-rate"))
    assert f"4 data keys handed to {kind} gpu-1 within 600s (baseline at most 3)" in a["detail"]
    assert len(a["evidence"]) == 4 and a["model"] == "m1"
    the_incident(plane, a, "c2")
    plane.unwrap(gpu, aid)  # still above, same window: the same finding, not a second alert
    plane.round()
    assert len(plane.alerts("unwrap-rate")) == 1


def test_unauthorized_copy_from_custody_joins_an_incident(plane: Plane, tmp_path: Path) -> None:
    plane.model("m1", hosts=["gpu-*"], paths=["/models/*"])
    w = weights(tmp_path / "w", 4)
    aid = plane.push("m1", w)
    plane.enroll("gpu-1")
    plane.report("gpu-1", tree(w, "/srv/stash"))
    plane.round()
    a = only(plane.alerts("unauthorized-copy"))
    assert (a["host"], a["model"], a["artifact_id"]) == ("gpu-1", "m1", aid)
    inc = the_incident(plane, a, "c2")
    assert [(c["host"], c["location"], c["authorized"], c["state"]) for c in inc["copies"]] == [
        ("gpu-1", "gpu-1:/srv/stash", False, "present")]


def test_unregistered_weights_from_custody(plane: Plane, tmp_path: Path) -> None:
    plane.enroll("gpu-2")
    plane.report("gpu-2", {"/scratch/other/model.safetensors": b"\x01" * 5000})
    plane.round()
    a = only(plane.alerts("unregistered-weights"))
    inc = the_incident(plane, a, "c3")
    assert inc["model"]["name"] == "" and inc["hosts"] == ["gpu-2"]


def test_tampered_file_at_a_registered_copy(plane: Plane, tmp_path: Path) -> None:
    plane.model("m1", hosts=["gpu-*"], paths=["/models/*"])
    w = weights(tmp_path / "w", 5)
    aid = plane.push("m1", w)
    plane.enroll("gpu-1")
    files = tree(w, "/models/m1")
    plane.report("gpu-1", files)  # the complete, authorized copy
    plane.round()
    assert plane.alerts() == []
    shard = "/models/m1/model-00001-of-00002.safetensors"
    flipped = bytearray(files[shard])
    flipped[100] ^= 0x01
    tampered = {**files, shard: bytes(flipped)}

    # With exact hashes (the custody inventory hook), and from custody's own alert text.
    from custos.v1 import custody_pb2

    inv = custody_pb2.Inventory(full=True, files=[custody_pb2.FileRecord(
        path=p, size=len(b), sha256=__import__("hashlib").sha256(b).hexdigest(), form="plaintext")
        for p, b in tampered.items()])
    hooked = plane.run(plane.rt.engine.on_inventory("gpu-1", inv))
    assert [a["rule"] for a in hooked] == ["tampered-weights"]
    plane.report("gpu-1", tampered)
    plane.round()
    a = only(plane.alerts("tampered-weights"))
    assert a["id"] == hooked[0]["id"], "the hook and the alert-text path find the same thing"
    assert (a["host"], a["model"], a["artifact_id"]) == ("gpu-1", "m1", aid)
    assert "model-00001-of-00002.safetensors of artifact" in a["detail"] and "no longer matches" in a["detail"]
    inc = the_incident(plane, a, "c3")
    # custody's unregistered-weights alert for the same file joined the same incident (same host)
    assert {x["rule"] for x in inc["alerts"]} == {"tampered-weights", "unregistered-weights"}


def test_lease_lapse(plane_factory: Any) -> None:
    plane: Plane = plane_factory(lease_ttl=0.2)
    plane.enroll("gpu-3")
    time.sleep(0.3)
    assert plane.run(plane.cp.custody.sweep()) == ["gpu-3"]
    plane.round()
    a = only(plane.alerts("lease-lapsed"))
    assert a["host"] == "gpu-3" and len(a["evidence"]) == 1
    assert [e.action for e in plane.events() if e.seq == a["evidence"][0]] == ["LeaseLapsed"]
    inc = the_incident(plane, a, "c3")
    assert inc["hosts"] == ["gpu-3"]


def test_order_ack_missing_past_deadline(plane: Plane, tmp_path: Path) -> None:
    plane.model("m1", hosts=["gpu-*"], paths=["/models/*"])
    w = weights(tmp_path / "w", 6)
    plane.push("m1", w)
    plane.enroll("gpu-1")
    plane.report("gpu-1", tree(w, "/models/m1"))
    plane.connect("gpu-1")  # its agent is on its stream, but never acks
    oid = plane.order("halt", ["m1"])
    plane.round()
    assert plane.alerts("order-ack-missing") == [], "within the 300 s deadline"
    plane.advance(0.1)  # 6 minutes later
    plane.round()
    a = only(plane.alerts("order-ack-missing"))
    assert (a["host"], a["model"]) == ("gpu-1", "m1") and oid[:16] in a["detail"]
    inc = the_incident(plane, a, "c3")
    assert [(o["id"], o["action"], o["state"]) for o in inc["actions"]] == [(oid, "halt", "executing")]


def test_audit_chain_failure(plane: Plane) -> None:
    plane.model("m1")
    plane.model("m2")
    plane.run(plane.cp.audit.checkpoint())
    key = "audit/events/" + f"{1:020d}"
    entry = plane.run(plane.store.get(key))
    obj = dict(decode_canonical(entry.value))
    obj["event"] = {**obj["event"], "principal": "someone-else"}  # edited, stored hash kept
    assert plane.run(plane.store.commit(Txn(puts={key: encode_canonical(obj)})))
    plane.round()
    a = only(plane.alerts("audit-chain-broken"))
    assert a["severity"] == "critical" and a["evidence"] == [1]
    assert "event 1: content does not match its hash: edited" in a["detail"]
    inc = the_incident(plane, a, "c3")
    assert inc["severity"] == "critical" and inc["model"]["name"] == "" and inc["hosts"] == []


# -- the pure rules, table-driven -----------------------------------------------------------------


def ev(seq: int, t: int, principal: str, role: str = "agent", action: str = "UnwrapDataKey",
       result: str = "ok: pull", obj: str = "artifact/" + "a" * 64, host: str = "10.0.0.1") -> Event:
    return Event(seq=seq, time_ns=t * 1_000_000_000, principal=principal, role=role, host=host, action=action,
                 object=obj, result=result)


@pytest.mark.parametrize(("event", "hit"), [
    (ev(1, 0, "gpu-1"), False),
    (ev(1, 0, "cpu-1"), True),
    (ev(1, 0, "gpu-1", result="error: ModelNotActive: halted"), False),  # no key left
    (ev(1, 0, "alice", role="security-team"), False),
    (ev(1, 0, "alice", role="security-team", action="CreateDataKey", result="ok"), False),
    (ev(1, 0, "eve", role="executive", action="CreateDataKey", result="ok: resumed"), True),
    (ev(1, 0, "sys", role="system"), True),
    (ev(1, 0, "cpu-1", action="RegisterArtifact", result="ok"), False),
    (ev(1, 0, "cpu-1", obj="-", result="denied"), False),
])
def test_unauthorized_unwrap_table(event: Event, hit: bool) -> None:
    got = unauthorized_unwraps([event], artifact_model={"a" * 64: "m1"}, custody_hosts={"m1": ["gpu-*"]},
                               allowed_roles={"security-team"})
    assert bool(got) == hit


@pytest.mark.parametrize(("times", "limit", "alerts"), [
    ([0, 1, 2], 3, 0),
    ([0, 1, 2, 3], 3, 1),
    ([0, 20, 40, 61], 3, 0),   # the first one left the 60 s window
    ([0, 1, 2, 3, 4, 5], 3, 1),  # one per subject per window bucket
    ([0, 1, 2, 3, 200, 201, 202, 203], 3, 2),
])
def test_unwrap_rate_window_table(times: list[int], limit: int, alerts: int) -> None:
    events = [ev(i + 1, t, "gpu-1") for i, t in enumerate(times)]
    got = unwrap_rate(events, config=UnwrapRateConfig(window_s=60, max_per_host=limit, max_per_principal=10**6),
                      artifact_model={})
    assert len(got) == alerts


def test_alert_ids_are_deterministic() -> None:
    lapse = ev(7, 5, "custos-controlplane", role="system", action="LeaseLapsed", obj="host/gpu-1",
               result="lease expired at 1")
    a, b = lease_lapses([lapse]), lease_lapses([lapse])
    assert a == b and a[0].id == alert_id("lease-lapsed", ("gpu-1", "7"))


def test_periodic_sweep_is_skipped_only_while_no_lease_can_have_lapsed(plane_factory: Any) -> None:
    """sweep_if_due reads the fleet's leases only once one may have expired (the soonest expiry
    the last sweep saw, or a TTL after it), and a lease that lapsed is still found by it."""
    plane: Plane = plane_factory(lease_ttl=1.0)
    custody = plane.cp.custody
    plane.enroll("gpu-4")
    before = time.time_ns()
    assert plane.run(custody.sweep()) == []
    assert before < custody._sweep_due_ns <= time.time_ns() + 1_000_000_000  # a TTL away at most
    assert plane.run(custody.sweep_if_due()) == []  # skipped: nothing can have lapsed yet
    time.sleep(1.3)
    lapsed = plane.run(custody.sweep_if_due())
    state = decode_canonical(plane.run(custody.store.get("leases/gpu-4")).value)["state"]
    assert lapsed == ["gpu-4"] or state == "lapsed"  # by this sweep or the background one
    assert state == "lapsed"
