"""`custos incident list|show|export|update`: incidents on the 72-hour reporting clock.

``add_commands(sub, common)`` adds the subcommands to the `custos` parser; the
handlers take ``(ns, out)`` and return the exit code, like every command in
custos.cli.main (which prints errors and exits).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from custos.cli.common import connect
from custos.cli.output import table, ts
from custos.client.audit import verified_events
from custos.client.incidents import export_incident, get_incident, list_incidents, update_incident
from custos.core.incidents import rebuild_report, report_markdown
from custos.errors import IntegrityError, InvalidInput
from custos.v1 import audit_pb2, incidents_pb2


class ReportMismatch(IntegrityError):
    """The server's incident report differs from the one rebuilt from the audit log (exit 7)."""

def time_left(seconds: int, status: str) -> str:
    """``47h 12m``; ``!! 23h 59m`` under 24 hours; ``OVERDUE 2h 5m``; ``-`` once reported or closed."""
    if status not in ("open", "triaged"):
        return "-"
    s = abs(int(seconds))
    text = f"{s // 3600}h {s % 3600 // 60:02d}m"
    if seconds <= 0:
        return f"OVERDUE {text}"
    return f"!! {text}" if seconds < 24 * 3600 else text


def incident_json(i: incidents_pb2.Incident) -> dict[str, Any]:
    return {
        "id": i.id, "model": i.model, "covered": i.covered, "limited_duty_exemption": i.limited_duty_exemption,
        "category": i.category, "category_title": i.category_title, "severity": i.severity, "status": i.status,
        "discovered_at": ts(i.discovered_at_unix_ns), "discovered_at_ns": i.discovered_at_unix_ns,
        "report_deadline": ts(i.report_deadline_unix_ns), "report_deadline_ns": i.report_deadline_unix_ns,
        "seconds_left": i.seconds_left, "time_left": time_left(i.seconds_left, i.status),
        "under_24h": i.under_24h, "overdue": i.overdue, "hosts": list(i.hosts), "artifacts": list(i.artifact_ids),
        "alerts": [{"id": a.id, "rule": a.rule, "category": a.category, "severity": a.severity, "model": a.model,
                    "artifact_id": a.artifact_id, "host": a.host, "principal": a.principal, "detail": a.detail,
                    "at": ts(a.at_unix_ns), "evidence": list(a.evidence_seqs)} for a in i.alerts],
        "copies": [{"id": c.id, "artifact_id": c.artifact_id, "host": c.host, "location": c.location,
                    "kind": c.location_kind, "form": c.form, "state": c.state, "authorized": c.authorized}
                   for c in i.copies],
        "actions": [{"order": o.order_id, "action": o.action, "state": o.state, "models": list(o.models),
                     "drill": o.drill} for o in i.actions],
        "history": [{"status": h.status, "from": h.from_status, "category": h.category, "note": h.note,
                     "by": h.by, "at": ts(h.at_unix_ns)} for h in i.history],
        "alerts_dropped": i.alerts_dropped,
    }


def _show_text(d: dict[str, Any]) -> str:
    lines = [
        f"incident {d['id']}  [{d['status']}]  severity {d['severity']}",
        f"  model:      {d['model'] or '-'}" + (f" (covered: {'yes' if d['covered'] else 'no'})" if d["model"] else ""),
        f"  category:   {d['category_title']}",
        f"  discovered: {d['discovered_at']}",
        f"  deadline:   {d['report_deadline']}  time left: {d['time_left']}",
        f"  hosts:      {', '.join(d['hosts']) or '-'}",
        f"  alerts ({len(d['alerts'])}):",
    ]
    lines += [f"    {a['at']}  {a['severity']:<8} {a['rule']:<22} {a['host'] or '-'}  {a['detail'][:100]}"
              for a in d["alerts"]]
    if d["copies"]:
        lines.append("  copies:")
        lines += [f"    {c['host']}  {c['location']}  {c['form']}  {c['state']}"
                  f"{'' if c['authorized'] else '  UNAUTHORIZED'}" for c in d["copies"]]
    if d["actions"]:
        lines.append("  actions:")
        lines += [f"    order {o['order'][:16]}  {o['action']}  {o['state']}  ({', '.join(o['models'])})"
                  for o in d["actions"]]
    lines.append("  history:")
    lines += [f"    {h['at']}  {(h['from'] + ' -> ') if h['from'] else ''}{h['status']}  by {h['by']}"
              + (f"  category {h['category']}" if h["category"] else "") + (f": {h['note']}" if h["note"] else "")
              for h in d["history"]]
    return "\n".join(lines)


def cmd_incident_list(ns: argparse.Namespace, out: Any) -> int:
    rows = [incident_json(i) for i in list_incidents(connect(ns), status=ns.status or [], model=ns.model or "",
                                                     include_closed=ns.all)]
    out.emit(rows, lambda: table(
        [[d["id"], d["status"], d["category"], d["severity"], d["model"] or "-", d["discovered_at"],
          d["report_deadline"], d["time_left"], str(len(d["alerts"]))] for d in rows],
        ["INCIDENT", "STATUS", "CAT", "SEVERITY", "MODEL", "DISCOVERED", "REPORT DUE", "TIME LEFT", "ALERTS"])
        + ("\n!! = under 24 hours left to report" if any(d["under_24h"] for d in rows) else ""))
    return 0


def cmd_incident_show(ns: argparse.Namespace, out: Any) -> int:
    d = incident_json(get_incident(connect(ns), ns.id))
    out.emit(d, lambda: _show_text(d))
    return 0


def cmd_incident_update(ns: argparse.Namespace, out: Any) -> int:
    if not (ns.status or ns.note or ns.category):
        raise InvalidInput("give --status, --category and/or --note")
    d = incident_json(update_incident(connect(ns), ns.id, status=ns.status or "", note=ns.note or "",
                                      category=ns.category or ""))
    out.emit(d, lambda: f"incident {d['id']} is {d['status']} ({d['category']}); time left: {d['time_left']}")
    return 0


def _resolve_in_log(ref: str, events: list[audit_pb2.AuditEvent]) -> str:
    ref = (ref or "").strip().lower()
    ids = {e.object[len("incident/"):] for e in events
           if e.action == "OpenIncident" and e.object.startswith(f"incident/{ref}") and e.result.startswith("ok: ")}
    if len(ids) != 1:
        raise InvalidInput(f"incident {ref!r}: {'not in the audit log' if not ids else 'ambiguous prefix'}")
    return ids.pop()


def cmd_incident_export(ns: argparse.Namespace, out: Any) -> int:
    """The report, from the server; or rebuilt here from the verified audit log (--from-audit);
    or both, compared (--verify, exit 7 if they differ)."""

    client = connect(ns)
    fmt = "json" if out.json or ns.format == "json" else "markdown"
    rebuilt = None
    if ns.from_audit or ns.verify:
        events = verified_events(client)
        rebuilt = rebuild_report(_resolve_in_log(ns.id, events), [e.stored for e in events])
    if ns.verify:
        assert rebuilt is not None
        served = json.loads(export_incident(client, rebuilt["incident"], "json"))
        diff = sorted(k for k in set(served) | set(rebuilt) if served.get(k) != rebuilt.get(k))
        if diff:
            raise ReportMismatch(f"incident {rebuilt['incident']}: the server's report differs from the audit "
                                 f"log in {', '.join(diff)}")
        n = len(rebuilt["audit"]["incident_events"])
        out.emit({"ok": True, "incident": rebuilt["incident"], "incident_events": n},
                 f"incident {rebuilt['incident']}: the server's report matches the verified audit log "
                 f"({n} incident events)")
        return 0
    if rebuilt is not None:
        content = json.dumps(rebuilt, indent=2, sort_keys=True) if fmt == "json" else report_markdown(rebuilt)
    else:
        content = export_incident(client, ns.id, fmt)
    if ns.out:
        try:
            Path(ns.out).write_text(content if content.endswith("\n") else content + "\n")
        except OSError as exc:
            raise InvalidInput(f"cannot write {ns.out}: {exc.strerror}") from None
        print(f"wrote {ns.out}")
    else:
        print(content.rstrip("\n"))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``incident list|show|export|update`` to the `custos` subcommands."""
    inc = sub.add_parser("incident", help="AI safety incidents on the 72-hour reporting clock").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    il = inc.add_parser("list", parents=[common], help="incidents, most urgent first, with the time left to report")
    il.add_argument("--status", action="append", choices=["open", "triaged", "reported", "closed"],
                    help="only these (repeatable); default: all but closed")
    il.add_argument("--model", help="only incidents about this model")
    il.add_argument("--all", action="store_true", help="closed ones too")
    il.set_defaults(fn=cmd_incident_list)
    ish = inc.add_parser("show", parents=[common], help="one incident: alerts, copies, actions, history")
    ish.add_argument("id", help="incident id or a unique prefix (6+ hex digits)")
    ish.set_defaults(fn=cmd_incident_show)
    ie = inc.add_parser("export", parents=[common], help="the incident report (Markdown, or JSON with -o json)")
    ie.add_argument("id", help="incident id or a unique prefix (6+ hex digits)")
    ie.add_argument("--format", choices=["markdown", "json"], default="markdown", help="the report format")
    ie.add_argument("--out", help="write the report to this file")
    ie.add_argument("--from-audit", action="store_true",
                    help="rebuild the report here from the verified audit log instead of asking the server")
    ie.add_argument("--verify", action="store_true",
                    help="check that the server's report is the one the verified audit log gives (exit 7 if not)")
    ie.set_defaults(fn=cmd_incident_export)
    iu = inc.add_parser("update", parents=[common], help="move an incident along open -> triaged -> reported -> closed")
    iu.add_argument("id", help="incident id or a unique prefix (6+ hex digits)")
    iu.add_argument("--status", choices=["open", "triaged", "reported", "closed"], help="the new status")
    iu.add_argument("--category", choices=["c1", "c2", "c3", "c4"],
                    help="the chapter's kind of AI safety incident, 22602(c)(1)-(4)")
    iu.add_argument("--note", help="why (required to close an unreported incident or change the category)")
    iu.set_defaults(fn=cmd_incident_update)
