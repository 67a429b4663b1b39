"""Adversarial orders and rotations: every case in tests/core/order_cases.py is rejected
with its reason code; valid cases pass; a seeded mutation fuzzer never gets a
mutated order or signature accepted."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from custos.core import sshsig, webauthn
from custos.core.canonical import encode_canonical
from custos.core.orders import (
    ORDER_ACTIONS,
    ORDER_DOMAIN,
    ExecutedOrders,
    OrderReason,
    OrderRejected,
    OrderVerification,
    verify_order,
)
from custos.core.signers import (
    RotationReason,
    RotationRejected,
    Signature,
    SignerSet,
    SignerSetError,
    TrustedSignerSets,
    verify_rotation,
)
from tests.core.order_cases import (
    NOW,
    PANELS,
    Case,
    Inputs,
    RotationCase,
    adversarial_cases,
    default_state,
    inputs,
    make_order,
    panel,
    panel_v2,
    rotation_cases,
    sign_set,
    valid_cases,
    verify_inputs,
)

ADVERSARIAL = adversarial_cases()
VALID = valid_cases()
ROTATIONS = rotation_cases()


def run(i: Inputs) -> OrderVerification:
    return verify_inputs(i)


# -- the tables -------------------------------------------------------------------------


def test_tables_are_large_and_cover_every_reason() -> None:
    assert len(ADVERSARIAL) >= 200
    assert {c.reason for c in ADVERSARIAL} == {str(r) for r in OrderReason}
    rotation_reasons = {c.reason for c in ROTATIONS}
    assert rotation_reasons == {str(r) for r in RotationReason} - {"already_current"}
    # Each action's threshold is probed at every count below it, for both signer panels.
    for p_name in PANELS:
        for action in ORDER_ACTIONS:
            t = panel(p_name).threshold(action)
            below = {c.name for c in ADVERSARIAL if c.name.startswith("below-threshold-")}
            assert {f"below-threshold-{k}-of-{t}/{p_name}/{action}" for k in range(t)} <= below


@pytest.mark.parametrize("case", ADVERSARIAL, ids=lambda c: c.name)
def test_adversarial_order_is_rejected_with_its_reason(case: Case) -> None:
    v = run(case.build())
    assert not v
    assert case.reason in v.reasons, v.failures
    assert set(v.reasons) <= {case.reason, *case.also}, v.failures
    for listed in case.reported:
        assert getattr(v, listed), f"{listed} should be reported: {v}"
    with pytest.raises(OrderRejected) as exc:
        v.raise_if_invalid()
    assert case.reason in exc.value.reasons


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_valid_order_is_accepted(case: Case) -> None:
    i = case.build()
    v = run(i)
    assert v, v.failures
    assert v.reasons == []
    assert v.missing == 0 and len(v.valid) >= v.threshold >= 1
    order = v.raise_if_invalid()
    assert order.encode() == i.order_bytes


@pytest.mark.parametrize("case", ROTATIONS, ids=lambda c: c.name)
def test_adversarial_rotation_is_rejected_and_changes_nothing(case: RotationCase) -> None:
    i = case.build()
    trusted = TrustedSignerSets(i.trusted)
    v = trusted.verify(i.new_set_bytes, i.signatures)
    assert not v
    assert case.reason in v.reasons, v.failures
    assert set(v.reasons) <= {case.reason, *case.also}, v.failures
    with pytest.raises(RotationRejected) as exc:
        trusted.update(i.new_set_bytes, i.signatures)
    assert case.reason in exc.value.verification.reasons
    assert trusted.current is i.trusted


@pytest.mark.parametrize("p_name", PANELS)
def test_valid_rotation_is_accepted(p_name: str) -> None:
    v1, v2 = panel(p_name), panel_v2(p_name)
    signers = [*v1.signers, *v2.signers[2:]]
    sigs = sign_set(signers, v2.signer_set)
    assert verify_rotation(v1.signer_set, v2.signer_set.encode(), sigs)
    trusted = TrustedSignerSets(v1.signer_set)
    assert trusted.update(v2.signer_set.encode(), sigs) == v2.signer_set
    assert trusted.version == 2


# -- mutation fuzzer --------------------------------------------------------------------

SEED = 0xC057_05
ITERATIONS = 300


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random edit that changes ``data``."""
    while True:
        b = bytearray(data)
        op = rng.randrange(7)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos] = rng.randrange(256)
        elif op == 2:
            b.insert(pos, rng.randrange(256))
        elif op == 3 and b:
            del b[pos]
        elif op == 4:
            del b[rng.randrange(len(b) + 1) :]
        elif op == 5 and b:
            end = min(len(b), pos + rng.randrange(1, 16))
            b[pos:pos] = b[pos:end]
        elif op == 6 and len(b) > 1:
            j = rng.randrange(len(b))
            b[pos], b[j] = b[j], b[pos]
        if bytes(b) != data:
            return bytes(b)


def _mutated_signature(rng: random.Random, sig: Signature) -> Signature:
    if webauthn.is_webauthn_sig(sig.sig) and rng.random() < 0.75:
        # Mutate the bytes of one part of the assertion (each is covered by its signature).
        a = webauthn.Assertion.decode(sig.sig)
        part = rng.choice(("authenticator_data", "client_data_json", "signature"))
        return Signature(sig.key_id, replace(a, **{part: mutate(rng, getattr(a, part))}).encode())
    if sig.sig.startswith(sshsig.ARMOR_BEGIN):
        # Mutate the signed blob itself (armor whitespace is not part of the signature).
        return Signature(sig.key_id, sshsig.armor(mutate(rng, sshsig.dearmor(sig.sig))))
    if rng.random() < 0.5 and not webauthn.is_webauthn_sig(sig.sig):
        return Signature(sig.key_id, mutate(rng, bytes.fromhex(sig.sig)).hex())
    return Signature(sig.key_id, mutate(rng, sig.sig.encode()).decode("latin-1"))


def _quorum(rng: random.Random) -> tuple[Inputs, int]:
    p = panel(rng.choice(PANELS))
    action = rng.choice(ORDER_ACTIONS)
    order = make_order(action, p.name)
    sigs = p.sign_order(order)
    i = inputs(order.encode(), sigs, p)
    assert run(i), "the unmutated quorum must verify, or the fuzzer proves nothing"
    return i, p.threshold(action)


def _fuzz(check: Callable[[random.Random], None], seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(ITERATIONS):
        check(rng)


def test_fuzz_mutated_order_body_is_always_rejected() -> None:
    def check(rng: random.Random) -> None:
        i, _ = _quorum(rng)
        v = run(i._replace(order_bytes=mutate(rng, i.order_bytes)))
        assert not v

    _fuzz(check, SEED)


def test_fuzz_mutated_signature_is_always_rejected() -> None:
    def check(rng: random.Random) -> None:
        i, t = _quorum(rng)
        # Exactly a threshold of signatures: breaking any one of them must break the quorum.
        k = rng.randrange(t)
        sigs = list(i.signatures)
        sigs[k] = _mutated_signature(rng, sigs[k])
        v = run(i._replace(signatures=tuple(sigs)))
        assert not v
        assert v.reasons == [OrderReason.THRESHOLD_NOT_MET]
        assert sigs[k].key_id in v.invalid

    _fuzz(check, SEED + 1)


def test_fuzz_mutated_signer_set_is_always_rejected() -> None:
    p_name = "mixed"
    v1, v2 = panel(p_name), panel_v2(p_name)
    body = v2.signer_set.encode()
    sigs = sign_set([*v1.signers, *v2.signers[2:]], body)
    assert verify_rotation(v1.signer_set, body, sigs)
    rng = random.Random(SEED + 2)
    for _ in range(ITERATIONS):
        assert not verify_rotation(v1.signer_set, mutate(rng, body), sigs)


def test_fuzz_mutated_executed_state_never_accepts_a_replay() -> None:
    """However an executed order's id is presented, a replay is caught by sequence too."""
    p = panel("ed25519")
    order = make_order("halt")
    sigs = p.sign_order(order)
    state = ExecutedOrders(highest_sequence=order.sequence, executed_ids=frozenset({order.id}))
    v = verify_order(order.encode(), sigs, p.signer_set, now=NOW, state=state)
    assert set(v.reasons) == {OrderReason.REPLAYED, OrderReason.STALE_SEQUENCE}
    # Even if the id set were lost, the sequence alone refuses it.
    v = verify_order(order.encode(), sigs, p.signer_set, now=NOW, state=ExecutedOrders(order.sequence))
    assert v.reasons == [OrderReason.STALE_SEQUENCE]


def test_signature_over_body_is_not_a_signature_over_signature_input() -> None:
    """A signature over the body alone (no domain prefix) must not verify, and vice versa."""
    p = panel("ed25519")
    order = make_order("halt")
    body = order.encode()
    good = p.sign(ORDER_DOMAIN + body, 3)
    bare = p.sign(body, 3)
    assert run(Inputs(body, good, p.signer_set, default_state(), NOW, frozenset()))
    v = run(Inputs(body, bare, p.signer_set, default_state(), NOW, frozenset()))
    assert v.reasons == [OrderReason.THRESHOLD_NOT_MET] and len(v.invalid) == 3


# -- type confusion: every field, every JSON type ---------------------------------------------

ODD_VALUES: list[object] = [None, True, False, 0, -1, 2**63 - 1, "", "x", [], {}, ["x"], [1], {"a": 1}]


def _paths(obj: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list) and obj:
        out += _paths(obj[0], (*prefix, 0))
    return out


def _substitute(obj: Any, path: tuple[object, ...], value: object) -> Any:
    clone = json.loads(json.dumps(obj))
    target = clone
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return clone


def test_every_field_of_an_order_with_every_json_type_is_refused_not_crashed() -> None:
    p = panel("mixed")
    order = make_order("halt", "mixed")
    obj = order.to_json()
    checked = 0
    for path in _paths(obj):
        for value in ODD_VALUES:
            body = encode_canonical(_substitute(obj, path, value))
            if body == order.encode():
                continue
            v = verify_order(body, p.sign_order(order), p.signer_set, now=NOW, state=default_state())
            assert not v and v.reasons, (path, value)
            checked += 1
    assert checked > 150


def test_every_field_of_a_signer_set_with_every_json_type_is_refused_not_crashed() -> None:
    current = panel("mixed").signer_set
    obj = panel_v2("mixed").signer_set.to_json()
    checked = refused = 0
    for path in _paths(obj):
        for value in ODD_VALUES:
            body = encode_canonical(_substitute(obj, path, value))
            try:
                SignerSet.decode(body)
            except SignerSetError:
                refused += 1  # anything else escaping is a crash, and fails the test
            assert not verify_rotation(current, body, [])
            checked += 1
    assert checked > 100 and refused > 0.9 * checked
