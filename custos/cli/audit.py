"""`custos audit list|verify`: the tamper-evident audit log."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custos.cli.common import Conn, Out, table, ts
from custos.core.audit_chain import verify_log
from custos.errors import (
    InvalidInput,
)
from custos.v1 import audit_pb2


def all_events(c: Conn) -> list[Any]:
    events: list[Any] = []
    after = 0
    while True:
        resp = c.call(c.audit().ListEvents, audit_pb2.ListEventsRequest(after_seq=after, limit=5000))
        events += list(resp.events)
        if not resp.next_after_seq:
            return events
        after = resp.next_after_seq


def cmd_audit_list(ns: argparse.Namespace, out: Out) -> int:
    c = Conn(ns)
    events = all_events(c)
    if ns.limit:
        events = events[-ns.limit:]
    data = [{"seq": e.seq, "time": ts(e.time_unix_ns), "principal": e.principal, "role": e.role,
             "host": e.host, "action": e.action, "object": e.object, "result": e.result,
             "request_id": e.request_id, "hash": e.hash} for e in events]
    out.emit(data, lambda: table(
        [[str(d["seq"]), d["time"], f"{d['principal']} ({d['role']})", d["host"], d["action"],
          d["object"][:60], d["result"][:60]] for d in data],
        ["SEQ", "TIME", "PRINCIPAL", "HOST", "ACTION", "OBJECT", "RESULT"]))
    return 0


def pinned_key() -> Any:
    path = os.environ.get("CUSTOS_AUDIT_PUBKEY")
    if not path:
        return None
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read CUSTOS_AUDIT_PUBKEY {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(f"CUSTOS_AUDIT_PUBKEY {path}: not an Ed25519 public key")
    return key


def cmd_audit_verify(ns: argparse.Namespace, out: Out) -> int:
    c = Conn(ns)
    events = all_events(c)
    cps = c.call(c.audit().GetCheckpoints, audit_pb2.GetCheckpointsRequest())
    pinned = pinned_key()
    warnings = []
    served = Ed25519PublicKey.from_public_bytes(cps.public_key) if cps.public_key else None
    if pinned is None:
        key = served
        warnings.append("audit key not pinned (set CUSTOS_AUDIT_PUBKEY): trusting the key the "
                        "server presents")
    else:
        key = pinned
        raw = pinned.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if raw != cps.public_key:
            warnings.append("the server presents a different audit key than the pinned one")
    result = verify_log([e.stored for e in events],
                        [(cp.body, cp.signature) for cp in cps.checkpoints], key)
    last_cp = max((cp.seq for cp in cps.checkpoints), default=0)
    uncovered = max(0, result.head_seq - last_cp)
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

