"""The tamper-evident audit log: hash-chained events and signed checkpoints.

Each event is a canonical JSON record that names the hash of the event before
it; the event's own hash is SHA-256 over a domain-separation prefix and that
record. The control plane signs checkpoints (sequence number + head hash) with
its own Ed25519 key, so rewriting history — even recomputing every hash —
fails against a pinned key. Specified in docs/audit.md.

Pure logic: ``verify_log`` takes the stored bytes and returns a result object;
it never raises for bad data, it reports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import InvalidInput

EVENT_DOMAIN = b"custos.v1.audit-event\x00"
CHECKPOINT_DOMAIN = b"custos.v1.audit-checkpoint\x00"
GENESIS_HASH = "0" * 64
EVENT_FIELDS = (
    "action",
    "host",
    "object",
    "prev",
    "principal",
    "request_id",
    "result",
    "role",
    "seq",
    "time_ns",
)


def event_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(EVENT_DOMAIN + encode_canonical(record)).hexdigest()


def new_event(
    *,
    seq: int,
    prev: str,
    time_ns: int,
    principal: str,
    role: str,
    host: str,
    action: str,
    object: str,
    result: str,
    request_id: str,
) -> tuple[dict[str, Any], bytes]:
    """Build the record for event ``seq`` and its stored bytes ({"event", "hash"})."""
    record = {
        "action": action,
        "host": host,
        "object": object,
        "prev": prev,
        "principal": principal,
        "request_id": request_id,
        "result": result,
        "role": role,
        "seq": seq,
        "time_ns": time_ns,
    }
    stored = encode_canonical({"event": record, "hash": event_hash(record)})
    return record, stored


def parse_stored(stored: bytes) -> tuple[dict[str, Any], str]:
    """Return (record, stored hash). Raises InvalidInput if malformed."""
    obj = decode_canonical(stored)
    if not isinstance(obj, dict) or set(obj) != {"event", "hash"}:
        raise InvalidInput("audit event: want exactly event and hash")
    record, stored_hash = obj["event"], obj["hash"]
    if not isinstance(record, dict) or tuple(sorted(record)) != EVENT_FIELDS:
        raise InvalidInput("audit event: unexpected fields")
    if not isinstance(record["seq"], int) or not isinstance(stored_hash, str):
        raise InvalidInput("audit event: bad types")
    return record, stored_hash


# -- checkpoints -------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_checkpoint(
    private_key: Ed25519PrivateKey, *, seq: int, head_hash: str, time_ns: int
) -> tuple[bytes, bytes]:
    """Return (canonical checkpoint body, signature)."""
    body = encode_canonical(
        {
            "hash": head_hash,
            "key_id": key_id(private_key.public_key()),
            "seq": seq,
            "time_ns": time_ns,
        }
    )
    return body, private_key.sign(CHECKPOINT_DOMAIN + body)


# -- verification ------------------------------------------------------------


@dataclass
class LogVerification:
    """Outcome of verifying an audit log; truthy only when everything checked out."""

    events_checked: int = 0
    checkpoints_checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    first_bad_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.problems

    def fail(self, seq: int | None, why: str) -> None:
        if self.first_bad_seq is None and seq is not None:
            self.first_bad_seq = seq
        self.problems.append(why)


def verify_log(
    events: Sequence[bytes],
    checkpoints: Sequence[tuple[bytes, bytes]],
    public_key: Ed25519PublicKey | None,
) -> LogVerification:
    """Verify stored events (in store order) and signed checkpoints.

    Detects an edited event (content no longer matches its hash, or the next
    event no longer chains to it), a deleted event (a gap in sequence numbers),
    an inserted or reordered event (sequence or chain out of place), a rewritten
    history (a checkpoint that no longer matches) and a truncated tail (a
    checkpoint beyond the last event). Stops the chain walk at the first bad
    event and names it.
    """
    result = LogVerification()
    hashes: dict[int, str] = {}
    prev = GENESIS_HASH
    expected = 1
    for position, stored in enumerate(events, start=1):
        try:
            record, stored_hash = parse_stored(stored)
        except InvalidInput as exc:
            result.fail(expected, f"event {expected}: unreadable ({exc})")
            break
        seq = record["seq"]
        if seq != expected:
            if seq > expected:
                why = f"event {expected}: missing (next stored event is {seq}): deleted"
            else:
                why = f"event {expected}: position {position} holds event {seq}: inserted or reordered"
            result.fail(expected, why)
            break
        computed = event_hash(record)
        if computed != stored_hash:
            result.fail(seq, f"event {seq}: content does not match its hash: edited")
            break
        if record["prev"] != prev:
            result.fail(
                seq,
                f"event {seq}: does not chain to event {seq - 1}: an event was edited, "
                "inserted or removed here",
            )
            break
        hashes[seq] = computed
        prev = computed
        expected += 1
        result.events_checked += 1
    result.head_seq = expected - 1
    result.head_hash = prev

    for body, signature in checkpoints:
        try:
            cp = decode_canonical(body)
            cp_seq, cp_hash = int(cp["seq"]), str(cp["hash"])
        except (InvalidInput, KeyError, TypeError, ValueError):
            result.fail(None, "checkpoint: unreadable")
            continue
        if public_key is None:
            result.fail(None, "no audit public key to check checkpoints against")
            break
        try:
            public_key.verify(signature, CHECKPOINT_DOMAIN + body)
        except InvalidSignature:
            result.fail(None, f"checkpoint at event {cp_seq}: bad signature")
            continue
        result.checkpoints_checked += 1
        if result.problems and result.first_bad_seq is not None and cp_seq >= result.first_bad_seq:
            continue  # the chain walk already stopped before this point
        if cp_seq not in hashes:
            if cp_seq > result.head_seq:
                result.fail(
                    result.head_seq + 1,
                    f"checkpoint at event {cp_seq} but the log ends at {result.head_seq}: "
                    "events were deleted from the end",
                )
            continue
        if hashes[cp_seq] != cp_hash:
            result.fail(
                cp_seq,
                f"checkpoint at event {cp_seq} does not match: history up to it was rewritten",
            )
    return result


@dataclass(frozen=True, slots=True)
class Event:
    """One audit event, parsed (see docs/audit.md)."""

    seq: int
    time_ns: int
    principal: str
    role: str
    host: str
    action: str
    object: str
    result: str

    @classmethod
    def from_stored(cls, stored: bytes) -> Event:
        """Raises InvalidInput if the stored bytes are not an audit event."""
        rec, _ = parse_stored(stored)
        try:
            return cls(seq=int(rec["seq"]), time_ns=int(rec["time_ns"]), principal=str(rec["principal"]),
                       role=str(rec["role"]), host=str(rec["host"]), action=str(rec["action"]),
                       object=str(rec["object"]), result=str(rec["result"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidInput("audit event: bad field types") from None

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "host": self.host, "object": self.object, "principal": self.principal,
                "result": self.result, "role": self.role, "seq": self.seq, "time_ns": self.time_ns}


def parse_events(stored: Iterable[bytes]) -> list[Event]:
    """Parse what parses; an unreadable event is the audit-chain rule's business."""
    out = []
    for s in stored:
        try:
            out.append(Event.from_stored(s))
        except InvalidInput:
            continue
    return out
