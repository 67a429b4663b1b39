"""The chunked AEAD file format: weight files stored as ciphertext in shared storage.

A file is a fixed-size authenticated header followed by AES-256-GCM chunks of a fixed
size, so chunk ``i`` starts at a computable offset. That gives random access to any
plaintext byte range and lets a pusher encrypt chunk ranges in parallel and upload them
as independent multipart parts. ``docs/chunk-format.md`` is the specification; this
module is its reference implementation and must not drift from it (the known-answer
vectors in ``tests/core/vectors/`` pin both).

Pure logic: functions are handed buffers, streams or a ``read_at`` callable and do no
I/O of their own. Errors:

- :class:`TamperedCiphertext` (an :class:`~custos.errors.IntegrityError`) when stored
  bytes fail authentication or violate the layout; ``chunk_index`` names the chunk, or
  is ``None`` when the header or the overall length is at fault.
- :class:`MalformedHeader`, a :class:`TamperedCiphertext`, when the header does not parse.
- :class:`~custos.errors.InvalidInput` when the caller passes bad arguments.
- :class:`~custos.errors.FailedPrecondition` when a zeroized :class:`FileCipher` is used.

Messages never contain key material or plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from custos.errors import FailedPrecondition, IntegrityError, InvalidInput

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_PLAINTEXT_LEN",
    "MIN_CHUNK_SIZE",
    "TAG_SIZE",
    "FileCipher",
    "FileHeader",
    "MalformedHeader",
    "TamperedCiphertext",
    "chunk_bounds",
    "chunk_count",
    "chunk_offset",
    "ciphertext_size",
    "decrypt_range",
    "decrypt_stream",
    "encrypt_stream",
]

FORMAT_VERSION = 1
"""The version this module writes. Every version ever released stays readable."""

MAGIC = b"\x89CUSTOS\n"
"""Eight bytes that open every file. The high first byte and the trailing newline catch
7-bit and line-ending-mangling transfers early, as PNG's signature does."""

KEY_SIZE = 32
SALT_SIZE = 32
COMMITMENT_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12

MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 1 << 26  # 64 MiB: a reader allocates this much, so a header may not ask for more
# Measured with bench/crypto_bench.py: 1 MiB and 4 MiB chunks run at the same speed, and 1 MiB
# halves the read amplification of small random-access reads and the buffers a reader holds.
DEFAULT_CHUNK_SIZE = 1 << 20
# 2^40 bytes = 2^36 AES blocks per subkey keeps the AES-GCM confidentiality advantage near 2^-57
# (the usual bound (blocks + invocations)^2 / 2^129); each file has its own subkey.
MAX_PLAINTEXT_LEN = 1 << 40
MAX_PATH_BYTES = 0xFFFF  # the path is length-prefixed with a u16

# magic, version | chunk_size, plaintext_len, salt | commitment — big-endian, no padding.
_PREFIX = struct.Struct(">8sH")
_HEADER_V1 = struct.Struct(">8sHIQ32s32s")
HEADER_SIZE = _HEADER_V1.size  # 86
_COMMITTED_PREFIX_SIZE = HEADER_SIZE - COMMITMENT_SIZE  # every header byte before the commitment
# Header size of every version this build can read, by version. A new version adds a row here
# and a branch in FileHeader.decode / FileCipher; no row is ever removed.
_HEADER_SIZES = {1: HEADER_SIZE}

# Domain-separation labels: nothing else in Custos derives or hashes with these prefixes.
_LABEL_KEY = b"custos/chunked/v1/key\x00"
_LABEL_COMMIT = b"custos/chunked/v1/commit\x00"
_LABEL_BINDING = b"custos/chunked/v1/binding\x00"

_ARTIFACT_ID_RE = re.compile(r"[0-9a-f]{64}")


class TamperedCiphertext(IntegrityError):
    """Stored ciphertext failed authentication or does not have the layout its header says.

    ``chunk_index`` is the chunk that failed, or ``None`` when the header or the total
    length is at fault. A wrong data key, artifact id or path looks the same as tampering:
    the header's key commitment does not verify.
    """

    def __init__(self, message: str, *, chunk_index: int | None = None) -> None:
        super().__init__(message)
        self.chunk_index = chunk_index


class MalformedHeader(TamperedCiphertext):
    """The header does not parse: bad magic, unknown version, wrong size, absurd field."""


def _header_field_problem(chunk_size: int, plaintext_len: int) -> str | None:
    """Say what is wrong with these header fields, or return None when they are valid."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        return f"chunk size {chunk_size} is outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"
    if not 0 <= plaintext_len <= MAX_PLAINTEXT_LEN:
        return f"plaintext length {plaintext_len} is outside [0, {MAX_PLAINTEXT_LEN}]"
    return None


def _is_int(value: object) -> bool:
    # bool is an int subclass; a True chunk size is a bug, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


def chunk_count(plaintext_len: int, chunk_size: int) -> int:
    """Number of chunks for ``plaintext_len`` bytes: at least one (an empty file has one empty
    final chunk), never a trailing empty chunk.

    Raises InvalidInput for sizes outside the format's limits.
    """
    if not (_is_int(plaintext_len) and _is_int(chunk_size)):
        raise InvalidInput("plaintext length and chunk size must be integers")
    problem = _header_field_problem(chunk_size, plaintext_len)
    if problem is not None:
        raise InvalidInput(problem)
    return max(1, -(-plaintext_len // chunk_size))


def ciphertext_size(plaintext_len: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Total ciphertext bytes (header, chunks and tags) for ``plaintext_len`` plaintext bytes.

    Raises InvalidInput for sizes outside the format's limits.
    """
    return HEADER_SIZE + plaintext_len + TAG_SIZE * chunk_count(plaintext_len, chunk_size)


@dataclass(frozen=True)
class FileHeader:
    """The parsed header of one encrypted file.

    ``commitment`` binds the header to the data key, artifact id and path (see the spec);
    only :meth:`FileCipher.new` can make one, and :class:`FileCipher` checks it.
    Constructing a header with invalid fields raises InvalidInput.
    """

    version: int
    chunk_size: int
    plaintext_len: int
    salt: bytes
    commitment: bytes

    def __post_init__(self) -> None:
        if not all(_is_int(v) for v in (self.version, self.chunk_size, self.plaintext_len)):
            raise InvalidInput("version, chunk size and plaintext length must be integers")
        if self.version not in _HEADER_SIZES:
            raise InvalidInput(f"unsupported format version {self.version}")
        problem = _header_field_problem(self.chunk_size, self.plaintext_len)
        if problem is not None:
            raise InvalidInput(problem)
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_SIZE:
            raise InvalidInput(f"salt must be {SALT_SIZE} bytes")
        if not isinstance(self.commitment, bytes) or len(self.commitment) != COMMITMENT_SIZE:
            raise InvalidInput(f"commitment must be {COMMITMENT_SIZE} bytes")

    @property
    def chunk_count(self) -> int:
        """Number of chunks in the file (at least one)."""
        return max(1, -(-self.plaintext_len // self.chunk_size))

    @property
    def ciphertext_size(self) -> int:
        """Exact size of the whole encrypted file, header included."""
        return HEADER_SIZE + self.plaintext_len + TAG_SIZE * self.chunk_count

    def encode(self) -> bytes:
        """The header's canonical bytes (``HEADER_SIZE`` long)."""
        return _HEADER_V1.pack(MAGIC, self.version, self.chunk_size, self.plaintext_len, self.salt, self.commitment)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> FileHeader:
        """Parse header bytes. Only structure is checked here; :class:`FileCipher` verifies
        the commitment.

        Raises MalformedHeader for bad magic, an unknown version, a wrong length or a field
        outside the format's limits.
        """
        raw = bytes(data)
        if len(raw) < _PREFIX.size:
            raise MalformedHeader(f"header truncated: {len(raw)} bytes")
        magic, version = _PREFIX.unpack_from(raw)
        if magic != MAGIC:
            raise MalformedHeader("not a Custos chunked ciphertext: bad magic bytes")
        expected = _HEADER_SIZES.get(version)
        if expected is None:
            known = ", ".join(str(v) for v in sorted(_HEADER_SIZES))
            raise MalformedHeader(f"unsupported format version {version}; this build reads version {known}")
        if len(raw) != expected:
            raise MalformedHeader(f"header is {len(raw)} bytes; a version {version} header is {expected} bytes")
        _, _, chunk_size, plaintext_len, salt, commitment = _HEADER_V1.unpack(raw)
        problem = _header_field_problem(chunk_size, plaintext_len)
        if problem is not None:
            raise MalformedHeader(f"invalid header: {problem}")
        return cls(version, chunk_size, plaintext_len, salt, commitment)


def _check_index(header: FileHeader, index: int) -> None:
    if not _is_int(index) or not 0 <= index < header.chunk_count:
        raise InvalidInput(f"chunk index {index!r} is outside [0, {header.chunk_count})")


def chunk_bounds(header: FileHeader, index: int) -> tuple[int, int]:
    """Plaintext byte range ``[start, end)`` that chunk ``index`` carries.

    Raises InvalidInput for an index outside the file.
    """
    _check_index(header, index)
    start = index * header.chunk_size
    return start, min(start + header.chunk_size, header.plaintext_len)


def chunk_offset(header: FileHeader, index: int) -> int:
    """Byte offset of chunk ``index`` in the ciphertext. ``index == chunk_count`` is allowed
    and gives the end of the file, so ``chunk_offset(h, j) - chunk_offset(h, i)`` is the
    ciphertext length of chunks ``i..j-1``.

    Raises InvalidInput for an index outside ``[0, chunk_count]``.
    """
    if not _is_int(index) or not 0 <= index <= header.chunk_count:
        raise InvalidInput(f"chunk index {index!r} is outside [0, {header.chunk_count}]")
    if index == header.chunk_count:
        return header.ciphertext_size
    return HEADER_SIZE + index * (header.chunk_size + TAG_SIZE)


def _check_data_key(data_key: bytes | bytearray) -> None:
    if not isinstance(data_key, bytes | bytearray) or len(data_key) != KEY_SIZE:
        raise InvalidInput(f"data key must be {KEY_SIZE} bytes (bytes or bytearray)")


def _file_context(artifact_id: str, path: str) -> bytes:
    """Canonical bytes naming one file of one artifact: the raw 32-byte artifact id, then the
    UTF-8 path prefixed with its u16 length (so no two (id, path) pairs share an encoding).

    Raises InvalidInput for a malformed artifact id or path.
    """
    if not isinstance(artifact_id, str) or not _ARTIFACT_ID_RE.fullmatch(artifact_id):
        raise InvalidInput("artifact id must be 64 lowercase hex characters")
    if not isinstance(path, str) or not path:
        raise InvalidInput("path must be a non-empty string")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("path is not valid Unicode (lone surrogate)") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidInput(f"path is longer than {MAX_PATH_BYTES} UTF-8 bytes")
    return bytes.fromhex(artifact_id) + struct.pack(">H", len(encoded)) + encoded


def _hkdf(data_key: bytes | bytearray, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(data_key)


def _nonce(index: int, final: bool) -> bytes:
    # age's STREAM nonce: an 11-byte big-endian chunk counter, then the final-chunk flag.
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


class FileCipher:
    """Encrypts and decrypts the chunks of one file of one artifact.

    Construct it from an existing header (decryption, or more workers of one encryption) or
    with :meth:`new` (a fresh header for a new encryption). One instance may be shared by
    threads: each call is independent and the AEAD releases the GIL.

    The constructor derives the file's subkey and checks the header's key commitment.
    Raises InvalidInput for bad arguments and TamperedCiphertext when the commitment does not
    match (wrong data key, artifact id or path, or a tampered header).
    """

    __slots__ = ("_aead", "_binding", "artifact_id", "header", "path")

    def __init__(self, data_key: bytes | bytearray, artifact_id: str, path: str, header: FileHeader) -> None:
        _check_data_key(data_key)
        if not isinstance(header, FileHeader):
            raise InvalidInput("header must be a FileHeader")
        context = _file_context(artifact_id, path)
        header_bytes = header.encode()
        expected = _hkdf(data_key, header.salt, _LABEL_COMMIT + context + header_bytes[:_COMMITTED_PREFIX_SIZE])
        if not hmac.compare_digest(expected, header.commitment):
            raise TamperedCiphertext(
                f"header of {path!r} failed authentication (wrong data key, artifact id or path, or a tampered header)"
            )
        self.header = header
        self.artifact_id = artifact_id
        self.path = path
        self._binding = hashlib.sha256(_LABEL_BINDING + context + header_bytes).digest()
        # The subkey lives only inside the AEAD object; zeroize() drops it.
        self._aead: AESGCM | None = AESGCM(_hkdf(data_key, header.salt, _LABEL_KEY + context))

    @classmethod
    def new(
        cls,
        data_key: bytes | bytearray,
        artifact_id: str,
        path: str,
        plaintext_len: int,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        unsafe_fixed_salt: bytes | None = None,
    ) -> FileCipher:
        """A cipher with a fresh header (random 32-byte salt) for encrypting a new file.

        ``unsafe_fixed_salt`` exists only for known-answer vectors: encrypting different
        plaintext twice with the same key, artifact id, path and salt reuses GCM nonces.
        Raises InvalidInput for bad arguments.
        """
        _check_data_key(data_key)
        chunk_count(plaintext_len, chunk_size)  # validates both
        if unsafe_fixed_salt is None:
            salt = secrets.token_bytes(SALT_SIZE)
        elif isinstance(unsafe_fixed_salt, bytes) and len(unsafe_fixed_salt) == SALT_SIZE:
            salt = unsafe_fixed_salt
        else:
            raise InvalidInput(f"salt must be {SALT_SIZE} bytes")
        context = _file_context(artifact_id, path)
        unsigned = FileHeader(FORMAT_VERSION, chunk_size, plaintext_len, salt, bytes(32))
        prefix = unsigned.encode()[:_COMMITTED_PREFIX_SIZE]
        commitment = _hkdf(data_key, salt, _LABEL_COMMIT + context + prefix)
        header = FileHeader(FORMAT_VERSION, chunk_size, plaintext_len, salt, commitment)
        return cls(data_key, artifact_id, path, header)

    def __enter__(self) -> FileCipher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zeroize()

    def zeroize(self) -> None:
        """Drop the derived subkey. Any later use raises FailedPrecondition.

        Best effort: the subkey lives in the AEAD object, which is released here; Python
        gives no way to overwrite the immutable copies the KDF produced.
        """
        self._aead = None

    def _live_aead(self) -> AESGCM:
        if self._aead is None:
            raise FailedPrecondition("this FileCipher was zeroized")
        return self._aead

    def _associated_data(self, index: int, final: bool) -> bytes:
        return self._binding + struct.pack(">QB", index, 1 if final else 0)

    def encrypt_chunk_into(
        self, index: int, plaintext: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> int:
        """Encrypt chunk ``index`` into the start of ``out``; return the bytes written.

        ``plaintext`` must be exactly the chunk's plaintext (see :func:`chunk_bounds`);
        ``out`` must be writable and hold at least ``len(plaintext) + TAG_SIZE`` bytes.
        Raises InvalidInput for a wrong index, length or buffer; FailedPrecondition after
        :meth:`zeroize`.
        """
        aead = self._live_aead()
        start, end = chunk_bounds(self.header, index)
        src = _byte_view(plaintext)
        if src.nbytes != end - start:
            raise InvalidInput(f"chunk {index} must be {end - start} plaintext bytes, got {src.nbytes}")
        size = src.nbytes + TAG_SIZE
        dst = _writable_view(out, size)
        final = index == self.header.chunk_count - 1
        aead.encrypt_into(_nonce(index, final), src, self._associated_data(index, final), dst)
        return size

    def decrypt_chunk_into(
        self, index: int, ciphertext: bytes | bytearray | memoryview, out: bytearray | memoryview
    ) -> int:
        """Authenticate and decrypt chunk ``index`` into the start of ``out``; return its
        plaintext length. ``out`` must not overlap ``ciphertext``.

        On failure the bytes of ``out`` that could have held unverified plaintext are zeroed
        before raising. Raises TamperedCiphertext (``chunk_index == index``) when the chunk
        has the wrong length or fails authentication; InvalidInput for a wrong index or
        buffer; FailedPrecondition after :meth:`zeroize`.
        """
        aead = self._live_aead()
        start, end = chunk_bounds(self.header, index)
        size = end - start
        src = _byte_view(ciphertext)
        count = self.header.chunk_count
        if src.nbytes != size + TAG_SIZE:
            raise TamperedCiphertext(
                f"chunk {index} of {count} of {self.path!r} is {src.nbytes} bytes, expected {size + TAG_SIZE}",
                chunk_index=index,
            )
        dst = _writable_view(out, size)
        final = index == count - 1
        try:
            aead.decrypt_into(_nonce(index, final), src, self._associated_data(index, final), dst)
        except InvalidTag:
            # OpenSSL writes plaintext before it checks the tag: wipe it.
            dst[:] = bytes(size)
            raise TamperedCiphertext(
                f"chunk {index} of {count} of {self.path!r} failed authentication",
                chunk_index=index,
            ) from None
        return size


def _byte_view(buf: bytes | bytearray | memoryview) -> memoryview:
    """``buf`` as a flat byte view. Raises InvalidInput for non-contiguous or non-buffers."""
    try:
        return memoryview(buf).cast("B")
    except TypeError:
        raise InvalidInput("buffers must be contiguous bytes-like objects") from None


def _writable_view(buf: bytearray | memoryview, size: int) -> memoryview:
    """The first ``size`` bytes of ``buf`` as a writable byte view.

    Raises InvalidInput when ``buf`` is read-only or too small.
    """
    view = _byte_view(buf)
    if view.readonly:
        raise InvalidInput("output buffer is read-only")
    if view.nbytes < size:
        raise InvalidInput(f"output buffer holds {view.nbytes} bytes, needs {size}")
    return view[:size]


def _read_into(src: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``src`` until it is full or the stream ends; return bytes read."""
    readinto = getattr(src, "readinto", None)
    got = 0
    while got < view.nbytes:
        if readinto is not None:
            n = readinto(view[got:])
        else:
            data = src.read(view.nbytes - got)
            n = len(data)
            if n > view.nbytes - got:
                raise InvalidInput("source returned more bytes than requested")
            view[got : got + n] = data
        if not n:  # 0 at end of stream; None from a non-blocking stream with nothing ready
            break
        got += n
    return got


def _at_eof(src: BinaryIO) -> bool:
    probe = bytearray(1)
    return _read_into(src, memoryview(probe)) == 0


def _write_all(dst: BinaryIO, view: memoryview) -> None:
    # Raw (unbuffered) streams may write less than asked; buffered ones return the full length.
    while view.nbytes:
        n = dst.write(view)
        if n is None or n >= view.nbytes:
            return
        view = view[n:]


def encrypt_stream(
    data_key: bytes | bytearray,
    artifact_id: str,
    path: str,
    src: BinaryIO,
    dst: BinaryIO,
    plaintext_len: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FileHeader:
    """Encrypt exactly ``plaintext_len`` bytes from ``src`` into ``dst`` with a fresh header.

    ``src`` and ``dst`` are blocking binary streams (a non-blocking read that returns None
    counts as the end of the stream). Memory use is two buffers of one chunk, whatever the
    file size. Returns the header written. Raises InvalidInput for bad arguments or when
    ``src`` is shorter or longer than ``plaintext_len`` (``dst`` then holds an incomplete
    ciphertext the caller must discard; the final chunk is never written in that case).
    """
    with FileCipher.new(data_key, artifact_id, path, plaintext_len, chunk_size=chunk_size) as fc:
        header = fc.header
        largest = min(chunk_size, plaintext_len)
        pbuf = bytearray(largest)
        cbuf = bytearray(largest + TAG_SIZE)
        pview, cview = memoryview(pbuf), memoryview(cbuf)
        try:
            _write_all(dst, memoryview(header.encode()))
            for index in range(header.chunk_count):
                start, end = chunk_bounds(header, index)
                got = _read_into(src, pview[: end - start])
                if got != end - start:
                    raise InvalidInput(f"source ended after {start + got} bytes, expected {plaintext_len}")
                n = fc.encrypt_chunk_into(index, pview[: end - start], cview)
                if index == header.chunk_count - 1 and not _at_eof(src):
                    raise InvalidInput(f"source is longer than {plaintext_len} bytes")
                _write_all(dst, cview[:n])
        finally:
            pview[:] = bytes(len(pbuf))  # don't leave plaintext in freed memory
            pview.release()
            cview.release()
    return header


def _read_header(src: BinaryIO) -> FileHeader:
    """Read and parse the header at the current position of ``src``.

    Raises MalformedHeader when it is truncated or does not parse.
    """
    prefix = bytearray(_PREFIX.size)
    got = _read_into(src, memoryview(prefix))
    if got < len(prefix):
        raise MalformedHeader(f"header truncated: {got} bytes")
    _, version = _PREFIX.unpack(prefix)
    size = _HEADER_SIZES.get(version, _PREFIX.size)  # unknown versions fail in decode
    rest = bytearray(size - _PREFIX.size)
    got = _read_into(src, memoryview(rest))
    if got < len(rest):
        raise MalformedHeader(f"header truncated: {_PREFIX.size + got} bytes")
    return FileHeader.decode(prefix + rest)


def _remaining_size(src: BinaryIO) -> int | None:
    """Bytes left in a seekable stream, or None when the stream cannot tell."""
    try:
        if not src.seekable():
            return None
        here = src.tell()
        end = src.seek(0, io.SEEK_END)
        src.seek(here)
    except (OSError, ValueError):
        return None
    return end - here


def _check_total_size(header: FileHeader, actual: int) -> None:
    """Raises TamperedCiphertext when a ciphertext of ``actual`` bytes cannot be ``header``'s."""
    expected = header.ciphertext_size
    if actual == expected:
        return
    if actual > expected:
        raise TamperedCiphertext(
            f"ciphertext is {actual} bytes, {actual - expected} more than its header declares "
            "(trailing data after the final chunk)"
        )
    # Name the first chunk that cannot be complete.
    stride = header.chunk_size + TAG_SIZE
    first_short = max(0, actual - HEADER_SIZE) // stride
    raise TamperedCiphertext(
        f"ciphertext is {actual} bytes, expected {expected}: truncated at chunk {first_short}",
        chunk_index=min(first_short, header.chunk_count - 1),
    )


def decrypt_stream(data_key: bytes | bytearray, artifact_id: str, path: str, src: BinaryIO, dst: BinaryIO) -> int:
    """Decrypt one file from ``src`` into ``dst``; return the plaintext bytes written.

    Each chunk is authenticated before any of its bytes reach ``dst``, so a failing chunk
    writes nothing. Chunks before it have been written: callers decrypt into a staging file
    and delete it when this raises. When ``src`` is seekable, truncation and trailing data
    are caught before anything is written. Memory use is two chunk buffers. ``src`` and
    ``dst`` are blocking binary streams.

    Raises TamperedCiphertext (MalformedHeader for a header that does not parse) and
    InvalidInput for bad arguments.
    """
    _check_data_key(data_key)
    _file_context(artifact_id, path)  # bad arguments are InvalidInput, not "tampered"
    header = _read_header(src)
    with FileCipher(data_key, artifact_id, path, header) as fc:
        remaining = _remaining_size(src)
        if remaining is not None:
            _check_total_size(header, HEADER_SIZE + remaining)
        largest = min(header.chunk_size, header.plaintext_len)
        cbuf = bytearray(largest + TAG_SIZE)
        pbuf = bytearray(largest)
        cview, pview = memoryview(cbuf), memoryview(pbuf)
        last = header.chunk_count - 1
        try:
            for index in range(header.chunk_count):
                start, end = chunk_bounds(header, index)
                want = end - start + TAG_SIZE
                got = _read_into(src, cview[:want])
                if got != want:
                    raise TamperedCiphertext(
                        f"ciphertext of {path!r} truncated in chunk {index} of {last + 1}",
                        chunk_index=index,
                    )
                n = fc.decrypt_chunk_into(index, cview[:want], pview)
                if index == last and not _at_eof(src):
                    raise TamperedCiphertext(f"ciphertext of {path!r} has trailing data after its final chunk")
                _write_all(dst, pview[:n])
        finally:
            pview[:] = bytes(len(pbuf))
            pview.release()
            cview.release()
    return header.plaintext_len


def decrypt_range(
    data_key: bytes | bytearray,
    artifact_id: str,
    path: str,
    read_at: Callable[[int, int], bytes],
    start: int,
    length: int,
    *,
    object_size: int | None = None,
) -> bytes:
    """Decrypt plaintext bytes ``[start, start + length)`` reading only the header and the
    chunks that cover them.

    ``read_at(offset, size)`` returns ``size`` ciphertext bytes at ``offset`` (an S3 ranged
    GET, ``os.pread``); it is called once for the header and once for the chunk span.
    Pass the stored object's ``object_size`` to also reject truncation and trailing data
    outside the range. Memory use is proportional to ``length``.

    Raises InvalidInput for bad arguments or a range outside the file, TamperedCiphertext
    (MalformedHeader) when the ciphertext fails authentication or is short.
    """
    _check_data_key(data_key)
    _file_context(artifact_id, path)
    if not (_is_int(start) and _is_int(length)) or start < 0 or length < 0:
        raise InvalidInput("start and length must be non-negative integers")
    header_bytes = _byte_view(read_at(0, HEADER_SIZE))
    if header_bytes.nbytes != HEADER_SIZE:
        raise MalformedHeader(f"header truncated: {header_bytes.nbytes} bytes")
    header = FileHeader.decode(header_bytes)
    with FileCipher(data_key, artifact_id, path, header) as fc:
        if object_size is not None:
            _check_total_size(header, object_size)
        if start + length > header.plaintext_len:
            raise InvalidInput(f"range [{start}, {start + length}) is outside the file ({header.plaintext_len} bytes)")
        if length == 0:
            return b""
        first = start // header.chunk_size
        last = (start + length - 1) // header.chunk_size
        span_at = chunk_offset(header, first)
        span_len = chunk_offset(header, last + 1) - span_at
        span = _byte_view(read_at(span_at, span_len))
        if span.nbytes != span_len:
            # Name the first chunk the short read cannot hold entirely.
            short = first + span.nbytes // (header.chunk_size + TAG_SIZE)
            raise TamperedCiphertext(
                f"ciphertext of {path!r} truncated: read {span.nbytes} of {span_len} bytes of chunks {first}..{last}",
                chunk_index=min(short, last),
            )
        plain_at = first * header.chunk_size
        out = bytearray(chunk_bounds(header, last)[1] - plain_at)
        oview = memoryview(out)
        try:
            for index in range(first, last + 1):
                c0 = chunk_offset(header, index) - span_at
                c1 = chunk_offset(header, index + 1) - span_at
                p0 = index * header.chunk_size - plain_at
                fc.decrypt_chunk_into(index, span[c0:c1], oview[p0:])
            return bytes(oview[start - plain_at : start - plain_at + length])
        finally:
            oview[:] = bytes(len(out))
            oview.release()
