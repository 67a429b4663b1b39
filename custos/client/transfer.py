"""Encrypted transfer, byte by byte: the client side of promise 1 below the protocol.

Weights are encrypted and decrypted here, on the client or agent, with the
artifact's data key; the blob store holds only ciphertext in the chunked format
(docs/chunk-format.md) and the control plane only brokers the key (the calls
around these bytes are in :mod:`custos.client.push` and :mod:`custos.client.pull`).

Pusher: encrypt every file chunk by chunk while hashing it again (a file that
changed since the manifest was built is refused) and upload parts in parallel.
A push killed at any point resumes: the control plane hands back the same data
key, and a small state file (PushState; no secrets: upload ids and file
headers) tells which parts are done.

pull_into: download, decrypt and check every file's SHA-256 against the manifest
into a private staging directory beside DEST (0700, files 0600), and move it
into place only when every file verified. Any failure removes the staging
directory: no plaintext is left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custos.blobs.base import MIN_PART_SIZE, BlobStore, PartInfo
from custos.blobs.url import object_key, open_blob_store
from custos.core import chunked
from custos.core.keymaterial import zeroize
from custos.core.manifest import FileEntry, Manifest
from custos.errors import CustosError, IntegrityError, InvalidInput
from custos.fs.private import private_dir, write_private

CHUNK_SIZE = chunked.DEFAULT_CHUNK_SIZE
PART_CHUNKS = 8  # 8 MiB of plaintext per part: above S3's 5 MiB minimum
MAX_PARTS = 10_000
IN_FLIGHT = 4  # parts buffered at once: bounds memory at ~IN_FLIGHT x part size (x2 inside botocore)
PULL_FILES = 2  # files decrypted at once on a pull; each prefetches 3 ranges of 8 chunks


def _part_chunks(header: chunked.FileHeader) -> int:
    # Enough chunks per part to stay under S3's 10,000-part limit for any file size.
    return max(PART_CHUNKS, -(-header.chunk_count // MAX_PARTS))


@dataclass
class TransferStats:
    files: int = 0
    bytes: int = 0
    parts_uploaded: int = 0
    parts_skipped: int = 0
    objects_skipped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


Progress = Callable[[int, int], None]
"""Told (bytes done, bytes in all) as a transfer goes, one call at a time."""


class ProgressTally:
    """Adds up the bytes the transfer threads report and tells a :data:`Progress` the running total."""

    def __init__(self, total: int, report: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.report = report
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self.report is None:
            return
        with self._lock:
            self.done += n
            self.report(self.done, self.total)


def open_blobs(url: str | None, advertised: str) -> BlobStore:
    """The blob store at ``url``, else at CUSTOS_BLOBS, else the one the control plane advertised.
    Raises InvalidInput when there is none, or for a bad URL."""
    url = url or os.environ.get("CUSTOS_BLOBS") or advertised
    if not url:
        raise InvalidInput("no blob store: the control plane did not advertise one; set CUSTOS_BLOBS")
    return open_blob_store(url)


class _Buffers:
    """A fixed set of reusable part buffers: keeps memory flat whatever the artifact size."""

    def __init__(self, count: int, size: int) -> None:
        self._size = size
        self._q: queue.Queue[bytearray] = queue.Queue()
        for _ in range(count):
            self._q.put(bytearray(size))

    def get(self, size: int) -> bytearray:
        buf = self._q.get()
        if len(buf) < size:
            buf = bytearray(size)
        return buf

    def put(self, buf: bytearray) -> None:
        self._q.put(buf)


# -- push ----------------------------------------------------------------------


@dataclass
class PushState:
    """Resume state of one push: upload ids and file headers, never key material."""

    path: Path
    files: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PushState:
        try:
            data = json.loads(path.read_text())
            files = {str(k): {str(a): str(b) for a, b in v.items()} for k, v in data["files"].items()}
            return cls(path, files)
        except (OSError, ValueError, KeyError, AttributeError):
            return cls(path)

    def save(self) -> None:
        private_dir(self.path.parent)
        write_private(self.path, json.dumps({"files": self.files}).encode())

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def default_state_dir() -> Path:
    base = os.environ.get("CUSTOS_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "custos")
    return Path(base) / "push"


class Pusher:
    """Encrypt and upload one artifact's files. Thread-safe parts, one instance per push."""

    def __init__(self, *, blobs: BlobStore, data_key: bytearray, artifact_id: str, manifest: Manifest,
                 root: Path, state: PushState, resumed: bool, workers: int = 8,
                 progress: Callable[[int], None] | None = None) -> None:
        self.blobs = blobs
        self.key = data_key
        self.aid = artifact_id
        self.manifest = manifest
        self.root = root
        self.state = state
        self.resumed = resumed
        self.stats = TransferStats()
        self.progress = progress or (lambda n: None)
        part_bytes = PART_CHUNKS * (CHUNK_SIZE + chunked.TAG_SIZE) + chunked.HEADER_SIZE
        self.buffers = _Buffers(IN_FLIGHT, part_bytes)
        self.uploads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="custos-upload")
        self._lock = threading.Lock()

    def run(self) -> TransferStats:
        t0 = time.monotonic()
        try:
            # Files are read and encrypted by a small pool; parts upload on a larger one.
            with ThreadPoolExecutor(max_workers=min(4, max(1, len(self.manifest.files))),
                                    thread_name_prefix="custos-encrypt") as pool:
                futures = [pool.submit(self._file, i, f) for i, f in enumerate(self.manifest.files)]
                for fut in futures:
                    fut.result()
        finally:
            self.uploads.shutdown(wait=True)
        self.stats.seconds = time.monotonic() - t0
        return self.stats

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def _cipher_for(self, index: int, f: FileEntry) -> chunked.FileCipher:
        saved = self.state.files.get(str(index), {}).get("header") if self.resumed else None
        if saved:
            try:
                return chunked.FileCipher(self.key, self.aid, f.path, chunked.FileHeader.decode(bytes.fromhex(saved)))
            except (CustosError, ValueError):
                pass  # a header from another key: start this file over
        return chunked.FileCipher.new(self.key, self.aid, f.path, f.size, chunk_size=CHUNK_SIZE)

    def _already_stored(self, okey: str, f: FileEntry) -> bool:
        if not self.resumed:
            return False  # objects from an abandoned push may use another key
        info = self.blobs.head(okey)
        if info is None or info.size != chunked.ciphertext_size(f.size, CHUNK_SIZE):
            return False
        try:
            header = chunked.FileHeader.decode(self.blobs.read_range(okey, 0, chunked.HEADER_SIZE))
            chunked.FileCipher(self.key, self.aid, f.path, header).zeroize()  # checks the commitment
        except CustosError:
            return False
        return True

    def _file(self, index: int, f: FileEntry) -> None:
        okey = object_key(self.aid, index)
        if self._already_stored(okey, f):
            self._count(objects_skipped=1, files=1, bytes=f.size)
            self.progress(f.size)
            return
        cipher = self._cipher_for(index, f)
        try:
            if cipher.header.ciphertext_size < MIN_PART_SIZE:
                self._small_file(okey, f, cipher)
            else:
                self._multipart(index, okey, f, cipher)
        finally:
            cipher.zeroize()
        self._count(files=1, bytes=f.size)

    def _open(self, f: FileEntry) -> int:
        path = self.root / f.path
        try:
            return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise InvalidInput(f"cannot open {f.path}: {exc.strerror}") from None

    def _small_file(self, okey: str, f: FileEntry, cipher: chunked.FileCipher) -> None:
        h = hashlib.sha256()
        out = bytearray(cipher.header.ciphertext_size)
        out[: chunked.HEADER_SIZE] = cipher.header.encode()
        fd = self._open(f)
        try:
            plain = bytearray(cipher.header.chunk_size)
            for i in range(cipher.header.chunk_count):
                start, end = chunked.chunk_bounds(cipher.header, i)
                view = memoryview(plain)[: end - start]
                _read_exact(fd, view, f.path)
                h.update(view)
                cipher.encrypt_chunk_into(i, view, memoryview(out)[chunked.chunk_offset(cipher.header, i):])
            _check_eof(fd, f.path)
            zeroize(plain)
        finally:
            os.close(fd)
        if h.hexdigest() != f.sha256:
            raise IntegrityError(f"{f.path} changed since it was hashed; push again")
        self.blobs.put(okey, out)
        self._count(parts_uploaded=1)
        self.progress(f.size)

    def _multipart(self, index: int, okey: str, f: FileEntry, cipher: chunked.FileCipher) -> None:
        header = cipher.header
        saved = self.state.files.get(str(index), {})
        upload_id = saved.get("upload_id") if self.resumed and saved.get("header") == header.encode().hex() else None
        done: dict[int, PartInfo] = {}
        if upload_id:
            try:
                done = {p.number: p for p in self.blobs.list_parts(okey, upload_id)}
            except CustosError:
                upload_id = None
        if not upload_id:
            upload_id = self.blobs.start_upload(okey)
            done = {}
        self.state.files[str(index)] = {"header": header.encode().hex(), "upload_id": upload_id}
        with self._lock:
            self.state.save()

        per_part = _part_chunks(header)
        n_parts = -(-header.chunk_count // per_part)
        h = hashlib.sha256()
        futures: list[Future[PartInfo]] = []
        parts: dict[int, PartInfo] = {}
        plain = bytearray(header.chunk_size)
        fd = self._open(f)
        try:
            for number in range(1, n_parts + 1):
                first = (number - 1) * per_part
                last = min(header.chunk_count, first + per_part)
                start = chunked.chunk_offset(header, first) if number > 1 else 0
                size = chunked.chunk_offset(header, last) - start
                prior = done.get(number)
                if prior is not None and prior.size == size:
                    # Uploaded by an earlier run: read and hash only (the whole file must verify).
                    for i in range(first, last):
                        a, b = chunked.chunk_bounds(header, i)
                        view = memoryview(plain)[: b - a]
                        _read_exact(fd, view, f.path)
                        h.update(view)
                    parts[number] = prior
                    self._count(parts_skipped=1)
                    self.progress(chunked.chunk_bounds(header, last - 1)[1] - chunked.chunk_bounds(header, first)[0])
                    continue
                buf = self.buffers.get(size)
                out = memoryview(buf)
                pos = 0
                if number == 1:
                    out[: chunked.HEADER_SIZE] = header.encode()
                    pos = chunked.HEADER_SIZE
                plain_bytes = 0
                for i in range(first, last):
                    a, b = chunked.chunk_bounds(header, i)
                    view = memoryview(plain)[: b - a]
                    _read_exact(fd, view, f.path)
                    h.update(view)
                    pos += cipher.encrypt_chunk_into(i, view, out[pos:])
                    plain_bytes += b - a
                futures.append(self.uploads.submit(self._upload, okey, upload_id, number, buf, size, plain_bytes))
            _check_eof(fd, f.path)
        finally:
            os.close(fd)
            zeroize(plain)
            for fut in futures:
                with contextlib.suppress(Exception):
                    info = fut.result()
                    parts[info.number] = info
        if h.hexdigest() != f.sha256:
            self.blobs.abort_upload(okey, upload_id)
            raise IntegrityError(f"{f.path} changed since it was hashed; push again")
        if len(parts) != n_parts:
            for fut in futures:
                fut.result()  # re-raise the first upload error
        self.blobs.complete_upload(okey, upload_id, [parts[n] for n in sorted(parts)])

    def _upload(self, okey: str, upload_id: str, number: int, buf: bytearray, size: int, plain: int) -> PartInfo:
        try:
            info = self.blobs.upload_part(okey, upload_id, number, memoryview(buf)[:size])
        finally:
            self.buffers.put(buf)
        self._count(parts_uploaded=1)
        self.progress(plain)
        return info


def _read_exact(fd: int, view: memoryview, name: str) -> None:
    got = 0
    while got < view.nbytes:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise IntegrityError(f"{name} shrank since it was hashed; push again")
        got += n


def _check_eof(fd: int, name: str) -> None:
    if os.read(fd, 1):
        raise IntegrityError(f"{name} grew since it was hashed; push again")


# -- pull ----------------------------------------------------------------------


def _ranges(header: chunked.FileHeader, per: int) -> Iterator[tuple[int, int]]:
    for first in range(0, header.chunk_count, per):
        yield first, min(header.chunk_count, first + per)


def decrypt_object(blobs: BlobStore, key: bytearray, aid: str, f: FileEntry, okey: str, out_fd: int,
                   prefetch: ThreadPoolExecutor, progress: Callable[[int], None]) -> None:
    """Download, authenticate, decrypt and hash one file into ``out_fd``.

    Raises IntegrityError (TamperedCiphertext) on any mismatch; the caller
    discards what was written.
    """
    info = blobs.head(okey)
    if info is None:
        raise IntegrityError(f"ciphertext of {f.path} is missing from the blob store")
    if info.size < chunked.HEADER_SIZE:
        raise chunked.TamperedCiphertext(
            f"ciphertext of {f.path} is {info.size} bytes: truncated, shorter than its header")
    header = chunked.FileHeader.decode(_read_ciphertext(blobs, okey, 0, chunked.HEADER_SIZE, f.path))
    if header.plaintext_len != f.size:
        raise IntegrityError(f"ciphertext of {f.path} is for {header.plaintext_len} bytes, manifest says {f.size}")
    if info.size != header.ciphertext_size:
        raise chunked.TamperedCiphertext(
            f"ciphertext of {f.path} is {info.size} bytes, expected {header.ciphertext_size}")
    cipher = chunked.FileCipher(key, aid, f.path, header)
    per = _part_chunks(header)
    h = hashlib.sha256()
    plain = bytearray(header.chunk_size)
    try:
        def fetch(first: int, last: int) -> bytes:
            a = chunked.chunk_offset(header, first)
            return _read_ciphertext(blobs, okey, a, chunked.chunk_offset(header, last) - a, f.path)

        ranges = list(_ranges(header, per))
        pending: list[tuple[int, int, Future[bytes]]] = []
        it = iter(ranges)
        for first, last in it:
            pending.append((first, last, prefetch.submit(fetch, first, last)))
            if len(pending) >= 3:
                break
        while pending:
            first, last, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt[0], nxt[1], prefetch.submit(fetch, *nxt)))
            data = memoryview(fut.result())
            pos = 0
            for i in range(first, last):
                a, b = chunked.chunk_bounds(header, i)
                clen = b - a + chunked.TAG_SIZE
                n = cipher.decrypt_chunk_into(i, data[pos:pos + clen], plain)
                view = memoryview(plain)[:n]
                h.update(view)
                _write_all(out_fd, view)
                pos += clen
            progress(chunked.chunk_bounds(header, last - 1)[1] - chunked.chunk_bounds(header, first)[0])
    finally:
        cipher.zeroize()
        zeroize(plain)
    if h.hexdigest() != f.sha256:
        raise IntegrityError(f"{f.path}: decrypted bytes do not match the manifest's SHA-256")


def _read_ciphertext(blobs: BlobStore, okey: str, offset: int, size: int, name: str) -> bytes:
    """``size`` stored bytes at ``offset``. Raises TamperedCiphertext when the object cannot hold
    them: a store that refuses a range past the end (InvalidInput) or returns fewer bytes means
    the object is shorter than its header says (truncated or replaced since it was sized)."""
    try:
        data = blobs.read_range(okey, offset, size)
    except InvalidInput as exc:
        raise chunked.TamperedCiphertext(f"ciphertext of {name} does not hold what its header says: {exc}") from None
    if len(data) != size:
        raise chunked.TamperedCiphertext(
            f"ciphertext of {name} is truncated: read {len(data)} of {size} bytes at offset {offset}")
    return data


def _write_all(fd: int, view: memoryview) -> None:
    """Raises InvalidInput when the local disk refuses the bytes (full, failing): never a traceback."""
    try:
        while view.nbytes:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        raise InvalidInput(f"cannot write the pulled plaintext: {exc.strerror}") from None


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        raise InvalidInput(f"cannot write the pulled plaintext: {exc.strerror}") from None


def check_destination(dest: Path) -> Path:
    """``dest`` as an absolute path a pull may create: absent, or an empty directory.

    A symbolic link is refused, dangling or not: plaintext goes where the caller named,
    never where a link (planted or stale) points, and the copy is recorded at that name.
    Links among its parent directories are the caller's own layout and are followed.
    A name that is not UTF-8 is refused too: the copy could not be recorded under it.
    Raises InvalidInput.
    """
    dest = dest.absolute()
    try:
        str(dest).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{str(dest)!r} is not a UTF-8 name: the copy could not be recorded under it") from None
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return dest
    except OSError as exc:
        raise InvalidInput(f"cannot pull into {dest}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInput(f"{dest} is a symbolic link: name the directory itself")
    try:
        empty_dir = stat.S_ISDIR(st.st_mode) and not any(dest.iterdir())
    except OSError as exc:
        raise InvalidInput(f"cannot pull into {dest}: {exc.strerror}") from None
    if not empty_dir:
        raise InvalidInput(f"{dest} already exists")
    return dest


def _staging_beside(dest: Path) -> Path:
    """A fresh private directory beside ``dest``. Raises InvalidInput when it cannot be made."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.custos-pull-", dir=dest.parent))
    except OSError as exc:
        raise InvalidInput(f"cannot pull into {dest}: {exc.strerror or exc}") from None
    os.chmod(staging, 0o700)
    return staging


def _move_into_place(staging: Path, dest: Path) -> None:
    """Rename the verified staging directory to ``dest``. rename(2) never follows a link at
    ``dest``; anything that appeared there since the check (a link, a file, a non-empty
    directory) makes it fail. Raises InvalidInput."""
    try:
        if dest.is_dir() and not dest.is_symlink():
            dest.rmdir()  # empty, checked before the pull
        os.rename(staging, dest)
    except OSError as exc:
        raise InvalidInput(f"cannot move the pulled files to {dest}: {exc.strerror} "
                           "(did something appear there during the pull?)") from None


def pull_into(blobs: BlobStore, *, data_key: bytearray, artifact_id: str, manifest: Manifest,
              objects: dict[str, str], dest: Path, progress: Callable[[int], None] | None = None,
              workers: int = 8) -> TransferStats:
    """All-or-nothing: DEST appears only when every file verified.

    Raises InvalidInput (DEST exists, is a symbolic link, or cannot be written), IntegrityError
    (tampering, mismatch, truncated objects), backend errors.
    """
    progress = progress or (lambda n: None)
    if manifest.artifact_id != artifact_id:
        raise IntegrityError("the manifest does not hash to the artifact id: refusing it")
    dest = check_destination(dest)
    staging = _staging_beside(dest)
    stats = TransferStats()
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="custos-fetch") as prefetch, \
                ThreadPoolExecutor(max_workers=min(PULL_FILES, max(1, len(manifest.files))),
                                   thread_name_prefix="custos-decrypt") as pool:
            def one(f: FileEntry) -> None:
                okey = objects.get(f.path)
                if okey is None:
                    raise IntegrityError(f"no stored object for {f.path}")
                target = staging / f.path
                try:
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
                except OSError as exc:
                    raise InvalidInput(f"cannot write {f.path} under {dest.parent}: {exc.strerror}") from None
                try:
                    decrypt_object(blobs, data_key, artifact_id, f, okey, fd, prefetch, progress)
                    _fsync(fd)
                finally:
                    os.close(fd)

            for fut in [pool.submit(one, f) for f in manifest.files]:
                fut.result()
        _move_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    stats.files = len(manifest.files)
    stats.bytes = manifest.total_size
    stats.seconds = time.monotonic() - t0
    return stats

