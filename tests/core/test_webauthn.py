"""Passkey (WebAuthn) signatures: known-answer vectors and the adversarial table.

The verifier (custos.core.webauthn) is the same pure code in the control plane and in
every agent, so a compromised console or control plane cannot make a passkey vote it
did not cast. Each row below is a way to try:

- an assertion from the right passkey, but for another origin, another rpId, without
  user verification where the key requires it, without user presence, of the wrong
  ceremony type (a registration), cross-origin, with attested data or trailing bytes;
- a replayed assertion: one made for another order (its challenge is that order's
  digest), for the same order under another signature domain (a signer set, a drill
  register), or the same one twice (one key counts once);
- a signature by another key, a passkey key id on an SSHSIG or raw signature, a
  WebAuthn assertion on an SSH key's id;
- every encoding trick: non-canonical base64url, missing parts, oversize parts.

Vectors: tests/core/vectors/webauthn.json holds fixed assertions (RFC 6979 ECDSA and
Ed25519 are deterministic, so they are reproduced byte for byte) and the verdict each
must get; they are checked from the file alone, without the generator.
Regenerate only for a new format version: ``python -m tests.core.test_webauthn --write-vectors``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from custos.core import webauthn
from custos.core.orders import ORDER_DOMAIN, verify_order
from custos.core.signers import DEV_THRESHOLDS, SIGNER_SET_DOMAIN, Signature, SignerKey, SignerSet, SignerSetError
from tests.core.order_cases import (
    NOW,
    PASSKEY_ORIGIN,
    PASSKEY_RP_ID,
    PASSKEY_SIGNERS,
    default_state,
    make_order,
    p256_key,
    panel,
    passkey_params,
    webauthn_sign,
)

VECTORS = Path(__file__).parent / "vectors" / "webauthn.json"
UP, UV, AT, ED = webauthn.FLAG_UP, webauthn.FLAG_UV, webauthn.FLAG_AT, webauthn.FLAG_ED

ES256 = PASSKEY_SIGNERS[0]  # requires UV
EDDSA = PASSKEY_SIGNERS[1]  # does not require UV
OTHER = PASSKEY_SIGNERS[2]

ORDER = make_order("halt", "passkey")
MESSAGE = ORDER_DOMAIN + ORDER.encode()
OTHER_ORDER = make_order("halt", "passkey", nonce="e" * 32)


def check(signer: Any, sig: str, message: bytes = MESSAGE) -> str | None:
    return signer.key.verify(sig, message, namespace="custos-order")


def sign(signer: Any = ES256, message: bytes = MESSAGE, **kw: Any) -> str:
    return webauthn_sign(signer.private_key, message, **kw)


def test_valid_assertions_of_both_algorithms() -> None:
    assert check(ES256, sign(ES256)) is None
    assert check(EDDSA, sign(EDDSA)) is None
    assert check(EDDSA, sign(EDDSA, flags=UP)) is None, "UV not required by this key"
    assert check(ES256, sign(ES256, cross_origin=None)) is None, "crossOrigin may be absent"
    assert check(ES256, sign(ES256, flags=UP | UV | ED, extensions=b"\xa0")) is None, "extensions, flagged"
    assert check(ES256, sign(ES256, client_extra={"tokenBinding": {"status": "supported"}})) is None


def _rows() -> list[tuple[str, Any, str]]:
    other_origin = "https://evil.example"
    return [
        ("wrong-origin", lambda: check(ES256, sign(origin=other_origin)), "not one of the key's allowed origins"),
        ("origin-with-other-port", lambda: check(ES256, sign(origin="https://console.custos.test:9443")),
         "allowed origins"),
        ("http-origin", lambda: check(ES256, sign(origin="http://console.custos.test:8443")), "allowed origins"),
        ("wrong-rp-id", lambda: check(ES256, sign(rp_id="custos.test")), "rpIdHash"),
        ("rp-id-of-the-evil-origin", lambda: check(ES256, sign(rp_id="evil.example", origin=other_origin)),
         "allowed origins"),
        ("uv-missing-when-required", lambda: check(ES256, sign(flags=UP)), "user verification \\(UV\\) required"),
        ("up-missing", lambda: check(EDDSA, sign(EDDSA, flags=UV)), "user presence \\(UP\\)"),
        ("no-flags", lambda: check(EDDSA, sign(EDDSA, flags=0)), "user presence"),
        ("registration-ceremony", lambda: check(ES256, sign(typ="webauthn.create")), "not webauthn.get"),
        ("payment-ceremony", lambda: check(ES256, sign(typ="payment.get")), "not webauthn.get"),
        ("cross-origin", lambda: check(ES256, sign(cross_origin=True)), "cross-origin"),
        ("cross-origin-not-bool", lambda: check(ES256, sign(client_extra={"crossOrigin": "false"})), "cross-origin"),
        ("attested-data-in-assertion", lambda: check(ES256, sign(flags=UP | UV | AT)), "attested credential"),
        ("trailing-bytes-without-ed", lambda: check(ES256, sign(extensions=b"\x00")), "without the extensions"),
        ("challenge-of-another-order",
         lambda: check(ES256, sign(message=ORDER_DOMAIN + OTHER_ORDER.encode())), "challenge is not this object"),
        ("challenge-of-the-body-without-domain", lambda: check(ES256, sign(message=ORDER.encode())), "challenge"),
        ("challenge-as-raw-bytes", lambda: check(ES256, sign(challenge=MESSAGE[:32])), "challenge"),
        ("login-challenge", lambda: check(ES256, sign(challenge=b"\x00" * 32)), "challenge"),
        ("same-order-under-the-signer-set-domain",
         lambda: check(ES256, sign(message=SIGNER_SET_DOMAIN + ORDER.encode())), "challenge"),
        ("signed-by-another-passkey", lambda: check(ES256, sign(OTHER)), "does not verify"),
        ("ed25519-key-es256-signature", lambda: check(EDDSA, sign(ES256)), "64 bytes"),
        ("es256-key-ed25519-signature", lambda: check(ES256, sign(EDDSA)), "malformed|does not verify"),
        ("sshsig-on-a-passkey-id", lambda: check(ES256, "-----BEGIN SSH SIGNATURE-----\nAA==\n"
                                                        "-----END SSH SIGNATURE-----\n"), "only with a WebAuthn"),
        ("raw-hex-on-a-passkey-id", lambda: check(ES256, "00" * 64), "only with a WebAuthn"),
        ("assertion-on-an-ssh-key-id", lambda: check(PASSKEY_SIGNERS[4], sign()), "a WebAuthn assertion, but"),
        ("assertion-on-a-raw-key-id", lambda: check(PASSKEY_SIGNERS[3], sign()), "a WebAuthn assertion, but"),
        ("padded-base64", lambda: check(ES256, sign() + "="), "base64url"),
        ("standard-base64-alphabet", lambda: check(ES256, sign().replace("-", "+").replace("_", "/")),
         "base64url|does not verify|JSON"),
        ("two-parts", lambda: check(ES256, ".".join(sign().split(".")[:4])), "three"),
        ("four-parts", lambda: check(ES256, sign() + ".AA"), "three"),
        ("short-auth-data", lambda: check(ES256, webauthn.Assertion(b"\x00" * 36, b"{}", b"\x00").encode()),
         "impossible length"),
        ("huge-client-data", lambda: check(ES256, webauthn.Assertion(b"\x00" * 37, b"{" * 5000, b"\x00").encode()),
         "impossible length"),
        ("client-data-not-json", lambda: check(ES256, _with_client(b"\xff\xfe")), "not UTF-8 JSON"),
        ("client-data-a-list", lambda: check(ES256, _with_client(b"[]")), "not an object"),
        ("client-data-edited", lambda: check(ES256, _with_client(_client(sign()) + b" ")), "does not verify"),
        ("auth-data-counter-edited", lambda: check(ES256, _edit_auth(sign(), 36, 0x01)), "does not verify"),
        ("auth-data-uv-added", lambda: check(EDDSA, _edit_auth(sign(EDDSA, flags=UP), 32, UV)), "does not verify"),
        ("signature-bitflip", lambda: check(ES256, _flip_sig(sign())), "does not verify|malformed"),
        ("ecdsa-high-s-twin", lambda: check(ES256, _high_s(sign())), None),
    ]


def _client(sig: str) -> bytes:
    return webauthn.Assertion.decode(sig).client_data_json


def _with_client(client: bytes) -> str:
    a = webauthn.Assertion.decode(sign())
    return replace(a, client_data_json=client).encode()


def _edit_auth(sig: str, pos: int, xor: int) -> str:
    a = webauthn.Assertion.decode(sig)
    auth = bytearray(a.authenticator_data)
    auth[pos] ^= xor
    return replace(a, authenticator_data=bytes(auth)).encode()


def _flip_sig(sig: str) -> str:
    a = webauthn.Assertion.decode(sig)
    return replace(a, signature=a.signature[:-1] + bytes([a.signature[-1] ^ 1])).encode()


def _high_s(sig: str) -> str:
    """The (r, n - s) twin of an ECDSA signature: mathematically valid too. It verifies, and that
    is harmless: it is the same key's vote on the same object, which counts once."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    a = webauthn.Assertion.decode(sig)
    r, s = decode_dss_signature(a.signature)
    return replace(a, signature=encode_dss_signature(r, n - s)).encode()


ROWS = _rows()


@pytest.mark.parametrize(("name", "attempt", "why"), ROWS, ids=[r[0] for r in ROWS])
def test_adversarial_assertions(name: str, attempt: Any, why: str | None) -> None:
    import re

    got = attempt()
    if why is None:
        assert got is None
    else:
        assert got is not None and re.search(why, got), got


def test_a_replayed_assertion_counts_once_and_an_order_needs_its_threshold() -> None:
    p = panel("passkey")
    body = ORDER.encode()
    one = Signature(ES256.key.key_id, sign(ES256))
    twin = Signature(ES256.key.key_id, _high_s(one.sig))  # a second valid encoding of the same vote
    v = verify_order(body, [one, one, twin, Signature(EDDSA.key.key_id, sign(EDDSA))], p.signer_set, now=NOW,
                     state=default_state())
    assert not v and v.missing == 1, "two distinct keys, however many copies: 3 needed"
    replayed = Signature(OTHER.key.key_id, sign(OTHER, message=ORDER_DOMAIN + OTHER_ORDER.encode()))
    v = verify_order(body, [one, Signature(EDDSA.key.key_id, sign(EDDSA)), replayed], p.signer_set, now=NOW,
                     state=default_state())
    assert not v, "an assertion made for another order is not a vote on this one"
    good = [one, Signature(EDDSA.key.key_id, sign(EDDSA)), Signature(OTHER.key.key_id, sign(OTHER))]
    assert verify_order(body, good, p.signer_set, now=NOW, state=default_state())


def test_a_passkey_and_an_ssh_key_of_one_pair_are_one_vote() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    point = p256_key("pk-exec1").public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    ssh = SignerKey(name="exec-ssh", keytype="ecdsa-p256", public=point)
    assert ssh.key_id == ES256.key.key_id
    with pytest.raises(SignerSetError):
        SignerSet.bootstrap([ES256.key, ssh, *(s.key for s in PASSKEY_SIGNERS[1:])], thresholds=DEV_THRESHOLDS)


@pytest.mark.parametrize(("change", "why"), [
    ({"alg": -257}, "alg must be"),
    ({"alg": True}, "alg must be"),
    ({"rp_id": "Console.Custos.Test"}, "bad rp_id"),
    ({"rp_id": "https://console.custos.test"}, "bad rp_id"),
    ({"origins": ()}, "origins"),
    ({"origins": ("https://a.test", "https://a.test")}, "distinct"),
    ({"origins": ("http://console.custos.test",)}, "bad origin"),
    ({"origins": ("https://console.custos.test/path",)}, "bad origin"),
    ({"user_verification": 1}, "true or false"),
    ({"credential_id": b""}, "credential_id"),
])
def test_bad_passkey_parameters(change: dict[str, Any], why: str) -> None:
    from custos.errors import InvalidInput

    base = passkey_params("x", "p256").to_json()
    fields = {"alg": base["alg"], "rp_id": base["rp_id"], "origins": tuple(base["origins"]),
              "user_verification": base["user_verification"], "credential_id": b"\x01" * 16, **change}
    with pytest.raises(InvalidInput, match=why):
        webauthn.WebAuthnParams(**fields)


def test_signer_set_round_trips_a_passkey_and_refuses_mismatches() -> None:
    ss = panel("passkey").signer_set
    again = SignerSet.decode(ss.encode())
    assert again.encode() == ss.encode() and again.keys[0].webauthn == ss.keys[0].webauthn
    good = ES256.key.to_json()
    for edit, why in (
        ({"webauthn": None}, "want exactly|webauthn"),
        ({"keytype": "ecdsa-p256"}, "want exactly"),
        ({"public": EDDSA.key.public.hex()}, "webauthn public key|key_id"),
    ):
        obj = {**good, **edit}
        obj = {k: v for k, v in obj.items() if v is not None}
        with pytest.raises(SignerSetError, match=why):
            SignerKey.from_json(obj)
    no_params = dict(good)
    del no_params["webauthn"]
    with pytest.raises(SignerSetError):
        SignerKey.from_json(no_params)
    with pytest.raises(SignerSetError, match="only with"):
        SignerKey(name="x", keytype="ecdsa-p256", public=ES256.key.public, webauthn=ES256.key.webauthn)


def test_spki_from_a_browser_gives_the_raw_key() -> None:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from custos.errors import InvalidInput

    pub = p256_key("pk-exec1").public_key()
    alg, raw = webauthn.public_key_from_spki(pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    assert alg == webauthn.COSE_ES256 and raw == ES256.key.public
    with pytest.raises(InvalidInput):
        webauthn.public_key_from_spki(b"\x30\x00")


# -- known-answer vectors ----------------------------------------------------------------


def make_vectors() -> dict[str, Any]:
    """Fixed passkeys and assertions over one fixed order, each with the verdict it must get."""
    cases = [
        ("es256-valid", ES256, {}, None),
        ("eddsa-valid", EDDSA, {}, None),
        ("eddsa-valid-without-uv", EDDSA, {"flags": UP}, None),
        ("es256-uv-missing", ES256, {"flags": UP}, "user verification"),
        ("es256-wrong-origin", ES256, {"origin": "https://evil.example"}, "origin"),
        ("es256-wrong-rp-id", ES256, {"rp_id": "custos.test"}, "rpIdHash"),
        ("es256-other-order", ES256, {"message": ORDER_DOMAIN + OTHER_ORDER.encode()}, "challenge"),
        ("eddsa-registration-type", EDDSA, {"typ": "webauthn.create"}, "webauthn.get"),
    ]
    out = []
    for name, signer, kw, why in cases:
        out.append({"name": name, "key": signer.key.to_json(), "sig": sign(signer, **kw),
                    "verdict": "valid" if why is None else f"invalid: {why}"})
    return {"version": 1, "order": ORDER.encode().decode(), "domain": ORDER_DOMAIN.decode("latin-1"),
            "rp_id": PASSKEY_RP_ID, "origin": PASSKEY_ORIGIN,
            "challenge": webauthn.b64url(hashlib.sha256(MESSAGE).digest()), "vectors": out}


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def test_vectors_reproduce_byte_for_byte() -> None:
    assert _dump(make_vectors()) == VECTORS.read_text(encoding="utf-8"), "an encoding changed: bump the version"


def test_vectors_verify_on_their_own() -> None:
    data = json.loads(VECTORS.read_text(encoding="utf-8"))
    message = data["domain"].encode("latin-1") + data["order"].encode()
    assert webauthn.b64url(hashlib.sha256(message).digest()) == data["challenge"]
    for v in data["vectors"]:
        key = SignerKey.from_json(v["key"])
        got = key.verify(v["sig"], message, namespace="custos-order")
        client = json.loads(webauthn.Assertion.decode(v["sig"]).client_data_json)
        if v["verdict"] == "valid":
            assert got is None, (v["name"], got)
            assert client["challenge"] == data["challenge"] and client["origin"] == data["origin"]
        else:
            assert got is not None and v["verdict"].split(": ", 1)[1] in got, (v["name"], got)


def test_docs_name_the_wire_form() -> None:
    text = (Path(__file__).parents[2] / "docs" / "orders.md").read_text(encoding="utf-8")
    assert "webauthn.v1.<authenticatorData>.<clientDataJSON>.<signature>" in text


if __name__ == "__main__" and "--write-vectors" in sys.argv:
    VECTORS.write_text(_dump(make_vectors()), encoding="utf-8")
    print(f"wrote {VECTORS}")


def test_fuzzed_signatures_never_raise_and_never_verify() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    good = sign(ES256)
    parts = good[len(webauthn.SIG_PREFIX):].split(".")

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(
        st.text(max_size=200),
        st.tuples(st.sampled_from(range(3)), st.binary(max_size=120)).map(
            lambda t: webauthn.SIG_PREFIX + ".".join(
                webauthn.b64url(t[1]) if i == t[0] else p for i, p in enumerate(parts))),
    ))
    def attempt(sig: str) -> None:
        if sig == good:
            return
        assert check(ES256, sig) is not None

    attempt()
