"""The audit log, client side: events page by page, signed checkpoints, verification against a pinned key.

The key that signs checkpoints is pinned by CUSTOS_AUDIT_PUBKEY (a PEM public
key file); without it, verification trusts the key the server presents, and
says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custos.client.session import Client
from custos.core.audit_chain import LogVerification, verify_log
from custos.errors import IntegrityError, InvalidInput
from custos.v1 import audit_pb2

PAGE = 5000


def all_events(client: Client) -> list[audit_pb2.AuditEvent]:
    """Every event, oldest first, fetched a page at a time."""
    events: list[audit_pb2.AuditEvent] = []
    after = 0
    while True:
        resp = client.call(client.audit.ListEvents, audit_pb2.ListEventsRequest(after_seq=after, limit=PAGE),
                           audit_pb2.ListEventsResponse)
        events += list(resp.events)
        if not resp.next_after_seq:
            return events
        after = resp.next_after_seq


def get_checkpoints(client: Client) -> audit_pb2.GetCheckpointsResponse:
    """The signed checkpoints and the public key the server says signs them."""
    return client.call(client.audit.GetCheckpoints, audit_pb2.GetCheckpointsRequest(),
                       audit_pb2.GetCheckpointsResponse)


def pinned_key() -> Ed25519PublicKey | None:
    """The audit key pinned by CUSTOS_AUDIT_PUBKEY, or None. Raises InvalidInput if it cannot be read
    or is not an Ed25519 public key."""
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


@dataclass
class AuditVerification:
    """The outcome of verifying the log (truthy only when it all checked out), with what to warn about."""

    result: LogVerification
    events: list[audit_pb2.AuditEvent]
    warnings: list[str] = field(default_factory=list)
    events_after_last_checkpoint: int = 0

    def __bool__(self) -> bool:
        return bool(self.result)


def _verify(events: list[audit_pb2.AuditEvent], cps: audit_pb2.GetCheckpointsResponse) -> AuditVerification:
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
    result = verify_log([e.stored for e in events], [(cp.body, cp.signature) for cp in cps.checkpoints], key)
    last_cp = max((cp.seq for cp in cps.checkpoints), default=0)
    return AuditVerification(result=result, events=events, warnings=warnings,
                             events_after_last_checkpoint=max(0, result.head_seq - last_cp))


def verify_audit(client: Client) -> AuditVerification:
    """Fetch every event and checkpoint and verify the hash chain and the signatures against the
    pinned key (else the served one). Raises InvalidInput for an unreadable pinned key."""
    events = all_events(client)
    return _verify(events, get_checkpoints(client))


def verified_events(client: Client) -> list[audit_pb2.AuditEvent]:
    """Every event, after verifying the chain and checkpoints. Raises IntegrityError if the log
    fails verification, InvalidInput for an unreadable pinned key."""
    cps = get_checkpoints(client)
    v = _verify(all_events(client), cps)
    if not v:
        raise IntegrityError(f"the audit log fails verification at event {v.result.first_bad_seq}: "
                             f"{'; '.join(v.result.problems)[:300]} — refusing to build a report from it")
    return v.events
