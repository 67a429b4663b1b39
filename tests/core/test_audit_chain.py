"""Audit chain: every kind of tampering is detected and named; checkpoints form a chain with bounded
gaps; a verifier's trusted state lets the log only grow."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.core.audit_chain import (
    CHECKPOINT_DOMAIN,
    GENESIS_HASH,
    Checkpoint,
    CheckpointPolicy,
    LogVerification,
    TrustedState,
    checkpoint_digest,
    event_hash,
    key_id,
    new_event,
    parse_stored,
    sign_checkpoint,
    verify_log,
)
from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import InvalidInput

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000
SMALL = CheckpointPolicy(max_events=5, max_age_s=60)

Log = tuple[list[bytes], list[tuple[bytes, bytes]]]


def build(n: int, times: list[int] | None = None) -> tuple[list[bytes], list[str]]:
    events, hashes, prev = [], [], GENESIS_HASH
    for i in range(1, n + 1):
        rec, stored = new_event(seq=i, prev=prev, time_ns=times[i - 1] if times else T0 + i,
                                principal="alice", role="security-team", host="10.0.0.1",
                                action="RegisterModel", object=f"model/m{i}", result="ok",
                                request_id=f"r{i}")
        prev = event_hash(rec)
        events.append(stored)
        hashes.append(prev)
    return events, hashes


def chain_hashes(events: list[bytes]) -> list[str]:
    return [parse_stored(s)[1] for s in events]


def cps(hashes: list[str], at: list[int], key: Ed25519PrivateKey = KEY,
        when: Callable[[int], int] = lambda s: T0 + s) -> list[tuple[bytes, bytes]]:
    """Chained checkpoints at the events ``at``, signed at ``when(seq)``."""
    out, prev_seq, prev = [], 0, GENESIS_HASH
    for s in at:
        body, sig = sign_checkpoint(key, seq=s, head_hash=hashes[s - 1], time_ns=when(s), prev_seq=prev_seq,
                                    prev=prev)
        out.append((body, sig))
        prev_seq, prev = s, checkpoint_digest(body)
    return out


def legacy_cp(hashes: list[str], s: int) -> tuple[bytes, bytes]:
    """A checkpoint as written before checkpoints were chained."""
    body = encode_canonical({"hash": hashes[s - 1], "key_id": key_id(KEY.public_key()), "seq": s, "time_ns": s})
    return body, KEY.sign(CHECKPOINT_DOMAIN + body)


def edit(stored: bytes, field: str, value: object, rehash: bool = False) -> bytes:
    obj = decode_canonical(stored)
    obj["event"][field] = value
    if rehash:
        obj["hash"] = event_hash(obj["event"])
    return encode_canonical(obj)


def rechain(events: list[bytes], edit_at: int | None = None) -> list[bytes]:
    """Recompute every hash (after making event ``edit_at`` mallory's): what an attacker without the key can do."""
    out, prev = [], GENESIS_HASH
    for stored in events:
        rec, _ = parse_stored(stored)
        rec = {**rec, "prev": prev, **({"principal": "mallory"} if rec["seq"] == edit_at else {})}
        prev = event_hash(rec)
        out.append(encode_canonical({"event": rec, "hash": prev}))
    return out


def test_known_answer_event_hash() -> None:
    rec, stored = new_event(seq=1, prev=GENESIS_HASH, time_ns=1, principal="p", role="r", host="h",
                            action="a", object="o", result="ok", request_id="x")
    assert parse_stored(stored) == (rec, event_hash(rec))
    # Known answer: changing the event encoding or its domain breaks every stored log.
    assert event_hash(rec) == "3226e5b87638bf63311ca9b18251347feaf99952d036d93ba3ce445007b80489"
    assert stored.startswith(b'{"event":{"action":"a","host":"h","object":"o","prev":"0000')


def test_known_answer_checkpoint() -> None:
    body, sig = sign_checkpoint(KEY, seq=2, head_hash="ab" * 32, time_ns=7, prev_seq=1, prev="cd" * 32)
    assert body == (b'{"hash":"' + b"ab" * 32 + b'","key_id":"' + key_id(KEY.public_key()).encode()
                    + b'","prev":"' + b"cd" * 32 + b'","prev_seq":1,"seq":2,"time_ns":7}')
    # Known answers: the digest the next checkpoint names, and the (deterministic) signature.
    assert checkpoint_digest(body) == "6b5aa290bf47354f53154bcbe47513cb77c11ffdfe719dd09b95dc5f6287474c"
    assert sig.hex() == ("7f86fcb5f33b3338c176999ca8eee1b7d7aeafb832e419411feb6a684a43da7d"
                         "ffdf551c309bea8c7019864ca2b2eff989b41e413a802bc6413ab1df05f5950b")
    cp = Checkpoint.decode(body)
    assert (cp.seq, cp.prev_seq, cp.prev, cp.time_ns) == (2, 1, "cd" * 32, 7)


def test_clean_log_verifies() -> None:
    events, hashes = build(10)
    r = verify_log(events, cps(hashes, [5, 10]), KEY.public_key())
    assert r and r.events_checked == 10 and r.checkpoints_checked == 2
    assert r.head_seq == 10 and r.head_hash == hashes[-1] and r.checkpoint_seq == 10


def test_empty_log_verifies() -> None:
    assert verify_log([], [], KEY.public_key())


TAMPERS = {
    "edit-content": (lambda ev, hs: ev[:3] + [edit(ev[3], "principal", "mallory")] + ev[4:], 4),
    "edit-result": (lambda ev, hs: ev[:6] + [edit(ev[6], "result", "denied")] + ev[7:], 7),
    "edit-and-rehash": (lambda ev, hs: ev[:3] + [edit(ev[3], "principal", "mallory", True)] + ev[4:], 5),
    "edit-time-type": (lambda ev, hs: ev[:3] + [edit(ev[3], "time_ns", "1", True)] + ev[4:], 4),
    "delete-middle": (lambda ev, hs: ev[:4] + ev[5:], 5),
    "delete-first": (lambda ev, hs: ev[1:], 1),
    "reorder": (lambda ev, hs: ev[:2] + [ev[3], ev[2]] + ev[4:], 3),
    "duplicate": (lambda ev, hs: ev[:5] + [ev[4]] + ev[5:], 6),
    "insert-forged": (lambda ev, hs: ev[:5] + [new_event(
        seq=6, prev=hs[4], time_ns=1, principal="mallory", role="admin", host="x", action="a",
        object="o", result="ok", request_id="z")[1]] + ev[5:], 7),
    "garbage": (lambda ev, hs: ev[:2] + [b"not json"] + ev[3:], 3),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampering_detected_and_named(name: str) -> None:
    events, hashes = build(10)
    tamper, first_bad = TAMPERS[name]
    r = verify_log(tamper(events, hashes), cps(hashes, [10]), KEY.public_key())
    assert not r
    assert r.first_bad_seq == first_bad, r.problems


def test_truncated_tail_detected_by_checkpoint() -> None:
    events, hashes = build(10)
    r = verify_log(events[:8], cps(hashes, [10]), KEY.public_key())
    assert not r and r.first_bad_seq == 9


def test_rewritten_history_detected_by_checkpoint() -> None:
    # An attacker without the key rebuilds the whole chain with one edit.
    events, hashes = build(6)
    r = verify_log(rechain(events, edit_at=2), cps(hashes, [6]), KEY.public_key())
    assert not r and r.first_bad_seq == 6 and "rewritten" in r.problems[0]


def test_forged_checkpoint_signature_rejected() -> None:
    events, hashes = build(4)
    r = verify_log(events, cps(hashes, [4], key=OTHER), KEY.public_key())
    assert not r and "bad signature" in r.problems[0]


def test_missing_key_fails_closed_when_checkpoints_exist() -> None:
    events, hashes = build(3)
    assert not verify_log(events, cps(hashes, [3]), None)


# -- the checkpoint chain ------------------------------------------------------


def _resigned(hashes: list[str], at: list[int], seq: int) -> list[tuple[bytes, bytes]]:
    """The chain ``at`` with checkpoint ``seq`` signed again at another time (by the real key)."""
    honest = cps(hashes, at)
    other = cps(hashes, at, when=lambda s: T0 + s + (1 if s == seq else 0))
    return [other[i] if s == seq else honest[i] for i, s in enumerate(at)]


CHAIN_TAMPERS: dict[str, tuple[Callable[[list[str]], list[tuple[bytes, bytes]]], int, str]] = {
    "delete-middle": (lambda hs: [c for i, c in enumerate(cps(hs, [3, 6, 9, 12])) if i != 1], 6, "missing"),
    "delete-first": (lambda hs: cps(hs, [3, 6, 9, 12])[1:], 3, "missing"),
    "replace": (lambda hs: _resigned(hs, [3, 6, 9, 12], 6), 6, "replaced"),
    "insert": (lambda hs: cps(hs, [3, 6, 9, 12]) + cps(hs, [3, 6, 7])[2:], 7, "inserted"),
    "duplicate": (lambda hs: cps(hs, [3, 6, 9, 12]) + [_resigned(hs, [3, 6], 6)[1]], 6, "two checkpoints"),
    "legacy-after-chained": (lambda hs: cps(hs, [3, 6, 9, 12]) + [legacy_cp(hs, 10)], 10, "old-format"),
}


@pytest.mark.parametrize("name", sorted(CHAIN_TAMPERS))
def test_checkpoint_chain_tampering_detected(name: str) -> None:
    events, hashes = build(12)
    make, first_bad, word = CHAIN_TAMPERS[name]
    r = verify_log(events, make(hashes), KEY.public_key())
    assert not r and r.first_bad_seq == first_bad and word in r.problems[0], r.problems


def test_legacy_checkpoints_verify_before_chained_ones() -> None:
    events, hashes = build(9)
    chained = sign_checkpoint(KEY, seq=9, head_hash=hashes[8], time_ns=T0 + 9, prev_seq=6,
                              prev=checkpoint_digest(legacy_cp(hashes, 6)[0]))
    assert verify_log(events, [legacy_cp(hashes, 3), legacy_cp(hashes, 6), chained], KEY.public_key())


def test_checkpoints_in_any_order() -> None:
    events, hashes = build(9)
    assert verify_log(events, cps(hashes, [3, 6, 9])[::-1], KEY.public_key())


# -- gaps --------------------------------------------------------------------


def test_the_whole_chain_rewritten_and_every_checkpoint_deleted_fails() -> None:
    # The attack the log used to accept: edit, recompute the chain, delete every checkpoint.
    events, _ = build(1500)
    forged = rechain(events, edit_at=17)
    r = verify_log(forged, [], KEY.public_key())
    assert not r and "gap: 1500 events from event 1 after the newest checkpoint" in r.problems[0]
    # A short log fails on time instead, once an event has waited too long.
    few, _ = build(4)
    assert verify_log(rechain(few, 2), [], KEY.public_key(), now_ns=T0 + 299 * SEC)
    r = verify_log(rechain(few, 2), [], KEY.public_key(), now_ns=T0 + 301 * SEC)
    assert not r and r.first_bad_seq == 1 and "waited 300 s" in r.problems[0]


@pytest.mark.parametrize(("at", "n", "gap"), [
    ([5, 12], 12, (7, 6)),   # 7 events between two checkpoints, from event 6
    ([5], 12, (7, 6)),       # 7 after the newest
    ([6, 12], 12, (6, 1)),   # 6 before the first
    ([5, 10, 12], 12, None),
    ([], 5, None),
])
def test_more_events_than_allowed_without_a_checkpoint(at: list[int], n: int, gap: tuple[int, int] | None) -> None:
    events, hashes = build(n)
    r = verify_log(events, cps(hashes, at), KEY.public_key(), policy=SMALL)
    assert bool(r) == (gap is None), r.problems
    if gap:
        assert r.first_bad_seq == gap[1] and r.problems[0].startswith(f"gap: {gap[0]} events from event {gap[1]}")


@pytest.mark.parametrize(("signed_after_s", "ok"), [(60, True), (61, False)])
def test_an_event_waiting_too_long_for_a_checkpoint(signed_after_s: int, ok: bool) -> None:
    times = [T0 + i * SEC for i in range(1, 5)]
    events, hashes = build(4, times)
    late = cps(hashes, [2, 4], when=lambda s: times[2] + signed_after_s * SEC if s == 4 else times[s - 1])
    r = verify_log(events, late, KEY.public_key(), policy=SMALL)
    assert bool(r) == ok and (ok or r.first_bad_seq == 3), r.problems
    # The same for events after the newest checkpoint, measured at the verifier's clock.
    tail = verify_log(events, cps(hashes, [2]), KEY.public_key(), policy=SMALL,
                      now_ns=times[2] + signed_after_s * SEC)
    assert bool(tail) == ok and (ok or "so far" in tail.problems[0]), tail.problems


def test_policy_limits_must_be_in_range() -> None:
    for bad in ({"max_events": 0}, {"max_age_s": 0}, {"max_events": True}, {"max_age_s": float("nan")},
                {"max_age_s": float("inf")}, {"max_events": 2.0}, {"max_age_s": "300"}):
        with pytest.raises(InvalidInput):
            CheckpointPolicy(**bad)  # type: ignore[arg-type]


# -- the trusted state -------------------------------------------------------


def history(n: int, at: list[int]) -> tuple[list[bytes], list[str], list[tuple[bytes, bytes]]]:
    events, hashes = build(n)
    return events, hashes, cps(hashes, at)


def trusted_after(events: list[bytes], checkpoints: list[tuple[bytes, bytes]]) -> TrustedState:
    r = verify_log(events, checkpoints, KEY.public_key())
    assert r and r.trusted_next is not None
    return r.trusted_next


def _rollback_and_regrow() -> Log:
    # The store went back to 9 events; the control plane then wrote other events 10..14 over it.
    forged = rechain(build(14)[0], edit_at=10)
    return forged, cps(chain_hashes(forged), [4, 8, 12])


TRUSTED_TAMPERS: dict[str, tuple[Callable[[], Log], str]] = {
    "older-copy-of-the-store": (lambda: (build(9)[0], cps(build(9)[1], [4, 8])),
                                "rollback: trusted checkpoint 12 missing: the newest checkpoint is at event 8"),
    "trusted-checkpoint-deleted": (lambda: (build(14)[0], cps(build(14)[1], [4, 8])),
                                   "rollback: trusted checkpoint 12 missing"),
    "uncovered-tail-deleted": (lambda: (build(12)[0], cps(build(12)[1], [4, 8, 12])),
                               "truncated: the log ends at event 12, but 14 events were verified before: 2 deleted"),
    "rewritten-and-re-signed-with-the-key": (lambda: (rechain(build(14)[0], 5),
                                                      cps(chain_hashes(rechain(build(14)[0], 5)), [4, 8, 12])),
                                             "rewritten: checkpoint 12 is not the one verified before"),
    "uncovered-tail-rewritten": (lambda: (rechain(build(14)[0], 13), cps(build(14)[1], [4, 8, 12])),
                                 "rewritten: event 14"),
    "rolled-back-then-regrown": (_rollback_and_regrow, "rewritten: checkpoint 12"),
}


@pytest.mark.parametrize("name", sorted(TRUSTED_TAMPERS))
def test_a_log_that_does_not_extend_the_trusted_state_fails(name: str) -> None:
    events, _, checkpoints = history(14, [4, 8, 12])
    state = trusted_after(events, checkpoints)
    assert (state.checkpoint_seq, state.events) == (12, 14)
    make, want = TRUSTED_TAMPERS[name]
    forged_events, forged_cps = make()
    assert verify_log(forged_events, forged_cps, KEY.public_key()), "each of these logs is consistent on its own"
    r = verify_log(forged_events, forged_cps, KEY.public_key(), trusted=state)
    assert not r and any(p.startswith(want) for p in r.problems), r.problems


def test_a_log_re_signed_with_another_key_fails() -> None:
    events, _, checkpoints = history(14, [4, 8, 12])
    state = trusted_after(events, checkpoints)
    forged = rechain(events, 5)
    forged_cps = cps(chain_hashes(forged), [4, 8, 12], key=OTHER)
    assert verify_log(forged, forged_cps, OTHER.public_key())
    # Checked against the trusted key: every checkpoint is forged.
    r = verify_log(forged, forged_cps, KEY.public_key(), trusted=state)
    assert not r and "bad signature" in r.problems[0]
    # Checked against the key the server now presents: that is not the key the state pins.
    r = verify_log(forged, forged_cps, OTHER.public_key(), trusted=state)
    assert not r and any(p.startswith("key changed") for p in r.problems)


def test_a_log_that_grows_extends_the_trusted_state() -> None:
    events, hashes, checkpoints = history(20, [4, 8, 12, 16, 20])
    state = trusted_after(events[:14], checkpoints[:3])
    r = verify_log(events, checkpoints, KEY.public_key(), trusted=state, now_ns=5)
    assert r and r.trusted_next == TrustedState(
        key=KEY.public_key().public_bytes_raw().hex(), checkpoint_seq=20, checkpoint_hash=hashes[19],
        checkpoint_digest=checkpoint_digest(checkpoints[-1][0]), events=20, events_hash=hashes[19], verified_at_ns=5)
    assert verify_log(events, checkpoints, KEY.public_key(), trusted=r.trusted_next)


def test_trusted_state_round_trip_and_bad_encodings() -> None:
    events, _, checkpoints = history(6, [3, 6])
    state = trusted_after(events, checkpoints)
    assert TrustedState.decode(state.encode()) == state
    good = decode_canonical(state.encode())
    bad = [
        {**good, "format": "custos.audit-trusted-state.v0"},
        {k: v for k, v in good.items() if k != "key"},
        {**good, "key": "zz" * 32},
        {**good, "extra": 1},
        {**good, "events": {"count": 1, "hash": good["events"]["hash"]}},  # fewer events than the checkpoint
        {**good, "checkpoint": {**good["checkpoint"], "seq": "6"}},
        {**good, "checkpoint": [1]},
    ]
    for obj in bad:
        with pytest.raises(InvalidInput):
            TrustedState.decode(encode_canonical(obj))
    for data in (b"", b"{", b"[]", b"null"):
        with pytest.raises(InvalidInput):
            TrustedState.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=10_000))
def test_decoders_reject_mutated_input_with_invalid_input_only(noise: bytes, at: int) -> None:
    events, _, checkpoints = history(3, [3])
    for good in (trusted_after(events, checkpoints).encode(), checkpoints[0][0]):
        i = at % (len(good) + 1)
        for data in (good[:i] + noise + good[i:], good[:i] + noise, noise):
            for decode in (TrustedState.decode, Checkpoint.decode):
                try:
                    decode(data)
                except InvalidInput:
                    pass


# -- properties over random tampering ------------------------------------------

N, T = 5, 60


@st.composite
def honest_logs(draw: st.DrawFn) -> tuple[list[bytes], list[tuple[bytes, bytes]], int]:
    """A log as the control plane writes it under (N, T): (events, checkpoints, a time it verifies at)."""
    n = draw(st.integers(min_value=1, max_value=24))
    steps = draw(st.lists(st.integers(min_value=0, max_value=25), min_size=n, max_size=n))
    extra = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    times = [T0 + sum(steps[:i + 1]) * SEC for i in range(n)]
    events, hashes = build(n, times)
    at, covered = [], 0
    for k in range(1, n + 1):
        # As the writer: before the event that would make the span too long or too old, or at will.
        too_old = k < n and times[k] - times[covered] > T * SEC
        if extra[k - 1] or k - covered >= N or too_old:
            at.append(k)
            covered = k
    return events, cps(hashes, at, when=lambda s: times[s - 1]), times[-1]


def _resign(events: list[bytes], checkpoints: list[tuple[bytes, bytes]], key: Ed25519PrivateKey,
            shift: int) -> list[tuple[bytes, bytes]]:
    seqs = [s for s in sorted(Checkpoint.decode(b).seq for b, _ in checkpoints) if s <= len(events)]
    try:
        hashes = chain_hashes(events)
    except InvalidInput:
        return checkpoints
    return cps(hashes, seqs, key=key, when=lambda s: T0 + s + shift)


def tamper(op: tuple[str, int, int], events: list[bytes], checkpoints: list[tuple[bytes, bytes]]) -> Log:
    name, a, b = op
    n, m = len(events), len(checkpoints)
    ordered = sorted(checkpoints, key=lambda c: Checkpoint.decode(c[0]).seq)
    if name == "edit" and n:
        return events[:a % n] + [edit(events[a % n], "object", "model/other", bool(b % 2))] + events[a % n + 1:], \
            checkpoints
    if name == "rechain" and n:
        return rechain(events, edit_at=a % n + 1), checkpoints
    if name == "delete-event" and n:
        return events[:a % n] + events[a % n + 1:], checkpoints
    if name == "delete-tail" and n:
        return events[:n - 1 - a % n], checkpoints
    if name == "swap" and n:
        i, j = a % n, b % n
        swapped = list(events)
        swapped[i], swapped[j] = events[j], events[i]
        return swapped, checkpoints
    if name == "duplicate" and n:
        return events[:a % n + 1] + events[a % n:], checkpoints
    if name == "delete-checkpoint" and m:
        return events, ordered[:a % m] + ordered[a % m + 1:]
    if name == "delete-checkpoints-above" and m:
        return events, ordered[:a % m]
    if name == "truncate-to-checkpoint" and m:
        seq = Checkpoint.decode(ordered[a % m][0]).seq
        return events[:seq], ordered[:a % m + 1]
    if name == "re-sign-with-the-key":
        return events, _resign(events, checkpoints, KEY, b % 3)
    if name == "re-sign-with-another-key":
        return events, _resign(events, checkpoints, OTHER, 0)
    return events, checkpoints


SEEN_OPS = ["edit", "rechain", "delete-event", "delete-tail", "swap", "duplicate", "delete-checkpoint",
            "delete-checkpoints-above", "truncate-to-checkpoint", "re-sign-with-the-key", "re-sign-with-another-key"]
ops = st.tuples(st.sampled_from(SEEN_OPS), st.integers(min_value=0, max_value=99),
                st.integers(min_value=0, max_value=99))


def _same(a: Log, b: Log) -> bool:
    return a[0] == b[0] and sorted(a[1]) == sorted(b[1])


def _verify(log: Log, now: int, trusted: TrustedState | None = None) -> LogVerification:
    return verify_log(log[0], log[1], KEY.public_key(), policy=CheckpointPolicy(N, T), now_ns=now, trusted=trusted)


@settings(max_examples=400, deadline=None)
@given(honest_logs(), st.lists(ops, min_size=1, max_size=4))
def test_a_verifier_that_saw_the_log_never_accepts_a_tampered_one(
        log: tuple[list[bytes], list[tuple[bytes, bytes]], int], tampering: list[tuple[str, int, int]]) -> None:
    # Even an attacker with the checkpoint key and the Store: whatever was seen cannot change or shrink.
    events, checkpoints, now = log
    seen = _verify((events, checkpoints), now)
    assert seen and seen.trusted_next is not None, seen.problems
    forged: Log = (events, checkpoints)
    for op in tampering:
        forged = tamper(op, *forged)
    r = _verify(forged, now, seen.trusted_next)
    assert bool(r) == _same(forged, (events, checkpoints)), (tampering, r.problems)


LENGTH_KEEPING_OPS = ["edit", "rechain", "delete-event", "swap", "duplicate", "delete-checkpoint",
                      "re-sign-with-another-key"]


def _keeping_length(op: tuple[str, int, int], log: Log) -> tuple[str, int, int] | None:
    """``op`` narrowed to what does not shrink the log (None: it cannot here). Only a trusted state
    protects the newest events after the last checkpoint: changing them is a truncation and an append."""
    name, a, b = op
    n = len(log[0])
    seqs = sorted(Checkpoint.decode(body).seq for body, _ in log[1])
    last_cp = seqs[-1] if seqs else 0
    if name == "rechain":
        return (name, a % last_cp, b) if last_cp else None
    if name == "edit" and b % 2 and a % n + 1 == n > last_cp:
        return None  # the newest event, rehashed and uncovered
    if name in ("delete-event", "swap"):
        return (name, a % (n - 1), b) if n > 1 else None
    if name == "delete-checkpoint":
        return (name, a % (len(seqs) - 1), b) if len(seqs) > 1 else None  # not the newest
    return op


@settings(max_examples=400, deadline=None)
@given(honest_logs(), st.sampled_from(LENGTH_KEEPING_OPS), st.integers(min_value=0, max_value=99),
       st.integers(min_value=0, max_value=99))
def test_a_first_time_verifier_rejects_every_tamper_that_does_not_shrink_the_log(
        log: tuple[list[bytes], list[tuple[bytes, bytes]], int], name: str, a: int, b: int) -> None:
    # Without the checkpoint key and with no trusted state yet. One operation: two can add up to a
    # truncation (swap the newest event forward, then delete it), which only a trusted state sees.
    events, checkpoints, now = log
    op = _keeping_length((name, a, b), (events, checkpoints))
    forged = tamper(op, events, checkpoints) if op else (events, checkpoints)
    r = _verify(forged, now)
    assert bool(r) == _same(forged, (events, checkpoints)), (op, r.problems)
