"""The drill register: which models and artifacts a drill may really halt, signed.

A drill is signed by fewer executives than a halt (thresholds ``drill`` < ``halt``), so
what it may stop must be decided by data signed with more authority than the drill
itself — never by the control plane's registry, which a compromised control plane
could edit. The drill register is that data: a versioned list of drill model names
and artifact ids, signed by a ``rotate`` threshold of the signer set it names
(domain ``custos.v1.drill-register\\x00``; SSHSIG namespace ``custos-drill-register``).

Whoever can sign the register can already rotate the signer set, so declaring an
artifact drillable lends no authority a lower quorum did not have. ``verify_order``
(custos.core.orders) refuses a drill whose signed scope names anything outside the
register, and requires the halt threshold of any other order whose scope does.

A register is valid only for the signer-set version it names (a rotation asks the
new holders to re-sign it) and only moves forward (a lower version is a rollback).

Specified in docs/orders.md. Pure logic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.core.canonical import encode_canonical
from custos.core.names import HEX64, MODEL_NAME
from custos.core.signers import (
    Signature,
    SignerSet,
    ThresholdResult,
    check_threshold,
    decode_strict,
    sign_raw,
    sign_ssh,
)
from custos.errors import IntegrityError, InvalidInput

DRILL_REGISTER_DOMAIN = b"custos.v1.drill-register\x00"
DRILL_REGISTER_NAMESPACE = "custos-drill-register"
DRILL_REGISTER_ENCODING = 1
DRILL_REGISTER_ACTION = "rotate"  # whose threshold signs the register
MAX_DRILL_MODELS = 1000
MAX_DRILL_ARTIFACTS = 100_000
MAX_DRILL_REGISTER_BYTES = 8 * 1024 * 1024
_FIELDS = frozenset(("artifacts", "encoding", "models", "signer_set_version", "version"))
_MAX_INT = 2**53


class DrillRegisterError(InvalidInput):
    """A drill register is malformed or breaks a rule."""


class DrillRegisterRejected(IntegrityError):
    """A drill register is not signed by the threshold it needs, or goes backwards."""


def _sorted_ids(values: object, what: str) -> tuple[str, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise DrillRegisterError(f"drill register: {what} must be a list of strings")
    items = tuple(values)
    if not all(isinstance(v, str) for v in items):
        raise DrillRegisterError(f"drill register: {what} must be strings")
    out = tuple(sorted(set(items)))
    if len(out) != len(items):
        raise DrillRegisterError(f"drill register: duplicate entry in {what}")
    return out


@dataclass(frozen=True, slots=True)
class DrillRegister:
    """A validated drill register; ``models`` and ``artifacts`` are kept sorted.

    Rules: ``version`` >= 1 and ``signer_set_version`` >= 1; 0..MAX_DRILL_MODELS
    valid model names and 0..MAX_DRILL_ARTIFACTS artifact ids (64 lowercase hex),
    no duplicates. Raises DrillRegisterError.
    """

    version: int
    signer_set_version: int
    models: tuple[str, ...]
    artifacts: tuple[str, ...]
    encoding: int = DRILL_REGISTER_ENCODING

    def __post_init__(self) -> None:
        if not _is_int(self.encoding) or self.encoding != DRILL_REGISTER_ENCODING:
            raise DrillRegisterError(f"drill register: unsupported encoding {self.encoding!r}")
        for name in ("version", "signer_set_version"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= _MAX_INT:
                raise DrillRegisterError(f"drill register: {name} must be an integer >= 1")
        models = _sorted_ids(self.models, "models")
        if len(models) > MAX_DRILL_MODELS:
            raise DrillRegisterError(f"drill register: more than {MAX_DRILL_MODELS} models")
        for name in models:
            if not MODEL_NAME.match(name):
                raise DrillRegisterError(f"drill register: bad model name {name[:64]!r}")
        artifacts = _sorted_ids(self.artifacts, "artifacts")
        if len(artifacts) > MAX_DRILL_ARTIFACTS:
            raise DrillRegisterError(f"drill register: more than {MAX_DRILL_ARTIFACTS} artifacts")
        for aid in artifacts:
            if not HEX64.match(aid):
                raise DrillRegisterError(f"drill register: bad artifact id {aid[:64]!r}: want 64 lowercase hex digits")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "artifacts", artifacts)

    @classmethod
    def decode(cls, data: bytes) -> DrillRegister:
        """Parse canonical register bytes. Raises DrillRegisterError."""
        obj = decode_strict(data, "drill register", MAX_DRILL_REGISTER_BYTES, DrillRegisterError,
                            DrillRegisterError)
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise DrillRegisterError(f"drill register: want exactly the fields {', '.join(sorted(_FIELDS))}")
        if not isinstance(obj["models"], list) or not isinstance(obj["artifacts"], list):
            raise DrillRegisterError("drill register: models and artifacts must be lists")
        register = cls(version=obj["version"], signer_set_version=obj["signer_set_version"],
                       models=tuple(obj["models"]), artifacts=tuple(obj["artifacts"]), encoding=obj["encoding"])
        if register.encode() != bytes(data):
            raise DrillRegisterError("drill register: not in canonical form (models or artifacts unsorted)")
        return register

    def to_json(self) -> dict[str, Any]:
        return {"artifacts": list(self.artifacts), "encoding": self.encoding, "models": list(self.models),
                "signer_set_version": self.signer_set_version, "version": self.version}

    def encode(self) -> bytes:
        """The canonical bytes (what is stored, sent and signed after the domain)."""
        return encode_canonical(self.to_json())

    def signature_input(self) -> bytes:
        """What signers sign: ``custos.v1.drill-register\\x00`` + body."""
        return DRILL_REGISTER_DOMAIN + self.encode()

    @property
    def id(self) -> str:
        return hashlib.sha256(self.signature_input()).hexdigest()

    def successor(self, *, signer_set_version: int, models: Iterable[str], artifacts: Iterable[str]) -> DrillRegister:
        """The next version with the given contents (unsigned). Raises DrillRegisterError."""
        return DrillRegister(version=self.version + 1, signer_set_version=signer_set_version,
                             models=tuple(models), artifacts=tuple(artifacts))

    def covers(self, models: Iterable[str], artifacts: Iterable[str]) -> bool:
        """Whether every model and artifact given is declared a drill model or artifact."""
        return set(models) <= set(self.models) and set(artifacts) <= set(self.artifacts)

    def sign(self, private_key: Ed25519PrivateKey) -> Signature:
        """A raw Ed25519 signature by ``private_key``."""
        return sign_raw(private_key, self.signature_input())

    def sign_ssh(self, private_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> Signature:
        """An SSHSIG signature, as ``ssh-keygen -Y sign -n custos-drill-register`` makes."""
        return sign_ssh(private_key, self.signature_input(), namespace=DRILL_REGISTER_NAMESPACE)


EMPTY_VERSION = 0  # "no register yet": the first one installed is version 1


def check_register(register_bytes: bytes, signatures: Sequence[Signature], signer_set: SignerSet) -> ThresholdResult:
    """The rotate-threshold tally of ``signatures`` over the register bytes. Never raises
    for bad signatures (they are reported); raises InvalidInput for caller errors."""
    if not isinstance(signer_set, SignerSet):
        raise InvalidInput("signer_set must be a SignerSet")
    return check_threshold(signer_set, signatures, DRILL_REGISTER_DOMAIN + bytes(register_bytes),
                           namespace=DRILL_REGISTER_NAMESPACE,
                           threshold=signer_set.threshold(DRILL_REGISTER_ACTION))


def verify_register(register_bytes: bytes, signatures: Sequence[Signature], signer_set: SignerSet, *,
                    trusted_version: int = EMPTY_VERSION) -> DrillRegister:
    """The register, if it is signed by a rotate threshold of ``signer_set``, made for that
    set's version, and not older than ``trusted_version`` (equal is a re-delivery).

    Raises DrillRegisterError (malformed) or DrillRegisterRejected (signatures, signer-set
    version, rollback).
    """
    register = DrillRegister.decode(register_bytes)
    if register.signer_set_version != signer_set.version:
        raise DrillRegisterRejected(
            f"drill register v{register.version} was signed under signer-set version "
            f"{register.signer_set_version}, the trusted version is {signer_set.version}: re-sign it")
    if register.version < trusted_version:
        raise DrillRegisterRejected(
            f"drill register v{register.version} is older than the trusted v{trusted_version} (rollback)")
    tally = check_register(register_bytes, signatures, signer_set)
    if not tally:
        raise DrillRegisterRejected(
            f"drill register v{register.version} needs {tally.threshold} distinct valid signers "
            f"(the rotate threshold), has {len(tally.valid)}")
    return register


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
