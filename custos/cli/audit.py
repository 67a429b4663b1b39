"""`custos audit list|verify`: the tamper-evident audit log."""

from __future__ import annotations

import argparse
from typing import Any

from custos.cli.common import connect
from custos.cli.output import Out, table, ts
from custos.client.audit import all_events, verify_audit


def cmd_audit_list(ns: argparse.Namespace, out: Out) -> int:
    events = all_events(connect(ns))
    if ns.limit:
        events = events[-ns.limit:]
    data: list[dict[str, Any]] = [
        {"seq": e.seq, "time": ts(e.time_unix_ns), "principal": e.principal, "role": e.role, "host": e.host,
         "action": e.action, "object": e.object, "result": e.result, "request_id": e.request_id, "hash": e.hash}
        for e in events]
    out.emit(data, lambda: table(
        [[str(d["seq"]), d["time"], f"{d['principal']} ({d['role']})", d["host"], d["action"],
          d["object"][:60], d["result"][:60]] for d in data],
        ["SEQ", "TIME", "PRINCIPAL", "HOST", "ACTION", "OBJECT", "RESULT"]))
    return 0


def cmd_audit_verify(ns: argparse.Namespace, out: Out) -> int:
    v = verify_audit(connect(ns))
    result, warnings, uncovered = v.result, v.warnings, v.events_after_last_checkpoint
    data = {"ok": bool(result), "events": result.events_checked,
            "checkpoints": result.checkpoints_checked, "head_seq": result.head_seq,
            "head_hash": result.head_hash, "first_bad_seq": result.first_bad_seq,
            "problems": result.problems, "events_after_last_checkpoint": uncovered,
            "warnings": warnings}
    if result:
        text = (f"audit log OK: {result.events_checked} events, {result.checkpoints_checked} signed "
                f"checkpoints, head {result.head_seq} {result.head_hash[:16]}")
        if uncovered:
            text += f"\n  {uncovered} newest events are chained but not yet covered by a checkpoint"
        for w in warnings:
            text += f"\n  warning: {w}"
        out.emit(data, text)
        return 0
    out.emit(data, f"audit log FAILED verification at event {result.first_bad_seq}:\n  "
             + "\n  ".join(result.problems))
    return 7


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    au = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    al = au.add_parser("list", parents=[common], help="list audit events")
    al.add_argument("--limit", type=int, default=0, help="only the newest N")
    al.set_defaults(fn=cmd_audit_list)
    av = au.add_parser("verify", parents=[common], help="verify the hash chain and signed checkpoints")
    av.set_defaults(fn=cmd_audit_verify)
