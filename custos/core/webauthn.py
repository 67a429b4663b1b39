"""WebAuthn (passkey) signatures over Custos messages: the assertion format and its check.

A passkey signs an order (or a signer set) the way it signs a login: the browser
asks the authenticator for an assertion whose challenge is, here,
``SHA-256(message)`` — ``message`` being the object's domain-separated signature
input (e.g. ``custos.v1.order\\0 || canonical body``), so an assertion is bound to
exactly one object of one kind. The authenticator signs
``authenticatorData || SHA-256(clientDataJSON)``; :func:`verify_assertion` checks,
with no network and no state:

- ``clientDataJSON``: UTF-8 JSON, ``type`` is ``webauthn.get``, ``challenge``
  is the base64url (unpadded) of ``SHA-256(message)``, ``origin`` is one of the
  key's allowed origins, ``crossOrigin`` is absent or false;
- ``authenticatorData``: at least 37 bytes; ``rpIdHash`` is ``SHA-256(rp_id)``;
  the UP flag (user present) is set; the UV flag (user verified) is set when the
  key requires it; AT (attested credential data) is not set in an assertion;
  without ED (extensions) nothing follows the 37 bytes;
- the signature: ES256 (COSE -7: ECDSA P-256 with SHA-256, DER) or EdDSA
  (COSE -8: Ed25519, 64 bytes) by the key's public key.

The signature counter is not checked: verification is pure and stateless, and a
replayed assertion can only repeat a vote that was already cast on the same
object (every signature of one key counts once). An assertion made for another
order carries that order's digest as its challenge and fails here.

The wire form of a WebAuthn signature (``Signature.sig``) is
``webauthn.v1.<authenticatorData>.<clientDataJSON>.<signature>``, each part
base64url without padding. Specified in docs/orders.md ("Passkeys").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custos.errors import InvalidInput

COSE_ES256 = -7
COSE_EDDSA = -8
ALGORITHMS = {COSE_ES256: "ecdsa-p256", COSE_EDDSA: "ed25519"}  # COSE alg -> key pair algorithm

SIG_PREFIX = "webauthn.v1."
MAX_CLIENT_DATA = 4096
MAX_AUTH_DATA = 1024
MAX_ORIGINS = 8
MAX_CREDENTIAL_ID = 1023  # the WebAuthn limit

FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_AT = 0x40
FLAG_ED = 0x80

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ORIGIN = re.compile(r"https://[a-z0-9.-]+(?::[0-9]{1,5})?|http://(?:localhost|127\.0\.0\.1)(?::[0-9]{1,5})?")
_RP_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str, what: str) -> bytes:
    """Strict unpadded base64url. Raises InvalidInput."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidInput(f"{what}: not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what}: not unpadded base64url") from None
    if b64url(raw) != text:
        raise InvalidInput(f"{what}: not the canonical base64url of its bytes")
    return raw


def challenge_for(message: bytes) -> bytes:
    """The WebAuthn challenge for a signature input: its SHA-256."""
    return hashlib.sha256(message).digest()


@dataclass(frozen=True, slots=True)
class WebAuthnParams:
    """What a passkey signer key binds besides its public key.

    ``alg`` is the COSE algorithm (-7 ES256, -8 EdDSA); ``rp_id`` the relying
    party id the credential was made for; ``origins`` the web origins allowed to
    ask for its assertions; ``user_verification`` whether UV is required;
    ``credential_id`` the credential's id (what the browser is asked for).
    Raises InvalidInput for a bad value.
    """

    alg: int
    rp_id: str
    origins: tuple[str, ...]
    user_verification: bool
    credential_id: bytes

    def __post_init__(self) -> None:
        if isinstance(self.alg, bool) or self.alg not in ALGORITHMS:
            raise InvalidInput(f"webauthn: alg must be {COSE_ES256} (ES256) or {COSE_EDDSA} (EdDSA), "
                               f"got {self.alg!r}")
        if not isinstance(self.rp_id, str) or len(self.rp_id) > 253 or not _RP_ID.fullmatch(self.rp_id):
            raise InvalidInput(f"webauthn: bad rp_id {str(self.rp_id)[:80]!r} (a lowercase domain name)")
        if (not isinstance(self.origins, tuple) or not 1 <= len(self.origins) <= MAX_ORIGINS
                or len(set(self.origins)) != len(self.origins)):
            raise InvalidInput(f"webauthn: want 1-{MAX_ORIGINS} distinct origins")
        for o in self.origins:
            if not isinstance(o, str) or len(o) > 300 or not _ORIGIN.fullmatch(o):
                raise InvalidInput(f"webauthn: bad origin {str(o)[:80]!r} (https://host[:port], or http://localhost)")
        if not isinstance(self.user_verification, bool):
            raise InvalidInput("webauthn: user_verification must be true or false")
        if (not isinstance(self.credential_id, bytes) or not 1 <= len(self.credential_id) <= MAX_CREDENTIAL_ID):
            raise InvalidInput("webauthn: credential_id must be 1-1023 bytes")

    @property
    def algorithm(self) -> str:
        """The key pair's algorithm (``ecdsa-p256`` or ``ed25519``): what the key id names."""
        return ALGORITHMS[self.alg]

    def to_json(self) -> dict[str, Any]:
        return {"alg": self.alg, "credential_id": b64url(self.credential_id), "origins": list(self.origins),
                "rp_id": self.rp_id, "user_verification": self.user_verification}

    @classmethod
    def from_json(cls, obj: object) -> WebAuthnParams:
        if not isinstance(obj, dict) or set(obj) != {"alg", "credential_id", "origins", "rp_id", "user_verification"}:
            raise InvalidInput("webauthn: want exactly alg, credential_id, origins, rp_id, user_verification")
        if not isinstance(obj["origins"], list):
            raise InvalidInput("webauthn: origins must be a list")
        return cls(alg=obj["alg"], rp_id=obj["rp_id"], origins=tuple(obj["origins"]),
                   user_verification=obj["user_verification"],
                   credential_id=unb64url(obj["credential_id"], "webauthn credential_id"))


def check_public_key(alg: int, public: bytes) -> None:
    """Raises InvalidInput unless ``public`` is a valid raw key for ``alg`` (65-byte
    uncompressed P-256 point on the curve, or 32-byte Ed25519)."""
    _public_key(alg, public)


def _public_key(alg: int, public: bytes) -> ec.EllipticCurvePublicKey | Ed25519PublicKey:
    try:
        if alg == COSE_ES256:
            if len(public) != 65 or public[0] != 4:
                raise ValueError("want a 65-byte uncompressed point")
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public)
        if alg == COSE_EDDSA:
            if len(public) != 32:
                raise ValueError("want 32 bytes")
            return Ed25519PublicKey.from_public_bytes(public)
    except ValueError as exc:
        raise InvalidInput(f"webauthn public key: {exc}") from None
    raise InvalidInput(f"webauthn: unsupported alg {alg!r}")


def public_key_from_spki(der: bytes) -> tuple[int, bytes]:
    """(COSE alg, raw public key) from the SubjectPublicKeyInfo DER a browser's
    ``AuthenticatorAttestationResponse.getPublicKey()`` returns. Raises InvalidInput."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError):
        raise InvalidInput("webauthn: the public key is not SubjectPublicKeyInfo DER") from None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return COSE_ES256, key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    if isinstance(key, Ed25519PublicKey):
        return COSE_EDDSA, key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    raise InvalidInput("webauthn: only ES256 (P-256) and Ed25519 passkeys are accepted")


@dataclass(frozen=True, slots=True)
class Assertion:
    authenticator_data: bytes
    client_data_json: bytes
    signature: bytes

    def encode(self) -> str:
        """The ``Signature.sig`` wire form."""
        return SIG_PREFIX + ".".join(b64url(p) for p in (self.authenticator_data, self.client_data_json,
                                                          self.signature))

    @classmethod
    def decode(cls, text: str) -> Assertion:
        """Raises InvalidInput."""
        if not isinstance(text, str) or not text.startswith(SIG_PREFIX):
            raise InvalidInput(f"webauthn signature: want {SIG_PREFIX}<authData>.<clientDataJSON>.<signature>")
        parts = text[len(SIG_PREFIX):].split(".")
        if len(parts) != 3:
            raise InvalidInput("webauthn signature: want three base64url parts")
        auth, client, sig = (unb64url(p, n) for p, n in zip(parts, ("authenticatorData", "clientDataJSON",
                                                                   "signature"), strict=True))
        if not 37 <= len(auth) <= MAX_AUTH_DATA or not 1 <= len(client) <= MAX_CLIENT_DATA or not 1 <= len(sig) <= 80:
            raise InvalidInput("webauthn signature: a part has an impossible length")
        return cls(auth, client, sig)


def is_webauthn_sig(text: str) -> bool:
    return text.startswith(SIG_PREFIX)


def verify_assertion(params: WebAuthnParams, public: bytes, message: bytes, sig: str) -> str | None:
    """Check a WebAuthn assertion over ``message`` (a signature input). None if valid, else why not."""
    try:
        a = Assertion.decode(sig)
        key = _public_key(params.alg, public)
    except InvalidInput as exc:
        return str(exc)
    try:
        client = json.loads(a.client_data_json.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "webauthn: clientDataJSON is not UTF-8 JSON"
    if not isinstance(client, dict):
        return "webauthn: clientDataJSON is not an object"
    if client.get("type") != "webauthn.get":
        return f"webauthn: clientDataJSON type is {str(client.get('type'))[:40]!r}, not webauthn.get"
    if client.get("challenge") != b64url(challenge_for(message)):
        return "webauthn: the challenge is not this object's digest (an assertion made for something else)"
    if client.get("origin") not in params.origins:
        return f"webauthn: origin {str(client.get('origin'))[:80]!r} is not one of the key's allowed origins"
    if client.get("crossOrigin", False) is not False:
        return "webauthn: a cross-origin assertion"
    auth = a.authenticator_data
    if auth[:32] != hashlib.sha256(params.rp_id.encode()).digest():
        return f"webauthn: rpIdHash is not SHA-256 of {params.rp_id!r}"
    flags = auth[32]
    if not flags & FLAG_UP:
        return "webauthn: user presence (UP) not asserted"
    if params.user_verification and not flags & FLAG_UV:
        return "webauthn: user verification (UV) required and not asserted"
    if flags & FLAG_AT:
        return "webauthn: attested credential data in an assertion"
    if not flags & FLAG_ED and len(auth) != 37:
        return "webauthn: bytes after the authenticator data without the extensions flag"
    signed = auth + hashlib.sha256(a.client_data_json).digest()
    try:
        if isinstance(key, Ed25519PublicKey):
            if len(a.signature) != 64:
                return "webauthn: an Ed25519 signature is 64 bytes"
            key.verify(a.signature, signed)
        else:
            key.verify(a.signature, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "webauthn: the assertion signature does not verify"
    except ValueError:
        return "webauthn: the assertion signature is malformed"
    return None
