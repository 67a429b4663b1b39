"""Audit chain: every kind of tampering is detected and the first bad event named."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.core.audit_chain import (
    GENESIS_HASH,
    event_hash,
    new_event,
    parse_stored,
    sign_checkpoint,
    verify_log,
)
from custos.core.canonical import decode_canonical, encode_canonical

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def build(n: int) -> tuple[list[bytes], list[str]]:
    events, hashes, prev = [], [], GENESIS_HASH
    for i in range(1, n + 1):
        rec, stored = new_event(seq=i, prev=prev, time_ns=1_700_000_000_000_000_000 + i,
                                principal="alice", role="security-team", host="10.0.0.1",
                                action="RegisterModel", object=f"model/m{i}", result="ok",
                                request_id=f"r{i}")
        prev = event_hash(rec)
        events.append(stored)
        hashes.append(prev)
    return events, hashes


def cps(hashes: list[str], at: list[int]) -> list[tuple[bytes, bytes]]:
    return [sign_checkpoint(KEY, seq=s, head_hash=hashes[s - 1], time_ns=s) for s in at]


def edit(stored: bytes, field: str, value: object, rehash: bool = False) -> bytes:
    obj = decode_canonical(stored)
    obj["event"][field] = value
    if rehash:
        obj["hash"] = event_hash(obj["event"])
    return encode_canonical(obj)


def test_known_answer_event_hash() -> None:
    rec, stored = new_event(seq=1, prev=GENESIS_HASH, time_ns=1, principal="p", role="r", host="h",
                            action="a", object="o", result="ok", request_id="x")
    assert parse_stored(stored) == (rec, event_hash(rec))
    # Known answer: changing the event encoding or its domain breaks every stored log.
    assert event_hash(rec) == "3226e5b87638bf63311ca9b18251347feaf99952d036d93ba3ce445007b80489"
    assert stored.startswith(b'{"event":{"action":"a","host":"h","object":"o","prev":"0000')


def test_clean_log_verifies() -> None:
    events, hashes = build(10)
    r = verify_log(events, cps(hashes, [5, 10]), KEY.public_key())
    assert r and r.events_checked == 10 and r.checkpoints_checked == 2
    assert r.head_seq == 10 and r.head_hash == hashes[-1]


def test_empty_log_verifies() -> None:
    assert verify_log([], [], KEY.public_key())


TAMPERS = {
    "edit-content": (lambda ev, hs: ev[:3] + [edit(ev[3], "principal", "mallory")] + ev[4:], 4),
    "edit-result": (lambda ev, hs: ev[:6] + [edit(ev[6], "result", "denied")] + ev[7:], 7),
    "edit-and-rehash": (lambda ev, hs: ev[:3] + [edit(ev[3], "principal", "mallory", True)] + ev[4:], 5),
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
    forged, prev = [], GENESIS_HASH
    for i, stored in enumerate(events, start=1):
        rec, _ = parse_stored(stored)
        rec = {**rec, "prev": prev, **({"principal": "mallory"} if i == 2 else {})}
        _, s = new_event(**{k: v for k, v in rec.items()})  # type: ignore[arg-type]
        forged.append(s)
        prev = event_hash(rec)
    r = verify_log(forged, cps(hashes, [6]), KEY.public_key())
    assert not r and r.first_bad_seq == 6 and "rewritten" in r.problems[0]


def test_forged_checkpoint_signature_rejected() -> None:
    events, hashes = build(4)
    other = Ed25519PrivateKey.generate()
    body, sig = sign_checkpoint(other, seq=4, head_hash=hashes[3], time_ns=1)
    r = verify_log(events, [(body, sig)], KEY.public_key())
    assert not r and "bad signature" in r.problems[0]


def test_missing_key_fails_closed_when_checkpoints_exist() -> None:
    events, hashes = build(3)
    assert not verify_log(events, cps(hashes, [3]), None)
