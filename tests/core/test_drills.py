"""The drill register (custos.core.drills): its encoding, and who can make one.

Attacks: a register signed by fewer than the rotate threshold (any subset), by
outsiders, as an order instead of a register, for another signer-set version, an older
one presented as current, every field replaced by every JSON type, non-canonical bytes.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.core.canonical import encode_canonical
from custos.core.drills import (
    DRILL_REGISTER_NAMESPACE,
    DrillRegister,
    DrillRegisterError,
    DrillRegisterRejected,
    verify_register,
)
from custos.core.orders import ORDER_DOMAIN, ORDER_NAMESPACE
from custos.errors import InvalidInput
from tests.agent.test_adversarial import ODD_VALUES, _paths, _substitute
from tests.core.order_cases import ARTIFACTS, MODELS, OUTSIDER, PANELS, make_register, panel

BASE = DrillRegister(version=3, signer_set_version=1, models=MODELS, artifacts=ARTIFACTS)


def test_round_trip_and_canonical_form() -> None:
    body = BASE.encode()
    assert DrillRegister.decode(body) == BASE
    assert json.loads(body) == {"artifacts": list(ARTIFACTS), "encoding": 1, "models": list(MODELS),
                                "signer_set_version": 1, "version": 3}
    unsorted = dict(BASE.to_json(), models=list(reversed(MODELS)))
    with pytest.raises(DrillRegisterError, match="canonical"):
        DrillRegister.decode(encode_canonical(unsorted))
    with pytest.raises(DrillRegisterError):
        DrillRegister.decode(body.replace(b":", b": ", 1))


@pytest.mark.parametrize("value", [*ODD_VALUES, 2**60, "x" * 70, "\u202e", ["a", "a"]], ids=repr)
def test_every_field_with_every_json_type_is_refused_not_crashed(value: Any) -> None:
    doc = BASE.to_json()
    for path in _paths(doc):
        bad = _substitute(doc, path, value)
        try:
            data = encode_canonical(bad)
        except InvalidInput:
            continue
        try:
            got = DrillRegister.decode(data)
        except DrillRegisterError:
            continue
        assert got.encode() == data  # accepted only if it is itself a valid register


@pytest.mark.parametrize("p_name", PANELS)
def test_every_subset_below_the_rotate_threshold_is_refused(p_name: str) -> None:
    p = panel(p_name)
    body, every = make_register(p, signers=5)
    t = p.threshold("rotate")
    for k in range(t):
        for subset in itertools.combinations(every, k):
            with pytest.raises(DrillRegisterRejected, match="rotate threshold"):
                verify_register(body, subset, p.signer_set)
    for subset in itertools.combinations(every, t):
        assert verify_register(body, subset, p.signer_set).version == 1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=12))
def test_duplicates_never_make_a_threshold(picks: list[int]) -> None:
    """However the signatures of fewer than 4 distinct keys are repeated, no register."""
    p = panel("ed25519")
    body, every = make_register(p, signers=5)
    sigs = [every[i % 3] for i in picks]  # only three distinct keys available
    with pytest.raises(DrillRegisterRejected):
        verify_register(body, sigs, p.signer_set)


def test_outsiders_other_domains_other_versions_and_rollback() -> None:
    p = panel("ed25519")
    body, sigs = make_register(p)
    outsider = [OUTSIDER.sign(BASE.signature_input(), DRILL_REGISTER_NAMESPACE)] * 5
    with pytest.raises(DrillRegisterRejected):
        verify_register(body, outsider, p.signer_set)
    as_order = p.sign(ORDER_DOMAIN + body, 5, namespace=ORDER_NAMESPACE)  # signed as if it were an order
    with pytest.raises(DrillRegisterRejected):
        verify_register(body, as_order, p.signer_set)
    other_set, other_sigs = make_register(p, signer_set_version=2)
    with pytest.raises(DrillRegisterRejected, match="signer-set version"):
        verify_register(other_set, other_sigs, p.signer_set)
    with pytest.raises(DrillRegisterRejected, match="rollback"):
        verify_register(body, sigs, p.signer_set, trusted_version=2)
    assert verify_register(body, sigs, p.signer_set, trusted_version=1).version == 1  # a re-delivery
