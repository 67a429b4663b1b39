"""Signatures over orders and signer sets: raw Ed25519 or SSHSIG, their canonical list encoding."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
)

from custos.core import sshsig
from custos.core.canonical import encode_canonical
from custos.core.signers.base import MAX_KEY_ID_CHARS, MAX_SIG_CHARS, MAX_SIGNATURES, SignerSetError
from custos.core.signers.keys import KEYTYPE_ED25519, key_id_of


@dataclass(frozen=True, slots=True)
class Signature:
    """One signer's signature: the key id and either 128 lowercase hex digits (a
    raw Ed25519 signature) or an armored SSHSIG blob. Both are over the signed
    object's signature input (domain prefix + canonical bytes).

    The constructor checks only types and sizes (raising InvalidInput), so a
    garbage signature can still be handed to verification and reported there.
    """

    key_id: str
    sig: str

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not isinstance(self.sig, str):
            raise SignerSetError("signature: key_id and sig must be strings")
        if len(self.key_id) > MAX_KEY_ID_CHARS:
            raise SignerSetError("signature: key_id too long")
        if len(self.sig) > MAX_SIG_CHARS:
            raise SignerSetError("signature: sig too long")
        if not _is_unicode(self.key_id) or not _is_unicode(self.sig):
            raise SignerSetError("signature: key_id and sig must be valid Unicode (no lone surrogates)")

    @property
    def kind(self) -> str:
        """``sshsig`` for an armored SSH signature, ``webauthn`` for a passkey assertion, else ``ed25519``."""
        if self.sig.startswith("webauthn.v1."):
            return "webauthn"
        return "sshsig" if self.sig.lstrip().startswith(sshsig.ARMOR_BEGIN) else "ed25519"

    def to_json(self) -> dict[str, str]:
        return {"key_id": self.key_id, "sig": self.sig}

    @classmethod
    def from_json(cls, obj: object) -> Signature:
        """Raises SignerSetError unless ``obj`` is exactly ``{"key_id": str, "sig": str}``."""
        if not isinstance(obj, dict) or set(obj) != {"key_id", "sig"}:
            raise SignerSetError("signature: want exactly key_id and sig")
        return cls(key_id=obj["key_id"], sig=obj["sig"])


def _is_unicode(text: str) -> bool:
    # A lone surrogate (from a JSON escape such as "\ud800") has no UTF-8 form: nothing can sign it.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_signatures(signatures: Iterable[Signature]) -> bytes:
    """Canonical JSON list of signatures, in key-id order (for export files)."""
    items = sorted((s.to_json() for s in signatures), key=lambda d: (d["key_id"], d["sig"]))
    return encode_canonical(items)


def decode_signatures(data: bytes | list[Any]) -> list[Signature]:
    """Parse a JSON list of signatures (bytes or already-decoded). Raises SignerSetError."""
    if isinstance(data, bytes | bytearray):
        try:
            obj: Any = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurd nesting
            raise SignerSetError("signatures: not JSON") from None
    else:
        obj = data
    if not isinstance(obj, list) or len(obj) > MAX_SIGNATURES:
        raise SignerSetError(f"signatures: want a list of at most {MAX_SIGNATURES}")
    return [Signature.from_json(item) for item in obj]


def sign_raw(private_key: Ed25519PrivateKey, message: bytes) -> Signature:
    """A raw Ed25519 signature over ``message`` (a signature input)."""
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return Signature(key_id=key_id_of(KEYTYPE_ED25519, public), sig=private_key.sign(message).hex())


def sign_ssh(
    private_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
    message: bytes,
    *,
    namespace: str,
    hash_algorithm: str = "sha512",
) -> Signature:
    """An SSHSIG signature over ``message``, as ``ssh-keygen -Y sign -n NAMESPACE`` makes it."""
    armored = sshsig.sign(private_key, message, namespace=namespace, hash_algorithm=hash_algorithm)
    public = sshsig.parse(armored).public_key
    return Signature(key_id=key_id_of(public.algorithm, public.public), sig=armored)
