"""`custos audit list|verify`: the tamper-evident audit log."""

from __future__ import annotations

import argparse
from typing import Any

from custos.cli.common import connect
from custos.cli.output import EXIT_BY_ERROR, Out, table, ts
from custos.client.audit import AuditVerification, all_events, load_public_key, verify_audit
from custos.core.audit_chain import CheckpointPolicy, TrustedState
from custos.errors import IntegrityError

VERIFICATION_FAILED = dict(EXIT_BY_ERROR)[IntegrityError]


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


def _state(s: TrustedState | None) -> dict[str, Any] | None:
    return None if s is None else {"checkpoint_seq": s.checkpoint_seq, "events": s.events, "key": s.key,
                                   "key_id": s.key_id}


def _trust_line(v: AuditVerification) -> str:
    new, old = v.result.trusted_next, v.previous
    if new is None:
        return ""
    if old is None:
        return (f"  first use: no trusted state in {v.state_file}; trusting this log and key {new.key_id} on "
                "first use — later runs must extend it")
    return (f"  extends the trusted state in {v.state_file}: checkpoint {old.checkpoint_seq} -> "
            f"{new.checkpoint_seq}, events {old.events} -> {new.events}")


def cmd_audit_verify(ns: argparse.Namespace, out: Out) -> int:
    policy = CheckpointPolicy(max_events=ns.max_events, max_age_s=ns.max_age)
    key = load_public_key(ns.key) if ns.key else None
    v = verify_audit(connect(ns), state_file=ns.state, key=key, policy=policy)
    result, warnings, uncovered = v.result, v.warnings, v.events_after_last_checkpoint
    data = {"ok": bool(result), "events": result.events_checked,
            "checkpoints": result.checkpoints_checked, "head_seq": result.head_seq,
            "head_hash": result.head_hash, "first_bad_seq": result.first_bad_seq,
            "problems": result.problems, "events_after_last_checkpoint": uncovered,
            "warnings": warnings, "state_file": str(v.state_file), "first_use": v.previous is None,
            "trusted_before": _state(v.previous), "trusted_now": _state(result.trusted_next if v.saved else v.previous)}
    if result:
        text = (f"audit log OK: {result.events_checked} events, {result.checkpoints_checked} signed "
                f"checkpoints, head {result.head_seq} {result.head_hash[:16]}")
        if line := _trust_line(v):
            text += "\n" + line
        if uncovered:
            text += f"\n  {uncovered} newest events are chained but not yet covered by a checkpoint"
        for w in warnings:
            text += f"\n  warning: {w}"
        out.emit(data, text)
        return 0
    kept = "" if v.previous is None else f"\n  the trusted state in {v.state_file} is left as it was"
    at = "" if result.first_bad_seq is None else f" at event {result.first_bad_seq}"
    out.emit(data, f"audit log FAILED verification{at}:\n  " + "\n  ".join(result.problems) + kept
             + "".join(f"\n  warning: {w}" for w in warnings))
    return VERIFICATION_FAILED


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    au = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="sub", required=True, metavar="SUBCOMMAND")
    al = au.add_parser("list", parents=[common], help="list audit events")
    al.add_argument("--limit", type=int, default=0, help="only the newest N")
    al.set_defaults(fn=cmd_audit_list)
    av = au.add_parser("verify", parents=[common],
                       help="verify the hash chain, the signed checkpoints and that the log extends what was "
                            "verified before")
    av.add_argument("--state", help="the trusted state file (default: CUSTOS_AUDIT_STATE, else one per "
                                    "control plane under ~/.local/state/custos/audit/)")
    av.add_argument("--key", help="PEM public key the checkpoints must be signed with (default: "
                                  "CUSTOS_AUDIT_PUBKEY, else the one pinned in the state)")
    av.add_argument("--max-events", type=int, default=CheckpointPolicy().max_events,
                    help="most events allowed without a checkpoint (the control plane's checkpoint_max_events)")
    av.add_argument("--max-age", type=float, default=CheckpointPolicy().max_age_s,
                    help="most seconds an event may wait for a checkpoint (checkpoint_max_age)")
    av.set_defaults(fn=cmd_audit_verify)
