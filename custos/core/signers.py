"""Signer sets: the root of trust for orders.

A signer set is a versioned list of executives' public keys with a threshold
per action (how many distinct keys must sign a ``drill``, ``halt``, ``lift``,
``destroy`` order, or the next signer set: ``rotate``). Version 1 is installed
at bootstrap and pinned by every agent at enrollment. Version n+1 is trusted
only when a ``rotate`` threshold of version n signed it (as TUF rotates its
root) *and* a ``rotate`` threshold of its own keys did (proof that the new
holders have their keys), and only if it names version n as its predecessor.
``TrustedSignerSets`` walks that chain forward and never back.

Keys are Ed25519 (raw signatures) or OpenSSH keys — ``ssh-ed25519``,
``sk-ssh-ed25519@openssh.com`` (FIDO tokens), ``ecdsa-sha2-nistp256``,
``sk-ecdsa-sha2-nistp256@openssh.com`` — whose holders sign with
``ssh-keygen -Y sign``. A key id names the key pair (algorithm + public point),
not the way it signs, so one private key can never hold two votes.

Encodings and rules are specified in docs/orders.md; known-answer vectors live
in tests/orders/vectors/. Pure logic, except the key-file helpers at the end,
which touch only the path they are handed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
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

from custos.core import sshsig
from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import IntegrityError, InvalidInput

SIGNER_SET_DOMAIN = b"custos.v1.signer-set\x00"
SIGNER_KEY_DOMAIN = b"custos.v1.signer-key\x00"
SIGNER_SET_NAMESPACE = "custos-signer-set"  # SSHSIG namespace for rotations
SIGNER_SET_ENCODING = 1

ACTIONS = ("drill", "halt", "lift", "destroy", "rotate")
DEV_SIGNER_NAMES = ("exec1", "exec2", "exec3", "exec4", "exec5")
# The development default: five executives; a drill needs two, a halt or its
# lift three, the irreversible destroy and a change of the signer set four.
DEV_THRESHOLDS: Mapping[str, int] = MappingProxyType({"drill": 2, "halt": 3, "lift": 3, "destroy": 4, "rotate": 4})

KEYTYPE_ED25519 = "ed25519"
KEYTYPE_SK_ED25519 = "sk-ed25519"
KEYTYPE_ECDSA_P256 = "ecdsa-p256"
KEYTYPE_SK_ECDSA_P256 = "sk-ecdsa-p256"
_SSH_KEYTYPE = {
    KEYTYPE_ED25519: sshsig.KEY_ED25519,
    KEYTYPE_SK_ED25519: sshsig.KEY_SK_ED25519,
    KEYTYPE_ECDSA_P256: sshsig.KEY_ECDSA_P256,
    KEYTYPE_SK_ECDSA_P256: sshsig.KEY_SK_ECDSA_P256,
}
_KEYTYPE_FROM_SSH = {v: k for k, v in _SSH_KEYTYPE.items()}
KEYTYPES = tuple(_SSH_KEYTYPE)

MAX_KEYS = 64
MAX_SIGNER_SET_BYTES = 256 * 1024
MAX_KEY_ID_CHARS = 128  # real key ids are 64; a little room so a wrong one is reported, not refused
MAX_SIG_CHARS = sshsig.MAX_ARMORED
# Signature lists are bounded where they are parsed (decode_signatures), not
# in the threshold check: a cap there would let junk attached first under a
# real key id crowd out that key's valid signature.
MAX_SIGNATURES = 4 * MAX_KEYS

SIGNER_NAME = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")
_MAX_VERSION = 2**53  # far beyond any real rotation count; keeps versions exact in every JSON reader


class SignerSetError(InvalidInput):
    """A signer set, signer key or signature list is malformed or breaks a rule."""


class NonCanonicalSignerSet(SignerSetError):
    """Signer-set bytes parse but are not in canonical form."""


class KeyFileError(InvalidInput):
    """A private key file is unreadable, of the wrong type, too widely readable, or the passphrase is wrong."""


class RotationRejected(IntegrityError):
    """A proposed signer set is not a valid successor of the trusted one."""

    def __init__(self, verification: RotationVerification) -> None:
        self.verification = verification
        super().__init__("signer-set rotation rejected: " + "; ".join(f.detail for f in verification.failures))


@dataclass(frozen=True, slots=True)
class Failure:
    """One reason a verification failed: a stable code and a human sentence."""

    code: str
    detail: str


def decode_strict(
    data: bytes, what: str, max_bytes: int, malformed: type[InvalidInput], non_canonical: type[InvalidInput]
) -> Any:
    """Decode canonical JSON, telling "not JSON at all" (``malformed``) from
    "valid JSON in a non-canonical form" (``non_canonical``). Raises one of the two."""
    if not isinstance(data, bytes | bytearray):
        raise malformed(f"{what}: want bytes")
    if len(data) > max_bytes:
        raise malformed(f"{what}: larger than {max_bytes} bytes")
    data = bytes(data)
    try:
        return decode_canonical(data)
    except (InvalidInput, ValueError, RecursionError) as exc:
        # ValueError: a lone surrogate escape ("\ud800") cannot be re-encoded;
        # RecursionError: absurd nesting. Both are malformed, never a crash.
        detail = str(exc)[:200]
    try:
        # Would it parse as JSON at all? Then only its form is wrong.
        value = json.loads(data.decode("utf-8"), parse_float=_reject_float)
        encode_canonical(value)
    except (ValueError, RecursionError, InvalidInput):
        raise malformed(f"{what}: {detail}") from None
    raise non_canonical(f"{what}: bytes are not in canonical form (re-encoding differs)")


def _reject_float(text: str) -> Any:
    raise ValueError("floats are not allowed")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- signatures -------------------------------------------------------------------


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

    @property
    def kind(self) -> str:
        """``sshsig`` for an armored SSH signature, else ``ed25519``."""
        return "sshsig" if self.sig.lstrip().startswith(sshsig.ARMOR_BEGIN) else "ed25519"

    def to_json(self) -> dict[str, str]:
        return {"key_id": self.key_id, "sig": self.sig}

    @classmethod
    def from_json(cls, obj: object) -> Signature:
        """Raises SignerSetError unless ``obj`` is exactly ``{"key_id": str, "sig": str}``."""
        if not isinstance(obj, dict) or set(obj) != {"key_id", "sig"}:
            raise SignerSetError("signature: want exactly key_id and sig")
        return cls(key_id=obj["key_id"], sig=obj["sig"])


def encode_signatures(signatures: Iterable[Signature]) -> bytes:
    """Canonical JSON list of signatures, in key-id order (for export files)."""
    items = sorted((s.to_json() for s in signatures), key=lambda d: (d["key_id"], d["sig"]))
    return encode_canonical(items)


def decode_signatures(data: bytes | list[Any]) -> list[Signature]:
    """Parse a JSON list of signatures (bytes or already-decoded). Raises SignerSetError."""
    if isinstance(data, bytes | bytearray):
        try:
            obj: Any = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
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


# -- keys -------------------------------------------------------------------------


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
    ``sk-ecdsa-p256``; ``public`` the raw point (32 bytes, or 65 uncompressed
    for P-256); ``application`` the FIDO application string for ``sk-`` keys.
    Raises SignerSetError for a bad name, type or key.
    """

    name: str
    keytype: str
    public: bytes
    application: str | None = None
    key_id: str = field(init=False)
    ssh_public_key: sshsig.SshPublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not SIGNER_NAME.match(self.name):
            raise SignerSetError(
                f"bad signer name {str(self.name)[:64]!r}: want 1-128 of a-z 0-9 . _ @ + - "
                "starting with a letter or digit"
            )
        if not isinstance(self.keytype, str) or self.keytype not in _SSH_KEYTYPE:
            raise SignerSetError(f"unsupported signer key type {str(self.keytype)[:32]!r}")
        try:
            ssh_key = sshsig.SshPublicKey(_SSH_KEYTYPE[self.keytype], self.public, self.application)
        except sshsig.SshKeyError as exc:
            raise SignerSetError(f"signer {self.name}: {exc}") from None
        object.__setattr__(self, "ssh_public_key", ssh_key)
        object.__setattr__(self, "key_id", key_id_of(ssh_key.algorithm, self.public))

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

    def to_json(self) -> dict[str, str]:
        out = {"key_id": self.key_id, "keytype": self.keytype, "name": self.name, "public": self.public.hex()}
        if self.application is not None:
            out["application"] = self.application
        return out

    @classmethod
    def from_json(cls, obj: object) -> SignerKey:
        """Raises SignerSetError for unexpected fields or a key_id that does not match the key."""
        if not isinstance(obj, dict):
            raise SignerSetError("signer key: want an object")
        fields = {"key_id", "keytype", "name", "public"}
        if obj.get("keytype") in (KEYTYPE_SK_ED25519, KEYTYPE_SK_ECDSA_P256):
            fields.add("application")
        if set(obj) != fields:
            raise SignerSetError(f"signer key: want exactly the fields {sorted(fields)}")
        public = obj["public"]
        if not isinstance(public, str) or not re.fullmatch(r"(?:[0-9a-f]{2})+", public):
            raise SignerSetError("signer key: public must be lowercase hex")
        key = cls(
            name=obj["name"], keytype=obj["keytype"], public=bytes.fromhex(public), application=obj.get("application")
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


# -- signer sets ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SignerSet:
    """A validated signer set. Keys are kept in key-id order (the canonical order).

    Rules: ``version`` >= 1; 1 to MAX_KEYS keys; no two keys with the same key id
    or name; a threshold for exactly each of ACTIONS, each in 1..len(keys);
    ``previous`` is None for version 1 and the id of version n-1 otherwise.
    Raises SignerSetError.
    """

    version: int
    keys: tuple[SignerKey, ...]
    thresholds: Mapping[str, int]
    previous: str | None = None
    encoding: int = SIGNER_SET_ENCODING

    def __post_init__(self) -> None:
        if not _is_int(self.version) or not 1 <= self.version <= _MAX_VERSION:
            raise SignerSetError("signer set: version must be an integer >= 1")
        if self.encoding != SIGNER_SET_ENCODING or not _is_int(self.encoding):
            raise SignerSetError(f"signer set: unsupported encoding {self.encoding!r}")
        keys = tuple(self.keys)
        if not 1 <= len(keys) <= MAX_KEYS:
            raise SignerSetError(f"signer set: want 1 to {MAX_KEYS} keys")
        if not all(isinstance(k, SignerKey) for k in keys):
            raise SignerSetError("signer set: keys must be SignerKey values")
        ids = Counter(k.key_id for k in keys)
        dup_ids = sorted(k for k, n in ids.items() if n > 1)
        if dup_ids:
            raise SignerSetError(f"signer set: duplicate key id {dup_ids[0]}")
        names = Counter(k.name for k in keys)
        dup_names = sorted(k for k, n in names.items() if n > 1)
        if dup_names:
            raise SignerSetError(f"signer set: duplicate signer name {dup_names[0]!r}")
        if not isinstance(self.thresholds, Mapping) or set(self.thresholds) != set(ACTIONS):
            raise SignerSetError(f"signer set: want a threshold for exactly {', '.join(ACTIONS)}")
        for action in ACTIONS:
            t = self.thresholds[action]
            if not _is_int(t) or not 1 <= t <= len(keys):
                raise SignerSetError(f"signer set: {action} threshold must be in 1..{len(keys)}")
        if self.version == 1:
            if self.previous is not None:
                raise SignerSetError("signer set: version 1 has no previous set")
        elif not isinstance(self.previous, str) or not _HEX64.match(self.previous):
            raise SignerSetError("signer set: previous must be the hex id of the previous version")
        object.__setattr__(self, "keys", tuple(sorted(keys, key=lambda k: k.key_id)))
        object.__setattr__(self, "thresholds", MappingProxyType({a: self.thresholds[a] for a in sorted(ACTIONS)}))
        object.__setattr__(self, "_encoded", encode_canonical(self.to_json()))
        object.__setattr__(self, "_by_id", {k.key_id: k for k in self.keys})

    # -- construction

    @classmethod
    def bootstrap(cls, keys: Iterable[SignerKey], *, thresholds: Mapping[str, int]) -> SignerSet:
        """Version 1, installed at bootstrap and pinned by agents. Raises SignerSetError."""
        return cls(version=1, keys=tuple(keys), thresholds=dict(thresholds))

    def successor(self, keys: Iterable[SignerKey], *, thresholds: Mapping[str, int] | None = None) -> SignerSet:
        """The next version (unsigned): version n+1 naming this set as previous."""
        return SignerSet(
            version=self.version + 1,
            keys=tuple(keys),
            thresholds=dict(self.thresholds if thresholds is None else thresholds),
            previous=self.id,
        )

    @classmethod
    def decode(cls, data: bytes) -> SignerSet:
        """Parse canonical signer-set bytes. Raises SignerSetError (NonCanonicalSignerSet
        for valid JSON in a non-canonical form, e.g. keys out of order)."""
        obj = decode_strict(data, "signer set", MAX_SIGNER_SET_BYTES, SignerSetError, NonCanonicalSignerSet)
        if not isinstance(obj, dict) or set(obj) != {"encoding", "keys", "previous", "thresholds", "version"}:
            raise SignerSetError("signer set: want exactly encoding, keys, previous, thresholds, version")
        if obj["encoding"] != SIGNER_SET_ENCODING or not _is_int(obj["encoding"]):
            raise SignerSetError(f"signer set: unsupported encoding {obj['encoding']!r}")
        if not isinstance(obj["keys"], list) or not isinstance(obj["thresholds"], dict):
            raise SignerSetError("signer set: keys must be a list and thresholds an object")
        if len(obj["keys"]) > MAX_KEYS:
            raise SignerSetError(f"signer set: more than {MAX_KEYS} keys")
        result = cls(
            version=obj["version"],
            keys=tuple(SignerKey.from_json(k) for k in obj["keys"]),
            thresholds=obj["thresholds"],
            previous=obj["previous"],
        )
        if result.encode() != bytes(data):
            raise NonCanonicalSignerSet("signer set: keys are not in key-id order")
        return result

    # -- encoding

    def to_json(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "keys": [k.to_json() for k in self.keys],
            "previous": self.previous,
            "thresholds": dict(self.thresholds),
            "version": self.version,
        }

    def encode(self) -> bytes:
        """The canonical bytes (docs/orders.md)."""
        encoded: bytes = self.__dict__["_encoded"]
        return encoded

    def signature_input(self) -> bytes:
        """What signers sign when they approve this set: domain prefix + canonical bytes."""
        return SIGNER_SET_DOMAIN + self.encode()

    @property
    def id(self) -> str:
        """Hex SHA-256 of the signature input; the next version names it as ``previous``."""
        return hashlib.sha256(self.signature_input()).hexdigest()

    # -- lookups

    def key(self, key_id: str) -> SignerKey | None:
        found: SignerKey | None = self.__dict__["_by_id"].get(key_id)
        return found

    def key_by_name(self, name: str) -> SignerKey | None:
        return next((k for k in self.keys if k.name == name), None)

    def threshold(self, action: str) -> int:
        """Raises InvalidInput for an unknown action."""
        if action not in self.thresholds:
            raise InvalidInput(f"unknown action {str(action)[:32]!r}")
        return self.thresholds[action]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignerSet) and self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.encode())


# -- threshold check --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    """How a list of signatures fares against a threshold of one signer set
    (cf. TUF's VerificationResult); truthy only when the threshold is met.

    ``valid``: distinct key ids with a valid signature (each counts once).
    ``invalid``: key ids in the set whose signatures all failed.
    ``unknown``: key ids not in the set. ``duplicates``: key ids that appear
    more than once. ``problems``: one sentence per failed signature.
    """

    threshold: int
    valid: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def missing(self) -> int:
        return max(0, self.threshold - len(self.valid))

    def __bool__(self) -> bool:
        # A zero threshold is never "met": an empty policy denies.
        return self.threshold >= 1 and len(self.valid) >= self.threshold


def check_threshold(
    signer_set: SignerSet,
    signatures: Sequence[Signature],
    message: bytes,
    *,
    namespace: str,
    threshold: int,
) -> ThresholdResult:
    """Count distinct keys of ``signer_set`` with a valid signature over ``message``.

    Never raises for bad signatures: they are reported. Extra, unknown or
    invalid signatures do not spoil a met threshold — otherwise whoever can
    attach a signature could veto a halt. Each signature is checked until its
    key has one valid signature, so the cost is linear in ``len(signatures)``;
    callers bound that list (``decode_signatures`` allows MAX_SIGNATURES).
    """
    seen: Counter[str] = Counter()
    valid: set[str] = set()
    invalid: set[str] = set()
    unknown: list[str] = []
    problems: list[str] = []
    for signature in signatures:
        kid = signature.key_id
        seen[kid] += 1
        key = signer_set.key(kid)
        if key is None:
            if kid not in unknown:
                unknown.append(kid)
            continue
        if kid in valid:
            continue  # counted once; a second signature by the same key adds nothing
        problem = key.verify(signature.sig, message, namespace=namespace)
        if problem is None:
            valid.add(kid)
        else:
            invalid.add(kid)
            problems.append(f"signature by {key.name} ({kid[:16]}): {problem}")
    return ThresholdResult(
        threshold=threshold,
        valid=tuple(sorted(valid)),
        invalid=tuple(sorted(invalid - valid)),
        unknown=tuple(unknown),
        duplicates=tuple(sorted(k for k, n in seen.items() if n > 1)),
        problems=tuple(problems),
    )


# -- rotation ---------------------------------------------------------------------


class RotationReason(StrEnum):
    """Stable codes for why a proposed signer set is refused."""

    MALFORMED = "malformed"
    NON_CANONICAL = "non_canonical"
    ROLLBACK = "rollback"  # older than the trusted version
    ALREADY_CURRENT = "already_current"  # the trusted set itself
    FORK = "fork"  # same version as the trusted one, different content
    SKIPPED_VERSION = "skipped_version"  # newer than trusted + 1
    BROKEN_CHAIN = "broken_chain"  # version n+1 whose previous is not the trusted set
    OLD_THRESHOLD_NOT_MET = "old_threshold_not_met"
    NEW_THRESHOLD_NOT_MET = "new_threshold_not_met"


@dataclass
class RotationVerification:
    """Outcome of checking a proposed signer set against the trusted one;
    truthy only when it is a valid successor."""

    current_version: int
    new_set: SignerSet | None = None
    old: ThresholdResult | None = None  # rotate threshold of the trusted set
    new: ThresholdResult | None = None  # rotate threshold of the proposed set
    failures: list[Failure] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures and self.new_set is not None

    @property
    def reasons(self) -> list[str]:
        return [f.code for f in self.failures]

    def fail(self, code: RotationReason, detail: str) -> None:
        self.failures.append(Failure(str(code), detail))

    def raise_if_invalid(self) -> SignerSet:
        """Return the new set; raise RotationRejected if it is not a valid successor."""
        if not self or self.new_set is None:
            raise RotationRejected(self)
        return self.new_set


def verify_rotation(current: SignerSet, new_set_bytes: bytes, signatures: Sequence[Signature]) -> RotationVerification:
    """Check ``new_set_bytes`` as the successor of ``current``. Never raises for bad data.

    Valid only if: it parses and is canonical; its version is exactly
    current + 1; its ``previous`` is ``current.id``; a ``rotate`` threshold of
    ``current`` signed it; and a ``rotate`` threshold of its own keys signed it.
    """
    if not isinstance(current, SignerSet) or not all(isinstance(s, Signature) for s in signatures):
        raise InvalidInput("verify_rotation wants a SignerSet and Signature values")  # a caller error
    result = RotationVerification(current_version=current.version)
    try:
        new = SignerSet.decode(new_set_bytes)
    except NonCanonicalSignerSet as exc:
        result.fail(RotationReason.NON_CANONICAL, str(exc))
        return result
    except SignerSetError as exc:
        result.fail(RotationReason.MALFORMED, str(exc))
        return result
    result.new_set = new
    if new.version < current.version:
        result.fail(RotationReason.ROLLBACK, f"version {new.version} is older than trusted version {current.version}")
    elif new.version == current.version:
        if new == current:
            result.fail(RotationReason.ALREADY_CURRENT, f"version {new.version} is already trusted")
        else:
            result.fail(
                RotationReason.FORK,
                f"a different version {new.version} than the trusted one: the signer-set history forked",
            )
    elif new.version > current.version + 1:
        result.fail(
            RotationReason.SKIPPED_VERSION,
            f"version {new.version} skips ahead of trusted version {current.version} (want {current.version + 1})",
        )
    elif new.previous != current.id:
        result.fail(RotationReason.BROKEN_CHAIN, f"version {new.version} does not extend the trusted version")
    message = new.signature_input()
    result.old = check_threshold(
        current, signatures, message, namespace=SIGNER_SET_NAMESPACE, threshold=current.threshold("rotate")
    )
    result.new = check_threshold(
        new, signatures, message, namespace=SIGNER_SET_NAMESPACE, threshold=new.threshold("rotate")
    )
    if not result.old:
        result.fail(
            RotationReason.OLD_THRESHOLD_NOT_MET,
            f"signed by {len(result.old.valid)} of the {result.old.threshold} trusted-set keys a rotation needs",
        )
    if not result.new:
        result.fail(
            RotationReason.NEW_THRESHOLD_NOT_MET,
            f"signed by {len(result.new.valid)} of the {result.new.threshold} new-set keys a rotation needs "
            "(the new holders must prove they have their keys)",
        )
    return result


class TrustedSignerSets:
    """The trusted signer set as a small state machine (cf. TUF's trusted metadata set).

    Starts from a pinned set; ``update`` moves to version n+1 only through a
    valid rotation and changes nothing when it raises. No rollback, no skipped
    version, no fork. Re-delivering the current set is a no-op.
    """

    def __init__(self, pinned: SignerSet) -> None:
        if not isinstance(pinned, SignerSet):
            raise InvalidInput("pinned signer set must be a SignerSet")
        self._current = pinned

    @classmethod
    def from_pinned_bytes(cls, data: bytes) -> TrustedSignerSets:
        """Raises SignerSetError."""
        return cls(SignerSet.decode(data))

    @property
    def current(self) -> SignerSet:
        return self._current

    @property
    def version(self) -> int:
        return self._current.version

    def verify(self, new_set_bytes: bytes, signatures: Sequence[Signature]) -> RotationVerification:
        """Check a proposed successor without changing anything."""
        return verify_rotation(self._current, new_set_bytes, signatures)

    def update(self, new_set_bytes: bytes, signatures: Sequence[Signature]) -> SignerSet:
        """Trust the proposed successor and return it. Raises RotationRejected (state unchanged)."""
        if isinstance(new_set_bytes, bytes | bytearray) and bytes(new_set_bytes) == self._current.encode():
            return self._current
        result = self.verify(new_set_bytes, signatures)
        self._current = result.raise_if_invalid()
        return self._current


# -- key helpers ------------------------------------------------------------------


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
