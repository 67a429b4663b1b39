"""Canonical JSON: the one byte encoding Custos hashes and signs.

Rules (see docs/encodings.md): UTF-8, object keys sorted by code point, no
insignificant whitespace, only strings, integers, booleans, null, lists and
objects — no floats, because their text form is not canonical across
implementations. ``decode_canonical`` rejects any input that does not
re-encode to the same bytes, so two different byte strings can never stand
for the same value.
"""

from __future__ import annotations

import json
from typing import Any

from custos.errors import InvalidInput

_MAX_INT = 2**63 - 1


def _check(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise InvalidInput("canonical JSON: nesting too deep")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -_MAX_INT <= value <= _MAX_INT:
            raise InvalidInput("canonical JSON: integer out of range")
        return
    if isinstance(value, list):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput("canonical JSON: object keys must be strings")
            _check(item, depth + 1)
        return
    raise InvalidInput(f"canonical JSON: unsupported type {type(value).__name__}")


def encode_canonical(value: Any) -> bytes:
    """Encode ``value`` canonically.

    Raises InvalidInput for floats and other types, and for a string (key or value) that is
    not valid Unicode: a lone surrogate ("\\ud800") has no UTF-8 form, so no canonical bytes.
    """
    _check(value)
    return _dump(value)


def _dump(value: Any) -> bytes:
    """The canonical bytes of a value of checked types. Raises InvalidInput (a lone surrogate)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # One encode of the whole text finds it wherever it is, at no cost to valid input.
        raise InvalidInput("canonical JSON: a string holds a lone surrogate, which is not valid Unicode") from None


def decode_canonical(data: bytes | bytearray) -> Any:
    """Decode canonical JSON, rejecting anything that is not in canonical form: invalid UTF-8,
    a lone surrogate escape, floats, nesting deeper than 32, integers beyond 64 bits, duplicate
    or unsorted keys, any insignificant whitespace.

    Raises InvalidInput.
    """
    if not isinstance(data, bytes | bytearray):
        raise InvalidInput("not canonical JSON: want bytes")
    try:
        value = json.loads(data.decode("utf-8"), parse_float=_reject_float, parse_int=_bounded_int,
                           parse_constant=_reject_float)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise InvalidInput(f"not canonical JSON: {exc}") from None
    except RecursionError:
        # Nesting deep enough to exhaust the parser's stack: far past the limit of 32.
        raise InvalidInput("not canonical JSON: nesting too deep") from None
    # What json.loads returns holds only what canonical JSON may (floats refused, integers
    # bounded as parsed, keys strings): only the depth is left to check, and no value with at
    # most 32 brackets in all can nest deeper than 32 — the walk is for the rest.
    if data.count(b"[") + data.count(b"{") > 32:
        _check(value)
    if _dump(value) != data:
        raise InvalidInput("not canonical JSON: bytes are not in canonical form")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -_MAX_INT <= value <= _MAX_INT:
        raise ValueError("integer out of range")
    return value


def _reject_float(text: str) -> Any:
    raise ValueError("floats are not allowed")
