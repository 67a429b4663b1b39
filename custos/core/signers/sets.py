"""A signer set (versioned keys and a threshold per action) and the threshold check over signatures."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from custos.core.canonical import encode_canonical
from custos.core.signers.base import (
    _HEX64,
    _MAX_VERSION,
    MAX_KEYS,
    MAX_SIGNER_SET_BYTES,
    SIGNER_SET_DOMAIN,
    SIGNER_SET_ENCODING,
    NonCanonicalSignerSet,
    SignerSetError,
    _is_int,
    decode_strict,
)
from custos.core.signers.keys import SignerKey
from custos.core.signers.signatures import Signature
from custos.errors import InvalidInput

ACTIONS = ("drill", "halt", "lift", "destroy", "rotate")


DEV_SIGNER_NAMES = ("exec1", "exec2", "exec3", "exec4", "exec5")


# The development default: five executives; a drill needs two, a halt or its
# lift three, the irreversible destroy and a change of the signer set four.
DEV_THRESHOLDS: Mapping[str, int] = MappingProxyType({"drill": 2, "halt": 3, "lift": 3, "destroy": 4, "rotate": 4})


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
