"""The tamper-evident audit log: hash-chained events and chained, signed checkpoints.

Each event is a canonical JSON record that names the hash of the event before
it; the event's own hash is SHA-256 over a domain-separation prefix and that
record. The control plane signs checkpoints (sequence number + head hash) with
its own Ed25519 key, each naming the checkpoint before it, and writes them at
least every N events and T seconds: rewriting history fails against a pinned
key, deleting a checkpoint breaks the checkpoint chain, and deleting the newest
ones leaves a gap. A verifier keeps a ``TrustedState`` (the newest checkpoint it
verified) and requires the next log to extend it. Specified in docs/audit.md.

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

CHECKPOINT_FIELDS = ("hash", "key_id", "prev", "prev_seq", "seq", "time_ns")
# Checkpoints written before they were chained; accepted only before the first chained one.
LEGACY_CHECKPOINT_FIELDS = ("hash", "key_id", "seq", "time_ns")


def key_id(public_key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_key(public_key)).hexdigest()[:16]


def raw_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def checkpoint_digest(body: bytes) -> str:
    """What the next checkpoint names as ``prev``: SHA-256 of exactly the signed input."""
    return hashlib.sha256(CHECKPOINT_DOMAIN + body).hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint body, parsed: event ``seq`` has hash ``hash``; it follows the checkpoint
    at event ``prev_seq`` whose digest is ``prev`` (both None for a legacy checkpoint)."""

    seq: int
    hash: str
    time_ns: int
    key_id: str
    prev_seq: int | None
    prev: str | None
    digest: str

    @classmethod
    def decode(cls, body: bytes) -> Checkpoint:
        """Raises InvalidInput if ``body`` is not a checkpoint body."""
        obj = decode_canonical(body)
        if not isinstance(obj, dict) or tuple(sorted(obj)) not in (CHECKPOINT_FIELDS, LEGACY_CHECKPOINT_FIELDS):
            raise InvalidInput("audit checkpoint: unexpected fields")
        chained = "prev" in obj
        ints = [obj["seq"], obj["time_ns"], *([obj["prev_seq"]] if chained else [])]
        strs = [obj["hash"], obj["key_id"], *([obj["prev"]] if chained else [])]
        if not all(_is_int(v) for v in ints) or not all(isinstance(v, str) for v in strs):
            raise InvalidInput("audit checkpoint: bad types")
        if obj["seq"] < 1 or (chained and not 0 <= obj["prev_seq"] < obj["seq"]):
            raise InvalidInput("audit checkpoint: bad sequence numbers")
        return cls(seq=obj["seq"], hash=obj["hash"], time_ns=obj["time_ns"], key_id=obj["key_id"],
                   prev_seq=obj["prev_seq"] if chained else None, prev=obj["prev"] if chained else None,
                   digest=checkpoint_digest(body))


def sign_checkpoint(
    private_key: Ed25519PrivateKey, *, seq: int, head_hash: str, time_ns: int, prev_seq: int, prev: str
) -> tuple[bytes, bytes]:
    """Return (canonical checkpoint body, signature) for event ``seq`` with hash ``head_hash``,
    following the checkpoint at event ``prev_seq`` with digest ``prev`` (0 and GENESIS_HASH
    for the first)."""
    body = encode_canonical({"hash": head_hash, "key_id": key_id(private_key.public_key()), "prev": prev,
                             "prev_seq": prev_seq, "seq": seq, "time_ns": time_ns})
    return body, private_key.sign(CHECKPOINT_DOMAIN + body)


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """How far apart checkpoints may be: at most ``max_events`` events, and no event may wait
    more than ``max_age_s`` seconds for one. Raises InvalidInput for a limit out of range."""

    max_events: int = 1000
    max_age_s: float = 300.0

    def __post_init__(self) -> None:
        age_ok = isinstance(self.max_age_s, int | float) and not isinstance(self.max_age_s, bool) \
            and 0 < self.max_age_s <= 10**9
        if not _is_int(self.max_events) or self.max_events < 1 or not age_ok:
            raise InvalidInput("checkpoint policy: max_events must be an integer >= 1 and max_age_s a number "
                               "of seconds > 0")

    @property
    def max_age_ns(self) -> int:
        return int(self.max_age_s * 1_000_000_000)


DEFAULT_POLICY = CheckpointPolicy()


# -- what a verifier trusts --------------------------------------------------

STATE_FORMAT = "custos.audit-trusted-state.v1"


def _is_hex(value: object, n: int) -> bool:
    return isinstance(value, str) and len(value) == n and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True, slots=True)
class TrustedState:
    """What a verifier last verified, kept so the log can only grow from it (as a TUF client keeps
    the newest metadata it saw): the checkpoint key (raw, hex), the newest checkpoint (event seq,
    that event's hash, the checkpoint's digest) and how many events it saw (and the last one's hash)."""

    key: str
    checkpoint_seq: int
    checkpoint_hash: str
    checkpoint_digest: str
    events: int
    events_hash: str
    verified_at_ns: int = 0

    @property
    def key_id(self) -> str:
        """The pinned key's id, as checkpoints name it."""
        return hashlib.sha256(bytes.fromhex(self.key)).hexdigest()[:16]

    def encode(self) -> bytes:
        return encode_canonical({
            "checkpoint": {"digest": self.checkpoint_digest, "hash": self.checkpoint_hash,
                           "seq": self.checkpoint_seq},
            "events": {"count": self.events, "hash": self.events_hash},
            "format": STATE_FORMAT, "key": self.key, "verified_at_ns": self.verified_at_ns})

    @classmethod
    def decode(cls, data: bytes) -> TrustedState:
        """Raises InvalidInput if ``data`` is not a trusted state this version writes."""
        obj = decode_canonical(data)
        if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
            raise InvalidInput(f"not a trusted audit state (want format {STATE_FORMAT})")
        try:
            cp, ev = obj["checkpoint"], obj["events"]
            state = cls(key=obj["key"], checkpoint_seq=cp["seq"], checkpoint_hash=cp["hash"],
                        checkpoint_digest=cp["digest"], events=ev["count"], events_hash=ev["hash"],
                        verified_at_ns=obj["verified_at_ns"])
            shapes_ok = (set(obj) == {"checkpoint", "events", "format", "key", "verified_at_ns"}
                         and set(cp) == {"digest", "hash", "seq"} and set(ev) == {"count", "hash"})
        except (KeyError, TypeError):
            raise InvalidInput("trusted audit state: missing fields") from None
        ok = (shapes_ok and _is_hex(state.key, 64) and all(_is_hex(h, 64) for h in (
                  state.checkpoint_hash, state.checkpoint_digest, state.events_hash))
              and all(_is_int(n) for n in (state.checkpoint_seq, state.events, state.verified_at_ns))
              and 0 <= state.checkpoint_seq <= state.events)
        if not ok:
            raise InvalidInput("trusted audit state: bad fields")
        return state


# -- verification ------------------------------------------------------------


@dataclass
class LogVerification:
    """Outcome of verifying an audit log; truthy only when everything checked out.

    ``trusted_next`` is what the verifier may keep as its trusted state when it did."""

    events_checked: int = 0
    checkpoints_checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    first_bad_seq: int | None = None
    problems: list[str] = field(default_factory=list)
    checkpoint_seq: int = 0
    events_after_last_checkpoint: int = 0
    trusted_next: TrustedState | None = None

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
    *,
    policy: CheckpointPolicy = DEFAULT_POLICY,
    now_ns: int | None = None,
    trusted: TrustedState | None = None,
) -> LogVerification:
    """Verify stored events (in store order) and signed checkpoints (any order).

    Detects an edited event (content no longer matches its hash, or the next
    event no longer chains to it), a deleted event (a gap in sequence numbers),
    an inserted or reordered event (sequence or chain out of place), a rewritten
    history (a checkpoint that no longer matches), a truncated tail (a
    checkpoint beyond the last event), a deleted checkpoint (the next one names
    it), checkpoints further apart than ``policy`` allows (including events
    waiting longer than ``policy.max_age_s`` at ``now_ns``, when given), and,
    against ``trusted``, a log that does not extend what was verified before
    (rollback, truncation, rewrite, another key). Stops the chain walk at the
    first bad event and names it.
    """
    result = LogVerification()
    hashes, times = _walk_events(events, result)
    walked = not result.problems
    chain = _signed_checkpoints(checkpoints, public_key, result)
    _check_chain(chain, hashes, result, walked)
    _check_gaps(chain, times, result, policy, now_ns, walked)
    if trusted is not None:
        _check_trusted(trusted, chain, hashes, result, public_key, walked)
    last = chain[-1] if chain else None
    result.checkpoint_seq = last.seq if last else 0
    result.events_after_last_checkpoint = max(0, result.head_seq - result.checkpoint_seq)
    if result and public_key is not None:
        result.trusted_next = TrustedState(
            key=raw_key(public_key).hex(), checkpoint_seq=result.checkpoint_seq,
            checkpoint_hash=last.hash if last else GENESIS_HASH,
            checkpoint_digest=last.digest if last else GENESIS_HASH,
            events=result.head_seq, events_hash=result.head_hash, verified_at_ns=now_ns or 0)
    return result


def _walk_events(events: Sequence[bytes], result: LogVerification) -> tuple[list[str], list[int]]:
    """Walk the hash chain; (hash, time_ns) of events 1..head, index seq - 1."""
    hashes: list[str] = []
    times: list[int] = []
    prev = GENESIS_HASH
    expected = 1
    for position, stored in enumerate(events, start=1):
        try:
            record, stored_hash = parse_stored(stored)
            if not _is_int(record["time_ns"]):
                raise InvalidInput("audit event: bad time")
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
        hashes.append(computed)
        times.append(record["time_ns"])
        prev = computed
        expected += 1
        result.events_checked += 1
    result.head_seq = expected - 1
    result.head_hash = prev
    return hashes, times


def _signed_checkpoints(
    checkpoints: Sequence[tuple[bytes, bytes]], public_key: Ed25519PublicKey | None, result: LogVerification
) -> list[Checkpoint]:
    """The readable checkpoints signed by ``public_key``, in seq order, one per seq."""
    good: dict[int, Checkpoint] = {}
    for body, signature in checkpoints:
        try:
            cp = Checkpoint.decode(body)
        except InvalidInput:
            result.fail(None, "checkpoint: unreadable")
            continue
        if public_key is None:
            result.fail(None, "no audit public key to check checkpoints against")
            break
        try:
            public_key.verify(signature, CHECKPOINT_DOMAIN + body)
        except InvalidSignature:
            result.fail(None, f"checkpoint at event {cp.seq}: bad signature (not signed by the trusted key)")
            continue
        if cp.seq in good:
            result.fail(cp.seq, f"two checkpoints at event {cp.seq}: one of them was forged or replayed")
            continue
        good[cp.seq] = cp
        result.checkpoints_checked += 1
    return [good[s] for s in sorted(good)]


def _check_chain(chain: list[Checkpoint], hashes: list[str], result: LogVerification, walked: bool) -> None:
    """Each checkpoint names the one before it and matches the event it covers."""
    prev_seq, prev_digest, legacy = 0, GENESIS_HASH, True
    beyond: Checkpoint | None = None
    for cp in chain:
        if cp.prev_seq is None:
            if not legacy:
                result.fail(cp.seq, f"checkpoint at event {cp.seq}: an old-format checkpoint after chained "
                                    "ones: inserted")
        else:
            legacy = False
            if cp.prev_seq > prev_seq:
                result.fail(cp.prev_seq, f"checkpoint at event {cp.prev_seq} is missing (the checkpoint at "
                                         f"event {cp.seq} follows it): deleted")
            elif cp.prev_seq < prev_seq:
                result.fail(prev_seq, f"checkpoint at event {prev_seq} is not in the checkpoint chain (the "
                                      f"checkpoint at event {cp.seq} follows event {cp.prev_seq}): inserted")
            elif cp.prev != prev_digest:
                result.fail(prev_seq, f"checkpoint at event {prev_seq} is not the one the checkpoint at "
                                      f"event {cp.seq} follows: replaced")
        prev_seq, prev_digest = cp.seq, cp.digest
        if cp.seq > len(hashes):
            if walked:  # else the walk stopped before this point and named why
                beyond = cp
        elif hashes[cp.seq - 1] != cp.hash:
            result.fail(cp.seq, f"checkpoint at event {cp.seq} does not match: history up to it was rewritten")
    if beyond is not None:
        result.fail(result.head_seq + 1, f"checkpoint at event {beyond.seq} but the log ends at "
                                         f"{result.head_seq}: events were deleted from the end")


def _check_gaps(chain: list[Checkpoint], times: list[int], result: LogVerification,
                policy: CheckpointPolicy, now_ns: int | None, walked: bool) -> None:
    """No run of events longer than the policy allows without a checkpoint (legacy spans excepted;
    the tail only when the walk reached the end)."""
    prev_seq = 0
    for cp in chain:
        if cp.prev_seq is not None:
            _check_span(result, policy, prev_seq, cp.seq, times, cp.time_ns, f"the checkpoint at event {cp.seq}")
        prev_seq = cp.seq
    if walked and result.head_seq > prev_seq:
        _check_span(result, policy, prev_seq, result.head_seq, times, now_ns, None)


def _check_span(result: LogVerification, policy: CheckpointPolicy, after: int, upto: int, times: list[int],
                closed_ns: int | None, closer: str | None) -> None:
    first = after + 1
    n = upto - after
    if n > policy.max_events:
        where = f"before {closer}" if closer else "after the newest checkpoint"
        result.fail(first, f"gap: {n} events from event {first} {where} (at most {policy.max_events} "
                           "allowed): checkpoints were deleted or are not being written")
    if closed_ns is not None and first <= len(times) and closed_ns - times[first - 1] > policy.max_age_ns:
        waited = (closed_ns - times[first - 1]) // 1_000_000_000
        how = f"until {closer}" if closer else "so far"
        result.fail(first, f"gap: event {first} waited {waited} s for a checkpoint {how} (at most "
                           f"{policy.max_age_s:g} s allowed): checkpoints were deleted, or none were written")


def _check_trusted(t: TrustedState, chain: list[Checkpoint], hashes: list[str], result: LogVerification,
                   public_key: Ed25519PublicKey | None, walked: bool) -> None:
    """The log must extend ``t``: its key, its checkpoint, at least its events, the same ones."""
    if public_key is not None and raw_key(public_key).hex() != t.key:
        result.fail(None, f"key changed: checkpoints are checked against key {key_id(public_key)}, but the "
                          f"trusted state pins key {t.key_id}")
    s = t.checkpoint_seq
    if s:
        found = next((cp for cp in chain if cp.seq == s), None)
        later = [cp.seq for cp in chain if cp.seq > s]
        if found is None and not later:
            newest = f"the newest checkpoint is at event {chain[-1].seq}" if chain else "there are no checkpoints"
            result.fail(s, f"rollback: trusted checkpoint {s} missing: {newest}")
        elif found is None:
            result.fail(s, f"rollback: trusted checkpoint {s} missing: deleted (checkpoints go on at event "
                           f"{later[0]})")
        elif found.digest != t.checkpoint_digest:
            result.fail(s, f"rewritten: checkpoint {s} is not the one verified before: the log was re-signed")
    if not walked:
        return  # the walk already named the first bad event
    if result.head_seq < t.events:
        result.fail(result.head_seq + 1, f"truncated: the log ends at event {result.head_seq}, but {t.events} "
                                         f"events were verified before: {t.events - result.head_seq} deleted")
    for seq, want, what in ((s, t.checkpoint_hash, "the one the trusted checkpoint covers"),
                            (t.events, t.events_hash, "the one verified before")):
        if 0 < seq <= len(hashes) and hashes[seq - 1] != want:
            result.fail(seq, f"rewritten: event {seq} is not {what}: history up to it was rewritten")
            return


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
