"""Orders: construction rules, canonical encoding, verification results, replay
state, and the known-answer vectors (vectors/orders.json, vectors/signer-sets.json).

The vectors are rebuilt here from fixed keys and compared byte for byte, and
their signatures are also checked on their own, so any change to an encoding,
a domain prefix or a key id is caught. Regenerate them only for a new encoding
version (keep the old files): ``python -m tests.orders.test_orders --write-vectors``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from custos.core.drills import DrillRegister, verify_register
from custos.core.orders import (
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    ORDER_DOMAIN,
    ExecutedOrders,
    NonCanonicalOrder,
    Order,
    OrderError,
    OrderReason,
    OrderRejected,
    apply_executed,
    order_id_of,
    verify_order,
)
from custos.core.signers import (
    DEV_THRESHOLDS,
    SIGNER_KEY_DOMAIN,
    SIGNER_SET_DOMAIN,
    Signature,
    SignerSet,
    TrustedSignerSets,
    decode_signatures,
    encode_signatures,
)
from custos.errors import Conflict, IntegrityError, InvalidInput
from tests import ROOT
from tests.core.order_cases import (
    ARTIFACTS,
    ED25519_SIGNERS,
    ISSUED,
    MODELS,
    NEW_SIGNERS,
    NOW,
    OUTSIDER,
    SEQUENCE,
    default_state,
    make_order,
    make_register,
    panel,
    panel_v2,
    sign_set,
)

VECTORS_DIR = Path(__file__).parent / "vectors"
DOCS = ROOT / "docs" / "orders.md"


def create(**changes: Any) -> Order:
    args: dict[str, Any] = {
        "action": "halt",
        "models": ["frontier-1-ft", "frontier-1"],
        "artifacts": list(ARTIFACTS[::-1]),
        "reason": "suspected exfiltration",
        "issued_at": ISSUED,
        "sequence": 1,
        "signer_set_version": 1,
    }
    args.update(changes)
    return Order.create(**args)


# -- construction -------------------------------------------------------------------------


def test_create_defaults_and_sorting() -> None:
    order = create()
    assert order.models == ("frontier-1", "frontier-1-ft")
    assert order.artifacts == tuple(sorted(ARTIFACTS))
    assert order.not_after == ISSUED + DEFAULT_LIFETIME
    assert order.drill is False and create(action="drill").drill is True
    assert len(order.nonce) == 32 and int(order.nonce, 16) >= 0
    assert create().nonce != create().nonce, "a fresh random nonce per order"
    assert create(artifacts=[]).artifacts == ()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"action": "shutdown"}, "action"),
        ({"action": "rotate"}, "action"),
        ({"models": []}, "1 to"),
        ({"models": "frontier-1"}, "lists"),
        ({"models": ["Frontier"]}, "model name"),
        ({"models": ["a", "a"]}, "duplicate"),
        ({"models": [f"m{i}" for i in range(1001)]}, "1 to 1000"),
        ({"artifacts": ["ab"]}, "artifact id"),
        ({"artifacts": [ARTIFACTS[0], ARTIFACTS[0]]}, "duplicate"),
        ({"reason": ""}, "reason"),
        ({"reason": "   \n"}, "reason"),
        ({"reason": "x" * 2001}, "longer than 2000"),
        ({"reason": "halt\x00now"}, "control character"),
        ({"reason": "halt \u202e1-reitnorf"}, "control character"),
        ({"reason": "cafe\u0301"}, "NFC"),
        ({"reason": "\ud800"}, "surrogate"),
        ({"not_after": ISSUED}, "after issued_at"),
        ({"not_after": ISSUED - 10}, "after issued_at"),
        ({"lifetime": MAX_LIFETIME + 1}, "more than 7 days"),
        ({"issued_at": -1}, "non-negative"),
        ({"issued_at": 1.5}, "integers"),
        ({"sequence": 0}, ">= 1"),
        ({"sequence": True}, "non-negative integer"),
        ({"signer_set_version": 0}, ">= 1"),
        ({"nonce": "ABCDEF" * 5 + "AB"}, "nonce"),
        ({"nonce": "00"}, "nonce"),
        ({"action": "drill", "drill": False}, "drill = true"),
        ({"action": "halt", "drill": True}, "never a drill"),
        ({"action": "destroy", "drill": True}, "never a drill"),
        ({"drill": 1}, "true or false"),
    ],
)
def test_create_refuses(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(OrderError, match=match):
        create(**changes)


def test_reason_limits_are_inclusive_and_allow_text() -> None:
    assert create(reason="x" * 2000).reason == "x" * 2000
    assert create(reason="Exfiltration — ändern\n\tline two 漢字").reason
    assert create(lifetime=MAX_LIFETIME).not_after == ISSUED + MAX_LIFETIME
    assert create(action="lift", drill=True).drill is True


def test_encoding_id_and_signature_input() -> None:
    order = make_order("halt")
    body = order.encode()
    assert body.startswith(b'{"action":"halt","drill":false,"encoding":1,')
    assert order.signature_input() == b"custos.v1.order\x00" + body
    assert order.id == hashlib.sha256(ORDER_DOMAIN + body).hexdigest() == order_id_of(body)
    assert Order.decode(body) == order
    assert replace(order, nonce="0" * 32).id != order.id


def test_decode_tells_non_canonical_from_malformed() -> None:
    order = make_order("halt")
    body = order.encode()
    with pytest.raises(NonCanonicalOrder):
        Order.decode(body + b" ")
    with pytest.raises(NonCanonicalOrder):
        Order.decode(json.dumps(order.to_json()).encode())
    with pytest.raises(OrderError) as exc:
        Order.decode(body[:-1])
    assert not isinstance(exc.value, NonCanonicalOrder)
    with pytest.raises(OrderError, match="larger than"):
        Order.decode(b" " * (8 * 1024 * 1024 + 1))
    assert issubclass(OrderError, InvalidInput)


# -- verification results -------------------------------------------------------------------


def test_verification_reports_signers() -> None:
    p = panel("ed25519")
    order = make_order("halt")
    body = order.encode()
    sigs = list(p.sign_order(order, 2))
    junk = Signature(ED25519_SIGNERS[4].key.key_id, "00" * 64)
    outsider = OUTSIDER.sign(ORDER_DOMAIN + body, "custos-order")
    v = verify_order(body, [*sigs, sigs[0], junk, outsider], p.signer_set, now=NOW, state=default_state())
    assert not v
    assert v.reasons == [OrderReason.THRESHOLD_NOT_MET]
    assert v.threshold == 3 and v.missing == 1
    assert set(v.valid) == {s.key_id for s in sigs}
    assert v.duplicates == (sigs[0].key_id,)
    assert v.invalid == (junk.key_id,)
    assert v.unknown == (outsider.key_id,)
    assert v.order == order and v.order_id == order.id and v.signer_set_version == 1
    assert any("exec5" in problem for problem in v.problems)
    with pytest.raises(OrderRejected) as exc:
        v.raise_if_invalid()
    assert isinstance(exc.value, IntegrityError)
    assert exc.value.verification is v
    assert "threshold_not_met" in str(exc.value)

    # One more signer makes it valid; the junk beside it does not spoil it.
    third = p.sign_order(order, 3)[2]
    v = verify_order(body, [*sigs, sigs[0], junk, outsider, third], p.signer_set, now=NOW, state=default_state())
    assert v and v.raise_if_invalid() == order and v.missing == 0


def test_junk_under_a_real_key_id_cannot_crowd_out_its_signature() -> None:
    p = panel("ed25519")
    order = make_order("halt")
    sigs = p.sign_order(order)
    junk = [Signature(sigs[0].key_id, f"{i:02x}" * 64) for i in range(20)]
    v = verify_order(order.encode(), [*junk, *sigs], p.signer_set, now=NOW, state=default_state())
    assert v, v.failures
    assert v.invalid == () and sigs[0].key_id in v.duplicates


def test_every_failure_is_reported_at_once() -> None:
    p = panel("ed25519")
    order = make_order("lift", signer_set_version=2)
    sigs = p.sign_order(order, 1)
    state = ExecutedOrders(highest_sequence=SEQUENCE, executed_ids=frozenset({order.id}))
    v = verify_order(
        order.encode(), sigs, p.signer_set, now=order.not_after, state=state, destroyed_models=frozenset(MODELS)
    )
    assert set(v.reasons) == {
        OrderReason.WRONG_SIGNER_SET,
        OrderReason.THRESHOLD_NOT_MET,
        OrderReason.EXPIRED,
        OrderReason.REPLAYED,
        OrderReason.STALE_SEQUENCE,
        OrderReason.DESTROYED_MODEL,
    }
    v = verify_order(order.encode(), sigs, p.signer_set, now=order.issued_at - 1000, state=state)
    assert OrderReason.NOT_YET_VALID in v.reasons


def test_caller_errors_raise_and_bad_data_does_not() -> None:
    p = panel("ed25519")
    body = make_order("halt").encode()
    with pytest.raises(InvalidInput):
        verify_order(body, [], p.signer_set, now=float(NOW), state=default_state())  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        verify_order(body, [{"key_id": "x", "sig": "y"}], p.signer_set, now=NOW, state=default_state())  # type: ignore[list-item]
    for garbage in (b"", b"\xff" * 100, b"[" * 50_000, b"null"):
        assert verify_order(garbage, [], p.signer_set, now=NOW, state=default_state()).reasons == ["malformed"]


# -- replay state ------------------------------------------------------------------------


def test_apply_executed_is_pure_and_refuses_replays() -> None:
    order = make_order("halt")
    state = default_state()
    after = apply_executed(state, order)
    assert after.highest_sequence == order.sequence and order.id in after.executed_ids
    assert state == default_state(), "the old state is unchanged"
    with pytest.raises(Conflict, match="already executed"):
        apply_executed(after, order)
    with pytest.raises(Conflict, match="not above"):
        apply_executed(after, replace(order, nonce="b" * 32))
    assert ExecutedOrders.decode(after.encode()) == after
    assert after.encode() == (
        b'{"executed_ids":["' + '","'.join(sorted(after.executed_ids)).encode() + b'"],"highest_sequence":10}'
    )
    with pytest.raises(InvalidInput):
        ExecutedOrders.decode(after.encode() + b" ")
    with pytest.raises(InvalidInput):
        ExecutedOrders(highest_sequence=-1)
    with pytest.raises(InvalidInput):
        ExecutedOrders(executed_ids=frozenset({"nope"}))


def test_lifecycle_halt_lift_destroy() -> None:
    """Halt, then lift, then a destroy; a later lift of the destroyed model is refused."""
    p = panel("mixed")
    state = ExecutedOrders()
    destroyed: set[str] = set()
    for seq, action in enumerate(("halt", "lift", "destroy"), start=1):
        order = make_order(action, "mixed", sequence=seq)
        v = verify_order(
            order.encode(), p.sign_order(order), p.signer_set, now=NOW, state=state, destroyed_models=destroyed
        )
        state = apply_executed(state, v.raise_if_invalid())
        if action == "destroy":
            destroyed |= set(order.models)
        # The same order again is a replay.
        again = verify_order(order.encode(), p.sign_order(order), p.signer_set, now=NOW, state=state)
        assert OrderReason.REPLAYED in again.reasons
    lift = make_order("lift", "mixed", sequence=4)
    v = verify_order(lift.encode(), p.sign_order(lift), p.signer_set, now=NOW, state=state, destroyed_models=destroyed)
    assert v.reasons == [OrderReason.DESTROYED_MODEL]


def test_rotation_invalidates_orders_for_the_old_version() -> None:
    v1, v2 = panel("ed25519"), panel_v2("ed25519")
    trusted = TrustedSignerSets(v1.signer_set)
    trusted.update(v2.signer_set.encode(), sign_set([*v1.signers, *NEW_SIGNERS], v2.signer_set))
    old = make_order("halt")
    v = verify_order(old.encode(), v2.sign_order(old), trusted.current, now=NOW, state=default_state())
    assert v.reasons == [OrderReason.WRONG_SIGNER_SET]
    new = replace(old, signer_set_version=2)
    assert verify_order(new.encode(), v2.sign_order(new), trusted.current, now=NOW, state=default_state())
    # Version-1 signers who left cannot sign for version 2.
    v = verify_order(new.encode(), v1.sign_order(new), trusted.current, now=NOW, state=default_state())
    assert v.reasons == [OrderReason.THRESHOLD_NOT_MET] and len(v.unknown) == 3


# -- known-answer vectors -------------------------------------------------------------------


def _sigs_json(sigs: Any) -> list[dict[str, str]]:
    return [s.to_json() for s in sigs]


def make_vectors() -> dict[str, dict[str, Any]]:
    """Build both vector files from the fixed keys in tests/core/order_cases.py."""
    v1, v2 = panel("ed25519"), panel_v2("ed25519")
    mixed = panel("mixed")
    keys = []
    for s in (*ED25519_SIGNERS, *NEW_SIGNERS):
        keys.append(
            {
                "name": s.name,
                "seed_label": f"custos test signer {s.name}",
                "keytype": s.key.keytype,
                "public": s.key.public.hex(),
                "application": s.key.application,
                "key_id": s.key.key_id,
                "openssh": s.key.to_openssh(),
            }
        )
    rotation_signers = [*v1.signers, *NEW_SIGNERS]
    signer_sets = {
        "description": "Signer-set vectors (docs/orders.md). Private keys: Ed25519 seed = SHA-256(seed_label); "
        "P-256 scalar = SHA-256(seed_label) mod (n-1) + 1. Signatures are over "
        "'custos.v1.signer-set\\x00' + bytes.",
        "key_id_domain": SIGNER_KEY_DOMAIN.decode("ascii"),
        "signature_domain": SIGNER_SET_DOMAIN.decode("ascii"),
        "keys": keys,
        "sets": [
            {"version": 1, "bytes": v1.signer_set.encode().decode(), "id": v1.signer_set.id, "signatures": []},
            {
                "version": 2,
                "bytes": v2.signer_set.encode().decode(),
                "id": v2.signer_set.id,
                "signatures": _sigs_json(sign_set(rotation_signers, v2.signer_set)),
            },
        ],
        "mixed_set": {
            "bytes": mixed.signer_set.encode().decode(),
            "id": mixed.signer_set.id,
            "keys": [
                {"name": s.name, "seed_label": f"custos test signer {s.name}", "mode": s.mode} for s in mixed.signers
            ],
        },
    }
    orders = []
    for p, action in [(v1, a) for a in ("drill", "halt", "lift", "destroy")] + [(mixed, "halt")]:
        order = make_order(action, "ed25519" if p is v1 else "mixed")
        orders.append(
            {
                "name": f"{action}-{'ed25519' if p is v1 else 'mixed'}",
                "signer_set_id": p.signer_set.id,
                "bytes": order.encode().decode(),
                "id": order.id,
                "signatures": _sigs_json(p.sign_order(order, 5)),
            }
        )
    reg_bytes, reg_sigs = make_register(v1, signers=5)
    orders_doc = {
        "description": "Order vectors (docs/orders.md): canonical body bytes, id = SHA-256('custos.v1.order\\x00' "
        "+ bytes), and every signer's signature over the same bytes (raw Ed25519 hex, or SSHSIG with namespace "
        f"custos-order). Keys are in signer-sets.json. Verify at now = {NOW} with an empty replay state. The "
        "drill register (signed over 'custos.v1.drill-register\\x00' + bytes, a rotate threshold of the set) "
        "declares the drill vector's scope.",
        "domain": ORDER_DOMAIN.decode("ascii"),
        "drill_register": {"bytes": reg_bytes.decode(), "id": DrillRegister.decode(reg_bytes).id,
                           "signatures": _sigs_json(reg_sigs)},
        "now": NOW,
        "orders": orders,
    }
    return {"signer-sets.json": signer_sets, "orders.json": orders_doc}


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("filename", ["signer-sets.json", "orders.json"])
def test_vectors_reproduce_byte_for_byte(filename: str) -> None:
    stored = (VECTORS_DIR / filename).read_text(encoding="utf-8")
    assert _dump(make_vectors()[filename]) == stored, f"{filename}: an encoding changed — bump its version instead"


def test_vectors_verify_on_their_own() -> None:
    sets = json.loads((VECTORS_DIR / "signer-sets.json").read_text(encoding="utf-8"))
    v1_bytes = sets["sets"][0]["bytes"].encode()
    v1 = SignerSet.decode(v1_bytes)
    assert v1.id == sets["sets"][0]["id"] == hashlib.sha256(SIGNER_SET_DOMAIN + v1_bytes).hexdigest()
    for key in sets["keys"]:
        body = json.dumps(
            {"algorithm": "ed25519" if "ed25519" in key["keytype"] else "ecdsa-p256", "public": key["public"]},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        assert key["key_id"] == hashlib.sha256(b"custos.v1.signer-key\x00" + body).hexdigest()
    trusted = TrustedSignerSets(v1)
    v2 = sets["sets"][1]
    trusted.update(v2["bytes"].encode(), decode_signatures(v2["signatures"]))
    assert trusted.current.id == v2["id"] and trusted.version == 2
    mixed = SignerSet.decode(sets["mixed_set"]["bytes"].encode())

    orders = json.loads((VECTORS_DIR / "orders.json").read_text(encoding="utf-8"))
    by_id = {v1.id: v1, mixed.id: mixed}
    reg = orders["drill_register"]
    register = verify_register(reg["bytes"].encode(), decode_signatures(reg["signatures"]), v1)
    digest = hashlib.sha256(b"custos.v1.drill-register\x00" + reg["bytes"].encode()).hexdigest()
    assert register.id == reg["id"] == digest
    for vector in orders["orders"]:
        body = vector["bytes"].encode()
        signer_set = by_id[vector["signer_set_id"]]
        v = verify_order(
            body, decode_signatures(vector["signatures"]), signer_set, now=orders["now"], state=ExecutedOrders(),
            drill_register=register,
        )
        assert v, (vector["name"], v.failures)
        assert v.order_id == vector["id"] and len(v.valid) == 5


def test_docs_show_the_vectors() -> None:
    """docs/orders.md quotes the halt vector and the key ids: they must be the current ones."""
    text = DOCS.read_text(encoding="utf-8")
    orders = json.loads((VECTORS_DIR / "orders.json").read_text(encoding="utf-8"))["orders"]
    halt = next(v for v in orders if v["name"] == "halt-ed25519")
    sets = json.loads((VECTORS_DIR / "signer-sets.json").read_text(encoding="utf-8"))
    assert halt["bytes"] in text
    assert halt["id"] in text
    assert halt["signatures"][0]["sig"] in text
    assert sets["sets"][0]["id"] in text
    assert sets["keys"][0]["key_id"] in text
    assert sets["keys"][0]["public"] in text


def test_signature_list_encoding_roundtrip() -> None:
    p = panel("mixed")
    order = make_order("halt", "mixed")
    sigs = p.sign_order(order, 5)
    encoded = encode_signatures(sigs[::-1])
    assert decode_signatures(encoded) == sorted(sigs, key=lambda s: s.key_id)
    assert verify_order(order.encode(), decode_signatures(encoded), p.signer_set, now=NOW, state=default_state())
    assert DEV_THRESHOLDS["halt"] == 3


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-vectors"]:
        VECTORS_DIR.mkdir(exist_ok=True)
        for name, doc in make_vectors().items():
            (VECTORS_DIR / name).write_text(_dump(doc), encoding="utf-8")
            print(f"wrote {VECTORS_DIR / name}")
    else:
        print("usage: python -m tests.orders.test_orders --write-vectors")
