"""The signed-order file: one order and everything an agent needs to verify it, in a
portable form for the order feed, the drop directory and `custos agent apply-order`.

An order is valid by its signatures alone, so the file carries exactly what a
``custody.v1.SignedOrder`` on the custody stream carries — nothing in it is trusted
because of where it came from:

    {"dry_run": {"artifacts": [ID, ...], "models": [NAME, ...]},   unsigned: report-only (drills)
     "drill_register": {"body": TEXT, "signatures": TEXT},         the signed register ("" when none)
     "format": "custos.v1.signed-order",
     "order": TEXT,                                                the canonical order bytes
     "signatures": [{"key_id": ID, "sig": SIG}, ...],
     "signer_chain": [TEXT, ...],                                  signed rotations, oldest first
     "signer_set": TEXT,                                           the set it is signed under ("" unknown)
     "version": 1}

The file's bytes are that object in canonical JSON (custos.core.canonical) and
nothing else: decoding is strict (exact keys and types, the format name, a known
version, bounded sizes and counts), so a file either decodes to one value or is
refused with a clear reason. Decoding checks the shape only; whether the order is
valid is for ``custos.core.orders.verify_order`` to say.

Feed objects are named ``{prefix}{created_ns:020d}-{order_id}.order``: sortable by
time, unique per order, the same name for every publisher of one order at one time.

Pure logic. Specified in docs/orders.md ("Orders over any path").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.drills import verify_register
from custos.core.orders import (
    MAX_ARTIFACTS,
    MAX_MODELS,
    MAX_ORDER_BYTES,
    ExecutedOrders,
    OrderVerification,
    order_id_of,
    verify_order,
)
from custos.core.signers import (
    MAX_SIGNATURES,
    MAX_SIGNER_SET_BYTES,
    Signature,
    SignerSet,
    TrustedSignerSets,
    decode_signatures,
)
from custos.errors import CustosError, InvalidInput

ORDER_FILE_FORMAT = "custos.v1.signed-order"
ORDER_FILE_VERSION = 1
ORDER_FILE_SUFFIX = ".order"
MAX_CHAIN = 256  # signer-set rotations carried with one order
MAX_DRILL_REGISTER_BYTES = MAX_ORDER_BYTES  # a register lists drill artifacts, like an order's scope
MAX_ORDER_FILE_BYTES = 2 * MAX_ORDER_BYTES + 4 * 1024 * 1024  # order, register, sets and signatures
_KEYS = frozenset({"dry_run", "drill_register", "format", "order", "signatures", "signer_chain", "signer_set",
                   "version"})
_FEED_NAME = re.compile(r"^(\d{20})-([0-9a-f]{64})\.order$")


class OrderFileError(InvalidInput):
    """Bytes that are not a signed-order file (this version of the format)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderFile:
    """One signed order as the feed, the drop directory and apply-order carry it."""

    order: bytes  # canonical order bytes, exactly what was signed
    signatures: tuple[Signature, ...]
    signer_set: bytes = b""
    signer_chain: tuple[bytes, ...] = ()
    drill_register: bytes = b""
    drill_register_signatures: bytes = b""
    dry_run_models: tuple[str, ...] = ()
    dry_run_artifacts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _bounded(self.order, MAX_ORDER_BYTES, "order")
        if not self.order:
            raise OrderFileError("order file: the order is empty")
        _count(self.signatures, MAX_SIGNATURES, "signatures")
        if not all(isinstance(s, Signature) for s in self.signatures):
            raise OrderFileError("order file: signatures must be Signature values")
        _bounded(self.signer_set, MAX_SIGNER_SET_BYTES, "signer_set")
        _count(self.signer_chain, MAX_CHAIN, "signer_chain")
        for entry in self.signer_chain:
            _bounded(entry, 2 * MAX_SIGNER_SET_BYTES, "signer_chain entry")
        _bounded(self.drill_register, MAX_DRILL_REGISTER_BYTES, "drill_register")
        _bounded(self.drill_register_signatures, MAX_SIGNER_SET_BYTES, "drill_register signatures")
        _strings(self.dry_run_models, MAX_MODELS, "dry_run models")
        _strings(self.dry_run_artifacts, MAX_ARTIFACTS, "dry_run artifacts")

    @property
    def order_id(self) -> str:
        """The id of the order it carries (SHA-256 of the order's signature input)."""
        return order_id_of(self.order)

    def to_json(self) -> dict[str, Any]:
        """The file as a JSON value. Raises OrderFileError (a byte field that is not UTF-8)."""
        return {
            "dry_run": {"artifacts": list(self.dry_run_artifacts), "models": list(self.dry_run_models)},
            "drill_register": {"body": _text(self.drill_register, "drill_register"),
                               "signatures": _text(self.drill_register_signatures, "drill_register signatures")},
            "format": ORDER_FILE_FORMAT,
            "order": _text(self.order, "order"),
            "signatures": [s.to_json() for s in self.signatures],
            "signer_chain": [_text(e, "signer_chain entry") for e in self.signer_chain],
            "signer_set": _text(self.signer_set, "signer_set"),
            "version": ORDER_FILE_VERSION,
        }

    def encode(self) -> bytes:
        """The file's canonical bytes. Raises OrderFileError."""
        try:
            data = encode_canonical(self.to_json())
        except OrderFileError:
            raise
        except CustosError as exc:
            raise OrderFileError(f"order file: {exc}") from None
        if len(data) > MAX_ORDER_FILE_BYTES:
            raise OrderFileError(f"order file: larger than {MAX_ORDER_FILE_BYTES} bytes")
        return data

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> OrderFile:
        """Parse a signed-order file strictly. Raises OrderFileError with the reason."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise OrderFileError("order file: want bytes")
        raw = bytes(data)
        if len(raw) > MAX_ORDER_FILE_BYTES:
            raise OrderFileError(f"order file: larger than {MAX_ORDER_FILE_BYTES} bytes")
        if not raw:
            raise OrderFileError("order file: empty")
        try:
            obj = decode_canonical(raw)
        except CustosError as exc:
            raise OrderFileError(f"order file: {exc}") from None
        if not isinstance(obj, dict):
            raise OrderFileError("order file: want a JSON object")
        if obj.get("format") != ORDER_FILE_FORMAT:
            raise OrderFileError(f"order file: format is not {ORDER_FILE_FORMAT!r}")
        version = obj.get("version")
        if version != ORDER_FILE_VERSION or isinstance(version, bool):
            raise OrderFileError(f"order file: unsupported version {version!r} (this build reads "
                                 f"version {ORDER_FILE_VERSION})")
        if set(obj) != _KEYS:
            missing, extra = sorted(_KEYS - set(obj)), sorted(set(obj) - _KEYS)
            raise OrderFileError(f"order file: wrong fields (missing {missing}, unknown {extra})")
        dry = _object(obj["dry_run"], {"artifacts", "models"}, "dry_run")
        reg = _object(obj["drill_register"], {"body", "signatures"}, "drill_register")
        sigs = obj["signatures"]
        if not isinstance(sigs, list):
            raise OrderFileError("order file: signatures must be a list")
        _count(sigs, MAX_SIGNATURES, "signatures")
        signatures = []
        for item in sigs:
            if not isinstance(item, dict) or set(item) != {"key_id", "sig"}:
                raise OrderFileError("order file: each signature wants exactly the strings key_id and sig")
            try:
                signatures.append(Signature(key_id=item["key_id"], sig=item["sig"]))
            except CustosError as exc:
                raise OrderFileError(f"order file: {exc}") from None
        chain = obj["signer_chain"]
        if not isinstance(chain, list):
            raise OrderFileError("order file: signer_chain must be a list")
        return cls(
            order=_bytes(obj["order"], "order"),
            signatures=tuple(signatures),
            signer_set=_bytes(obj["signer_set"], "signer_set"),
            signer_chain=tuple(_bytes(e, "signer_chain entry") for e in _counted(chain, MAX_CHAIN, "signer_chain")),
            drill_register=_bytes(reg["body"], "drill_register body"),
            drill_register_signatures=_bytes(reg["signatures"], "drill_register signatures"),
            dry_run_models=_string_list(dry["models"], MAX_MODELS, "dry_run models"),
            dry_run_artifacts=_string_list(dry["artifacts"], MAX_ARTIFACTS, "dry_run artifacts"),
        )


def follow_chain(trusted: TrustedSignerSets, chain: Sequence[bytes]) -> bool:
    """Advance ``trusted`` through the signed rotations of ``chain`` past its version (entries
    at or below it are skipped). True if it moved. Raises InvalidInput, RotationRejected."""
    moved = False
    for item in chain:
        rec = decode_canonical(bytes(item))
        if (not isinstance(rec, dict) or set(rec) != {"set", "signatures"}
                or not all(isinstance(v, str) for v in rec.values())):
            raise InvalidInput("a rotation-chain entry wants exactly the strings set and signatures")
        if SignerSet.decode(rec["set"].encode()).version <= trusted.version:
            continue
        trusted.update(rec["set"].encode(), decode_signatures(rec["signatures"].encode()))
        moved = True
    return moved


def check_order_file(f: OrderFile, trusted: TrustedSignerSets, *, now: int) -> OrderVerification:
    """What an agent that trusts ``trusted`` and has executed nothing would make of ``f`` at
    ``now``: the chain followed, the register checked (one that does not verify counts as
    none), then the order verified. For publishers, to refuse an order no agent would take;
    each agent still decides with its own replay state. Raises InvalidInput, RotationRejected
    (a rotation chain that does not verify)."""
    follow_chain(trusted, f.signer_chain)
    register = None
    if f.drill_register:
        try:
            register = verify_register(f.drill_register, decode_signatures(f.drill_register_signatures),
                                       trusted.current)
        except CustosError:
            register = None
    return verify_order(f.order, list(f.signatures), trusted.current, now=now, state=ExecutedOrders(),
                        drill_register=register)


def feed_object_name(created_ns: int, order_id: str) -> str:
    """The feed object's name (without the feed prefix): sortable by ``created_ns``, unique
    per order. Raises InvalidInput."""
    if not isinstance(created_ns, int) or isinstance(created_ns, bool) or not 0 <= created_ns < 10**20:
        raise InvalidInput("feed object: created_ns must be an integer of at most 20 digits")
    if not isinstance(order_id, str) or not re.fullmatch(r"[0-9a-f]{64}", order_id):
        raise InvalidInput("feed object: order id must be 64 lowercase hex digits")
    return f"{created_ns:020d}-{order_id}{ORDER_FILE_SUFFIX}"


def parse_feed_object_name(name: str) -> tuple[int, str] | None:
    """(created_ns, order_id) of a feed object's name, or None if it is not one.
    Names are hints for ordering only: what an object holds is read from its bytes."""
    m = _FEED_NAME.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


# -- strict pieces --------------------------------------------------------------------


def _bounded(value: object, limit: int, what: str) -> None:
    if not isinstance(value, bytes):
        raise OrderFileError(f"order file: {what} must be bytes")
    if len(value) > limit:
        raise OrderFileError(f"order file: {what} is larger than {limit} bytes")


def _count(items: Sequence[Any], limit: int, what: str) -> None:
    if not isinstance(items, tuple | list):
        raise OrderFileError(f"order file: {what} must be a sequence")
    if len(items) > limit:
        raise OrderFileError(f"order file: more than {limit} {what}")


def _counted(items: list[Any], limit: int, what: str) -> list[Any]:
    _count(items, limit, what)
    return items


def _strings(items: Sequence[Any], limit: int, what: str) -> None:
    _count(items, limit, what)
    if not all(isinstance(s, str) and 0 < len(s) <= 256 for s in items):
        raise OrderFileError(f"order file: {what} must be non-empty strings of at most 256 characters")


def _string_list(value: object, limit: int, what: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise OrderFileError(f"order file: {what} must be a list")
    _strings(value, limit, what)
    return tuple(value)


def _object(value: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise OrderFileError(f"order file: {what} wants exactly the fields {sorted(keys)}")
    return value


def _bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise OrderFileError(f"order file: {what} must be a string")
    return value.encode("utf-8")  # decode_canonical already refused anything without a UTF-8 form


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise OrderFileError(f"order file: {what} is not UTF-8 text (signed Custos encodings always are)") from None
