"""Incidents: correlation, the status lifecycle (audited), the 72-hour clock in the CLI,
deadline warnings, and the report — every field, rebuilt from the audit log alone."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from custos.cli.incidents import ReportMismatch, add_commands, time_left
from custos.cli.main import Out
from custos.controlplane.audit import Caller
from custos.controlplane.incidents.runtime import LEADER_KEY, attach
from custos.controlplane.store.base import Txn
from custos.core.audit_chain import Event
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.incidents import (
    INCIDENT_ACTIONS,
    build_report,
    incident_view,
    match_incident,
    rebuild_report,
    replay,
    report_markdown,
)
from custos.errors import FailedPrecondition, InvalidInput, NotFound, Unauthorized
from tests.controlplane.incidents.conftest import HOUR, SEC, Plane, tree, weights

LEAD = Caller(principal="carol", role="security-team", host="10.0.0.4", request_id="t")


def theft(plane: Plane, tmp_path: Path, model: str = "m1", host: str = "laptop-7") -> tuple[str, str]:
    """A key handed to a host outside the policy, and the plaintext copy it then reports.
    Returns (artifact id, incident id)."""
    if not plane.run(plane.store.get(f"models/{model}")):
        plane.model(model, hosts=["gpu-*"], paths=["/models/*"])
    w = weights(tmp_path / f"w-{model}", hash(model) % 1000)
    aid = plane.push(model, w)
    laptop = plane.enroll(host)
    plane.pull(laptop, aid, tmp_path / f"stolen-{model}")
    plane.report(host, tree(w, f"/home/u/{model}"))
    plane.round()
    [inc] = [i for i in plane.incidents() if i["model"]["name"] == model]
    return aid, inc["id"]


def cli(plane: Plane, capsys: pytest.CaptureFixture[str], *argv: str, role: str = "security-team") -> Any:
    """Run `custos incident ...` through the real handlers over mTLS; returns parsed JSON output."""
    p = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", "-o", default="json")
    add_commands(p.add_subparsers(dest="cmd"), common)
    ns = p.parse_args(["incident", *argv])
    for k, v in vars(plane.ns(role)).items():
        setattr(ns, k, v)
    capsys.readouterr()
    rc = ns.fn(ns, Out(ns.output))
    assert rc == 0
    out = capsys.readouterr().out
    return json.loads(out) if ns.output == "json" else out


def test_alerts_on_one_model_form_one_incident_another_model_another(plane: Plane, tmp_path: Path) -> None:
    _, iid = theft(plane, tmp_path)
    inc = plane.run(plane.rt.service.get(iid))
    assert sorted(a["rule"] for a in inc["alerts"]) == ["unauthorized-copy", "unwrap-unauthorized"]
    assert inc["discovered_at_ns"] == min(a["at_ns"] for a in inc["alerts"])
    _, other = theft(plane, tmp_path, model="m2", host="laptop-8")
    assert other != iid and len(plane.incidents()) == 2
    links = {decode_canonical(e.value)["incident"] for e in plane.run(plane.store.range("alertlinks/"))}
    assert links == {iid, other}
    assert plane.round() == [] and len(plane.incidents()) == 2, "a second round changes nothing"


def view(iid: str, model: str, host: str, first: int, last: int, status: str = "open",
         rule: str = "unwrap-unauthorized") -> dict[str, Any]:
    alerts = [{"artifact_id": "", "at_ns": t * HOUR, "category": "c2", "detail": "", "evidence": [], "host": host,
               "id": f"{iid}-{t}", "model": model, "principal": "", "rule": rule, "severity": "high"}
              for t in (first, last)]
    return incident_view({"actions": [], "alerts": alerts, "alerts_dropped": 0, "category": "c2", "copies": [],
                          "copies_dropped": 0, "discovered_at_ns": first * HOUR, "history": [], "id": iid,
                          "lookback_ns": 0, "model": {"name": model}, "opened_at_ns": first * HOUR,
                          "status": status, "warnings": []})


VIEWS = [view("a", "m1", "h1", 10, 12), view("b", "", "h2", 10, 11), view("c", "m3", "h3", 10, 11, "closed"),
         view("d", "", "", 10, 10, rule="audit-chain-broken"), view("e", "", "h5", 10, 11, rule="lease-lapsed"),
         view("f", "", "h8", 10, 11, rule="canary-opened")]


@pytest.mark.parametrize(("model", "host", "at", "rule", "joins"), [
    ("m1", "h9", 12.5, "unwrap-rate", "a"),     # same model, other host
    ("m1", "h1", 13.5, "unwrap-rate", None),    # same model, past the 1 h window after the last alert
    ("m1", "h1", 9.5, "unwrap-rate", "a"),      # out of order, within the window before discovery
    ("m2", "h1", 11, "unwrap-rate", None),      # another model: another incident, even on the same host
    ("", "h1", 11, "lease-lapsed", "a"),        # no model: the incident with that host
    ("", "h2", 11.9, "lease-lapsed", "b"),
    ("m3", "h3", 11, "unwrap-rate", None),      # closed incidents take nothing
    ("", "h6", 10.5, "lease-lapsed", "e"),      # no model, a host no incident has: the hosts' incident of that rule
    ("", "h6", 12.5, "lease-lapsed", None),     # ... within the window
    ("", "h6", 10.5, "unregistered-weights", None),  # ... of that rule
    ("", "h5", 10.5, "unregistered-weights", "e"),   # the incident with that host comes first
    ("", "h7", 10.5, "canary-opened", None),    # only FLEET_RULES group hosts: a canary is its host's own
    ("", "", 10.5, "audit-chain-broken", "d"),  # neither: the same rule
    ("", "", 10.5, "order-ack-missing", None),
])
def test_correlation_table(model: str, host: str, at: float, rule: str, joins: str | None) -> None:
    alert = {"at_ns": int(at * HOUR), "host": host, "model": model, "rule": rule}
    assert match_incident(alert, VIEWS, HOUR) == joins


def test_status_lifecycle_is_audited_and_refusals_change_nothing(plane: Plane, tmp_path: Path) -> None:
    _, iid = theft(plane, tmp_path)
    svc = plane.rt.service

    def refused(exc: type[Exception], match: str, **kw: Any) -> None:
        before = plane.run(plane.store.get(f"incidents/{iid}")).value
        with pytest.raises(exc, match=match):
            plane.run(svc.update(LEAD, ref=iid, **kw))
        assert plane.run(plane.store.get(f"incidents/{iid}")).value == before

    refused(InvalidInput, "unknown status", status="done")
    refused(InvalidInput, "unknown category", category="c5", note="x")
    refused(InvalidInput, "nothing to change")
    refused(InvalidInput, "closing an unreported incident needs a note", status="closed")
    refused(InvalidInput, "changing the category needs a note", category="c3")
    plane.run(svc.update(LEAD, ref=iid[:8], status="triaged", note="laptop-7 isolated"))
    plane.run(svc.update(LEAD, ref=iid, category="c3", note="turned out to be a failed control, not theft"))
    refused(FailedPrecondition, "it can move to reported, closed", status="open")
    v = plane.run(svc.update(LEAD, ref=iid, status="reported", note="FMD ref 2025-001"))
    assert v["status"] == "reported" and v["category"] == "c3" and not v["under_24h"] and not v["overdue"]
    plane.run(svc.update(LEAD, ref=iid, status="closed"))
    refused(FailedPrecondition, "is closed", note="one more thing")
    assert [(h["from"], h["status"], h["by"], h["category"]) for h in v["history"]] == [
        ("", "open", "custos-controlplane", "c2"), ("open", "triaged", "carol", ""),
        ("triaged", "triaged", "carol", "c3"), ("triaged", "reported", "carol", "")]
    updates = [e for e in plane.events() if e.object == f"incident/{iid}" and e.action == "UpdateIncident"]
    assert [e.result.split(":", 2)[:2] for e in updates if e.result.startswith("error")] == [
        ["error", " InvalidInput"]] * 5 + [["error", " FailedPrecondition"]] * 2
    assert [json.loads(e.result[4:])["status"] for e in updates if e.result.startswith("ok: ")] == [
        "triaged", "triaged", "reported", "closed"]
    assert all(e.principal == "carol" for e in updates)
    assert plane.incidents() == [] and len(plane.incidents(include_closed=True)) == 1


def test_list_shows_time_left_flags_under_24h_and_warns_once(plane_factory: Any, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    plane: Plane = plane_factory(notify={"log": True})
    _, iid = theft(plane, tmp_path)
    rows = cli(plane, capsys, "list")
    assert [(r["id"], r["status"], r["under_24h"], r["overdue"]) for r in rows] == [(iid, "open", False, False)]
    assert rows[0]["time_left"].startswith("71h ") or rows[0]["time_left"] == "72h 00m"
    plane.advance(50)
    text = cli(plane, capsys, "list", "-o", "text")
    assert f"{iid}  open" in text and "!! 21h " in text and "!! = under 24 hours left to report" in text
    assert cli(plane, capsys, "list")[0]["under_24h"] is True
    plane.round()
    plane.round()
    plane.advance(23)
    row = cli(plane, capsys, "list")[0]
    assert row["overdue"] and row["time_left"].startswith("OVERDUE 1h ")
    plane.round()
    plane.round()
    warnings = [json.loads(e.result[4:])["warning"] for e in plane.events()
                if e.action == "IncidentDeadlineWarning" and e.object == f"incident/{iid}"]
    assert warnings == ["under-24h", "overdue"]
    outbox = [decode_canonical(e.value) for e in plane.run(plane.store.range("notify/outbox/"))]
    assert [o["kind"] for o in outbox].count("incident.deadline") == 2
    assert plane.run(plane.rt.notifier.dispatch_once()) == len(outbox)
    assert plane.run(plane.store.range("notify/outbox/")) == []
    cli(plane, capsys, "update", iid, "--status", "reported", "--note", "filed late")
    assert cli(plane, capsys, "list", "--status", "reported")[0]["time_left"] == "-"


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
def test_export_has_every_field_and_is_rebuilt_from_the_audit_log(
        plane_factory: Any, tmp_path: Path, backend: str, request: pytest.FixtureRequest,
        capsys: pytest.CaptureFixture[str]) -> None:
    store_url = None
    if backend == "etcd":
        import uuid

        store_url = f"etcd://{request.getfixturevalue('etcd_server').endpoint}/inc-{uuid.uuid4().hex[:8]}"
    plane: Plane = plane_factory(store_url=store_url)
    aid, iid = theft(plane, tmp_path)
    plane.run(plane.rt.service.update(LEAD, ref=iid, status="triaged", note="laptop-7 isolated"))
    plane.connect("laptop-7")
    oid = plane.order("halt", ["m1"])
    plane.ack("laptop-7", oid, "halted", wiped=["/home/u/m1"])
    plane.round()
    plane.run(plane.rt.service.update(LEAD, ref=iid, status="reported", note="FMD ref 2025-001"))

    r = plane.run(plane.rt.service.export(iid))
    inc = plane.run(plane.rt.service.get(iid))
    assert r["incident"] == iid and r["status"] == "reported" and r["category"] == "c2"
    assert r["category_title"].startswith("(c)(2) Theft") and r["severity"] == "high"
    assert r["model"] == {"covered": True, "exemption": False, "name": "m1", "owner": "research",
                          "training_flops": "3e+26"}
    assert r["discovered_at_ns"] == inc["discovered_at_ns"] and r["discovered_at"].endswith("Z")
    assert r["report_deadline_ns"] == r["discovered_at_ns"] + 72 * HOUR
    assert sorted(a["rule"] for a in r["what_happened"]) == ["unauthorized-copy", "unwrap-unauthorized"]
    assert r["affected"]["hosts"] == ["laptop-7"] and r["affected"]["artifacts"] == [aid]
    assert [(c["location"], c["form"], c["state"], c["authorized"]) for c in r["affected"]["copies"]] == [
        ("laptop-7:/home/u/m1", "plaintext", "wiped", False)]
    assert r["actions"] == [{"action": "halt", "drill": False, "id": oid, "models": ["m1"], "state": "complete"}]
    att = r["attribution"]
    assert "laptop-7" in att["principals"] and "laptop-7" in att["hosts"]
    handouts = [(e["action"], e["principal"], e["result"].split("; grant ")[0]) for e in att["events"]]
    assert ("UnwrapDataKey", "laptop-7", "ok: pull") in handouts and ("CreateDataKey", "alice", "ok") in handouts
    assert [h["status"] for h in r["history"]] == ["open", "triaged", "reported"]
    assert r["history"][-1]["note"] == "FMD ref 2025-001"
    assert len(r["audit"]["incident_events"]) >= 7

    # Reproducible: the same report from the audit log alone, here and through the CLI.
    assert rebuild_report(iid, plane.stored_events()) == r
    assert replay(iid, plane.events()) == plane.run(plane.rt.service.state(iid))
    assert cli(plane, capsys, "export", iid[:8], "--verify") == {"incident": iid, "incident_events": len(
        r["audit"]["incident_events"]), "ok": True}
    assert cli(plane, capsys, "export", iid, "--from-audit") == json.loads(json.dumps(r))
    md = cli(plane, capsys, "export", iid, "--format", "markdown", "-o", "text")
    for heading in ("# AI safety incident", "## What happened", "## Affected hosts and copies", "## Actions taken",
                    "## Attribution (from the audit log)", "## History", "Report deadline (72 h)", oid):
        assert heading in md
    assert md == report_markdown(r) + "\n" or md.rstrip("\n") == report_markdown(r).rstrip("\n")


def test_verify_catches_a_record_that_is_not_what_the_audit_log_says(plane: Plane, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, iid = theft(plane, tmp_path)
    key = f"incidents/{iid}"
    rec = dict(decode_canonical(plane.run(plane.store.get(key)).value))
    rec["alerts"] = rec["alerts"][:1]  # an alert quietly dropped from the record
    assert plane.run(plane.store.commit(Txn(puts={key: encode_canonical(rec)})))
    with pytest.raises(ReportMismatch, match="what_happened"):
        cli(plane, capsys, "export", iid, "--verify")


def test_authz_auditors_read_only_agents_nothing(plane: Plane, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, iid = theft(plane, tmp_path)
    assert [r["id"] for r in cli(plane, capsys, "list", role="auditor")] == [iid]
    assert cli(plane, capsys, "show", iid, role="auditor")["alerts"]
    for role, argv in (("auditor", ("update", iid, "--status", "triaged")), ("agent", ("list",)),
                       ("executive", ("export", iid))):
        with pytest.raises(Unauthorized, match="may not call"):
            cli(plane, capsys, *argv, role=role)
    denied = [e for e in plane.events() if e.result == "denied"]
    assert [(e.action, e.role) for e in denied] == [("UpdateIncident", "auditor"), ("ExportIncident", "executive")]
    with pytest.raises(NotFound):
        cli(plane, capsys, "show", "ffffffff")


def test_report_builder_only_counts_successful_changes() -> None:
    def e(seq: int, action: str, result: str, principal: str = "p") -> Event:
        return Event(seq=seq, time_ns=seq, principal=principal, role="security-team", host="h", action=action,
                     object="incident/abc123", result=result)

    opened = {"category": "c3", "discovered_at_ns": 5, "id": "abc123", "lookback_ns": 0, "model": {
        "covered": False, "exemption": False, "name": "", "owner": "", "training_flops": ""}, "note": "n",
        "opened_at_ns": 6, "report_deadline_ns": 5 + 72 * HOUR}
    events = [e(1, "OpenIncident", "ok: " + encode_canonical(opened).decode(), "custos-controlplane"),
              e(2, "UpdateIncident", "error: InvalidInput: unknown status 'x'"),
              e(3, "UpdateIncident", "ok: " + encode_canonical(
                  {"at_ns": 9, "category": "", "from": "open", "note": "", "status": "triaged"}).decode())]
    r = build_report(replay("abc123", events), events)
    assert r["status"] == "triaged" and r["audit"]["incident_events"] == [1, 3]
    assert set(INCIDENT_ACTIONS) >= {"OpenIncident", "UpdateIncident"}


@pytest.mark.parametrize(("seconds", "status", "text"), [
    (72 * 3600, "open", "72h 00m"), (23 * 3600 + 59 * 60, "triaged", "!! 23h 59m"), (0, "open", "OVERDUE 0h 00m"),
    (-3700, "open", "OVERDUE 1h 01m"), (-3700, "reported", "-"), (10, "closed", "-"),
])
def test_time_left_text(seconds: int, status: str, text: str) -> None:
    assert time_left(seconds, status) == text


def test_security_team_member_is_the_attributed_principal(plane: Plane, tmp_path: Path) -> None:
    # The caller of an update is who the history and the audit event name, not the control plane.
    _, iid = theft(plane, tmp_path)
    v = plane.run(plane.rt.service.update(SEC, ref=iid, status="triaged", note="looking"))
    assert v["history"][-1]["by"] == "alice"
    last = [e for e in plane.events() if e.object == f"incident/{iid}"][-1]
    assert (last.action, last.principal, last.host) == ("UpdateIncident", "alice", "10.0.0.2")


def test_one_replica_leads_and_its_loops_run_the_rounds(plane: Plane, tmp_path: Path) -> None:
    plane.enroll("gpu-5")
    plane.report("gpu-5", {"/scratch/y.safetensors": b"\x04" * 3000})
    stop = asyncio.Event()

    async def two() -> tuple[Any, Any]:
        a = await attach(store=plane.store, audit=plane.cp.audit, stop=stop, rules={"interval_s": 0.05},
                         notify={"log": True}, metrics={})
        b = await attach(store=plane.store, audit=plane.cp.audit, stop=stop, rules={"interval_s": 0.05},
                         metrics={}, start=False)
        return a, b

    a, b = plane.run(two())
    deadline = time.monotonic() + 20
    while not plane.incidents() or plane.run(plane.store.range("notify/outbox/")):
        assert time.monotonic() < deadline, "the loops did not correlate and notify"
        time.sleep(0.05)
    assert a.leader and plane.run(b.lead()) is False, "one leader at a time"
    plane.loop.call_soon_threadsafe(stop.set)
    plane.run(asyncio.wait_for(asyncio.gather(*a.tasks), 10))
    # The leader is gone (its lease ran out): the other one takes over.
    rec = decode_canonical(plane.run(plane.store.get(LEADER_KEY)).value)
    assert rec["owner"] == a.owner
    plane.run(plane.store.commit(Txn(puts={LEADER_KEY: encode_canonical({**rec, "expires_ns": 1})})))
    assert plane.run(b.lead()) is True


def test_a_lapse_across_the_fleet_is_one_incident_correlated_in_linear_work(
        plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control plane cut off from 300 hosts (or restarted past the lease TTL): 300
    lease-lapsed alerts, one per host, in one round. They are one incident listing the hosts,
    and correlating them derives each incident's view a bounded number of times per alert
    (it was once per open incident per alert: with thousands of both, minutes of the event
    loop during which no stream, unwrap or order was served)."""
    from custos.controlplane.incidents import service as service_mod
    from custos.core.rules import RULES, Finding

    hosts = [f"rack7-{i:03d}" for i in range(300)]
    now = time.time_ns()
    alerts = [Finding(rule="lease-lapsed", key=(h, "1"), at_ns=now + i, host=h,
                      detail=f"lease of {h} lapsed").alert(RULES["lease-lapsed"].severity)
              for i, h in enumerate(hosts)]
    # and 150 incidents of their own (another model each) open in the same round
    alerts += [Finding(rule="unauthorized-copy", key=(f"m{i}",), at_ns=now + i, host=f"gpu-{i}", model=f"m{i}",
                       detail="a copy outside its policy").alert(RULES["unauthorized-copy"].severity)
               for i in range(150)]
    for i in range(0, len(alerts), 100):
        plane.run(plane.store.commit(Txn(puts={f"alerts/{a['id']}": encode_canonical(a) for a in alerts[i:i + 100]})))
    views = 0
    real = service_mod.incident_view

    def counted(state: Any) -> Any:
        nonlocal views
        views += 1
        return real(state)

    monkeypatch.setattr(service_mod, "incident_view", counted)
    plane.run(plane.rt.service.correlate(), timeout=300)
    lapsed = [i for i in plane.incidents() if any(a["rule"] == "lease-lapsed" for a in i["alerts"])]
    assert len(lapsed) == 1, [i["hosts"][:3] for i in lapsed]
    assert len(lapsed[0]["hosts"]) == min(300, len(lapsed[0]["alerts"]))
    assert len(plane.incidents()) == 151
    assert views <= 4 * len(alerts), views  # a view of every open incident per alert: 40,000


def test_alerts_past_the_cap_are_counted_in_few_changes_and_replay(plane: Plane) -> None:
    """1,200 hosts lapse at once: the incident lists MAX_ALERTS of them and counts the rest, in
    changes of up to DROPS_PER_CHANGE, every alert linked once; the record is still the replay
    of its audit events, and a second round adds nothing."""
    from custos.controlplane.incidents.service import DROPS_PER_CHANGE
    from custos.core.incidents import MAX_ALERTS, replay
    from custos.core.rules import RULES, Finding

    now = time.time_ns()
    alerts = [Finding(rule="lease-lapsed", key=(f"h{i:04d}", "1"), at_ns=now + i, host=f"h{i:04d}",
                      detail="lapsed").alert(RULES["lease-lapsed"].severity) for i in range(1200)]
    for i in range(0, len(alerts), 100):
        plane.run(plane.store.commit(Txn(puts={f"alerts/{a['id']}": encode_canonical(a) for a in alerts[i:i + 100]})))
    before = len(plane.events())
    plane.run(plane.rt.service.correlate(), timeout=300)
    [inc] = [i for i in plane.incidents() if any(a["rule"] == "lease-lapsed" for a in i["alerts"])]
    assert len(inc["alerts"]) == MAX_ALERTS and inc["alerts_dropped"] == 1200 - MAX_ALERTS
    changes = [e for e in plane.events()[before:] if e.object == f"incident/{inc['id']}"]
    drops = [e for e in changes if e.action == "DropIncidentAlerts"]
    assert len(drops) == -(-(1200 - MAX_ALERTS) // DROPS_PER_CHANGE)
    links = {e.key for e in plane.run(plane.store.range("alertlinks/"))}
    assert links >= {f"alertlinks/{a['id']}" for a in alerts}
    stored = plane.run(plane.rt.service.state(inc["id"]))  # the record with its drop count
    assert replay(inc["id"], plane.events()) == stored
    assert plane.run(plane.rt.service.correlate()) == []


def lapses(n: int, *, prefix: str = "h") -> list[dict[str, Any]]:
    """``n`` hosts' leases lapsing at once: one fleet incident, all but MAX_ALERTS past its cap."""
    from custos.core.rules import RULES, Finding

    now = time.time_ns()
    return [Finding(rule="lease-lapsed", key=(f"{prefix}{i:05d}", "1"), at_ns=now + i, host=f"{prefix}{i:05d}",
                    detail="lapsed").alert(RULES["lease-lapsed"].severity) for i in range(n)]


def put_alerts(plane: Plane, alerts: list[dict[str, Any]]) -> None:
    for i in range(0, len(alerts), 100):
        plane.run(plane.store.commit(Txn(puts={f"alerts/{a['id']}": encode_canonical(a) for a in alerts[i:i + 100]})))


def test_alerts_past_the_cap_never_rewrite_the_incident_record(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fleet's storm (150,000 alerts at a 10,000-host first contact) rewrote the ~250 KB
    incident for every 50 alerts past its cap: minutes of the event loop, no stream leased.
    Past the cap only the incident's drop count (``incidentdrops/{id}``) is written; the record
    read through the service is the two together, and still the replay of the audit log."""
    from custos.core.incidents import MAX_ALERTS, replay

    alerts = lapses(MAX_ALERTS + 700)
    put_alerts(plane, alerts)
    writes: list[str] = []
    real = plane.store.commit

    async def commit(txn: Txn) -> bool:
        writes.extend(k for k in txn.puts if k.startswith("incidents/"))
        return await real(txn)

    monkeypatch.setattr(plane.store, "commit", commit)
    plane.run(plane.rt.service.correlate(), timeout=300)
    [inc] = plane.incidents()
    assert len(writes) == 1 + MAX_ALERTS, "one write to open it, one an alert it lists; none past its cap"
    ledger = decode_canonical(plane.run(plane.store.get(f"incidentdrops/{inc['id']}")).value)
    assert ledger == {"count": 700} and inc["alerts_dropped"] == 700
    assert replay(inc["id"], plane.events()) == plane.run(plane.rt.service.state(inc["id"]))


@pytest.mark.parametrize("edit", ["lower", "delete", "raise"])
def test_an_edited_drop_count_is_caught_by_verify(plane: Plane, capsys: pytest.CaptureFixture[str], edit: str) -> None:
    """An insider who edits the Store to shrink (or swell) a storm's count is caught: the report
    rebuilt from the audit log counts what the DropIncidentAlerts events say."""
    from custos.core.incidents import MAX_ALERTS

    put_alerts(plane, lapses(MAX_ALERTS + 120))
    plane.run(plane.rt.service.correlate(), timeout=300)
    [inc] = plane.incidents()
    assert inc["alerts_dropped"] == 120 and cli(plane, capsys, "export", inc["id"], "--verify")["ok"]
    key = f"incidentdrops/{inc['id']}"
    if edit == "delete":
        txn = Txn(deletes=[key])
    else:
        txn = Txn(puts={key: encode_canonical({"count": 3 if edit == "lower" else 5000})})
    assert plane.run(plane.store.commit(txn))
    with pytest.raises(ReportMismatch, match="audit"):
        cli(plane, capsys, "export", inc["id"], "--verify")


@pytest.mark.parametrize(("n", "per_change", "slice_"), [(1300, 50, 200), (900, 7, 13), (620, 1, 500)])
def test_two_replicas_correlating_a_storm_at_once_count_every_alert_once(
        plane: Plane, monkeypatch: pytest.MonkeyPatch, n: int, per_change: int, slice_: int) -> None:
    """Two replicas (each its own service and audit log on one Store) correlate the same storm
    at once, interleaving at every await: each alert is linked once, and each incident lists
    or counts exactly the alerts linked to it — the count past the cap is neither lost to a
    race on the drop count nor counted twice; every record is still its audit replay."""
    from custos.controlplane.audit import AuditLog
    from custos.controlplane.incidents import service as service_mod
    from custos.controlplane.incidents.service import IncidentService
    from custos.core.incidents import replay

    monkeypatch.setattr(service_mod, "DROPS_PER_CHANGE", per_change)
    monkeypatch.setattr(service_mod, "SLICE", slice_)
    alerts = lapses(n)
    put_alerts(plane, alerts)
    mine = plane.rt.service
    other = IncidentService(store=plane.store, audit=AuditLog(plane.store, plane.cp.audit.signing_key),
                            config=mine.config, clock=plane.clock)

    async def both() -> None:
        await asyncio.gather(mine.correlate(), other.correlate())

    plane.run(both(), timeout=600)
    links = [decode_canonical(e.value)["incident"] for e in plane.run(plane.store.range("alertlinks/"))]
    assert len(links) == n
    events = plane.events()
    for inc in plane.incidents():
        state = plane.run(mine.state(inc["id"]))
        assert len(state["alerts"]) + state["alerts_dropped"] == links.count(inc["id"]), inc["id"]
        assert replay(inc["id"], events) == state
    assert sum(links.count(i["id"]) for i in plane.incidents()) == n
    assert plane.run(mine.correlate()) == [] and plane.run(other.correlate()) == []


def test_a_storms_correlation_and_tamper_pass_give_the_event_loop_turns(
        plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    """Correlating (and examining for tampering) a storm's alerts returns to the event loop
    at least once a slice: a loop that is not given a turn leases no stream and answers no
    unwrap (every alert decoded at once, every tick, held it for over a second). Counted in
    alerts decoded and matched between two turns a concurrent task gets, not in time."""
    from custos.controlplane.incidents import service as service_mod
    from custos.controlplane.rules import engine as engine_mod

    n = 3000
    put_alerts(plane, lapses(n))
    work = 0  # decodes and matches since the spinning task's last turn

    def counted(real: Any) -> Any:
        def f(*args: Any, **kwargs: Any) -> Any:
            nonlocal work
            work += 1
            return real(*args, **kwargs)
        return f

    monkeypatch.setattr(service_mod, "decode_canonical", counted(service_mod.decode_canonical))
    monkeypatch.setattr(service_mod, "match_incident", counted(service_mod.match_incident))
    monkeypatch.setattr(engine_mod, "decode_canonical", counted(engine_mod.decode_canonical))

    async def longest_stretch(job: Coroutine[Any, Any, Any]) -> int:
        nonlocal work
        most, done = 0, False

        async def spin() -> None:
            nonlocal work, most
            while not done:
                most, work = max(most, work), 0
                await asyncio.sleep(0)

        task = asyncio.create_task(spin())
        try:
            await job
        finally:
            done = True
            await task
        return max(most, work)

    assert plane.run(longest_stretch(plane.rt.service.correlate()), timeout=300) <= 2 * service_mod.SLICE
    assert plane.run(longest_stretch(plane.rt.engine._tamper_from_alerts()), timeout=300) <= engine_mod.EXAMINE_SLICE
