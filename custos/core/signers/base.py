"""Signer sets, shared parts: domains, limits, errors, and the strict canonical-JSON decoder."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from custos.core import sshsig
from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import InvalidInput

SIGNER_SET_DOMAIN = b"custos.v1.signer-set\x00"


SIGNER_KEY_DOMAIN = b"custos.v1.signer-key\x00"


SIGNER_SET_NAMESPACE = "custos-signer-set"  # SSHSIG namespace for rotations


SIGNER_SET_ENCODING = 1


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
