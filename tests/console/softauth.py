"""A passkey in software: what a browser and an authenticator send for create() and get().

Used by the console's unit tests (the browser test uses Chromium's virtual
authenticator). Every knob an attacker could turn is a parameter.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from custos.core.webauthn import COSE_EDDSA, COSE_ES256, FLAG_AT, FLAG_UP, FLAG_UV, b64url

ORIGIN = "https://localhost:8443"
RP_ID = "localhost"


def cbor(v: Any) -> bytes:
    """A minimal CBOR encoder (ints, bytes, text, lists, maps): enough for COSE keys."""

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
            if n < 1 << (8 * size):
                return bytes([major << 5 | info]) + n.to_bytes(size, "big")
        raise ValueError(n)

    if isinstance(v, bool):
        return bytes([0xF5 if v else 0xF4])
    if isinstance(v, int):
        return head(0, v) if v >= 0 else head(1, -1 - v)
    if isinstance(v, bytes):
        return head(2, len(v)) + v
    if isinstance(v, str):
        return head(3, len(v.encode())) + v.encode()
    if isinstance(v, list):
        return head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict):
        return head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(type(v))


@dataclass
class SoftPasskey:
    alg: int = COSE_ES256
    origin: str = ORIGIN
    rp_id: str = RP_ID
    counter: int = 0
    credential_id: bytes = field(default_factory=lambda: os.urandom(16))

    def __post_init__(self) -> None:
        self.key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey = (
            ec.generate_private_key(ec.SECP256R1()) if self.alg == COSE_ES256 else Ed25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        pub = self.key.public_key()
        if isinstance(pub, ec.EllipticCurvePublicKey):
            return pub.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def spki(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def cose(self) -> bytes:
        if self.alg == COSE_ES256:
            return cbor({1: 2, 3: COSE_ES256, -1: 1, -2: self.public[1:33], -3: self.public[33:]})
        return cbor({1: 1, 3: COSE_EDDSA, -1: 6, -2: self.public})

    def client_data(self, typ: str, challenge: bytes, origin: str | None = None, **extra: Any) -> bytes:
        d = {"type": typ, "challenge": b64url(challenge), "origin": origin or self.origin, "crossOrigin": False}
        d.update(extra)
        return json.dumps(d, separators=(",", ":")).encode()

    def register(self, challenge: bytes, *, typ: str = "webauthn.create", origin: str | None = None,
                 rp_id: str | None = None, flags: int = FLAG_UP | FLAG_UV | FLAG_AT, attested_id: bytes | None = None,
                 cose: bytes | None = None, tail: bytes = b"", spki: bytes | None = None, spki_alg: int | None = None,
                 client_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The body of /api/enroll/finish (without challenge_id and token)."""
        cid = self.credential_id if attested_id is None else attested_id
        auth = (hashlib.sha256((rp_id or self.rp_id).encode()).digest() + bytes([flags])
                + self.counter.to_bytes(4, "big"))
        if flags & FLAG_AT:
            auth += bytes(16) + len(cid).to_bytes(2, "big") + cid + (self.cose() if cose is None else cose)
        auth += tail
        return {"credential_id": b64url(self.credential_id),
                "client_data_json": b64url(self.client_data(typ, challenge, origin, **(client_extra or {}))),
                "authenticator_data": b64url(auth), "public_key": b64url(self.spki() if spki is None else spki),
                "public_key_algorithm": self.alg if spki_alg is None else spki_alg}

    def assertion(self, challenge: bytes, *, typ: str = "webauthn.get", origin: str | None = None,
                  rp_id: str | None = None, flags: int = FLAG_UP | FLAG_UV, bump: int = 1,
                  key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey | None = None) -> dict[str, str]:
        """An assertion (the signature fields of /api/login/finish and the signing endpoints)."""
        self.counter += bump
        client = self.client_data(typ, challenge, origin)
        rp_hash = hashlib.sha256((rp_id or self.rp_id).encode()).digest()
        auth = rp_hash + bytes([flags]) + self.counter.to_bytes(4, "big")
        signed = auth + hashlib.sha256(client).digest()
        k = key or self.key
        sig = k.sign(signed) if isinstance(k, Ed25519PrivateKey) else k.sign(signed, ec.ECDSA(hashes.SHA256()))
        return {"credential_id": b64url(self.credential_id), "authenticator_data": b64url(auth),
                "client_data_json": b64url(client), "signature": b64url(sig)}
