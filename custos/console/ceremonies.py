"""Passkey ceremonies of the console: registering a credential and logging in with it.

Pure functions (bytes in, typed results out); the HTTP layer supplies the
challenges it issued and the credentials it stored.

**Registration** (``navigator.credentials.create``, attestation "none"): the
browser posts ``clientDataJSON``, ``authenticatorData`` (``getAuthenticatorData()``),
the public key as SubjectPublicKeyInfo DER (``getPublicKey()``) with its COSE
algorithm (``getPublicKeyAlgorithm()``), and the credential id.
:func:`verify_registration` checks the client data (type ``webauthn.create``,
the challenge this console issued, its origin, not cross-origin), the
authenticator data (``rpIdHash``, UP, UV when required, AT), that the attested
credential id is the one posted, and that the COSE key in the attested data is
the key the browser handed over as SPKI. Without an attestation statement nothing
here proves which authenticator made the key: the enrollment token and the TLS
channel are what bind it to a person.

**Login** (``navigator.credentials.get``): the challenge is
``SHA-256("custos.v1.console-login" 0x00 || nonce)`` for a fresh random nonce,
so a login assertion can never be a vote on an order or a signer set (whose
challenges are the digests of other domains). It is checked by the same pure
verifier that checks order signatures (:func:`custos.core.webauthn.verify_assertion`),
and the signature counter, when the authenticator keeps one, must grow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from custos.core import webauthn
from custos.core.webauthn import COSE_EDDSA, COSE_ES256, FLAG_AT, FLAG_ED, FLAG_UP, FLAG_UV, b64url
from custos.errors import InvalidInput

LOGIN_DOMAIN = b"custos.v1.console-login\x00"
MAX_CBOR_DEPTH = 8


class CeremonyError(InvalidInput):
    """A registration or login response that does not check out."""


# -- a minimal CBOR reader: enough for a COSE_Key and the extensions map after it --------------


def _cbor_item(data: bytes, pos: int, depth: int = 0) -> tuple[object, int]:
    """One CBOR data item at ``pos``: unsigned and negative integers, byte and text strings,
    arrays and maps of definite length, false/true/null. Raises CeremonyError."""
    if depth > MAX_CBOR_DEPTH:
        raise CeremonyError("CBOR nested too deep")
    if pos >= len(data):
        raise CeremonyError("CBOR truncated")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if major == 7:
        simple = {20: False, 21: True, 22: None}
        if info not in simple:
            raise CeremonyError("CBOR: unsupported simple value or float")
        return simple[info], pos
    if info < 24:
        arg = info
    elif info in (24, 25, 26, 27):
        n = 1 << (info - 24)
        if pos + n > len(data):
            raise CeremonyError("CBOR truncated")
        arg = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    else:
        raise CeremonyError("CBOR: indefinite or reserved length")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if pos + arg > len(data):
            raise CeremonyError("CBOR truncated")
        raw = data[pos:pos + arg]
        pos += arg
        if major == 2:
            return raw, pos
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise CeremonyError("CBOR: text string is not UTF-8") from None
    if major == 4:
        if arg > len(data):
            raise CeremonyError("CBOR truncated")
        items = []
        for _ in range(arg):
            item, pos = _cbor_item(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        if arg > len(data):
            raise CeremonyError("CBOR truncated")
        out: dict[object, object] = {}
        for _ in range(arg):
            key, pos = _cbor_item(data, pos, depth + 1)
            if not isinstance(key, int | str) or key in out:
                raise CeremonyError("CBOR map: bad or duplicate key")
            out[key], pos = _cbor_item(data, pos, depth + 1)
        return out, pos
    raise CeremonyError("CBOR: tags are not supported here")


def cose_public_key(data: bytes, pos: int = 0) -> tuple[int, bytes, int]:
    """(COSE alg, raw public key, end offset) of the COSE_Key at ``pos``: EC2 P-256 with ES256
    (-7), or OKP Ed25519 with EdDSA (-8). Raises CeremonyError."""
    key, end = _cbor_item(data, pos)
    if not isinstance(key, dict):
        raise CeremonyError("credential public key: not a COSE_Key map")
    kty, alg, crv, x = key.get(1), key.get(3), key.get(-1), key.get(-2)
    if kty == 2 and alg == COSE_ES256 and crv == 1:
        y = key.get(-3)
        if not (isinstance(x, bytes) and isinstance(y, bytes) and len(x) == 32 and len(y) == 32):
            raise CeremonyError("credential public key: a P-256 key has 32-byte x and y")
        public = b"\x04" + x + y
    elif kty == 1 and alg == COSE_EDDSA and crv == 6:
        if not (isinstance(x, bytes) and len(x) == 32):
            raise CeremonyError("credential public key: an Ed25519 key has a 32-byte x")
        public = x
    else:
        raise CeremonyError("credential public key: only ES256 (P-256) and EdDSA (Ed25519) passkeys are accepted")
    try:
        webauthn.check_public_key(alg, public)
    except InvalidInput as exc:
        raise CeremonyError(f"credential public key: {exc}") from None
    return alg, public, end


@dataclass(frozen=True, slots=True)
class AuthenticatorData:
    """authenticatorData, parsed: the first 37 bytes and, when AT is set, the attested credential."""

    rp_id_hash: bytes
    flags: int
    sign_count: int
    credential_id: bytes | None = None
    alg: int | None = None
    public: bytes | None = None

    @classmethod
    def parse(cls, data: bytes) -> AuthenticatorData:
        """Raises CeremonyError for a malformed value or bytes left over."""
        if not isinstance(data, bytes) or not 37 <= len(data) <= webauthn.MAX_AUTH_DATA:
            raise CeremonyError("authenticatorData: want 37 to 1024 bytes")
        flags = data[32]
        count = int.from_bytes(data[33:37], "big")
        pos = 37
        cred = alg = public = None
        if flags & FLAG_AT:
            if len(data) < pos + 18:
                raise CeremonyError("authenticatorData: attested credential data truncated")
            n = int.from_bytes(data[pos + 16:pos + 18], "big")
            pos += 18
            if not 1 <= n <= webauthn.MAX_CREDENTIAL_ID or pos + n > len(data):
                raise CeremonyError("authenticatorData: bad credential id length")
            cred = data[pos:pos + n]
            alg, public, pos = cose_public_key(data, pos + n)
        if flags & FLAG_ED:
            ext, pos = _cbor_item(data, pos)
            if not isinstance(ext, dict):
                raise CeremonyError("authenticatorData: extensions are not a map")
        if pos != len(data):
            raise CeremonyError("authenticatorData: bytes left over")
        return cls(data[:32], flags, count, cred, alg, public)


def _client_data(raw: bytes, *, typ: str, challenge: bytes, origin: str) -> None:
    try:
        client = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CeremonyError("clientDataJSON is not UTF-8 JSON") from None
    if not isinstance(client, dict):
        raise CeremonyError("clientDataJSON is not an object")
    if client.get("type") != typ:
        raise CeremonyError(f"clientDataJSON type is {str(client.get('type'))[:40]!r}, not {typ}")
    if client.get("challenge") != b64url(challenge):
        raise CeremonyError("clientDataJSON: not the challenge this console issued")
    if client.get("origin") != origin:
        raise CeremonyError(f"clientDataJSON: origin {str(client.get('origin'))[:80]!r} is not this console's")
    if client.get("crossOrigin", False) is not False:
        raise CeremonyError("clientDataJSON: a cross-origin request")


@dataclass(frozen=True, slots=True)
class NewCredential:
    """A registered passkey: what the console stores, and later puts in a signer key."""

    credential_id: bytes
    alg: int
    public: bytes
    sign_count: int
    user_verified: bool


def verify_registration(*, client_data_json: bytes, authenticator_data: bytes, credential_id: bytes,
                        spki: bytes, spki_alg: int, challenge: bytes, origin: str, rp_id: str,
                        require_uv: bool = True) -> NewCredential:
    """Check a ``navigator.credentials.create`` response (see the module). Raises CeremonyError."""
    if len(client_data_json) > webauthn.MAX_CLIENT_DATA:
        raise CeremonyError("clientDataJSON too long")
    _client_data(client_data_json, typ="webauthn.create", challenge=challenge, origin=origin)
    auth = AuthenticatorData.parse(authenticator_data)
    if auth.rp_id_hash != hashlib.sha256(rp_id.encode()).digest():
        raise CeremonyError(f"authenticatorData: rpIdHash is not SHA-256 of {rp_id!r}")
    if not auth.flags & FLAG_UP:
        raise CeremonyError("authenticatorData: user presence (UP) not asserted")
    if require_uv and not auth.flags & FLAG_UV:
        raise CeremonyError("authenticatorData: user verification (UV) required and not asserted")
    if auth.credential_id is None or auth.alg is None or auth.public is None:
        raise CeremonyError("authenticatorData: no attested credential data (AT flag)")
    if auth.credential_id != credential_id:
        raise CeremonyError("the credential id posted is not the one the authenticator attested")
    try:
        alg, public = webauthn.public_key_from_spki(spki)
    except InvalidInput as exc:
        raise CeremonyError(str(exc)) from None
    if (alg, public) != (auth.alg, auth.public) or spki_alg != alg:
        raise CeremonyError("the public key posted is not the one the authenticator attested")
    return NewCredential(credential_id=credential_id, alg=alg, public=public, sign_count=auth.sign_count,
                         user_verified=bool(auth.flags & FLAG_UV))


def login_message(nonce: bytes) -> bytes:
    """The message a login assertion signs: its challenge is SHA-256 of it."""
    return LOGIN_DOMAIN + nonce


def login_challenge(nonce: bytes) -> bytes:
    return webauthn.challenge_for(login_message(nonce))


def verify_login(*, assertion: webauthn.Assertion, nonce: bytes, credential_id: bytes, alg: int, public: bytes,
                 stored_count: int, origin: str, rp_id: str, require_uv: bool = True) -> int:
    """Check a login assertion by a stored credential for the challenge of ``nonce``; the
    authenticator's new signature counter. Raises CeremonyError."""
    params = webauthn.WebAuthnParams(alg=alg, rp_id=rp_id, origins=(origin,), user_verification=require_uv,
                                     credential_id=credential_id)
    problem = webauthn.verify_assertion(params, public, login_message(nonce), assertion.encode())
    if problem is not None:
        raise CeremonyError(problem)
    return check_counter(assertion.authenticator_data, stored_count)


def check_counter(authenticator_data: bytes, stored: int) -> int:
    """The assertion's signature counter; raises CeremonyError if the authenticator keeps one and it
    did not grow (a cloned authenticator, or a replay)."""
    count = int.from_bytes(authenticator_data[33:37], "big")
    if (count or stored) and count <= stored:
        raise CeremonyError(f"the authenticator's signature counter did not grow ({count} after {stored}): "
                            "a cloned passkey or a replayed assertion")
    return count
