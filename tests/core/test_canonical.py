"""Canonical JSON: one byte string per value, and every other input refused as bad input.

The attacker's moves: strings that have no UTF-8 form (lone surrogates, by escape or by
construction), nesting deep enough to break the parser, and bytes that parse to a value
whose canonical form differs. Each must be InvalidInput — never UnicodeEncodeError,
RecursionError or a second encoding of the same value.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import InvalidInput

# Every code point, lone surrogates often (Hypothesis leaves category Cs out unless told).
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
ANY_TEXT = st.text(SURROGATES | st.characters(codec=None, exclude_categories=()), max_size=8)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize("data", [
    b'"\\ud800"', b'"\\udfff"', b'"a\\udc80b"', b'"\\ud83d"',  # lone high and low surrogates
    b'"\\udc00\\ud800"',  # a pair in the wrong order is two lone surrogates
    b'{"\\ud800":1}', b'{"a":["\\ud800"]}', b'[[[{"k":"\\udbff"}]]]',  # in keys, nested
    b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8 bytes (invalid UTF-8)
    b'"\xc0\xaf"', b'"\xe0\x80\xaf"',  # overlong encodings
    b"\xef\xbb\xbf{}",  # a byte-order mark
])
def test_strings_without_a_utf8_form_are_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_canonical(data)


@pytest.mark.parametrize("value", ["\ud800", "a\udcffb", {"\udc80": 1}, ["ok", {"k": "\ud83d"}]])
def test_encoding_refuses_lone_surrogates(value: Any) -> None:
    with pytest.raises(InvalidInput, match="surrogate"):
        encode_canonical(value)


def test_a_real_surrogate_pair_is_one_character() -> None:
    assert decode_canonical('"\U0001f600"'.encode()) == "\U0001f600"
    with pytest.raises(InvalidInput):  # the escaped spelling of the same value is not canonical
        decode_canonical(b'"\\ud83d\\ude00"')


@pytest.mark.parametrize("depth", [33, 1_000, 100_000])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deep_nesting_is_invalid_input(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    for data in (opener * depth + b"0" + closer * depth, opener * depth):  # closed, and not
        with pytest.raises(InvalidInput):
            decode_canonical(data)


@pytest.mark.parametrize("data", [
    b"1.5", b"1e3", b"NaN", b"Infinity", b"-0", b"01", b"9223372036854775808", b"1" * 5000,
    b'{"b":1,"a":2}', b'{"a":1,"a":1}', b"[1, 2]", b" {}", b'"\\u0041"', b"",
])
def test_non_canonical_or_unsupported_forms_are_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        decode_canonical(data)


@pytest.mark.parametrize("data", ["{}", memoryview(b"{}"), None, 7])
def test_only_bytes_are_decoded(data: Any) -> None:
    with pytest.raises(InvalidInput, match="want bytes"):
        decode_canonical(data)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(VALUES)
def test_any_value_encodes_canonically_or_is_refused(value: Any) -> None:
    """For every value, surrogates and huge integers included: InvalidInput, or bytes that
    decode back to the value and are the only bytes that do."""
    try:
        data = encode_canonical(value)
    except InvalidInput:
        return
    assert decode_canonical(data) == value
    assert encode_canonical(json.loads(data)) == data


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=64) | VALUES.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")))
def test_decoding_any_bytes_gives_a_value_or_invalid_input(data: bytes) -> None:
    try:
        value = decode_canonical(data)
    except InvalidInput:
        return
    assert encode_canonical(value) == data
