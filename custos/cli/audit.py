"""`custos audit list|export|verify`: the tamper-evident audit log.

`list` filters (`--since`, `--principal`, `--action`, `--object`) and follows (`--follow`:
new events as they are written); `export --format jsonl` writes one JSON object per event
for a SIEM, with the exact stored bytes so the receiver can re-verify the chain, after
verifying the log here first unless `--unverified`.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fnmatch
import json
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from custos.cli.common import connect
from custos.cli.output import EXIT_BY_ERROR, Out, table, ts
from custos.client.audit import AuditVerification, all_events, load_public_key, verified_events, verify_audit
from custos.core.audit_chain import CheckpointPolicy, TrustedState
from custos.errors import IntegrityError, InvalidInput
from custos.v1 import audit_pb2

VERIFICATION_FAILED = dict(EXIT_BY_ERROR)[IntegrityError]


def parse_since(text: str, *, now_ns: int | None = None) -> int:
    """``--since``: a duration back from now (``90s``, ``30m``, ``2h``, ``7d``) or an RFC 3339
    time (``2026-12-01T17:00:00Z``). Unix nanoseconds. Raises InvalidInput."""
    now = time.time_ns() if now_ns is None else now_ns
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if m:
        return now - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * 1_000_000_000
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"--since {text[:40]!r}: want a duration (30m, 2h, 7d) or an RFC 3339 time "
                           "(2026-12-01T17:00:00Z)") from None
    if when.tzinfo is None:
        raise InvalidInput(f"--since {text[:40]!r}: give the time zone (Z or +01:00)")
    return int(when.timestamp() * 1e9)


def _filters(ns: argparse.Namespace) -> Any:
    since = parse_since(ns.since) if ns.since else 0
    actions = set(ns.action or ())

    def keep(e: audit_pb2.AuditEvent) -> bool:
        return (e.time_unix_ns >= since
                and (not ns.principal or fnmatch.fnmatchcase(e.principal, ns.principal))
                and (not actions or e.action in actions)
                and (not ns.object or fnmatch.fnmatchcase(e.object, ns.object)))
    return keep


def event_json(e: audit_pb2.AuditEvent) -> dict[str, Any]:
    return {"seq": e.seq, "time": ts(e.time_unix_ns), "principal": e.principal, "role": e.role, "host": e.host,
            "action": e.action, "object": e.object, "result": e.result, "request_id": e.request_id, "hash": e.hash}


def _rows(data: list[dict[str, Any]]) -> list[list[str]]:
    return [[str(d["seq"]), d["time"], f"{d['principal']} ({d['role']})", d["host"], d["action"],
             d["object"][:60], d["result"][:60]] for d in data]


HEADER = ["SEQ", "TIME", "PRINCIPAL", "HOST", "ACTION", "OBJECT", "RESULT"]


def _new_events(client: Any, after: int) -> list[audit_pb2.AuditEvent]:
    resp = client.call(client.audit.ListEvents, audit_pb2.ListEventsRequest(after_seq=after, limit=1000),
                       audit_pb2.ListEventsResponse)
    return list(resp.events)


def cmd_audit_list(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    keep = _filters(ns)
    events = all_events(client)
    last = events[-1].seq if events else 0
    events = [e for e in events if keep(e)]
    if ns.limit:
        events = events[-ns.limit:]
    data = [event_json(e) for e in events]
    if not ns.follow:
        out.emit(data, lambda: table(_rows(data), HEADER))
        return 0
    # Follow: what there is, then each new event as it is written (one line each; JSON lines with -o json).
    for d in data:
        _print_event(d, out)
    try:
        while True:
            time.sleep(ns.interval)
            for e in _new_events(client, last):
                last = max(last, e.seq)
                if keep(e):
                    _print_event(event_json(e), out)
    except KeyboardInterrupt:
        return 0


def _print_event(d: dict[str, Any], out: Out) -> None:
    if out.json:
        print(json.dumps(d, sort_keys=True), flush=True)
    else:
        print("  ".join(_rows([d])[0]), flush=True)


def export_line(e: audit_pb2.AuditEvent) -> str:
    """One JSON Lines record: the parsed fields (time RFC 3339) and the exact stored bytes
    (base64), from which a receiver recomputes the event hash and the chain."""
    return json.dumps({**event_json(e), "time_unix_ns": e.time_unix_ns,
                       "stored_b64": base64.b64encode(bytes(e.stored)).decode()},
                      sort_keys=True, separators=(",", ":"))


def cmd_audit_export(ns: argparse.Namespace, out: Out) -> int:
    client = connect(ns)
    events: Iterable[audit_pb2.AuditEvent] = all_events(client) if ns.unverified else verified_events(client)
    keep = _filters(ns)
    lines = [export_line(e) for e in events if keep(e)]
    body = "".join(line + "\n" for line in lines)
    if ns.out:
        try:
            Path(ns.out).write_text(body, encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot write {ns.out}: {exc.strerror}") from None
        print(f"exported {len(lines)} events to {ns.out}"
              + ("" if ns.unverified else " (the log verified first)"), file=sys.stderr)
    else:
        sys.stdout.write(body)
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
    al = au.add_parser("list", parents=[common], help="list audit events (filter, follow)")
    _filter_args(al)
    al.add_argument("--limit", type=int, default=0, help="only the newest N (after the filters)")
    al.add_argument("--follow", "-f", action="store_true", help="then print each new event as it is written "
                    "(Ctrl-C stops; JSON lines with -o json)")
    al.add_argument("--interval", type=float, default=1.0, help="with --follow: seconds between polls")
    al.set_defaults(fn=cmd_audit_list)
    ae = au.add_parser("export", parents=[common], help="export events for a SIEM (JSON Lines, verified first)")
    _filter_args(ae)
    ae.add_argument("--format", choices=["jsonl"], default="jsonl", help="jsonl: one JSON object per event")
    ae.add_argument("--out", help="write here instead of stdout")
    ae.add_argument("--unverified", action="store_true",
                    help="do not verify the log (chain, checkpoints, trusted state) before exporting")
    ae.set_defaults(fn=cmd_audit_export)
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


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", help="only events since: a duration (30m, 2h, 7d) or an RFC 3339 time")
    p.add_argument("--principal", help="only this principal (a glob: 'exec*')")
    p.add_argument("--action", action="append", help="only this action, e.g. UnwrapDataKey (repeat for more)")
    p.add_argument("--object", help="only objects matching this glob, e.g. 'model/frontier-*'")
