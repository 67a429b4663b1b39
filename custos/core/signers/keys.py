"""Signer keys: key types, key ids (algorithm + public point), OpenSSH and PEM forms."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_ssh_private_key,
)

from custos.core import sshsig, webauthn
from custos.core.canonical import encode_canonical
from custos.core.signers.base import _HEX128, SIGNER_KEY_DOMAIN, SIGNER_NAME, SignerSetError
from custos.core.webauthn import WebAuthnParams
from custos.errors import InvalidInput

KEYTYPE_ED25519 = "ed25519"


KEYTYPE_SK_ED25519 = "sk-ed25519"


KEYTYPE_ECDSA_P256 = "ecdsa-p256"


KEYTYPE_SK_ECDSA_P256 = "sk-ecdsa-p256"


KEYTYPE_WEBAUTHN = "webauthn"  # a passkey: ES256 or Ed25519, with its rp_id, origins and UV rule


_SSH_KEYTYPE = {
    KEYTYPE_ED25519: sshsig.KEY_ED25519,
    KEYTYPE_SK_ED25519: sshsig.KEY_SK_ED25519,
    KEYTYPE_ECDSA_P256: sshsig.KEY_ECDSA_P256,
    KEYTYPE_SK_ECDSA_P256: sshsig.KEY_SK_ECDSA_P256,
}


_KEYTYPE_FROM_SSH = {v: k for k, v in _SSH_KEYTYPE.items()}


KEYTYPES = (*_SSH_KEYTYPE, KEYTYPE_WEBAUTHN)

_WEBAUTHN_SSH = {"ecdsa-p256": sshsig.KEY_ECDSA_P256, "ed25519": sshsig.KEY_ED25519}


class KeyFileError(InvalidInput):
    """A private key file is unreadable, of the wrong type, too widely readable, or the passphrase is wrong."""


def key_id_of(algorithm: str, public: bytes) -> str:
    """Hex SHA-256 over the key-id domain prefix and ``{"algorithm", "public"}``.

    ``algorithm`` is ``ed25519`` or ``ecdsa-p256`` — the key pair, not the
    signature format, so a token key and a plain key with the same point share an id.
    """
    body = encode_canonical({"algorithm": algorithm, "public": public.hex()})
    return hashlib.sha256(SIGNER_KEY_DOMAIN + body).hexdigest()


@dataclass(frozen=True, slots=True)
class SignerKey:
    """One executive's public key in a signer set.

    ``keytype`` is one of ``ed25519``, ``sk-ed25519``, ``ecdsa-p256``,
    ``sk-ecdsa-p256``, ``webauthn``; ``public`` the raw point (32 bytes, or 65
    uncompressed for P-256); ``application`` the FIDO application string for
    ``sk-`` keys; ``webauthn`` a passkey's parameters (custos.core.webauthn), for
    ``webauthn`` keys only. The key id names the key pair whatever its type, so a
    passkey and an SSH key with the same point share one vote.
    Raises SignerSetError for a bad name, type or key.
    """

    name: str
    keytype: str
    public: bytes
    application: str | None = None
    webauthn: WebAuthnParams | None = None
    key_id: str = field(init=False)
    ssh_public_key: sshsig.SshPublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SIGNER_NAME.match(self.name):
            raise SignerSetError(
                f"bad signer name {str(self.name)[:64]!r}: want 1-128 of a-z 0-9 . _ @ + - "
                "starting with a letter or digit"
            )
        if not isinstance(self.keytype, str) or self.keytype not in KEYTYPES:
            raise SignerSetError(f"unsupported signer key type {str(self.keytype)[:32]!r}")
        if (self.keytype == KEYTYPE_WEBAUTHN) != isinstance(self.webauthn, WebAuthnParams):
            raise SignerSetError(f"signer {self.name}: webauthn parameters go with, and only with, a webauthn key")
        try:
            if self.webauthn is not None:
                if self.application is not None:
                    raise SignerSetError(f"signer {self.name}: a webauthn key has no application")
                webauthn.check_public_key(self.webauthn.alg, self.public)
                ssh_key = sshsig.SshPublicKey(_WEBAUTHN_SSH[self.webauthn.algorithm], self.public, None)
            else:
                ssh_key = sshsig.SshPublicKey(_SSH_KEYTYPE[self.keytype], self.public, self.application)
        except (sshsig.SshKeyError, InvalidInput) as exc:
            raise SignerSetError(f"signer {self.name}: {exc}") from None
        object.__setattr__(self, "ssh_public_key", ssh_key)
        object.__setattr__(self, "key_id", key_id_of(ssh_key.algorithm, self.public))

    @classmethod
    def from_webauthn(cls, params: WebAuthnParams, public: bytes, *, name: str) -> SignerKey:
        return cls(name=name, keytype=KEYTYPE_WEBAUTHN, public=public, webauthn=params)

    # -- import / export

    @classmethod
    def from_ed25519(cls, public_key: Ed25519PublicKey | bytes, *, name: str) -> SignerKey:
        raw = public_key if isinstance(public_key, bytes) else public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(name=name, keytype=KEYTYPE_ED25519, public=raw)

    @classmethod
    def from_hex(cls, text: str, *, name: str) -> SignerKey:
        """An Ed25519 key from 64 hex digits. Raises SignerSetError."""
        if not isinstance(text, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
            raise SignerSetError("Ed25519 public key: want 64 hex digits")
        return cls.from_ed25519(bytes.fromhex(text.strip()), name=name)

    @classmethod
    def from_ssh(cls, key: sshsig.SshPublicKey, *, name: str) -> SignerKey:
        return cls(name=name, keytype=_KEYTYPE_FROM_SSH[key.keytype], public=key.public, application=key.application)

    @classmethod
    def from_openssh(cls, line: str, *, name: str) -> SignerKey:
        """From an OpenSSH public key line (``ssh-ed25519 AAAA... comment``). Raises SignerSetError."""
        try:
            return cls.from_ssh(sshsig.SshPublicKey.from_openssh(line), name=name)
        except sshsig.SshKeyError as exc:
            raise SignerSetError(f"signer {name}: {exc}") from None

    def to_openssh(self) -> str:
        return self.ssh_public_key.to_openssh(self.name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key_id": self.key_id, "keytype": self.keytype, "name": self.name,
                               "public": self.public.hex()}
        if self.application is not None:
            out["application"] = self.application
        if self.webauthn is not None:
            out["webauthn"] = self.webauthn.to_json()
        return out

    @classmethod
    def from_json(cls, obj: object) -> SignerKey:
        """Raises SignerSetError for unexpected fields or a key_id that does not match the key."""
        if not isinstance(obj, dict):
            raise SignerSetError("signer key: want an object")
        fields = {"key_id", "keytype", "name", "public"}
        if obj.get("keytype") in (KEYTYPE_SK_ED25519, KEYTYPE_SK_ECDSA_P256):
            fields.add("application")
        if obj.get("keytype") == KEYTYPE_WEBAUTHN:
            fields.add("webauthn")
        if set(obj) != fields:
            raise SignerSetError(f"signer key: want exactly the fields {sorted(fields)}")
        public = obj["public"]
        if not isinstance(public, str) or not re.fullmatch(r"(?:[0-9a-f]{2})+", public):
            raise SignerSetError("signer key: public must be lowercase hex")
        try:
            params = WebAuthnParams.from_json(obj["webauthn"]) if "webauthn" in obj else None
        except InvalidInput as exc:
            raise SignerSetError(f"signer key {str(obj.get('name'))[:64]}: {exc}") from None
        key = cls(
            name=obj["name"], keytype=obj["keytype"], public=bytes.fromhex(public), application=obj.get("application"),
            webauthn=params,
        )
        if obj["key_id"] != key.key_id:
            raise SignerSetError(f"signer key {key.name}: key_id does not match the key")
        return key

    # -- verification

    def verify(self, sig: str, message: bytes, *, namespace: str) -> str | None:
        """Check one signature over ``message``; return None if valid, else why not.

        Raw Ed25519 signatures are accepted from ``ed25519`` keys only (a token
        never makes one); SSHSIG signatures must carry exactly this key and
        ``namespace``, and for ``sk-`` keys assert user presence.
        """
        if self.webauthn is not None:
            if not webauthn.is_webauthn_sig(sig):
                return "a webauthn key signs only with a WebAuthn assertion"
            return webauthn.verify_assertion(self.webauthn, self.public, message, sig)
        if webauthn.is_webauthn_sig(sig):
            return f"a WebAuthn assertion, but {self.name}'s key is a {self.keytype} key"
        if sig.lstrip().startswith(sshsig.ARMOR_BEGIN):
            try:
                sshsig.verify(sig, message, namespace=namespace, public_key=self.ssh_public_key)
            except sshsig.SshSigError as exc:
                return str(exc)
            return None
        if self.keytype != KEYTYPE_ED25519:
            return f"a {self.keytype} key signs only with SSHSIG, not a raw signature"
        if not _HEX128.match(sig):
            return "raw Ed25519 signature must be 128 lowercase hex digits"
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(bytes.fromhex(sig), message)
        except InvalidSignature:
            return "raw Ed25519 signature does not verify"
        return None


def generate_ed25519() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Raises InvalidInput unless ``text`` is 64 hex digits."""
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise InvalidInput("Ed25519 public key: want 64 hex digits")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.strip()))


def public_key_to_openssh(key: Ed25519PublicKey | Ed25519PrivateKey, comment: str = "") -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return sshsig.SshPublicKey.from_ed25519(public).to_openssh(comment)


def public_key_from_openssh(line: str) -> Ed25519PublicKey:
    """An ``ssh-ed25519`` public key line. Raises InvalidInput (other types: use SignerKey.from_openssh)."""
    key = sshsig.SshPublicKey.from_openssh(line)
    if key.keytype != sshsig.KEY_ED25519:
        raise InvalidInput(f"want an ssh-ed25519 key, got {key.keytype}")
    return Ed25519PublicKey.from_public_bytes(key.public)


def private_key_pem(key: Ed25519PrivateKey, passphrase: bytes | None) -> bytearray:
    """``key`` as PKCS#8 PEM, encrypted with ``passphrase`` (BestAvailableEncryption) when one
    is given, in a bytearray the caller zeroizes. Raises InvalidInput for an empty passphrase."""
    if passphrase is not None and (not isinstance(passphrase, bytes | bytearray) or not passphrase):
        raise InvalidInput("passphrase must be non-empty bytes, or None for an unencrypted key")
    encryption = BestAvailableEncryption(bytes(passphrase)) if passphrase is not None else NoEncryption()
    return bytearray(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption))


def private_key_from_pem(data: bytes | bytearray, passphrase: bytes | None) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM (as :func:`private_key_pem` writes) or an
    unencrypted OpenSSH private key. Raises KeyFileError (wrong or missing passphrase,
    unreadable, not Ed25519)."""
    password = bytes(passphrase) if passphrase is not None else None
    try:
        key: Any
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            key = load_ssh_private_key(bytes(data), password)
        else:
            key = load_pem_private_key(bytes(data), password)
    except TypeError:
        raise KeyFileError("private key: passphrase missing, or given for an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError("private key: unreadable, unsupported or wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("private key is not an Ed25519 key")
    return key
