"""The blob store interface: objects of ciphertext, written whole or by resumable multipart upload.

Blobs hold only ciphertext; clients encrypt before upload. The interface follows
the S3 object model so one conformance suite can run against S3 and the local
directory backend:

* ``put`` writes a small object in one request.
* A multipart upload (``start_upload``, ``upload_part`` in any order and from any
  number of threads, ``complete_upload``) writes a large one. Until
  ``complete_upload`` returns the object does not exist for ``head``, ``list`` or
  reads. A pusher killed mid-way finds its upload again with ``list_uploads`` and
  the parts that made it with ``list_parts``, uploads the rest and completes.
* ``read_range`` reads exactly the bytes asked for; ``iter_object`` streams a whole
  object in parts.

:class:`BlobStore` does every check that does not depend on the backend (keys,
part numbers and sizes, the completion list against the parts really stored,
lengths of what comes back) and hands validated arguments to a small set of
``_``-prefixed hooks that each backend implements.

Errors (all from :mod:`custos.errors`): ``InvalidInput`` for bad keys, ranges and
part lists; ``NotFound`` for a missing object or upload; ``IntegrityError`` when a
checksum or a length does not match; ``Unauthorized``; ``Conflict``;
``FailedPrecondition`` for an upload missing parts; ``BackendUnavailable``.
"""

from __future__ import annotations

import abc
import base64
import builtins
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Literal

from custos.errors import Conflict, FailedPrecondition, IntegrityError, InvalidInput

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_KEY_LENGTH",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MAX_PUT_SIZE",
    "MIN_PART_SIZE",
    "BlobStore",
    "ObjectInfo",
    "PartInfo",
    "check_completion",
    "content_md5",
    "latest_parts",
    "validate_key",
    "validate_prefix",
]

MiB = 1024 * 1024

# S3 limits, applied by every backend so that code tested against the local
# directory also works against S3.
MIN_PART_SIZE = 5 * MiB  # every part but the last (S3: EntityTooSmall)
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
MAX_PUT_SIZE = 5 * 1024 * MiB
MAX_KEY_LENGTH = 1024  # bytes, store prefix included
MAX_SEGMENT_LENGTH = 200  # one path segment; leaves room under NAME_MAX (255) on disk
DEFAULT_PART_SIZE = 8 * MiB

# Letters, digits and ``- _ . = : @ ,`` in segments separated by single slashes:
# a subset of the characters S3 documents as safe, and safe as file names. Nothing
# that needs URL escaping, no whitespace, no backslash, no NUL, no ``~`` (the local
# backend reserves it).
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._=:@,-]+")
# Upload ids are opaque tokens from the backend (AWS, MinIO and SeaweedFS use
# URL-safe characters); a slash or a space in one is a caller bug or an attack.
_UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9._=-]{1,1024}")


@dataclass(frozen=True)
class ObjectInfo:
    """A complete object: its key (without the store prefix), size in bytes and ETag.

    The ETag is opaque (S3 ETags are not always an MD5); it changes when the
    object is replaced with different content.
    """

    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class PartInfo:
    """One stored part of a multipart upload: number (1..10000), size and ETag.

    Everything ``complete_upload`` needs, and all that ``list_parts`` returns, so
    a resumed upload can complete with what it lists.
    """

    number: int
    size: int
    etag: str


def content_md5(data: bytes | bytearray | memoryview) -> str:
    """Base64 MD5 of data, the form of the ``Content-MD5`` header.

    MD5 here is a transport checksum that every S3 server verifies, not a
    security control: the client-side AEAD of every chunk is.
    """
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid object key.

    A key is 1 to 1024 ASCII characters: segments of ``[A-Za-z0-9._=:@,-]`` (at
    most 200 each) joined by single ``/``; no leading or trailing ``/``, no ``.``
    or ``..`` segment.

    Raises:
        InvalidInput: otherwise (the message shows the key escaped, never raw bytes).
    """
    if not isinstance(key, str):
        raise InvalidInput(f"object key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidInput("object key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"object key is longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        _check_segment(segment, key)
    return key


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a valid listing prefix.

    A prefix is ``""`` or a key, optionally ending in ``/``.

    Raises:
        InvalidInput: otherwise.
    """
    if not isinstance(prefix, str):
        raise InvalidInput(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _check_segment(segment: str, key: str) -> None:
    if segment == "":
        raise InvalidInput(f"object key {key!r} has an empty segment (leading, trailing or //)")
    if segment in (".", ".."):
        raise InvalidInput(f"object key {key!r} has a {segment!r} segment")
    if len(segment) > MAX_SEGMENT_LENGTH:
        raise InvalidInput(f"object key has a segment longer than {MAX_SEGMENT_LENGTH}")
    if not _SEGMENT_RE.fullmatch(segment):
        raise InvalidInput(f"object key {key!a} has characters outside [A-Za-z0-9._=:@,-] and '/'")


def _as_view(data: object, what: str) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput(f"{what} must be bytes, bytearray or memoryview")
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    # bool is an int subclass; True as a part number is a bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{what} must be an int")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise InvalidInput(f"{what} must be {bound}, got {value}")
    return value


def check_completion(wanted: Sequence[PartInfo], stored: Sequence[PartInfo], min_part_size: int) -> list[PartInfo]:
    """Check a completion list against itself and the parts the backend holds.

    Pure; returns ``wanted`` sorted by part number. ``stored`` may hold several
    versions of one part number (SeaweedFS keeps every upload of a part and
    assembles the one whose ETag the completion names); each wanted part must
    match one of them.

    Raises:
        InvalidInput: empty list, numbers not exactly 1..N, or a part other than
            the last smaller than ``min_part_size``.
        FailedPrecondition: a listed part is not stored.
        Conflict: the backend holds parts beyond the list (another writer, or a
            caller that lost track); completing would silently drop them.
        IntegrityError: no stored version of a part has the listed size and ETag.
    """
    if not wanted:
        raise InvalidInput("a multipart upload needs at least one part")
    if not all(isinstance(p, PartInfo) for p in wanted):
        raise InvalidInput("parts must be PartInfo values")
    ordered = sorted(wanted, key=lambda p: p.number)
    for expected_number, part in enumerate(ordered, start=1):
        if part.number != expected_number:
            # S3 would accept gaps and silently leave the missing numbers out.
            raise InvalidInput(
                f"part numbers must be exactly 1..{len(ordered)}; part {expected_number} is missing or duplicated"
            )
    for part in ordered[:-1]:
        if part.size < min_part_size:
            raise InvalidInput(
                f"part {part.number} has {part.size} bytes; every part but the last needs at least {min_part_size}"
            )
    versions: dict[int, list[PartInfo]] = {}
    for p in stored:
        versions.setdefault(p.number, []).append(p)
    missing = [p.number for p in ordered if p.number not in versions]
    if missing:
        raise FailedPrecondition(f"upload is missing parts {_numbers(missing)}")
    extra = sorted(set(versions) - {p.number for p in ordered})
    if extra:
        raise Conflict(f"upload holds parts {_numbers(extra)} that are not in the completion list")
    for part in ordered:
        if not any(v.size == part.size and v.etag == part.etag for v in versions[part.number]):
            raise IntegrityError(
                f"no stored version of part {part.number} has the size ({part.size}) and ETag of the completion list"
            )
    return ordered


def latest_parts(stored: Sequence[PartInfo]) -> list[PartInfo]:
    """One entry per part number, the last one in ``stored`` (oldest first), by number."""
    latest: dict[int, PartInfo] = {}
    for p in stored:
        latest[p.number] = p
    return [latest[n] for n in sorted(latest)]


def _numbers(numbers: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:10])
    return shown + (", ..." if len(numbers) > 10 else "")


class BlobStore(abc.ABC):
    """A store of ciphertext objects; see the module docstring for the model.

    Instances are safe to share between threads. Use as a context manager, or
    call :meth:`close`.
    """

    kind: ClassVar[Literal["s3", "local"]]
    #: Smallest size of a part that is not the last one.
    min_part_size: ClassVar[int] = MIN_PART_SIZE

    # -- small objects -----------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview) -> ObjectInfo:
        """Write (or replace) a whole object in one request, with a verified Content-MD5.

        Raises:
            InvalidInput: bad key, or more than ``MAX_PUT_SIZE`` bytes.
            IntegrityError: the backend did not receive what was sent.
            Unauthorized, BackendUnavailable.
        """
        key = validate_key(key)
        view = _as_view(data, "data")
        if view.nbytes > MAX_PUT_SIZE:
            raise InvalidInput(f"put takes at most {MAX_PUT_SIZE} bytes; use a multipart upload")
        info = self._put(key, view, content_md5(view))
        if info.size != view.nbytes:
            raise IntegrityError(f"stored {info.size} bytes for {key!r}, sent {view.nbytes}")
        return info

    # -- multipart uploads ---------------------------------------------------------

    def start_upload(self, key: str) -> str:
        """Start a multipart upload of ``key`` and return its upload id.

        Raises:
            InvalidInput, Unauthorized, BackendUnavailable.
        """
        return self._start_upload(validate_key(key))

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | bytearray | memoryview) -> PartInfo:
        """Upload (or replace) part ``number`` (1..10000) of an upload.

        The part carries its MD5 (``Content-MD5``), which the backend verifies
        before storing it.
        Parts may be uploaded in any order and concurrently.

        Raises:
            InvalidInput: bad key, number, or a part larger than ``MAX_PART_SIZE``
                (or empty).
            NotFound: no such upload for this key (aborted or completed).
            IntegrityError: the backend rejected the checksum; nothing was stored.
            Unauthorized, BackendUnavailable.
        """
        key = validate_key(key)
        upload_id = self._check_upload_id(upload_id)
        number = _check_int(number, "part number", 1, MAX_PARTS)
        view = _as_view(data, "part data")
        _check_int(view.nbytes, "part size", 1, MAX_PART_SIZE)
        info = self._upload_part(key, upload_id, number, view, content_md5(view))
        if info.size != view.nbytes or info.number != number:
            raise IntegrityError(f"part {number} of {key!r} stored with the wrong size")
        return info

    def list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        """The parts stored so far, one per part number, by number.

        Every entry can be passed to ``complete_upload`` as is. When a part number
        was uploaded more than once, S3 keeps the last upload; SeaweedFS keeps all
        of them, and then the entry is the newest by the server's (one-second)
        timestamps: the version a caller uploaded itself is best named by the
        ``PartInfo`` that ``upload_part`` returned.

        Raises:
            NotFound: the upload does not exist (never started, aborted, or
                completed: then ``head(key)`` shows the object).
            InvalidInput, Unauthorized, BackendUnavailable.
        """
        key = validate_key(key)
        return latest_parts(self._list_parts(key, self._check_upload_id(upload_id)))

    def list_uploads(self, key: str) -> builtins.list[str]:
        """Ids of the unfinished uploads of exactly ``key``, oldest first.

        How a pusher that died before recording its upload id finds it again.

        Raises:
            InvalidInput, Unauthorized, BackendUnavailable.
        """
        return self._list_uploads(validate_key(key))

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[PartInfo]) -> ObjectInfo:
        """Assemble parts 1..N into the object, which becomes visible at once.

        Checks first that ``parts`` is exactly 1..N and that the backend holds
        exactly those parts with those sizes and ETags (S3 servers differ: some
        complete with whatever subset of parts is named), and afterwards that the
        object has the summed size.

        Raises:
            InvalidInput: bad list (gaps, duplicates, a small non-last part).
            FailedPrecondition: a listed part was never stored.
            Conflict: the upload holds parts that are not listed.
            IntegrityError: a stored part or the completed object has the wrong size.
            NotFound: no such upload.
            Unauthorized, BackendUnavailable.
        """
        key = validate_key(key)
        upload_id = self._check_upload_id(upload_id)
        if not isinstance(parts, Sequence):
            raise InvalidInput("parts must be a sequence of PartInfo")
        ordered = check_completion(parts, self._list_parts(key, upload_id), self.min_part_size)
        info = self._complete_upload(key, upload_id, ordered)
        total = sum(p.size for p in ordered)
        if info.size != total:
            raise IntegrityError(f"completed {key!r} has {info.size} bytes, parts sum to {total}")
        return info

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort an upload and drop its parts. Aborting an unknown upload is a no-op.

        Raises:
            InvalidInput, Unauthorized, BackendUnavailable.
        """
        key = validate_key(key)
        self._abort_upload(key, self._check_upload_id(upload_id))

    # -- reads -----------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        """Size and ETag of a complete object, or None if there is none.

        Raises:
            InvalidInput, Unauthorized, BackendUnavailable.
        """
        return self._head(validate_key(key))

    def exists(self, key: str) -> bool:
        """Whether a complete object exists under key (see :meth:`head`)."""
        return self.head(key) is not None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """Exactly ``length`` bytes of the object from offset ``start``.

        Raises:
            InvalidInput: negative start, length < 1, or a range that runs past
                the end of the object.
            NotFound: no such object.
            IntegrityError: the backend returned a different number of bytes.
            Unauthorized, BackendUnavailable.
        """
        key = validate_key(key)
        start = _check_int(start, "start", 0)
        length = _check_int(length, "length", 1, MAX_PART_SIZE)
        data = self._read_range(key, start, length)
        if len(data) != length:
            raise IntegrityError(f"read {len(data)} bytes of {key!r}, asked for {length}")
        return data

    def iter_object(self, key: str, part_size: int = DEFAULT_PART_SIZE) -> Iterator[bytes]:
        """Stream the whole object in pieces of ``part_size`` bytes (the last may be shorter).

        The object is looked up now, so a missing one raises here, not at the first
        ``next()``. The pieces come from the version current at this call; if it is
        replaced while streaming, iteration raises ``Conflict`` rather than mix
        versions. The total length is checked against the size at the start.

        Raises:
            InvalidInput: bad key or part_size.
            NotFound: no such object.
            Conflict: replaced while streaming (raised by the iterator).
            IntegrityError: a piece or the total has the wrong length (iterator).
            Unauthorized, BackendUnavailable.
        """
        key = validate_key(key)
        part_size = _check_int(part_size, "part_size", 1, MAX_PART_SIZE)
        size, pieces = self._open_stream(key, part_size)
        return _length_checked(key, size, part_size, pieces)

    # -- removal and listing ---------------------------------------------------------

    def delete(self, key: str) -> None:
        """Delete an object; deleting a missing one is not an error.

        Raises:
            InvalidInput, Unauthorized, BackendUnavailable.
        """
        self._delete(validate_key(key))

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Complete objects whose key starts with ``prefix``, sorted by key.

        Raises:
            InvalidInput, Unauthorized, BackendUnavailable.
        """
        return sorted(self._list(validate_prefix(prefix)), key=lambda o: o.key)

    def check(self) -> None:
        """Verify the store is reachable and usable with its configuration.

        Raises:
            Unauthorized, FailedPrecondition (e.g. missing bucket), BackendUnavailable.
        """
        self._check()

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and file handles; the store is unusable afterwards."""

    def __enter__(self) -> BlobStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- backend hooks: arguments are already validated ---------------------------------

    def _check_upload_id(self, upload_id: object) -> str:
        """Reject upload ids that cannot be valid (type, length, characters).

        Raises:
            InvalidInput.
        """
        if not isinstance(upload_id, str) or not _UPLOAD_ID_RE.fullmatch(upload_id):
            raise InvalidInput("upload id must be 1-1024 characters of [A-Za-z0-9._=-]")
        return upload_id

    @abc.abstractmethod
    def _put(self, key: str, data: memoryview, md5_b64: str) -> ObjectInfo:
        """Store data under key if its MD5 is md5_b64, else IntegrityError (nothing stored)."""

    @abc.abstractmethod
    def _start_upload(self, key: str) -> str: ...

    @abc.abstractmethod
    def _upload_part(self, key: str, upload_id: str, number: int, data: memoryview, md5_b64: str) -> PartInfo:
        """Store a part if its MD5 is md5_b64, else IntegrityError (nothing stored)."""

    @abc.abstractmethod
    def _list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        """Every stored version of every part; for one number, oldest first."""

    @abc.abstractmethod
    def _list_uploads(self, key: str) -> builtins.list[str]: ...

    @abc.abstractmethod
    def _complete_upload(self, key: str, upload_id: str, parts: builtins.list[PartInfo]) -> ObjectInfo: ...

    @abc.abstractmethod
    def _abort_upload(self, key: str, upload_id: str) -> None: ...

    @abc.abstractmethod
    def _head(self, key: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def _read_range(self, key: str, start: int, length: int) -> bytes: ...

    @abc.abstractmethod
    def _open_stream(self, key: str, part_size: int) -> tuple[int, Iterator[bytes]]:
        """(size, pieces) of the current version; NotFound now if missing."""

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def _list(self, prefix: str) -> builtins.list[ObjectInfo]: ...

    @abc.abstractmethod
    def _check(self) -> None: ...


def _length_checked(key: str, size: int, part_size: int, pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Pass pieces through, checking each is part_size long (last: the rest) and the total."""
    done = 0
    try:
        for piece in pieces:
            expected = min(part_size, size - done)
            if len(piece) != expected:
                raise IntegrityError(
                    f"streaming {key!r}: piece at offset {done} has {len(piece)} bytes, expected {expected}"
                )
            done += len(piece)
            yield piece
        if done != size:
            raise IntegrityError(f"streaming {key!r}: got {done} bytes of {size}")
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
