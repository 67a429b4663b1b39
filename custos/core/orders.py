"""Quorum-signed orders: drill, halt, lift, destroy.

An order is a canonical JSON body — action, scope (model names and the
artifact ids the control plane resolved transitively), reason, validity
window, nonce, sequence number and the signer-set version it is meant for.
Executives sign ``custos.v1.order\\x00`` + body (raw Ed25519, or SSHSIG with
namespace ``custos-order``); the order id is the SHA-256 of the same bytes.

``verify_order`` is the one check the control plane and every host agent run:
the body is canonical, made for the pinned signer-set version, signed by a
threshold of distinct keys of that set for its action, inside its validity
window, never executed before and newer than everything executed. It returns
an ``OrderVerification`` (truthy only when valid) listing every reason it
fails; ``raise_if_invalid()`` raises instead. Replay state is a small value
(``ExecutedOrders``) that ``apply_executed`` advances.

Specified in docs/orders.md; vectors in tests/core/vectors/. Pure logic.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.core.canonical import encode_canonical
from custos.core.drills import DrillRegister
from custos.core.names import HEX64, MODEL_NAME
from custos.core.signers import (
    Failure,
    Signature,
    SignerSet,
    check_threshold,
    decode_strict,
    sign_raw,
    sign_ssh,
)
from custos.errors import Conflict, IntegrityError, InvalidInput

ORDER_DOMAIN = b"custos.v1.order\x00"
ORDER_NAMESPACE = "custos-order"  # SSHSIG namespace: ssh-keygen -Y sign -n custos-order
ORDER_ENCODING = 1
ORDER_ACTIONS = ("drill", "halt", "lift", "destroy")

MAX_LIFETIME = 7 * 24 * 3600  # an order is signed within a week or re-proposed
DEFAULT_LIFETIME = 24 * 3600
MAX_CLOCK_SKEW = 60  # an order issued up to a minute "in the future" is accepted
MAX_REASON_CHARS = 2000
MAX_MODELS = 1000
MAX_ARTIFACTS = 100_000
MAX_ORDER_BYTES = 8 * 1024 * 1024
_MAX_INT = 2**53

_HEX64 = HEX64
_NONCE = re.compile(r"^[0-9a-f]{32}$")
# Bidirectional controls can make the reason an executive reads differ from
# the bytes they sign ("Trojan Source"); they are refused.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_FIELDS = frozenset(
    (
        "action",
        "drill",
        "encoding",
        "issued_at",
        "nonce",
        "not_after",
        "reason",
        "scope",
        "sequence",
        "signer_set_version",
    )
)


class OrderError(InvalidInput):
    """An order body is malformed or breaks a rule."""


class NonCanonicalOrder(OrderError):
    """Order bytes parse but are not in canonical form."""


class OrderRejected(IntegrityError):
    """An order failed verification; ``verification`` says why."""

    def __init__(self, verification: OrderVerification) -> None:
        self.verification = verification
        self.reasons = verification.reasons
        super().__init__("order rejected: " + "; ".join(f"{f.code}: {f.detail}" for f in verification.failures))


class OrderReason(StrEnum):
    """Stable codes for why an order is refused (the same at control plane and agent)."""

    MALFORMED = "malformed"
    NON_CANONICAL = "non_canonical"
    WRONG_SIGNER_SET = "wrong_signer_set"
    THRESHOLD_NOT_MET = "threshold_not_met"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    STALE_SEQUENCE = "stale_sequence"
    DESTROYED_MODEL = "destroyed_model"
    NOT_DRILL = "not_drill"  # a drill names something the signed drill register does not


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise OrderError("order: reason must be a non-empty string")
    if len(reason) > MAX_REASON_CHARS:
        raise OrderError(f"order: reason longer than {MAX_REASON_CHARS} characters")
    for c in reason:
        code = ord(c)
        if (code < 0x20 and c not in "\n\t") or 0x7F <= code < 0xA0 or c in _BIDI_CONTROLS:
            raise OrderError(f"order: reason contains control character U+{code:04X}")
        if 0xD800 <= code <= 0xDFFF:
            raise OrderError("order: reason contains a lone surrogate")
    if unicodedata.normalize("NFC", reason) != reason:
        raise OrderError("order: reason is not NFC-normalized")
    return reason


def _sorted_unique(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str | bytes):
        raise OrderError(f"order: {what} must be a list, not a string")
    items = tuple(values)
    if not all(isinstance(v, str) for v in items):
        raise OrderError(f"order: {what} must be strings")
    ordered = tuple(sorted(items))
    for a, b in itertools.pairwise(ordered):
        if a == b:
            raise OrderError(f"order: duplicate entry in {what}: {a[:64]!r}")
    return ordered


@dataclass(frozen=True, slots=True)
class Order:
    """A validated order body. ``models`` and ``artifacts`` are kept sorted.

    Rules: action is one of ORDER_ACTIONS; 1..MAX_MODELS valid model names and
    0..MAX_ARTIFACTS artifact ids (64 lowercase hex), no duplicates; a reason
    of 1..2000 characters without control or bidi characters, NFC; 0 <=
    issued_at < not_after <= issued_at + MAX_LIFETIME; a 32-hex-digit nonce;
    sequence and signer_set_version >= 1; ``drill`` is true for a drill, false
    for a halt or destroy, either for a lift (a lift that ends a drill).
    Raises OrderError.
    """

    action: str
    models: tuple[str, ...]
    artifacts: tuple[str, ...]
    reason: str
    issued_at: int
    not_after: int
    nonce: str
    sequence: int
    signer_set_version: int
    drill: bool
    encoding: int = ORDER_ENCODING

    def __post_init__(self) -> None:
        if self.encoding != ORDER_ENCODING or not _is_int(self.encoding):
            raise OrderError(f"order: unsupported encoding {self.encoding!r}")
        if self.action not in ORDER_ACTIONS:
            raise OrderError(f"order: action must be one of {', '.join(ORDER_ACTIONS)}")
        models = _sorted_unique(self.models, "models")
        if not 1 <= len(models) <= MAX_MODELS:
            raise OrderError(f"order: scope must name 1 to {MAX_MODELS} models")
        for name in models:
            if not MODEL_NAME.match(name):
                raise OrderError(f"order: bad model name {name[:64]!r}")
        artifacts = _sorted_unique(self.artifacts, "artifacts")
        if len(artifacts) > MAX_ARTIFACTS:
            raise OrderError(f"order: more than {MAX_ARTIFACTS} artifacts")
        for artifact in artifacts:
            if not _HEX64.match(artifact):
                raise OrderError(f"order: bad artifact id {artifact[:64]!r}: want 64 lowercase hex digits")
        _check_reason(self.reason)
        for name in ("issued_at", "not_after", "sequence", "signer_set_version"):
            if not _is_int(getattr(self, name)) or not 0 <= getattr(self, name) <= _MAX_INT:
                raise OrderError(f"order: {name} must be a non-negative integer")
        if self.sequence < 1 or self.signer_set_version < 1:
            raise OrderError("order: sequence and signer_set_version must be >= 1")
        if self.not_after <= self.issued_at:
            raise OrderError("order: not_after must be after issued_at")
        if self.not_after - self.issued_at > MAX_LIFETIME:
            raise OrderError(f"order: valid for more than {MAX_LIFETIME // 86400} days")
        if not isinstance(self.nonce, str) or not _NONCE.match(self.nonce):
            raise OrderError("order: nonce must be 32 lowercase hex digits (16 random bytes)")
        if not isinstance(self.drill, bool):
            raise OrderError("order: drill must be true or false")
        if self.action == "drill" and not self.drill:
            raise OrderError("order: a drill order must have drill = true")
        if self.action in ("halt", "destroy") and self.drill:
            raise OrderError(f"order: a {self.action} order is never a drill (use action drill)")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "artifacts", artifacts)

    @classmethod
    def create(
        cls,
        *,
        action: str,
        models: Iterable[str],
        artifacts: Iterable[str],
        reason: str,
        issued_at: int,
        sequence: int,
        signer_set_version: int,
        not_after: int | None = None,
        lifetime: int = DEFAULT_LIFETIME,
        drill: bool | None = None,
        nonce: str | None = None,
    ) -> Order:
        """A new order with a fresh random nonce. ``not_after`` defaults to
        ``issued_at + lifetime``; ``drill`` to true exactly for a drill. Raises OrderError."""
        if isinstance(models, str) or isinstance(artifacts, str):
            raise OrderError("order: models and artifacts must be lists of strings")
        if not _is_int(issued_at) or not _is_int(lifetime):
            raise OrderError("order: issued_at and lifetime must be integers")
        return cls(
            action=action,
            models=tuple(models),
            artifacts=tuple(artifacts),
            reason=reason,
            issued_at=issued_at,
            not_after=issued_at + lifetime if not_after is None else not_after,
            nonce=secrets.token_hex(16) if nonce is None else nonce,
            sequence=sequence,
            signer_set_version=signer_set_version,
            drill=(action == "drill") if drill is None else drill,
        )

    @classmethod
    def decode(cls, data: bytes) -> Order:
        """Parse canonical order bytes. Raises OrderError (NonCanonicalOrder for
        valid JSON in a non-canonical form, e.g. unsorted models)."""
        obj = decode_strict(data, "order", MAX_ORDER_BYTES, OrderError, NonCanonicalOrder)
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise OrderError(f"order: want exactly the fields {', '.join(sorted(_FIELDS))}")
        scope = obj["scope"]
        if not isinstance(scope, dict) or set(scope) != {"artifacts", "models"}:
            raise OrderError("order: scope wants exactly artifacts and models")
        if not isinstance(scope["models"], list) or not isinstance(scope["artifacts"], list):
            raise OrderError("order: scope models and artifacts must be lists")
        if not isinstance(obj["action"], str) or not isinstance(obj["nonce"], str):
            raise OrderError("order: action and nonce must be strings")
        order = cls(
            action=obj["action"],
            models=tuple(scope["models"]),
            artifacts=tuple(scope["artifacts"]),
            reason=obj["reason"],
            issued_at=obj["issued_at"],
            not_after=obj["not_after"],
            nonce=obj["nonce"],
            sequence=obj["sequence"],
            signer_set_version=obj["signer_set_version"],
            drill=obj["drill"],
            encoding=obj["encoding"],
        )
        if order.encode() != bytes(data):
            raise NonCanonicalOrder("order: models or artifacts are not sorted")
        return order

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "drill": self.drill,
            "encoding": self.encoding,
            "issued_at": self.issued_at,
            "nonce": self.nonce,
            "not_after": self.not_after,
            "reason": self.reason,
            "scope": {"artifacts": list(self.artifacts), "models": list(self.models)},
            "sequence": self.sequence,
            "signer_set_version": self.signer_set_version,
        }

    def encode(self) -> bytes:
        """The canonical body bytes (what is stored and sent)."""
        return encode_canonical(self.to_json())

    def signature_input(self) -> bytes:
        """What signers sign: ``custos.v1.order\\x00`` + body."""
        return ORDER_DOMAIN + self.encode()

    @property
    def id(self) -> str:
        """Hex SHA-256 of the signature input."""
        return order_id_of(self.encode())

    def sign(self, private_key: Ed25519PrivateKey) -> Signature:
        """A raw Ed25519 signature by ``private_key``."""
        return sign_raw(private_key, self.signature_input())

    def sign_ssh(self, private_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> Signature:
        """An SSHSIG signature, identical in form to ``ssh-keygen -Y sign -n custos-order``."""
        return sign_ssh(private_key, self.signature_input(), namespace=ORDER_NAMESPACE)


def order_id_of(order_bytes: bytes) -> str:
    return hashlib.sha256(ORDER_DOMAIN + bytes(order_bytes)).hexdigest()


# -- replay state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutedOrders:
    """What has been executed under this trust root: the highest sequence
    number and every executed order id. Raises InvalidInput if inconsistent."""

    highest_sequence: int = 0
    executed_ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not _is_int(self.highest_sequence) or self.highest_sequence < 0:
            raise InvalidInput("executed orders: highest_sequence must be a non-negative integer")
        if not all(isinstance(i, str) and _HEX64.match(i) for i in self.executed_ids):
            raise InvalidInput("executed orders: ids must be 64 lowercase hex digits")
        object.__setattr__(self, "executed_ids", frozenset(self.executed_ids))

    def encode(self) -> bytes:
        return encode_canonical({"executed_ids": sorted(self.executed_ids), "highest_sequence": self.highest_sequence})

    @classmethod
    def decode(cls, data: bytes) -> ExecutedOrders:
        """Raises InvalidInput."""
        obj = decode_strict(data, "executed orders", MAX_ORDER_BYTES, InvalidInput, InvalidInput)
        if not isinstance(obj, dict) or set(obj) != {"executed_ids", "highest_sequence"}:
            raise InvalidInput("executed orders: want exactly executed_ids and highest_sequence")
        if not isinstance(obj["executed_ids"], list):
            raise InvalidInput("executed orders: executed_ids must be a list")
        if not all(isinstance(i, str) for i in obj["executed_ids"]):
            raise InvalidInput("executed orders: ids must be strings")
        state = cls(highest_sequence=obj["highest_sequence"], executed_ids=frozenset(obj["executed_ids"]))
        if state.encode() != bytes(data):
            raise InvalidInput("executed orders: not in canonical form")
        return state


def apply_executed(state: ExecutedOrders, order: Order) -> ExecutedOrders:
    """The state after executing ``order`` (a new value; ``state`` is unchanged).

    Raises Conflict if the order was executed already or is not newer than
    everything executed.
    """
    if order.id in state.executed_ids:
        raise Conflict(f"order {order.id[:16]} was already executed")
    if order.sequence <= state.highest_sequence:
        raise Conflict(f"order sequence {order.sequence} is not above the executed {state.highest_sequence}")
    return ExecutedOrders(highest_sequence=order.sequence, executed_ids=state.executed_ids | {order.id})


# -- verification -----------------------------------------------------------------


@dataclass
class OrderVerification:
    """Outcome of ``verify_order``; truthy only when the order may be executed.

    Signature report (key ids): ``valid`` (distinct, each counted once),
    ``invalid``, ``unknown`` (not in the set), ``duplicates`` (signed more than
    once); ``missing`` = how many more valid signers the threshold needs.
    ``failures`` holds every reason, with a stable ``code`` (OrderReason).
    """

    order: Order | None = None
    order_id: str | None = None
    signer_set_version: int = 0
    threshold: int = 0
    valid: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    failures: list[Failure] = field(default_factory=list)

    def __bool__(self) -> bool:
        return not self.failures and self.order is not None

    @property
    def missing(self) -> int:
        return max(0, self.threshold - len(self.valid))

    @property
    def reasons(self) -> list[str]:
        return [f.code for f in self.failures]

    def fail(self, code: OrderReason, detail: str) -> None:
        self.failures.append(Failure(str(code), detail))

    def raise_if_invalid(self) -> Order:
        """Return the verified order; raise OrderRejected (an IntegrityError) otherwise."""
        if not self or self.order is None:
            raise OrderRejected(self)
        return self.order


def verify_order(
    order_bytes: bytes,
    signatures: Sequence[Signature],
    signer_set: SignerSet,
    *,
    now: int,
    state: ExecutedOrders,
    destroyed_models: Collection[str] = frozenset(),
    destroyed_artifacts: Collection[str] = frozenset(),
    drill_register: DrillRegister | None = None,
) -> OrderVerification:
    """Verify an order against the pinned ``signer_set`` at time ``now`` (unix seconds).

    Never raises for bad order bytes or signatures — they are reported. Raises
    InvalidInput only for a caller error (``now`` not an int, wrong argument types).
    A lift that names a model in ``destroyed_models`` or an artifact in
    ``destroyed_artifacts`` fails: a destroy cannot be lifted.

    Thresholds cannot be borrowed: ``drill_register`` (already verified, see
    custos.core.drills.verify_register) says what a drill may stop. A drill whose
    signed scope names anything outside it fails (``not_drill``); any other order
    whose scope does needs at least the ``halt`` threshold, whatever its own
    action's threshold — so no set of signatures below the halt threshold changes
    anything that is not a declared drill model or artifact.
    """
    if not _is_int(now):
        raise InvalidInput("now must be integer unix seconds")
    if not isinstance(signer_set, SignerSet) or not isinstance(state, ExecutedOrders):
        raise InvalidInput("signer_set must be a SignerSet and state an ExecutedOrders")
    if drill_register is not None and not isinstance(drill_register, DrillRegister):
        raise InvalidInput("drill_register must be a DrillRegister or None")
    if not all(isinstance(s, Signature) for s in signatures):
        raise InvalidInput("signatures must be Signature values")
    result = OrderVerification(signer_set_version=signer_set.version)
    try:
        order = Order.decode(order_bytes)
    except NonCanonicalOrder as exc:
        result.fail(OrderReason.NON_CANONICAL, str(exc))
        return result
    except OrderError as exc:
        result.fail(OrderReason.MALFORMED, str(exc))
        return result
    result.order, result.order_id = order, order.id

    if order.signer_set_version != signer_set.version:
        result.fail(
            OrderReason.WRONG_SIGNER_SET,
            f"made for signer-set version {order.signer_set_version}, the trusted version is {signer_set.version}",
        )
    register = drill_register if drill_register and drill_register.signer_set_version == signer_set.version else None
    all_drill = register is not None and register.covers(order.models, order.artifacts)
    threshold = signer_set.threshold(order.action)
    if not all_drill:
        if order.action == "drill":
            outside = _outside(order, register)
            result.fail(OrderReason.NOT_DRILL, f"a drill may only name declared drill models and artifacts: {outside}")
        else:
            threshold = max(threshold, signer_set.threshold("halt"))
    tally = check_threshold(
        signer_set,
        signatures,
        ORDER_DOMAIN + bytes(order_bytes),
        namespace=ORDER_NAMESPACE,
        threshold=threshold,
    )
    result.threshold = tally.threshold
    result.valid, result.invalid, result.unknown = tally.valid, tally.invalid, tally.unknown
    result.duplicates, result.problems = tally.duplicates, tally.problems
    if not tally:
        result.fail(
            OrderReason.THRESHOLD_NOT_MET,
            f"{order.action} needs {tally.threshold} distinct valid signers, has {len(tally.valid)}",
        )
    if order.issued_at > now + MAX_CLOCK_SKEW:
        result.fail(OrderReason.NOT_YET_VALID, f"issued at {order.issued_at}, now is {now}")
    if now >= order.not_after:
        result.fail(OrderReason.EXPIRED, f"expired at {order.not_after}, now is {now}")
    if order.id in state.executed_ids:
        result.fail(OrderReason.REPLAYED, f"order {order.id[:16]} was already executed")
    if order.sequence <= state.highest_sequence:
        result.fail(
            OrderReason.STALE_SEQUENCE,
            f"sequence {order.sequence} is not above the highest executed {state.highest_sequence}",
        )
    if order.action == "lift":
        destroyed = sorted(set(order.models) & set(destroyed_models))
        if destroyed:
            result.fail(OrderReason.DESTROYED_MODEL, f"cannot lift destroyed model(s): {', '.join(destroyed)}")
        gone = sorted(set(order.artifacts) & set(destroyed_artifacts))
        if gone:
            result.fail(OrderReason.DESTROYED_MODEL,
                        f"cannot lift {len(gone)} destroyed artifact(s): {', '.join(a[:12] for a in gone[:5])}")
    return result


def _outside(order: Order, register: DrillRegister | None) -> str:
    """What of a drill's scope the register does not declare, in a sentence."""
    if register is None:
        return "no drill register signed under this signer-set version"
    models = sorted(set(order.models) - set(register.models))
    artifacts = sorted(set(order.artifacts) - set(register.artifacts))
    parts = [f"model(s) {', '.join(models[:5])}"] if models else []
    if artifacts:
        parts.append(f"{len(artifacts)} artifact(s) {', '.join(a[:12] for a in artifacts[:5])}")
    return " and ".join(parts) + " not in drill register v" + str(register.version)
