"""Passkey registration and login, pure: every field an attacker controls, tampered one at a time."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.console import ceremonies
from custos.console.ceremonies import (
    AuthenticatorData,
    CeremonyError,
    login_challenge,
    verify_login,
    verify_registration,
)
from custos.core import webauthn
from custos.core.orders import ORDER_DOMAIN
from custos.core.webauthn import COSE_EDDSA, COSE_ES256, FLAG_AT, FLAG_ED, FLAG_UP, FLAG_UV, unb64url
from tests.console.softauth import ORIGIN, RP_ID, SoftPasskey, cbor

CHALLENGE = bytes(range(32))


def _register(pk: SoftPasskey, body: dict[str, Any], *, require_uv: bool = True,
              challenge: bytes = CHALLENGE) -> ceremonies.NewCredential:
    return verify_registration(client_data_json=unb64url(body["client_data_json"], "c"),
                               authenticator_data=unb64url(body["authenticator_data"], "a"),
                               credential_id=unb64url(body["credential_id"], "i"),
                               spki=unb64url(body["public_key"], "k"), spki_alg=body["public_key_algorithm"],
                               challenge=challenge, origin=ORIGIN, rp_id=RP_ID, require_uv=require_uv)


@pytest.mark.parametrize("alg", [COSE_ES256, COSE_EDDSA])
def test_a_registration_yields_the_attested_key(alg: int) -> None:
    pk = SoftPasskey(alg=alg)
    new = _register(pk, pk.register(CHALLENGE))
    assert (new.alg, new.public, new.credential_id) == (alg, pk.public, pk.credential_id)
    assert new.user_verified


OTHER = SoftPasskey()

REGISTRATION_ATTACKS: list[tuple[str, dict[str, Any], str]] = [
    ("a login assertion's client data", {"typ": "webauthn.get"}, "not webauthn.create"),
    ("another challenge", {"challenge": bytes(32)}, "not the challenge"),
    ("a phishing origin", {"origin": "https://localhost.evil.test"}, "origin"),
    ("cross-origin", {"client_extra": {"crossOrigin": True}}, "cross-origin"),
    ("another relying party", {"rp_id": "evil.test"}, "rpIdHash"),
    ("no user presence", {"flags": FLAG_UV | FLAG_AT}, "(UP)"),
    ("no user verification", {"flags": FLAG_UP | FLAG_AT}, "(UV)"),
    ("no attested credential", {"flags": FLAG_UP | FLAG_UV}, "no attested credential"),
    ("another attested credential id", {"attested_id": b"someone else's"}, "credential id posted"),
    ("the SPKI of another key", {"spki": OTHER.spki()}, "public key posted"),
    ("the algorithm misstated", {"spki_alg": COSE_EDDSA}, "public key posted"),
    ("an RS256 COSE key", {"cose": cbor({1: 3, 3: -257, -1: b"n" * 256, -2: b"\x01\x00\x01"})}, "only ES256"),
    ("a P-256 key with a short coordinate", {"cose": cbor({1: 2, 3: -7, -1: 1, -2: b"x" * 31, -3: b"y" * 32})},
     "32-byte"),
    ("a point off the curve", {"cose": cbor({1: 2, 3: -7, -1: 1, -2: b"\x01" * 32, -3: b"\x02" * 32})},
     "public key"),
    ("bytes after the credential", {"tail": b"\x00"}, "left over"),
    ("an indefinite-length COSE map", {"cose": b"\xbf\x01\x02\xff"}, "indefinite"),
    ("a truncated COSE key", {"cose": cbor({1: 2, 3: -7, -1: 1, -2: b"x" * 32, -3: b"y" * 32})[:-5]}, "truncated"),
    ("extensions flagged but garbage", {"flags": FLAG_UP | FLAG_UV | FLAG_AT | FLAG_ED, "tail": b"\x01"},
     "extensions"),
]


@pytest.mark.parametrize(("name", "tamper", "why"), REGISTRATION_ATTACKS, ids=[a[0] for a in REGISTRATION_ATTACKS])
def test_tampered_registrations_are_refused(name: str, tamper: dict[str, Any], why: str) -> None:
    pk = SoftPasskey()
    challenge = tamper.pop("challenge", CHALLENGE)
    with pytest.raises(CeremonyError, match=why.replace("(", r"\(").replace(")", r"\)")):
        _register(pk, pk.register(challenge, **tamper))


def test_uv_can_be_waived_by_config_only() -> None:
    pk = SoftPasskey()
    new = _register(pk, pk.register(CHALLENGE, flags=FLAG_UP | FLAG_AT), require_uv=False)
    assert not new.user_verified


def _login(pk: SoftPasskey, a: dict[str, str], nonce: bytes, *, stored: int = 0, public: bytes | None = None) -> int:
    assertion = webauthn.Assertion(unb64url(a["authenticator_data"], "a"), unb64url(a["client_data_json"], "c"),
                                   unb64url(a["signature"], "s"))
    return verify_login(assertion=assertion, nonce=nonce, credential_id=pk.credential_id, alg=pk.alg,
                        public=public or pk.public, stored_count=stored, origin=ORIGIN, rp_id=RP_ID)


def test_login_checks_challenge_origin_key_and_counter() -> None:
    pk = SoftPasskey(alg=COSE_EDDSA)
    nonce = os.urandom(32)
    assert _login(pk, pk.assertion(login_challenge(nonce)), nonce) == 1
    # a forged assertion: another key signed it
    with pytest.raises(CeremonyError, match="does not verify"):
        _login(pk, pk.assertion(login_challenge(nonce), key=SoftPasskey(alg=COSE_EDDSA).key), nonce)
    # an assertion for another challenge (an earlier login)
    with pytest.raises(CeremonyError, match="challenge"):
        _login(pk, pk.assertion(login_challenge(os.urandom(32))), nonce)
    # a phishing site's assertion
    with pytest.raises(CeremonyError, match="origin"):
        _login(pk, pk.assertion(login_challenge(nonce), origin="https://evil.test"), nonce)
    # a replay: the counter did not grow
    with pytest.raises(CeremonyError, match="counter"):
        _login(pk, pk.assertion(login_challenge(nonce), bump=0), nonce, stored=pk.counter)
    # an authenticator without a counter (always 0) is fine
    pk0 = SoftPasskey()
    assert _login(pk0, pk0.assertion(login_challenge(nonce), bump=0), nonce) == 0


def test_a_signature_on_an_order_never_logs_in_and_a_login_never_signs() -> None:
    """Login challenges are the digest of another domain: the two ceremonies cannot be swapped."""
    pk = SoftPasskey()
    nonce = os.urandom(32)
    order_input = ORDER_DOMAIN + b'{"action":"halt"}'
    vote = pk.assertion(webauthn.challenge_for(order_input))
    with pytest.raises(CeremonyError, match="challenge"):
        _login(pk, vote, nonce)
    login = pk.assertion(login_challenge(nonce))
    params = webauthn.WebAuthnParams(alg=pk.alg, rp_id=RP_ID, origins=(ORIGIN,), user_verification=True,
                                     credential_id=pk.credential_id)
    wire = webauthn.Assertion(*(unb64url(login[k], k) for k in ("authenticator_data", "client_data_json",
                                                                "signature"))).encode()
    assert webauthn.verify_assertion(params, pk.public, order_input, wire) is not None
    assert ceremonies.login_message(nonce).startswith(b"custos.v1.console-login\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 255))
def test_authenticator_data_parsing_never_fails_otherwise(tail: bytes, flags: int) -> None:
    data = bytes(32) + bytes([flags]) + bytes(4) + tail
    try:
        AuthenticatorData.parse(data)
    except CeremonyError:
        pass
