"""The signed-order file (custos.core.orderfile): portable, canonical, strict.

Attacks: every field replaced by every JSON type, unknown and missing fields, another
format name or version, non-canonical bytes, oversized parts, random mutations of a
valid file (each decodes to exactly what it says or is refused with OrderFileError,
never a crash); a file checked before publishing refuses what an agent would refuse
(under quorum, forged, expired, a forged rotation chain).
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.core.canonical import encode_canonical
from custos.core.orderfile import (
    MAX_ORDER_FILE_BYTES,
    ORDER_FILE_FORMAT,
    OrderFile,
    OrderFileError,
    check_order_file,
    feed_object_name,
    parse_feed_object_name,
)
from custos.core.orders import MAX_ORDER_BYTES, OrderReason
from custos.core.signers import SIGNER_SET_DOMAIN, RotationRejected, TrustedSignerSets, encode_signatures
from custos.errors import InvalidInput
from tests.agent.test_adversarial import ODD_VALUES, _paths, _substitute
from tests.core.order_cases import (
    ISSUED,
    NOW,
    OUTSIDER,
    make_order,
    make_register,
    panel,
    panel_v2,
    sign_set,
)


def _file(action: str = "halt", count: int | None = None, **kw: object) -> OrderFile:
    p = panel("ed25519")
    order = make_order(action, **kw)
    reg, reg_sigs = make_register(p)
    return OrderFile(order=order.encode(), signatures=p.sign_order(order, count), signer_set=p.signer_set.encode(),
                     drill_register=reg, drill_register_signatures=encode_signatures(reg_sigs),
                     dry_run_models=("other-model",), dry_run_artifacts=("ab" * 32,))


VALID = _file()


def test_round_trip_is_canonical_and_carries_every_field() -> None:
    data = VALID.encode()
    assert OrderFile.decode(data) == VALID
    obj = json.loads(data)
    assert obj["format"] == ORDER_FILE_FORMAT and obj["version"] == 1
    assert encode_canonical(obj) == data
    assert VALID.order_id == make_order("halt").id


def test_feed_names_sort_by_time_and_parse_back() -> None:
    a, b = feed_object_name(5, VALID.order_id), feed_object_name(10**19, VALID.order_id)
    assert a < b and parse_feed_object_name(a) == (5, VALID.order_id)
    assert parse_feed_object_name("../" + a) is None and parse_feed_object_name(a + ".tmp") is None
    for bad in (-1, 10**20, True):
        with pytest.raises(InvalidInput):
            feed_object_name(bad, VALID.order_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        feed_object_name(1, "../etc/passwd")


def _mangle(obj: dict[str, object], **changes: object) -> bytes:
    return encode_canonical({**obj, **changes})


BASE = json.loads(VALID.encode())
BAD_FILES = {
    "empty": b"",
    "not-json": b"\x00\xffgarbage",
    "truncated": VALID.encode()[:-3],
    "non-canonical": json.dumps(BASE, indent=1).encode(),
    "trailing-newline": VALID.encode() + b"\n",
    "a-list": b"[]",
    "other-format": _mangle(BASE, format="custos.v1.order"),
    "version-2": _mangle(BASE, version=2),
    "version-0": _mangle(BASE, version=0),
    "version-true": _mangle(BASE, version=True),
    "unknown-field": _mangle(BASE, lease="forever"),
    "missing-field": encode_canonical({k: v for k, v in BASE.items() if k != "signer_chain"}),
    "signature-extra-field": _mangle(BASE, signatures=[{"key_id": "a", "sig": "b", "x": 1}]),
    "too-many-signatures": _mangle(BASE, signatures=[{"key_id": "k", "sig": "s"}] * 300),
    "oversized-order": _mangle(BASE, order="x" * (MAX_ORDER_BYTES + 1)),
    "empty-order": _mangle(BASE, order=""),
    "oversized-file": b"{" + b" " * MAX_ORDER_FILE_BYTES + b"}",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_files_are_refused_with_a_clear_reason(name: str) -> None:
    with pytest.raises(OrderFileError, match="order file"):
        OrderFile.decode(BAD_FILES[name])


def test_every_field_with_every_json_type_is_refused_or_decodes_to_what_it_says() -> None:
    checked = refused = 0
    for path in _paths(BASE):
        for value in ODD_VALUES:
            data = encode_canonical(_substitute(BASE, path, value))
            try:
                f = OrderFile.decode(data)
            except OrderFileError:
                refused += 1
            else:
                assert f.encode() == data, (path, value)  # nothing lost, nothing invented
            checked += 1
    assert checked > 150 and refused > 100


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32), flips=st.integers(1, 8))
def test_random_mutations_never_crash(seed: int, flips: int) -> None:
    rng = random.Random(seed)
    data = bytearray(VALID.encode())
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    try:
        f = OrderFile.decode(bytes(data))
    except OrderFileError:
        return
    assert f.encode() == bytes(data)


def test_a_file_no_agent_would_take_is_refused_before_publishing() -> None:
    p = panel("ed25519")

    def trusted() -> TrustedSignerSets:
        return TrustedSignerSets(p.signer_set)

    assert check_order_file(VALID, trusted(), now=NOW)
    under = _file(count=p.threshold("halt") - 1)
    assert check_order_file(under, trusted(), now=NOW).reasons == [OrderReason.THRESHOLD_NOT_MET]
    outsiders = OrderFile(order=VALID.order, signatures=(OUTSIDER.sign(b"x", "custos-order"),) * 3)
    assert not check_order_file(outsiders, trusted(), now=NOW)
    expired = _file(issued_at=ISSUED - 10**5, not_after=ISSUED - 10**4)
    assert OrderReason.EXPIRED in check_order_file(expired, trusted(), now=NOW).reasons
    # A rotation chain signed by outsiders moves nothing: refused, not followed.
    v2 = panel_v2("ed25519").signer_set
    forged = encode_canonical({"set": v2.encode().decode(),
                               "signatures": encode_signatures(sign_set([OUTSIDER], v2)).decode()})
    with pytest.raises(RotationRejected):
        check_order_file(OrderFile(order=VALID.order, signatures=VALID.signatures, signer_chain=(forged,)),
                         trusted(), now=NOW)
    assert SIGNER_SET_DOMAIN  # the chain entry is checked over the signer-set domain, as at the agent
