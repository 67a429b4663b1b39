"""Incidents, pure: the change log of an incident, its fold, its derived view and its report.

An incident carries its category under the chapter's definition of an
artificial intelligence safety incident (``c1``..``c4`` for 22602(c)(1)..(4)),
``discovered_at`` (its earliest alert) and ``report_deadline`` = discovered +
72 hours (22603(g)); its status moves ``open -> triaged -> reported -> closed``.

Every change to an incident is one audit event whose result is ``ok: `` + the
canonical JSON of the change, so the record is the fold of its events
(:func:`apply_change`) and a report can be rebuilt from the audit log alone
(:func:`rebuild_report`) by anyone — the CLI does, to check the server's. The
control plane's service (custos.controlplane.incidents) writes the changes.
Specified in docs/incidents.md.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from custos.core.audit_chain import Event, parse_events
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.rules import CATEGORIES, SEVERITIES, handout_host, is_key_handout
from custos.errors import IntegrityError, InvalidInput, NotFound

HOUR_NS = 3600 * 1_000_000_000


REPORT_WITHIN_NS = 72 * HOUR_NS  # 22603(g): "in no event later than 72 hours after learning"


STATUSES = ("open", "triaged", "reported", "closed")


TRANSITIONS: Mapping[str, tuple[str, ...]] = {
    "open": ("triaged", "reported", "closed"),
    "triaged": ("reported", "closed"),
    "reported": ("closed",),
    "closed": (),
}


INCIDENT_ACTIONS = ("OpenIncident", "AddIncidentAlert", "DropIncidentAlerts", "RecordIncidentCopy",
                    "RecordIncidentAction", "UpdateIncident", "IncidentDeadlineWarning")


REPORT_FORMAT = "custos.v1.incident-report/1"


# Rules whose model-less alerts on many hosts at once have one cause (the fleet cut off from the
# control plane, a first contact finding the same kind of files everywhere): one incident for
# all their hosts. Every other rule's host alerts (a canary opened, a guarded open refused) are
# each host's own incident.
FLEET_RULES = frozenset({"lease-lapsed", "unregistered-weights"})
MAX_ALERTS = 500


MAX_COPIES = 200


MAX_ACTIONS = 100


MAX_ATTRIBUTION_EVENTS = 200


MAX_RESULT = 990  # an audit event's result holds at most 1000 characters


def incident_id_for(alert_id: str) -> str:
    """An incident's id derives from its first alert: opening it twice is one incident."""
    return hashlib.sha256(b"custos.v1.incident\x00" + alert_id.encode()).hexdigest()[:16]


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ns else "-"


def fit(payload: dict[str, Any]) -> dict[str, Any]:
    """Shorten the longest strings until ``ok: `` + the canonical payload fits an audit result."""
    p = copy.deepcopy(payload)

    def longest(node: Any, path: tuple[Any, ...]) -> tuple[int, tuple[Any, ...]]:
        best = (-1, ())
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            cand = (len(v), (*path, k)) if isinstance(v, str) else longest(v, (*path, k))
            if cand[0] > best[0]:
                best = cand
        return best

    while len(encode_canonical(p)) + 4 > MAX_RESULT:
        n, path = longest(p, ())
        if n <= 8:
            raise IntegrityError("incident change too large for an audit event")
        node = p
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = node[path[-1]][: n // 2]
    return p


def payload_result(payload: Mapping[str, Any]) -> str:
    return "ok: " + encode_canonical(dict(payload)).decode()


def parse_payload(result: str) -> dict[str, Any] | None:
    if not result.startswith("ok: "):
        return None
    try:
        obj = decode_canonical(result[4:].encode())
    except InvalidInput:
        return None
    return obj if isinstance(obj, dict) else None


def apply_change(state: dict[str, Any] | None, action: str, payload: Mapping[str, Any], by: str) -> dict[str, Any]:
    """Fold one change into an incident record. Raises IntegrityError for an impossible sequence."""
    if action == "OpenIncident":
        if state is not None:
            raise IntegrityError(f"incident {payload.get('id')} opened twice")
        return {
            "actions": [], "alerts": [], "alerts_dropped": 0, "category": payload["category"], "copies": [],
            "copies_dropped": 0, "discovered_at_ns": int(payload["discovered_at_ns"]),
            "history": [{"at_ns": int(payload["opened_at_ns"]), "by": by, "category": payload["category"],
                         "from": "", "note": payload["note"], "status": "open"}],
            "id": payload["id"], "lookback_ns": int(payload["lookback_ns"]), "model": dict(payload["model"]),
            "opened_at_ns": int(payload["opened_at_ns"]), "status": "open", "warnings": [],
        }
    if state is None:
        raise IntegrityError(f"{action} before OpenIncident")
    s = _fresh_lists(state)
    if action == "DropIncidentAlerts":  # alerts joining an incident that lists MAX_ALERTS already
        s["alerts_dropped"] += int(payload["count"])
        return s
    if action == "AddIncidentAlert":
        if len(s["alerts"]) >= MAX_ALERTS:
            s["alerts_dropped"] += 1
        else:
            s["alerts"].append(dict(payload["alert"]))
    elif action == "RecordIncidentCopy":
        c = dict(payload["copy"])
        ids = [x["id"] for x in s["copies"]]
        if c["id"] in ids:
            s["copies"][ids.index(c["id"])] = c
        elif len(s["copies"]) >= MAX_COPIES:
            s["copies_dropped"] += 1
        else:
            s["copies"].append(c)
    elif action == "RecordIncidentAction":
        o = dict(payload["order"])
        ids = [x["id"] for x in s["actions"]]
        if o["id"] in ids:
            s["actions"][ids.index(o["id"])] = o
        elif len(s["actions"]) < MAX_ACTIONS:
            s["actions"].append(o)
    elif action == "UpdateIncident":
        s["status"] = payload["status"]
        if payload["category"]:
            s["category"] = payload["category"]
        s["history"].append({"at_ns": int(payload["at_ns"]), "by": by, "category": payload["category"],
                             "from": payload["from"], "note": payload["note"], "status": payload["status"]})
    elif action == "IncidentDeadlineWarning":
        s["warnings"].append(payload["warning"])
    else:
        raise IntegrityError(f"unknown incident change {action!r}")
    return s


def _fresh_lists(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a record whose own fields and lists can change without changing ``state``; the
    entries of its lists (an alert, a copy, a status change) are shared: nothing changes one in
    place, a change replaces it. (A deep copy of a 500-alert record for each of its alerts — and
    three views each — was most of a fleet's incident storm.)"""
    s = dict(state)
    for k, v in s.items():
        if isinstance(v, list):
            s[k] = list(v)
    return s


def incident_view(state: Mapping[str, Any]) -> dict[str, Any]:
    """The record with what derives from it: severity, hosts, artifacts, discovery and deadline.
    The view shares the record's list entries (``_fresh_lists``): read them, do not change them."""
    v = _fresh_lists(state)
    alerts = v["alerts"]
    v["severity"] = max((a["severity"] for a in alerts), key=SEVERITIES.index, default="low")
    v["hosts"] = sorted({a["host"] for a in alerts if a["host"]})
    v["artifacts"] = sorted({a["artifact_id"] for a in alerts if a["artifact_id"]})
    v["discovered_at_ns"] = min([v["discovered_at_ns"], *(a["at_ns"] for a in alerts)])
    v["report_deadline_ns"] = v["discovered_at_ns"] + REPORT_WITHIN_NS
    v["last_alert_ns"] = max([v["discovered_at_ns"], *(a["at_ns"] for a in alerts)])
    v["category_title"] = CATEGORIES.get(v["category"], v["category"])
    return v


def with_clock(view: dict[str, Any], now_ns: int) -> dict[str, Any]:
    """Add the time left; only unreported incidents (open, triaged) are on the clock."""
    left = (view["report_deadline_ns"] - now_ns) // 1_000_000_000
    on_clock = view["status"] in ("open", "triaged")
    return {**view, "seconds_left": int(left), "overdue": on_clock and left <= 0,
            "under_24h": on_clock and 0 < left < 24 * 3600}


def copy_summary(c: Mapping[str, Any]) -> dict[str, Any]:
    return {"artifact_id": c["artifact_id"], "authorized": bool(c["authorized"]), "form": c["form"],
            "host": str(c["host"])[:128], "id": c["id"], "kind": c["location_kind"],
            "location": str(c["location"])[:200], "state": c["state"]}


def match_incident(alert: Mapping[str, Any], views: Iterable[Mapping[str, Any]], window_ns: int) -> str | None:
    """The open incident an alert joins: same model; else (no model) same host, or failing that,
    for a FLEET_RULES alert, the model-less incident of hosts with the same rule; else (neither)
    same rule — within ``window_ns`` of the incident's alerts. None: it opens a new one."""
    at = alert["at_ns"]
    cands = sorted((v for v in views if v["status"] != "closed"
                    and v["discovered_at_ns"] - window_ns <= at <= v["last_alert_ns"] + window_ns),
                   key=lambda v: (v["opened_at_ns"], v["id"]))
    for v in cands:
        if alert["model"]:
            if v["model"]["name"] == alert["model"]:
                return str(v["id"])
        elif alert["host"]:
            if alert["host"] in v["hosts"]:
                return str(v["id"])
        elif not v["model"]["name"] and not v["hosts"] and any(a["rule"] == alert["rule"] for a in v["alerts"]):
            return str(v["id"])
    if alert["host"] and not alert["model"] and alert["rule"] in FLEET_RULES:
        # No incident has that host: the model-less incident of the same rule, so that one cause
        # on many hosts (leases lapsing across a fleet cut off, a storm of unregistered files) is
        # one incident listing its hosts, not one incident a host.
        for v in cands:
            if not v["model"]["name"] and v["hosts"] and any(a["rule"] == alert["rule"] for a in v["alerts"]):
                return str(v["id"])
    return None


def build_report(state: Mapping[str, Any], events: Sequence[Event]) -> dict[str, Any]:
    """The incident report, from an incident record and the audit log. Time-independent."""
    v = incident_view(state)
    obj = f"incident/{v['id']}"
    evidence = {seq for a in v["alerts"] for seq in a["evidence"]}
    arts = set(v["artifacts"])
    lo, hi = v["discovered_at_ns"] - v["lookback_ns"], v["last_alert_ns"]
    relevant = [e for e in events if e.seq in evidence or (
        is_key_handout(e) and e.object[len("artifact/"):] in arts and lo <= e.time_ns <= hi)]
    relevant = relevant[-MAX_ATTRIBUTION_EVENTS:]
    people = [e for e in relevant if e.role != "system"]
    return {
        "format": REPORT_FORMAT,
        "incident": v["id"],
        "status": v["status"],
        "category": v["category"],
        "category_title": v["category_title"],
        "severity": v["severity"],
        "model": v["model"],
        "discovered_at_ns": v["discovered_at_ns"], "discovered_at": iso(v["discovered_at_ns"]),
        "report_deadline_ns": v["report_deadline_ns"], "report_deadline": iso(v["report_deadline_ns"]),
        "opened_at_ns": v["opened_at_ns"],
        "what_happened": [{**a, "at": iso(a["at_ns"]), "category_title": CATEGORIES.get(a["category"], "")}
                          for a in v["alerts"]],
        "affected": {"hosts": v["hosts"], "artifacts": v["artifacts"],
                     "copies": sorted(v["copies"], key=lambda c: (c["host"], c["location"], c["id"]))},
        "actions": sorted(v["actions"], key=lambda o: o["id"]),
        "attribution": {
            "principals": sorted({e.principal for e in people}
                                 | {a["principal"] for a in v["alerts"] if a["principal"]}),
            "hosts": sorted({handout_host(e) for e in people} | set(v["hosts"])),
            "events": [e.as_dict() for e in relevant],
        },
        "history": v["history"],
        "audit": {"incident_events": [e.seq for e in events if e.object == obj and e.action in INCIDENT_ACTIONS
                                      and e.result.startswith("ok: ")],
                  "alerts_dropped": v["alerts_dropped"], "copies_dropped": v["copies_dropped"]},
    }


def replay(incident_id: str, events: Iterable[Event]) -> dict[str, Any]:
    """An incident's record, rebuilt from its audit events. Raises NotFound, IntegrityError."""
    obj = f"incident/{incident_id}"
    state: dict[str, Any] | None = None
    for e in events:
        if e.object != obj or e.action not in INCIDENT_ACTIONS:
            continue
        payload = parse_payload(e.result)
        if payload is None:
            continue  # a failed change (result "error: ..."): nothing changed
        state = apply_change(state, e.action, payload, e.principal)
    if state is None:
        raise NotFound(f"incident {incident_id} has no events in the audit log")
    return state


def rebuild_report(incident_id: str, stored_events: Iterable[bytes]) -> dict[str, Any]:
    """The incident report from the audit log alone (verify the log first:
    custos.core.audit_chain.verify_log). Raises NotFound, IntegrityError."""
    events = parse_events(stored_events)
    return build_report(replay(incident_id, events), events)


def report_markdown(r: Mapping[str, Any]) -> str:
    """The report for people (Markdown), from ``build_report``'s data."""
    m = r["model"]
    lines = [
        f"# AI safety incident {r['incident']}",
        "",
        f"- **Model:** {m['name'] or '(none)'}"
        + (f" — covered model: {'yes' if m['covered'] else 'no'}"
           f"{', limited duty exemption on record' if m['exemption'] else ''}; owner {m['owner'] or '-'}; "
           f"declared training compute {m['training_flops'] or '-'} FLOP" if m["name"] else ""),
        f"- **Category:** {r['category_title']}",
        f"- **Severity:** {r['severity']}",
        f"- **Status:** {r['status']}",
        f"- **Discovered:** {r['discovered_at']}",
        f"- **Report deadline (72 h):** {r['report_deadline']}",
        "",
        "## What happened",
        "",
        "| time | rule | category | severity | host | principal | detail |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in r["what_happened"]:
        lines.append(f"| {a['at']} | {a['rule']} | {a['category']} | {a['severity']} | {a['host'] or '-'} | "
                     f"{a['principal'] or '-'} | {_md(a['detail'])} |")
    aff = r["affected"]
    lines += ["", "## Affected hosts and copies", "",
              f"Hosts: {', '.join(aff['hosts']) or '(none)'}  ",
              f"Artifacts: {', '.join(a[:16] for a in aff['artifacts']) or '(none)'}", ""]
    if aff["copies"]:
        lines += ["| host | location | kind | form | state | authorized | artifact |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c['host']} | {_md(c['location'])} | {c['kind']} | {c['form']} | {c['state']} | "
                  f"{'yes' if c['authorized'] else 'no'} | {c['artifact_id'][:16]} |" for c in aff["copies"]]
    else:
        lines.append("No copies of the affected artifacts are known on these hosts.")
    lines += ["", "## Actions taken", ""]
    if r["actions"]:
        lines += [f"- order `{o['id']}`: {o['action']}{' (drill)' if o['drill'] else ''} of "
                  f"{', '.join(o['models'])} — {o['state']} (completion report: `custos order report {o['id'][:16]}`)"
                  for o in r["actions"]]
    else:
        lines.append("No order touching the model since discovery.")
    att = r["attribution"]
    lines += ["", "## Attribution (from the audit log)", "",
              f"Principals: {', '.join(att['principals']) or '(none)'}  ",
              f"Hosts: {', '.join(att['hosts']) or '(none)'}", ""]
    if att["events"]:
        lines += ["| seq | time | principal (role) | host | action | object | result |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {e['seq']} | {iso(e['time_ns'])} | {e['principal']} ({e['role']}) | {e['host']} | "
                  f"{e['action']} | {_md(e['object'][:80])} | {_md(e['result'][:80])} |" for e in att["events"]]
    lines += ["", "## History", ""]
    lines += [f"- {iso(h['at_ns'])} {h['from'] + ' → ' if h['from'] else ''}{h['status']} by {h['by']}"
              + (f" (category {h['category']})" if h["category"] else "") + (f": {h['note']}" if h["note"] else "")
              for h in r["history"]]
    au = r["audit"]
    lines += ["", f"Reproducible from the audit log: incident events {', '.join(map(str, au['incident_events']))}"
              f" (`custos incident export {r['incident']} --verify`)."]
    if au["alerts_dropped"] or au["copies_dropped"]:
        lines.append(f"Not listed: {au['alerts_dropped']} further alerts, {au['copies_dropped']} further copies.")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
