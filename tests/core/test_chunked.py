"""Tests of the chunked AEAD file format (custos.core.chunked, docs/chunk-format.md).

- Known-answer vectors (tests/core/vectors/chunk-format-v1.json): the module must
  reproduce them, invert them, and so must an independent re-implementation written
  from the spec in this file, so code, spec and vectors cannot drift apart.
- A table of tamper cases, each decrypted three ways (non-seekable stream, seekable
  stream, random access); each must raise TamperedCiphertext and leave no byte of a
  failing chunk in the output.
- A seeded mutation fuzzer, round trips, random access, parallel encryption, argument
  validation and zeroization.

Regenerate the vectors only for a new format version (old files are kept):
``python -m tests.crypto.test_chunked --write-vectors``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import random
import sys
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from custos.core import chunked
from custos.core.chunked import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    MAX_PLAINTEXT_LEN,
    MIN_CHUNK_SIZE,
    TAG_SIZE,
    FileCipher,
    FileHeader,
    MalformedHeader,
    TamperedCiphertext,
    chunk_bounds,
    chunk_count,
    chunk_offset,
    ciphertext_size,
    decrypt_range,
    decrypt_stream,
    encrypt_stream,
)
from custos.errors import FailedPrecondition, IntegrityError, InvalidInput

VECTORS_FILE = Path(__file__).parent / "vectors" / "chunk-format-v1.json"


# --------------------------------------------------------------------------------------
# An independent implementation of docs/chunk-format.md, version 1. It shares no code with
# the module (HKDF by hand from RFC 5869, one-shot AESGCM.encrypt, literal constants).


def spec_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def spec_encrypt(
    key: bytes, artifact_id: str, path: str, salt: bytes, chunk_size: int, plaintext: bytes
) -> tuple[bytes, dict[str, str]]:
    """Encrypt per the spec; return the whole file and the intermediate values."""
    path_bytes = path.encode("utf-8")
    context = bytes.fromhex(artifact_id) + len(path_bytes).to_bytes(2, "big") + path_bytes
    n = max(1, -(-len(plaintext) // chunk_size))
    prefix = (
        b"\x89CUSTOS\n"
        + (1).to_bytes(2, "big")
        + chunk_size.to_bytes(4, "big")
        + len(plaintext).to_bytes(8, "big")
        + salt
    )
    commitment = spec_hkdf_sha256(key, salt, b"custos/chunked/v1/commit\x00" + context + prefix)
    header = prefix + commitment
    subkey = spec_hkdf_sha256(key, salt, b"custos/chunked/v1/key\x00" + context)
    binding = hashlib.sha256(b"custos/chunked/v1/binding\x00" + context + header).digest()
    aead = AESGCM(subkey)
    out = [header]
    for i in range(n):
        final = i == n - 1
        nonce = i.to_bytes(11, "big") + bytes([final])
        ad = binding + i.to_bytes(8, "big") + bytes([final])
        out.append(aead.encrypt(nonce, plaintext[i * chunk_size : (i + 1) * chunk_size], ad))
    return b"".join(out), {
        "header": header.hex(),
        "subkey": subkey.hex(),
        "binding": binding.hex(),
    }


# --------------------------------------------------------------------------------------
# Helpers


def encrypt_whole(cipher: FileCipher, plaintext: bytes) -> bytes:
    """Encrypt with a given cipher (fixed salt) through the chunk API."""
    h = cipher.header
    out = bytearray(h.ciphertext_size)
    out[:HEADER_SIZE] = h.encode()
    view = memoryview(out)
    for i in range(h.chunk_count):
        p0, p1 = chunk_bounds(h, i)
        cipher.encrypt_chunk_into(i, plaintext[p0:p1], view[chunk_offset(h, i) :])
    return bytes(out)


class NonSeekable(io.RawIOBase):
    """A reader that cannot seek and records every read size (to check memory bounds)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self.requests: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        self.requests.append(len(buf))
        n = min(len(buf), len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def as_binary(stream: io.RawIOBase) -> BinaryIO:
    """The module takes BinaryIO; a raw stream has the methods it uses."""
    return cast(BinaryIO, stream)


def fixed(byte: int, n: int = 32) -> bytes:
    return bytes([byte]) * n


# --------------------------------------------------------------------------------------
# Known-answer vectors

VECTOR_KEY = bytes(range(32))
VECTOR_SALT = bytes(range(0xA0, 0xC0))
VECTOR_ARTIFACT = hashlib.sha256(b"custos test artifact").hexdigest()


def _vector_plaintext(n: int) -> bytes:
    return bytes((7 * i + 3) % 256 for i in range(n))


VECTOR_CASES: list[tuple[str, str, str, int, bytes]] = [
    ("empty", "empty file: one empty final chunk", "empty.bin", 64, b""),
    ("one-byte", "less than one chunk: 1 byte", "config.json", 64, b"A"),
    ("short", "less than one chunk: 50 bytes", "tokenizer.json", 64, _vector_plaintext(50)),
    ("one-chunk", "exactly one chunk", "model.safetensors", 64, _vector_plaintext(64)),
    ("one-chunk-plus-one", "one full chunk and a 1-byte final chunk", "a/b.bin", 64,
     _vector_plaintext(65)),
    ("several-chunks", "three full chunks and an 8-byte final chunk", "shard-00002.bin", 64,
     _vector_plaintext(200)),
    ("min-chunk-exact-multiple", "minimum chunk size, three full chunks", "x", MIN_CHUNK_SIZE,
     _vector_plaintext(48)),
    ("default-chunk-unicode-path", "default chunk size, non-ASCII path",
     "weights/modèle-é😀.safetensors", DEFAULT_CHUNK_SIZE, _vector_plaintext(100)),
]  # fmt: skip


def make_vectors() -> dict[str, Any]:
    vectors = []
    for name, description, path, chunk_size, plaintext in VECTOR_CASES:
        cipher = FileCipher.new(
            VECTOR_KEY,
            VECTOR_ARTIFACT,
            path,
            len(plaintext),
            chunk_size=chunk_size,
            unsafe_fixed_salt=VECTOR_SALT,
        )
        ciphertext = encrypt_whole(cipher, plaintext)
        spec_ct, intermediates = spec_encrypt(VECTOR_KEY, VECTOR_ARTIFACT, path, VECTOR_SALT, chunk_size, plaintext)
        assert spec_ct == ciphertext, f"module and spec disagree on {name}"
        vectors.append(
            {
                "name": name,
                "description": description,
                "data_key": VECTOR_KEY.hex(),
                "artifact_id": VECTOR_ARTIFACT,
                "path": path,
                "salt": VECTOR_SALT.hex(),
                "chunk_size": chunk_size,
                "plaintext": plaintext.hex(),
                **intermediates,
                "ciphertext": ciphertext.hex(),
            }
        )
    return {
        "format": "custos chunked AEAD file format",
        "version": 1,
        "spec": "docs/chunk-format.md",
        "fields": "hex bytes except artifact_id (64-hex string), path (UTF-8 text), chunk_size",
        "vectors": vectors,
    }


def load_vectors() -> list[dict[str, Any]]:
    data = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
    assert data["version"] == 1
    return list(data["vectors"])


VECTORS = load_vectors() if VECTORS_FILE.exists() else []


def test_vector_file_covers_required_shapes() -> None:
    names = {v["name"] for v in VECTORS}
    assert {"empty", "one-byte", "one-chunk", "several-chunks"} <= names
    assert len(VECTORS) == len(VECTOR_CASES)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_vector_encrypt_reproduces(vector: dict[str, Any]) -> None:
    plaintext = bytes.fromhex(vector["plaintext"])
    cipher = FileCipher.new(
        bytearray.fromhex(vector["data_key"]),
        vector["artifact_id"],
        vector["path"],
        len(plaintext),
        chunk_size=vector["chunk_size"],
        unsafe_fixed_salt=bytes.fromhex(vector["salt"]),
    )
    assert cipher.header.encode().hex() == vector["header"]
    assert encrypt_whole(cipher, plaintext).hex() == vector["ciphertext"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_vector_spec_reimplementation_reproduces(vector: dict[str, Any]) -> None:
    ciphertext, intermediates = spec_encrypt(
        bytes.fromhex(vector["data_key"]),
        vector["artifact_id"],
        vector["path"],
        bytes.fromhex(vector["salt"]),
        vector["chunk_size"],
        bytes.fromhex(vector["plaintext"]),
    )
    assert ciphertext.hex() == vector["ciphertext"]
    for name, value in intermediates.items():
        assert value == vector[name], name


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_vector_decrypt_inverts(vector: dict[str, Any]) -> None:
    key = bytes.fromhex(vector["data_key"])
    ciphertext = bytes.fromhex(vector["ciphertext"])
    plaintext = bytes.fromhex(vector["plaintext"])
    out = io.BytesIO()
    n = decrypt_stream(key, vector["artifact_id"], vector["path"], io.BytesIO(ciphertext), out)
    assert n == len(plaintext)
    assert out.getvalue() == plaintext
    got = decrypt_range(
        key,
        vector["artifact_id"],
        vector["path"],
        lambda off, size: ciphertext[off : off + size],
        0,
        len(plaintext),
        object_size=len(ciphertext),
    )
    assert got == plaintext
    header = FileHeader.decode(ciphertext[:HEADER_SIZE])
    assert header.chunk_size == vector["chunk_size"]
    assert header.plaintext_len == len(plaintext)
    assert header.ciphertext_size == len(ciphertext)


# --------------------------------------------------------------------------------------
# The tamper corpus: C = 64, 273 bytes -> chunks 0..3 full (80 bytes with tag), chunk 4
# holds 17 bytes (33 with tag). Chunk i starts at 86 + 80 * i; the file is 439 bytes.

C = 64
N_CHUNKS = 5
KEY = bytes(range(100, 132))
ART_A = hashlib.sha256(b"artifact A").hexdigest()
ART_B = hashlib.sha256(b"artifact B").hexdigest()
PATH = "model.safetensors"
PATH2 = "model-00002.safetensors"
PATH_NFC = unicodedata.normalize("NFC", "modèle.bin")
PT = bytes((i * 31 + 7) % 251 for i in range(4 * C + 17))
PT2 = bytes((i * 17 + 1) % 253 for i in range(len(PT)))


def _enc(key: bytes, art: str, path: str, pt: bytes, salt_byte: int, chunk_size: int = C) -> bytes:
    cipher = FileCipher.new(key, art, path, len(pt), chunk_size=chunk_size, unsafe_fixed_salt=fixed(salt_byte))
    return encrypt_whole(cipher, pt)


CT = _enc(KEY, ART_A, PATH, PT, 1)
CT_OTHER_FILE = _enc(KEY, ART_A, PATH2, PT2, 2)  # same artifact, same key, other file
CT_OTHER_ART = _enc(KEY, ART_B, PATH, PT, 3)  # other artifact, same key and path
CT_REENC = _enc(KEY, ART_A, PATH, PT, 4)  # the same file encrypted again (new salt)
CT_SMALL_CHUNKS = _enc(KEY, ART_A, PATH, PT, 5, chunk_size=32)  # same file, other chunk size
CT_EMPTY = _enc(KEY, ART_A, "empty.bin", b"", 6)
CT_UNICODE = _enc(KEY, ART_A, PATH_NFC, PT, 7)
assert len(CT) == 439 == ciphertext_size(len(PT), C)


def split(ct: bytes, chunk_size: int = C) -> tuple[bytes, list[bytes]]:
    """Header and chunk ciphertexts of a well-formed file."""
    header = FileHeader.decode(ct[:HEADER_SIZE])
    return ct[:HEADER_SIZE], [
        ct[chunk_offset(header, i) : chunk_offset(header, i + 1)] for i in range(header.chunk_count)
    ]


def join(header: bytes, chunks: list[bytes]) -> bytes:
    return header + b"".join(chunks)


def flip(ct: bytes, offset: int, mask: int = 0x01) -> bytes:
    b = bytearray(ct)
    b[offset] ^= mask
    return bytes(b)


def put(ct: bytes, offset: int, value: bytes) -> bytes:
    return ct[:offset] + value + ct[offset + len(value) :]


def off(i: int) -> int:
    return HEADER_SIZE + i * (C + TAG_SIZE)


def reorder(ct: bytes, order: list[int]) -> bytes:
    h, cs = split(ct)
    return join(h, [cs[i] for i in order])


def splice(ct: bytes, index: int, donor: bytes) -> bytes:
    h, cs = split(ct)
    _, ds = split(donor)
    cs[index] = ds[index]
    return join(h, cs)


def forge_len_and_truncate() -> bytes:
    # Drop the final chunk and rewrite plaintext_len so the layout is consistent again.
    h, cs = split(CT)
    return put(h, 14, (4 * C).to_bytes(8, "big")) + b"".join(cs[:4])


@dataclass(frozen=True)
class Case:
    name: str
    mutate: Callable[[], bytes]
    chunk: int | None  # chunk a non-seekable decrypt_stream must name; None: header/length
    path: str = PATH
    artifact: str = ART_A
    key: bytes = KEY
    plaintext: bytes = field(default=PT, repr=False)


CASES = [
    # Header fields (offsets: magic 0-7, version 8-9, chunk_size 10-13, plaintext_len 14-21,
    # salt 22-53, commitment 54-85).
    Case("hdr-magic-byte0", lambda: flip(CT, 0), None),
    Case("hdr-magic-byte4", lambda: flip(CT, 4, 0x20), None),
    Case("hdr-magic-byte7", lambda: flip(CT, 7), None),
    Case("hdr-version-0", lambda: put(CT, 8, b"\x00\x00"), None),
    Case("hdr-version-2", lambda: put(CT, 8, b"\x00\x02"), None),
    Case("hdr-version-ffff", lambda: put(CT, 8, b"\xff\xff"), None),
    Case("hdr-version-high-bit", lambda: flip(CT, 8, 0x80), None),
    Case("hdr-chunk-size-32", lambda: put(CT, 10, (32).to_bytes(4, "big")), None),
    Case("hdr-chunk-size-65", lambda: put(CT, 10, (65).to_bytes(4, "big")), None),
    Case("hdr-chunk-size-0", lambda: put(CT, 10, bytes(4)), None),
    Case("hdr-chunk-size-absurd", lambda: put(CT, 10, b"\xff" * 4), None),
    Case("hdr-chunk-size-top-bit", lambda: flip(CT, 10, 0x01), None),
    Case("hdr-len-plus-1", lambda: put(CT, 14, (len(PT) + 1).to_bytes(8, "big")), None),
    Case("hdr-len-minus-1", lambda: put(CT, 14, (len(PT) - 1).to_bytes(8, "big")), None),
    Case("hdr-len-zero", lambda: put(CT, 14, bytes(8)), None),
    Case("hdr-len-absurd", lambda: put(CT, 14, b"\x7f" + b"\xff" * 7), None),
    Case("hdr-salt-byte0", lambda: flip(CT, 22), None),
    Case("hdr-salt-byte31", lambda: flip(CT, 53, 0x80), None),
    Case("hdr-commitment-byte0", lambda: flip(CT, 54), None),
    Case("hdr-commitment-byte31", lambda: flip(CT, 85, 0x40), None),
    Case("hdr-truncated-to-0", lambda: b"", None),
    Case("hdr-truncated-to-9", lambda: CT[:9], None),
    Case("hdr-truncated-to-85", lambda: CT[:85], None),
    Case("hdr-forged-len-and-dropped-final", forge_len_and_truncate, None),
    # Bit flips in chunk bodies and tags.
    Case("body-chunk0-first-byte", lambda: flip(CT, off(0)), 0),
    Case("body-chunk0-last-byte", lambda: flip(CT, off(0) + C - 1), 0),
    Case("body-chunk2-middle", lambda: flip(CT, off(2) + 31, 0x10), 2),
    Case("body-chunk3-high-bit", lambda: flip(CT, off(3) + 10, 0x80), 3),
    Case("body-final-first-byte", lambda: flip(CT, off(4)), 4),
    Case("tag-chunk0-first-byte", lambda: flip(CT, off(0) + C), 0),
    Case("tag-chunk2-last-byte", lambda: flip(CT, off(3) - 1), 2),
    Case("tag-final-last-byte", lambda: flip(CT, len(CT) - 1), 4),
    # Truncation at and between chunk boundaries.
    Case("trunc-header-only", lambda: CT[:HEADER_SIZE], 0),
    Case("trunc-header-plus-1", lambda: CT[: HEADER_SIZE + 1], 0),
    Case("trunc-after-chunk0", lambda: CT[: off(1)], 1),
    Case("trunc-after-chunk1", lambda: CT[: off(2)], 2),
    Case("trunc-after-chunk3-final-dropped", lambda: CT[: off(4)], 4),
    Case("trunc-mid-chunk1-body", lambda: CT[: off(1) + 30], 1),
    Case("trunc-mid-chunk1-tag", lambda: CT[: off(1) + C + 8], 1),
    Case("trunc-final-tag", lambda: CT[: off(4) + 17], 4),
    Case("trunc-last-byte", lambda: CT[:-1], 4),
    # Reordered chunks.
    Case("reorder-swap-0-1", lambda: reorder(CT, [1, 0, 2, 3, 4]), 0),
    Case("reorder-swap-1-2", lambda: reorder(CT, [0, 2, 1, 3, 4]), 1),
    Case("reorder-swap-2-3", lambda: reorder(CT, [0, 1, 3, 2, 4]), 2),
    Case("reorder-rotate", lambda: reorder(CT, [1, 2, 3, 0, 4]), 0),
    Case("reorder-final-first", lambda: reorder(CT, [4, 0, 1, 2, 3]), 0),
    # Duplicated chunks.
    Case("dup-chunk1-inserted", lambda: reorder(CT, [0, 1, 1, 2, 3, 4]), 2),
    Case("dup-chunk0-over-chunk1", lambda: reorder(CT, [0, 0, 2, 3, 4]), 1),
    Case("dup-chunk2-over-chunk3", lambda: reorder(CT, [0, 1, 2, 2, 4]), 3),
    Case("dup-final-appended", lambda: reorder(CT, [0, 1, 2, 3, 4, 4]), None),
    # Dropped chunks.
    Case("drop-chunk0", lambda: reorder(CT, [1, 2, 3, 4]), 0),
    Case("drop-chunk2", lambda: reorder(CT, [0, 1, 3, 4]), 2),
    Case("drop-chunk3", lambda: reorder(CT, [0, 1, 2, 4]), 3),
    # Chunks spliced from another file of the same artifact, another artifact, a re-encryption.
    Case("splice-chunk2-other-file", lambda: splice(CT, 2, CT_OTHER_FILE), 2),
    Case("splice-final-other-file", lambda: splice(CT, 4, CT_OTHER_FILE), 4),
    Case("splice-chunk0-other-artifact", lambda: splice(CT, 0, CT_OTHER_ART), 0),
    Case("splice-chunk2-other-artifact", lambda: splice(CT, 2, CT_OTHER_ART), 2),
    Case("splice-chunk2-reencryption", lambda: splice(CT, 2, CT_REENC), 2),
    Case("splice-body-reencryption", lambda: CT[:HEADER_SIZE] + CT_REENC[HEADER_SIZE:], 0),
    # Swapped headers.
    Case("swap-hdr-other-file", lambda: CT_OTHER_FILE[:HEADER_SIZE] + CT[HEADER_SIZE:], None),
    Case(
        "swap-hdr-other-file-as-other-path",
        lambda: CT_OTHER_FILE[:HEADER_SIZE] + CT[HEADER_SIZE:],
        0,
        path=PATH2,
        plaintext=PT2,
    ),
    Case("swap-body-other-file", lambda: CT[:HEADER_SIZE] + CT_OTHER_FILE[HEADER_SIZE:], 0),
    Case("swap-hdr-other-artifact", lambda: CT_OTHER_ART[:HEADER_SIZE] + CT[HEADER_SIZE:], None),
    Case("swap-hdr-reencryption", lambda: CT_REENC[:HEADER_SIZE] + CT[HEADER_SIZE:], 0),
    Case("swap-hdr-other-chunk-size", lambda: CT_SMALL_CHUNKS[:HEADER_SIZE] + CT[HEADER_SIZE:], 0),
    Case("swap-hdr-empty-file", lambda: CT[:HEADER_SIZE] + CT_EMPTY[HEADER_SIZE:], 0),
    # Trailing garbage.
    Case("trail-1-zero-byte", lambda: CT + b"\x00", None),
    Case("trail-16-bytes", lambda: CT + bytes(range(16)), None),
    Case("trail-header-copy", lambda: CT + CT[:HEADER_SIZE], None),
    Case("trail-whole-file-twice", lambda: CT + CT, None),
    # Right bytes, wrong key / path / artifact.
    Case("wrong-key-one-bit", lambda: CT, None, key=flip(KEY, 0)),
    Case("wrong-key-zero", lambda: CT, None, key=bytes(32)),
    Case("wrong-path", lambda: CT, None, path=PATH2),
    Case("wrong-path-case", lambda: CT, None, path=PATH.upper()),
    Case("wrong-path-dot-slash", lambda: CT, None, path="./" + PATH),
    Case(
        "wrong-path-nfd",
        lambda: CT_UNICODE,
        None,
        path=unicodedata.normalize("NFD", PATH_NFC),
    ),
    Case("wrong-artifact-last-digit", lambda: CT, None, artifact=ART_A[:-1] + "01"[ART_A[-1] == "0"]),
    Case("wrong-artifact-other", lambda: CT, None, artifact=ART_B),
    # The empty file.
    Case("empty-tag-flip", lambda: flip(CT_EMPTY, HEADER_SIZE + 3), 0, path="empty.bin",
         plaintext=b""),
    Case("empty-chunk-duplicated", lambda: CT_EMPTY + CT_EMPTY[HEADER_SIZE:], None,
         path="empty.bin", plaintext=b""),
    Case("empty-chunk-dropped", lambda: CT_EMPTY[:HEADER_SIZE], 0, path="empty.bin",
         plaintext=b""),
    Case("empty-hdr-with-other-body", lambda: CT_EMPTY[:HEADER_SIZE] + CT[HEADER_SIZE:], 0,
         path="empty.bin", plaintext=b""),
]  # fmt: skip


def test_tamper_table_is_large_and_unique() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    for case in CASES:  # every case really changes something
        assert (case.mutate(), case.key, case.path, case.artifact) != (CT, KEY, PATH, ART_A)


def _check_partial_output(written: bytes, case: Case, exc: TamperedCiphertext) -> None:
    # Whatever was written is a prefix of the real plaintext, the final chunk never is, and
    # nothing of the failing chunk or after it was written.
    assert written == case.plaintext[: len(written)]
    assert len(written) < len(case.plaintext) or not case.plaintext
    if exc.chunk_index is not None:
        assert len(written) <= exc.chunk_index * C


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tamper_stream_non_seekable(case: Case) -> None:
    dst = io.BytesIO()
    with pytest.raises(TamperedCiphertext) as info:
        decrypt_stream(case.key, case.artifact, case.path, as_binary(NonSeekable(case.mutate())), dst)
    assert info.value.chunk_index == case.chunk, str(info.value)
    if case.chunk is not None:
        assert f"chunk {case.chunk}" in str(info.value)
    _check_partial_output(dst.getvalue(), case, info.value)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_tamper_stream_seekable(case: Case) -> None:
    data = case.mutate()
    dst = io.BytesIO()
    with pytest.raises(TamperedCiphertext) as info:
        decrypt_stream(case.key, case.artifact, case.path, io.BytesIO(data), dst)
    _check_partial_output(dst.getvalue(), case, info.value)
    if len(data) != len(CT) and case.plaintext is PT and len(data) >= HEADER_SIZE:
        # A seekable source lets the length check run before any plaintext is written.
        assert dst.getvalue() == b""


# A zero-length range reads no chunk, so the empty file's tag flip is out of its reach.
RANGE_CASES = [c for c in CASES if c.name != "empty-tag-flip"]


@pytest.mark.parametrize("case", RANGE_CASES, ids=lambda c: c.name)
def test_tamper_random_access(case: Case) -> None:
    data = case.mutate()
    with pytest.raises(TamperedCiphertext):
        decrypt_range(
            case.key,
            case.artifact,
            case.path,
            lambda o, n: data[o : o + n],
            0,
            len(case.plaintext),
            object_size=len(data),
        )


@pytest.mark.parametrize(
    ("mutated", "kind"),
    [
        (flip(CT, 0), "bad magic"),
        (put(CT, 8, b"\x00\x02"), "unsupported format version 2"),
        (put(CT, 10, bytes(4)), "chunk size 0"),
        (put(CT, 10, (MAX_CHUNK_SIZE + 1).to_bytes(4, "big")), "chunk size"),
        (put(CT, 14, (MAX_PLAINTEXT_LEN + 1).to_bytes(8, "big")), "plaintext length"),
        (CT[:40], "truncated"),
    ],
)
def test_malformed_header_says_why(mutated: bytes, kind: str) -> None:
    with pytest.raises(MalformedHeader, match=kind):
        decrypt_stream(KEY, ART_A, PATH, io.BytesIO(mutated), io.BytesIO())


def test_header_failure_writes_nothing_and_names_no_chunk() -> None:
    dst = io.BytesIO()
    with pytest.raises(TamperedCiphertext, match="header") as info:
        decrypt_stream(KEY, ART_A, PATH2, as_binary(NonSeekable(CT)), dst)
    assert info.value.chunk_index is None
    assert dst.getvalue() == b""


def test_error_classes_and_messages_carry_no_secrets() -> None:
    assert issubclass(TamperedCiphertext, IntegrityError)
    assert issubclass(MalformedHeader, TamperedCiphertext)
    with pytest.raises(TamperedCiphertext) as info:
        decrypt_stream(KEY, ART_A, PATH, as_binary(NonSeekable(flip(CT, off(1)))), io.BytesIO())
    message = str(info.value)
    assert "chunk 1 of 5" in message and PATH in message
    assert KEY.hex() not in message and PT[C : C + 8].hex() not in message
    assert repr(PT[C : C + 8]) not in message


# --------------------------------------------------------------------------------------
# Fuzzing: seeded random mutations of a valid file must all be rejected.


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(8) if len(b) > 100 else 7  # short inputs only grow
    pos = rng.randrange(len(b)) if b else 0
    if op == 0:
        b[pos] ^= 1 << rng.randrange(8)
    elif op == 1:
        b[pos] = rng.randrange(256)
    elif op == 2:
        b[pos:pos] = rng.randbytes(rng.randrange(1, 40))
    elif op == 3:
        del b[pos : pos + rng.randrange(1, 100)]
    elif op == 4:
        del b[pos:]
    elif op == 5:
        n = rng.randrange(1, 90)
        b[pos:pos] = b[rng.randrange(len(b)) :][:n]
    elif op == 6:
        n = rng.randrange(1, 80)
        a, c = rng.randrange(len(b) - n), rng.randrange(len(b) - n)
        b[a : a + n], b[c : c + n] = b[c : c + n], b[a : a + n]
    else:
        b += rng.randbytes(rng.randrange(1, 50))
    return bytes(b)


def test_fuzz_mutations_are_rejected() -> None:
    rng = random.Random(20240611)
    tried = 0
    while tried < 400:
        mutated = _mutate(rng, CT)
        if rng.random() < 0.3:
            mutated = _mutate(rng, mutated)
        if mutated == CT:
            continue
        tried += 1
        dst = io.BytesIO()
        source = as_binary(NonSeekable(mutated)) if tried % 2 else io.BytesIO(mutated)
        with pytest.raises(TamperedCiphertext):
            decrypt_stream(KEY, ART_A, PATH, source, dst)
        assert dst.getvalue() == PT[: len(dst.getvalue())]


def test_fuzz_random_headers_never_open() -> None:
    rng = random.Random(7)
    for _ in range(300):
        raw = b"\x89CUSTOS\n\x00\x01" + rng.randbytes(HEADER_SIZE - 10)
        # Keep the fields mostly in range so most headers parse and reach the commitment check.
        if rng.random() < 0.8:
            raw = put(raw, 10, rng.randrange(MIN_CHUNK_SIZE, 1 << 20).to_bytes(4, "big"))
            raw = put(raw, 14, rng.randrange(0, 1 << 30).to_bytes(8, "big"))
        with pytest.raises(TamperedCiphertext):
            FileCipher(KEY, ART_A, PATH, FileHeader.decode(raw))


# --------------------------------------------------------------------------------------
# Round trips, layout and random access


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 63, 64, 65, 128, 5 * 64 + 3])
@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE, 64])
def test_round_trip_stream(length: int, chunk_size: int) -> None:
    pt = random.Random(length).randbytes(length)
    enc = io.BytesIO()
    header = encrypt_stream(KEY, ART_A, PATH, io.BytesIO(pt), enc, length, chunk_size)
    ct = enc.getvalue()
    assert len(ct) == ciphertext_size(length, chunk_size) == header.ciphertext_size
    assert header.chunk_count == chunk_count(length, chunk_size)
    assert FileHeader.decode(ct[:HEADER_SIZE]) == header
    for source in (io.BytesIO(ct), as_binary(NonSeekable(ct))):
        dec = io.BytesIO()
        assert decrypt_stream(KEY, ART_A, PATH, source, dec) == length
        assert dec.getvalue() == pt


def test_round_trip_default_chunk_size_multi_chunk() -> None:
    length = 2 * DEFAULT_CHUNK_SIZE + 12345
    pt = random.Random(1).randbytes(length)
    enc = io.BytesIO()
    header = encrypt_stream(bytearray(KEY), ART_A, PATH, io.BytesIO(pt), enc, length)
    assert header.chunk_size == DEFAULT_CHUNK_SIZE and header.chunk_count == 3
    dec = io.BytesIO()
    decrypt_stream(bytearray(KEY), ART_A, PATH, io.BytesIO(enc.getvalue()), dec)
    assert dec.getvalue() == pt


def test_chunk_arithmetic() -> None:
    assert chunk_count(0, 64) == 1  # the empty file has one empty final chunk
    assert chunk_count(64, 64) == 1  # no trailing empty chunk
    assert chunk_count(65, 64) == 2
    assert ciphertext_size(0, 64) == HEADER_SIZE + TAG_SIZE
    assert ciphertext_size(65, 64) == HEADER_SIZE + 65 + 2 * TAG_SIZE
    header = FileHeader.decode(CT[:HEADER_SIZE])
    assert [chunk_offset(header, i) for i in range(6)] == [86, 166, 246, 326, 406, 439]
    assert chunk_bounds(header, 0) == (0, 64)
    assert chunk_bounds(header, 4) == (256, 273)
    assert HEADER_SIZE == 86


def test_fresh_headers_have_fresh_salts() -> None:
    a = FileCipher.new(KEY, ART_A, PATH, 10).header
    b = FileCipher.new(KEY, ART_A, PATH, 10).header
    assert a.salt != b.salt and a.commitment != b.commitment
    assert a.chunk_size == DEFAULT_CHUNK_SIZE


def test_random_access_every_range_reads_only_needed_chunks() -> None:
    header = FileHeader.decode(CT[:HEADER_SIZE])
    for start in range(0, len(PT) + 1, 7):
        for length in (0, 1, 5, 63, 64, 65, 130, len(PT) - start):
            if start + length > len(PT):
                continue
            calls: list[tuple[int, int]] = []

            def read_at(o: int, n: int, calls: list[tuple[int, int]] = calls) -> bytes:
                calls.append((o, n))
                return CT[o : o + n]

            got = decrypt_range(KEY, ART_A, PATH, read_at, start, length)
            assert got == PT[start : start + length]
            assert calls[0] == (0, HEADER_SIZE)
            if length:
                first, last = start // C, (start + length - 1) // C
                span = chunk_offset(header, first), chunk_offset(header, last + 1)
                assert calls[1:] == [(span[0], span[1] - span[0])]
            else:
                assert calls[1:] == []


def test_random_access_range_outside_file_is_invalid_input() -> None:
    def read_at(o: int, n: int) -> bytes:
        return CT[o : o + n]

    with pytest.raises(InvalidInput, match="outside the file"):
        decrypt_range(KEY, ART_A, PATH, read_at, len(PT) - 2, 3)
    with pytest.raises(InvalidInput):
        decrypt_range(KEY, ART_A, PATH, read_at, -1, 3)
    with pytest.raises(InvalidInput):
        decrypt_range(KEY, ART_A, PATH, read_at, 0, -3)


def test_random_access_object_size_catches_damage_outside_range() -> None:
    def read_at(o: int, n: int) -> bytes:
        return CT[o : o + n]

    # Reading chunk 0 only cannot see a truncated tail; the object size can.
    assert decrypt_range(KEY, ART_A, PATH, read_at, 0, 10) == PT[:10]
    with pytest.raises(TamperedCiphertext, match="truncated"):
        decrypt_range(KEY, ART_A, PATH, read_at, 0, 10, object_size=len(CT) - 1)
    with pytest.raises(TamperedCiphertext, match="trailing"):
        decrypt_range(KEY, ART_A, PATH, read_at, 0, 10, object_size=len(CT) + 1)


def test_parallel_chunk_encryption_matches_serial() -> None:
    length = 97 * 64 + 5
    pt = random.Random(3).randbytes(length)
    cipher = FileCipher.new(KEY, ART_A, PATH, length, chunk_size=64)
    serial = encrypt_whole(cipher, pt)
    header = cipher.header
    out = bytearray(header.ciphertext_size)
    out[:HEADER_SIZE] = header.encode()
    view = memoryview(out)

    # Each worker gets its own cipher built from the shared header, as a separate process would.
    def part(indices: range) -> None:
        worker = FileCipher(KEY, ART_A, PATH, header)
        for i in indices:
            p0, p1 = chunk_bounds(header, i)
            worker.encrypt_chunk_into(i, memoryview(pt)[p0:p1], view[chunk_offset(header, i) :])

    parts = [range(i, min(i + 10, header.chunk_count)) for i in range(0, header.chunk_count, 10)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(part, parts))
    assert bytes(out) == serial
    out[HEADER_SIZE:] = bytes(len(out) - HEADER_SIZE)

    def shared(indices: range) -> None:  # one cipher shared by all threads is safe too
        for i in indices:
            p0, p1 = chunk_bounds(header, i)
            cipher.encrypt_chunk_into(i, pt[p0:p1], view[chunk_offset(header, i) :])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(shared, parts))
    assert bytes(out) == serial


def test_streams_use_constant_memory() -> None:
    length = 300 * 64 + 1
    pt = random.Random(4).randbytes(length)
    enc = io.BytesIO()
    src = NonSeekable(pt)
    encrypt_stream(KEY, ART_A, PATH, as_binary(src), enc, length, 64)
    assert max(src.requests) <= 64
    ct_src = NonSeekable(enc.getvalue())
    decrypt_stream(KEY, ART_A, PATH, as_binary(ct_src), io.BytesIO())
    assert max(ct_src.requests) <= 64 + TAG_SIZE
    assert len(ct_src.requests) >= 300


def test_decrypt_chunk_into_wipes_unverified_plaintext() -> None:
    cipher = FileCipher(KEY, ART_A, PATH, FileHeader.decode(CT[:HEADER_SIZE]))
    out = bytearray(b"\xaa" * (C + 10))
    with pytest.raises(TamperedCiphertext) as info:
        cipher.decrypt_chunk_into(1, flip(CT, off(1) + 5)[off(1) : off(2)], out)
    assert info.value.chunk_index == 1
    assert out[:C] == bytes(C)  # nothing unverified is left behind
    assert out[C:] == b"\xaa" * 10  # and nothing outside the chunk was touched
    assert cipher.decrypt_chunk_into(1, CT[off(1) : off(2)], out) == C
    assert out[:C] == PT[C : 2 * C]


def test_decrypt_chunk_into_rejects_wrong_length() -> None:
    cipher = FileCipher(KEY, ART_A, PATH, FileHeader.decode(CT[:HEADER_SIZE]))
    with pytest.raises(TamperedCiphertext, match="chunk 4 of 5") as info:
        cipher.decrypt_chunk_into(4, CT[off(4) : off(4) + 20], bytearray(64))
    assert info.value.chunk_index == 4


# --------------------------------------------------------------------------------------
# Argument validation, zeroization


@pytest.mark.parametrize("key", [bytes(31), bytes(33), b"", "k" * 32, memoryview(bytes(32))], ids=repr)
def test_bad_data_key_is_invalid_input(key: Any) -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        FileCipher.new(key, ART_A, PATH, 10)
    with pytest.raises(InvalidInput):
        decrypt_stream(key, ART_A, PATH, io.BytesIO(CT), io.BytesIO())


@pytest.mark.parametrize(
    "artifact_id",
    [ART_A.upper(), ART_A[:-1], ART_A + "0", "g" * 64, "", b"a" * 64, 12, " " + ART_A[1:]],
    ids=repr,
)
def test_bad_artifact_id_is_invalid_input(artifact_id: Any) -> None:
    with pytest.raises(InvalidInput, match="artifact id"):
        FileCipher.new(KEY, artifact_id, PATH, 10)
    with pytest.raises(InvalidInput, match="artifact id"):
        decrypt_stream(KEY, artifact_id, PATH, io.BytesIO(CT), io.BytesIO())


@pytest.mark.parametrize("path", ["", "\udc80.bin", "a" * 70000, b"model.bin", None], ids=repr)
def test_bad_path_is_invalid_input(path: Any) -> None:
    with pytest.raises(InvalidInput, match="path"):
        FileCipher.new(KEY, ART_A, path, 10)
    with pytest.raises(InvalidInput, match="path"):
        decrypt_range(KEY, ART_A, path, lambda o, n: CT[o : o + n], 0, 1)


@pytest.mark.parametrize(
    ("plaintext_len", "chunk_size"),
    [
        (-1, 64),
        (MAX_PLAINTEXT_LEN + 1, 64),
        (10, MIN_CHUNK_SIZE - 1),
        (10, MAX_CHUNK_SIZE + 1),
        (10, 0),
        (True, 64),
        (10, 64.0),
    ],
)
def test_bad_sizes_are_invalid_input(plaintext_len: Any, chunk_size: Any) -> None:
    with pytest.raises(InvalidInput):
        FileCipher.new(KEY, ART_A, PATH, plaintext_len, chunk_size=chunk_size)
    with pytest.raises(InvalidInput):
        ciphertext_size(plaintext_len, chunk_size)


def test_bad_fixed_salt_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="salt"):
        FileCipher.new(KEY, ART_A, PATH, 10, unsafe_fixed_salt=bytes(31))


def test_file_header_constructor_checks_invariants() -> None:
    good = FileHeader.decode(CT[:HEADER_SIZE])
    for bad in (
        dict(version=2),
        dict(chunk_size=8),
        dict(plaintext_len=-1),
        dict(salt=bytes(31)),
        dict(commitment=bytearray(32)),
    ):
        fields = {**good.__dict__, **bad}
        with pytest.raises(InvalidInput):
            FileHeader(**fields)
    with pytest.raises(MalformedHeader, match="86 bytes"):
        FileHeader.decode(CT[: HEADER_SIZE + 1])


def test_encrypt_chunk_into_checks_its_arguments() -> None:
    cipher = FileCipher.new(KEY, ART_A, PATH, 100, chunk_size=64)
    with pytest.raises(InvalidInput, match="64 plaintext bytes"):
        cipher.encrypt_chunk_into(0, bytes(63), bytearray(80))
    with pytest.raises(InvalidInput, match="36 plaintext bytes"):
        cipher.encrypt_chunk_into(1, bytes(64), bytearray(80))
    with pytest.raises(InvalidInput, match="chunk index"):
        cipher.encrypt_chunk_into(2, bytes(4), bytearray(80))
    with pytest.raises(InvalidInput, match="chunk index"):
        cipher.encrypt_chunk_into(-1, bytes(64), bytearray(80))
    with pytest.raises(InvalidInput, match="needs 80"):
        cipher.encrypt_chunk_into(0, bytes(64), bytearray(79))
    with pytest.raises(InvalidInput, match="read-only"):
        cipher.encrypt_chunk_into(0, bytes(64), memoryview(bytes(80)))
    with pytest.raises(InvalidInput):
        cipher.encrypt_chunk_into(0, bytes(64), bytes(80))  # type: ignore[arg-type]
    assert cipher.encrypt_chunk_into(1, bytes(36), bytearray(200)) == 52


def test_encrypt_stream_rejects_wrong_source_length() -> None:
    for data in (bytes(99), bytes(101)):
        dst = io.BytesIO()
        with pytest.raises(InvalidInput, match="source"):
            encrypt_stream(KEY, ART_A, PATH, io.BytesIO(data), dst, 100, 64)
        # The incomplete ciphertext never holds the final chunk.
        assert len(dst.getvalue()) <= HEADER_SIZE + 64 + TAG_SIZE


def test_zeroize_drops_the_key() -> None:
    cipher = FileCipher.new(KEY, ART_A, PATH, 10, chunk_size=64)
    cipher.zeroize()
    with pytest.raises(FailedPrecondition):
        cipher.encrypt_chunk_into(0, bytes(10), bytearray(26))
    with pytest.raises(FailedPrecondition):
        cipher.decrypt_chunk_into(0, bytes(26), bytearray(10))
    with FileCipher(KEY, ART_A, PATH, cipher.header) as scoped:
        scoped.encrypt_chunk_into(0, bytes(10), bytearray(26))
    with pytest.raises(FailedPrecondition):
        scoped.encrypt_chunk_into(0, bytes(10), bytearray(26))


def test_data_key_is_not_retained() -> None:
    key = bytearray(KEY)
    cipher = FileCipher.new(key, ART_A, PATH, 10, chunk_size=64)
    key[:] = bytes(32)  # the caller zeroizes its copy; the cipher keeps working on its subkey
    out = bytearray(26)
    cipher.encrypt_chunk_into(0, bytes(10), out)
    assert not any(
        isinstance(v, bytes | bytearray) and bytes(v) == KEY
        for v in (getattr(cipher, s) for s in type(cipher).__slots__ if hasattr(cipher, s))
    )


def test_module_exports_are_the_documented_api() -> None:
    for name in chunked.__all__:
        assert hasattr(chunked, name), name


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-vectors"]:
        raise SystemExit("usage: python -m tests.crypto.test_chunked --write-vectors")
    VECTORS_FILE.parent.mkdir(parents=True, exist_ok=True)
    VECTORS_FILE.write_text(json.dumps(make_vectors(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {VECTORS_FILE}")
