"""The local-directory blob store: the embedded default of ``custos server --dev``.

Same semantics and errors as the S3 store, on one directory::

    root/objects/<seg>/<seg>/<last>~    complete objects (0600 files, 0700 directories)
    root/uploads/<upload id>/key        the key an unfinished upload belongs to
    root/uploads/<upload id>/NNNNN      its parts
    root/tmp/                           files being written; renamed into place when whole

An object's last key segment gets a ``~`` suffix on disk: keys never contain
``~``, so an object ``a`` (file ``a~``) and an object ``a/b`` (directory ``a``) can
both exist, as in S3. Every file starts with a 64-byte header: objects record their
ETag (an MD5 as in S3, ``md5-of-part-md5s-N`` after a multipart upload), parts their
MD5.

Traversal out of ``root`` is impossible by construction: keys are validated, and
every path is walked one segment at a time relative to directory descriptors opened
with ``O_NOFOLLOW``, so a symlink planted inside the store is refused
(``IntegrityError``) instead of followed. Writes go to ``tmp/`` first, are fsynced,
and appear by ``rename`` (complete or not at all); the Content-MD5 of an object
or part is verified before anything is written, as an S3 server does. Uploads are
serialised against abort and complete with ``flock`` on the upload directory,
which also holds across processes. What a crashed writer leaves in ``tmp/`` is
removed when a store is opened a day later.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import errno
import fcntl
import hashlib
import io
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from custos.blobs.base import BlobStore, ObjectInfo, PartInfo, check_completion
from custos.errors import (
    BackendUnavailable,
    CustosError,
    IntegrityError,
    InvalidInput,
    NotFound,
    Unauthorized,
)

__all__ = ["LocalBlobStore"]

HEADER_SIZE = 64
_OBJECT_MAGIC = b"CUSTOSO1"
_PART_MAGIC = b"CUSTOSP1"
_SUFFIX = "~"
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_PART_NAME_RE = re.compile(r"[0-9]{5}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_RETRIES = 5
_COPY_CHUNK = 8 * 1024 * 1024
_STALE_TMP_SECONDS = 24 * 3600


def _md5(data: bytes | memoryview) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


@contextlib.contextmanager
def _os_errors(op: str, key: str) -> Iterator[None]:
    """Map OSError to the Custos error by blame; CustosErrors pass through."""
    try:
        yield
    except CustosError:
        raise
    except OSError as exc:
        where = f"local {op} {key!r}"
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
            raise IntegrityError(f"{where}: unexpected link or file type inside the store") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise Unauthorized(f"{where}: permission denied") from exc
        raise BackendUnavailable(f"{where}: {errno.errorcode.get(exc.errno or 0, exc)}") from exc


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _copy(src: int, src_offset: int, dst: int, count: int) -> None:
    """Append count bytes from src at src_offset to dst (at its file position)."""
    while count > 0:
        try:
            n = os.copy_file_range(src, dst, count, src_offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = 0
        if n == 0:  # unsupported here, or a short source: plain reads and writes
            chunk = os.pread(src, min(count, _COPY_CHUNK), src_offset)
            if not chunk:
                raise IntegrityError("part file shorter than its size")
            _write_all(dst, chunk)
            n = len(chunk)
        count -= n
        src_offset += n


def _object_header(etag: str) -> bytes:
    raw = etag.encode("ascii")
    return (_OBJECT_MAGIC + bytes([len(raw)]) + raw).ljust(HEADER_SIZE, b"\0")


def _parse_object_header(header: bytes, key: str) -> str:
    if len(header) != HEADER_SIZE or header[:8] != _OBJECT_MAGIC:
        raise IntegrityError(f"local object {key!r}: bad file header")
    n = header[8]
    if 9 + n > HEADER_SIZE:
        raise IntegrityError(f"local object {key!r}: bad file header")
    return header[9 : 9 + n].decode("ascii", errors="replace")


class LocalBlobStore(BlobStore):
    """Objects as files under ``root`` (created 0700 if missing).

    Raises:
        InvalidInput: root exists but is not a directory (or is a symlink).
        BackendUnavailable / Unauthorized: root cannot be created or opened.
    """

    kind = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        with _os_errors("open", str(self.root)):
            if not os.path.lexists(self.root):
                self.root.mkdir(mode=0o700, parents=True)
            if not stat.S_ISDIR(os.lstat(self.root).st_mode):
                raise InvalidInput(f"blob store root {str(self.root)!r} is not a directory")
            self._root_fd = os.open(self.root, _DIR_FLAGS)
            fds = []
            try:
                for name in ("objects", "uploads", "tmp"):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=self._root_fd)
                    fds.append(os.open(name, _DIR_FLAGS, dir_fd=self._root_fd))
            except BaseException:
                for fd in [self._root_fd, *fds]:
                    os.close(fd)
                raise
            self._objects_fd, self._uploads_fd, self._tmp_fd = fds
        self._closed = False
        self._sweep_tmp()

    def __repr__(self) -> str:
        return f"LocalBlobStore(root={str(self.root)!r})"

    def _sweep_tmp(self) -> None:
        """Remove what a crashed writer left in tmp/ (only old entries: others may be live)."""
        cutoff = time.time() - _STALE_TMP_SECONDS
        with contextlib.suppress(OSError), os.scandir(self._tmp_fd) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.name, dir_fd=self._tmp_fd, ignore_errors=True)
                    else:
                        os.unlink(entry.name, dir_fd=self._tmp_fd)

    def close(self) -> None:
        """Close the directory descriptors."""
        if not self._closed:
            self._closed = True
            for fd in (self._objects_fd, self._uploads_fd, self._tmp_fd, self._root_fd):
                os.close(fd)

    # -- paths ---------------------------------------------------------------------------

    def _walk(self, segments: list[str], *, create: bool) -> list[int]:
        """Open each directory of segments below objects/ (never following a link).

        Returns the opened descriptors, deepest last (caller closes them).
        Raises FileNotFoundError when a directory is missing and create is False.
        """
        fds: list[int] = []
        cur = self._objects_fd
        try:
            for seg in segments:
                for _ in range(_RENAME_RETRIES):
                    try:
                        nxt = os.open(seg, _DIR_FLAGS, dir_fd=cur)
                        break
                    except FileNotFoundError:
                        if not create:
                            raise
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(seg, 0o700, dir_fd=cur)
                else:
                    raise BackendUnavailable("directory keeps disappearing while writing")
                fds.append(nxt)
                cur = nxt
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def _open_object(self, key: str) -> int | None:
        """An O_RDONLY descriptor on the object file, or None if there is none."""
        *dirs, last = key.split("/")
        try:
            fds = self._walk(dirs, create=False)
        except FileNotFoundError:
            return None
        try:
            parent = fds[-1] if fds else self._objects_fd
            return os.open(last + _SUFFIX, _READ_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return None
        finally:
            for fd in fds:
                os.close(fd)

    def _info(self, fd: int, key: str) -> ObjectInfo:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < HEADER_SIZE:
            raise IntegrityError(f"local object {key!r}: not a store file")
        etag = _parse_object_header(_pread_exact(fd, HEADER_SIZE, 0), key)
        return ObjectInfo(key=key, size=st.st_size - HEADER_SIZE, etag=etag)

    def _new_tmp(self) -> tuple[str, int]:
        name = secrets.token_hex(16) + ".tmp"
        return name, os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=self._tmp_fd)

    def _discard_tmp(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._tmp_fd)

    @contextlib.contextmanager
    def _new_object(self, key: str, etag: str) -> Iterator[int]:
        """A new object under ``key``: yields its tmp file's descriptor after the header; the
        file is fsynced and published when the block ends, and discarded if it raises."""
        name, fd = self._new_tmp()
        try:
            try:
                _write_all(fd, _object_header(etag))
                yield fd
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(name, key)
        except BaseException:
            self._discard_tmp(name)
            raise

    def _publish(self, tmp_name: str, key: str) -> None:
        """Rename a finished tmp file to the object path, creating directories."""
        *dirs, last = key.split("/")
        for _ in range(_RENAME_RETRIES):
            fds = self._walk(dirs, create=True)
            try:
                parent = fds[-1] if fds else self._objects_fd
                try:
                    os.rename(tmp_name, last + _SUFFIX, src_dir_fd=self._tmp_fd, dst_dir_fd=parent)
                except FileNotFoundError:
                    # Either a concurrent delete pruned the (then empty) directory,
                    # so walk again, or the tmp file itself is gone: a real error.
                    os.stat(tmp_name, dir_fd=self._tmp_fd, follow_symlinks=False)
                    continue
                os.fsync(parent)
                return
            finally:
                for fd in fds:
                    os.close(fd)
        raise BackendUnavailable(f"local put {key!r}: directory keeps disappearing")

    # -- writes --------------------------------------------------------------------------

    def _put(self, key: str, data: memoryview, md5_b64: str) -> ObjectInfo:
        # Verify what we were handed against the checksum before any byte is written,
        # as an S3 server does with Content-MD5.
        md5 = _md5(data)
        if base64.b64encode(md5).decode("ascii") != md5_b64:
            raise IntegrityError(f"local put {key!r}: Content-MD5 mismatch, nothing stored")
        etag = md5.hex()
        with _os_errors("put", key), self._new_object(key, etag) as fd:
            _write_all(fd, data)
        return ObjectInfo(key=key, size=data.nbytes, etag=etag)

    def _start_upload(self, key: str) -> str:
        upload_id = secrets.token_hex(16)
        staging = upload_id + ".new"
        with _os_errors("start_upload", key):
            os.mkdir(staging, 0o700, dir_fd=self._tmp_fd)
            try:
                dfd = os.open(staging, _DIR_FLAGS, dir_fd=self._tmp_fd)
                try:
                    kfd = os.open("key", _NEW_FILE_FLAGS, 0o600, dir_fd=dfd)
                    try:
                        _write_all(kfd, key.encode("ascii"))
                        os.fsync(kfd)
                    finally:
                        os.close(kfd)
                finally:
                    os.close(dfd)
                # The upload appears with its key file, or not at all.
                os.rename(staging, upload_id, src_dir_fd=self._tmp_fd, dst_dir_fd=self._uploads_fd)
                os.fsync(self._uploads_fd)
            except BaseException:
                shutil.rmtree(staging, dir_fd=self._tmp_fd, ignore_errors=True)
                raise
        return upload_id

    @contextlib.contextmanager
    def _upload(self, key: str, upload_id: str, *, exclusive: bool) -> Iterator[int]:
        """The locked upload directory of (key, upload_id).

        Raises:
            NotFound: no such upload for this key (unknown, aborted, completed).
        """
        missing = NotFound(f"local upload of {key!r}: no such upload")
        if not _UPLOAD_ID_RE.fullmatch(upload_id):
            raise missing
        try:
            dfd = os.open(upload_id, _DIR_FLAGS, dir_fd=self._uploads_fd)
        except FileNotFoundError:
            raise missing from None
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            # Abort and complete move the directory away under the exclusive lock;
            # holding the lock, check it is still the live upload.
            try:
                live = os.stat(upload_id, dir_fd=self._uploads_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise missing from None
            here = os.fstat(dfd)
            if (live.st_dev, live.st_ino) != (here.st_dev, here.st_ino):
                raise missing
            try:
                kfd = os.open("key", _READ_FLAGS, dir_fd=dfd)
            except FileNotFoundError:
                raise missing from None
            try:
                stored_key = _pread_exact(kfd, 4096, 0)
            finally:
                os.close(kfd)
            if stored_key != key.encode("ascii"):
                raise missing
            yield dfd
        finally:
            os.close(dfd)  # also releases the lock

    def _upload_part(self, key: str, upload_id: str, number: int, data: memoryview, md5_b64: str) -> PartInfo:
        md5 = _md5(data)
        if base64.b64encode(md5).decode("ascii") != md5_b64:
            raise IntegrityError(f"local upload_part {number} of {key!r}: Content-MD5 mismatch")
        header = (_PART_MAGIC + md5).ljust(HEADER_SIZE, b"\0")
        with _os_errors(f"upload_part {number}", key):
            # Check the upload exists before writing a possibly large tmp file.
            with self._upload(key, upload_id, exclusive=False):
                pass
            name, fd = self._new_tmp()
            try:
                try:
                    _write_all(fd, header)
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                with self._upload(key, upload_id, exclusive=False) as dfd:
                    os.rename(name, f"{number:05d}", src_dir_fd=self._tmp_fd, dst_dir_fd=dfd)
                    os.fsync(dfd)
            except BaseException:
                self._discard_tmp(name)
                raise
        return PartInfo(number=number, size=data.nbytes, etag=md5.hex())

    def _read_parts(self, dfd: int, key: str) -> builtins.list[PartInfo]:
        parts: list[PartInfo] = []
        with os.scandir(dfd) as entries:
            for entry in entries:
                if not _PART_NAME_RE.fullmatch(entry.name):
                    continue
                pfd = os.open(entry.name, _READ_FLAGS, dir_fd=dfd)
                try:
                    st = os.fstat(pfd)
                    header = _pread_exact(pfd, HEADER_SIZE, 0)
                finally:
                    os.close(pfd)
                if not stat.S_ISREG(st.st_mode) or header[:8] != _PART_MAGIC:
                    raise IntegrityError(f"local upload of {key!r}: bad part file {entry.name}")
                parts.append(
                    PartInfo(
                        number=int(entry.name),
                        size=st.st_size - HEADER_SIZE,
                        etag=header[8:24].hex(),
                    )
                )
        return parts

    def _list_parts(self, key: str, upload_id: str) -> builtins.list[PartInfo]:
        with _os_errors("list_parts", key), self._upload(key, upload_id, exclusive=False) as dfd:
            return self._read_parts(dfd, key)

    def _list_uploads(self, key: str) -> builtins.list[str]:
        found: list[tuple[int, str]] = []
        with _os_errors("list_uploads", key), os.scandir(self._uploads_fd) as entries:
            for entry in entries:
                if not _UPLOAD_ID_RE.fullmatch(entry.name):
                    continue
                try:
                    dfd = os.open(entry.name, _DIR_FLAGS, dir_fd=self._uploads_fd)
                except FileNotFoundError:
                    continue  # completed or aborted meanwhile
                try:
                    kfd = os.open("key", _READ_FLAGS, dir_fd=dfd)
                    try:
                        stored = _pread_exact(kfd, 4096, 0)
                        started = os.fstat(kfd).st_mtime_ns
                    finally:
                        os.close(kfd)
                except FileNotFoundError:
                    continue
                finally:
                    os.close(dfd)
                if stored == key.encode("ascii"):
                    found.append((started, entry.name))
        return [upload_id for _, upload_id in sorted(found)]

    def _retire(self, upload_id: str) -> None:
        """Move an upload directory out of uploads/ (caller holds its lock), then remove it."""
        dead = secrets.token_hex(16) + ".dead"
        os.rename(upload_id, dead, src_dir_fd=self._uploads_fd, dst_dir_fd=self._tmp_fd)
        os.fsync(self._uploads_fd)
        shutil.rmtree(dead, dir_fd=self._tmp_fd, ignore_errors=True)

    def _complete_upload(self, key: str, upload_id: str, parts: builtins.list[PartInfo]) -> ObjectInfo:
        with (
            _os_errors("complete_upload", key),
            self._upload(key, upload_id, exclusive=True) as dfd,
        ):
            # Re-check under the lock: a part may have been replaced since the caller's check.
            ordered = check_completion(parts, self._read_parts(dfd, key), self.min_part_size)
            md5s = b"".join(bytes.fromhex(p.etag) for p in ordered)
            etag = f"{_md5(md5s).hex()}-{len(ordered)}"
            with self._new_object(key, etag) as fd:
                for part in ordered:
                    pfd = os.open(f"{part.number:05d}", _READ_FLAGS, dir_fd=dfd)
                    try:
                        if os.fstat(pfd).st_size - HEADER_SIZE != part.size:
                            raise IntegrityError(f"part {part.number} changed size")
                        _copy(pfd, HEADER_SIZE, fd, part.size)
                    finally:
                        os.close(pfd)
                total = sum(p.size for p in ordered)
                if os.fstat(fd).st_size != HEADER_SIZE + total:
                    raise IntegrityError(f"local complete_upload {key!r}: assembled wrong size")
            self._retire(upload_id)
        return ObjectInfo(key=key, size=total, etag=etag)

    def _abort_upload(self, key: str, upload_id: str) -> None:
        with _os_errors("abort_upload", key):
            try:
                with self._upload(key, upload_id, exclusive=True):
                    self._retire(upload_id)
            except NotFound:
                pass  # already gone: aborting is idempotent

    # -- reads ---------------------------------------------------------------------------

    def _head(self, key: str) -> ObjectInfo | None:
        with _os_errors("head", key):
            fd = self._open_object(key)
            if fd is None:
                return None
            try:
                return self._info(fd, key)
            finally:
                os.close(fd)

    def _read_range(self, key: str, start: int, length: int) -> bytes:
        with _os_errors("read", key):
            fd = self._open_object(key)
            if fd is None:
                raise NotFound(f"local read {key!r}: no such object")
            try:
                info = self._info(fd, key)
                if start + length > info.size:
                    raise InvalidInput(f"range {start}+{length} runs past the end of {key!r} (size {info.size})")
                return _pread_exact(fd, length, HEADER_SIZE + start)
            finally:
                os.close(fd)

    def _open_stream(self, key: str, part_size: int) -> tuple[int, Iterator[bytes]]:
        with _os_errors("read", key):
            fd = self._open_object(key)
            if fd is None:
                raise NotFound(f"local read {key!r}: no such object")
            # A file object closes the descriptor even if the iterator is never started.
            f = io.FileIO(fd, "rb", closefd=True)
            try:
                info = self._info(fd, key)
            except BaseException:
                f.close()
                raise
        return info.size, self._stream(f, key, info.size, part_size)

    def _stream(self, f: io.FileIO, key: str, size: int, part_size: int) -> Iterator[bytes]:
        # Reading through the descriptor opened at the call: a replaced or deleted
        # object keeps streaming the version that was current then.
        try:
            with _os_errors("read", key):
                for offset in range(0, size, part_size):
                    yield _pread_exact(f.fileno(), min(part_size, size - offset), HEADER_SIZE + offset)
        finally:
            f.close()

    # -- removal, listing, health -------------------------------------------------------

    def _delete(self, key: str) -> None:
        *dirs, last = key.split("/")
        with _os_errors("delete", key):
            try:
                fds = self._walk(dirs, create=False)
            except FileNotFoundError:
                return
            try:
                parent = fds[-1] if fds else self._objects_fd
                try:
                    os.unlink(last + _SUFFIX, dir_fd=parent)
                except FileNotFoundError:
                    return
                os.fsync(parent)
                # Prune directories left empty, deepest first; stop at the first
                # non-empty one. A concurrent put retries if we remove its directory.
                for depth in range(len(dirs) - 1, -1, -1):
                    above = fds[depth - 1] if depth > 0 else self._objects_fd
                    try:
                        os.rmdir(dirs[depth], dir_fd=above)
                    except OSError:
                        break
            finally:
                for fd in fds:
                    os.close(fd)

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        if "/" in prefix:
            base, _, name_prefix = prefix.rpartition("/")
            dirs = base.split("/")
            base += "/"
        else:
            base, name_prefix, dirs = "", prefix, []
        out: list[ObjectInfo] = []
        with _os_errors("list", prefix):
            try:
                fds = self._walk(dirs, create=False)
            except FileNotFoundError:
                return []
            try:
                self._scan(fds[-1] if fds else self._objects_fd, base, name_prefix, out)
            finally:
                for fd in fds:
                    os.close(fd)
        return out

    def _scan(self, dfd: int, base: str, name_prefix: str, out: builtins.list[ObjectInfo]) -> None:
        with os.scandir(dfd) as entries:
            for entry in entries:
                if not entry.name.startswith(name_prefix):
                    continue
                # Entries a concurrent delete removes after scandir saw them are skipped.
                if entry.is_dir(follow_symlinks=False):
                    try:
                        sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
                    except FileNotFoundError:
                        continue
                    try:
                        self._scan(sub, f"{base}{entry.name}/", "", out)
                    finally:
                        os.close(sub)
                elif entry.is_file(follow_symlinks=False) and entry.name.endswith(_SUFFIX):
                    try:
                        fd = os.open(entry.name, _READ_FLAGS, dir_fd=dfd)
                    except FileNotFoundError:
                        continue
                    try:
                        out.append(self._info(fd, base + entry.name[: -len(_SUFFIX)]))
                    finally:
                        os.close(fd)

    def _check(self) -> None:
        with _os_errors("check", str(self.root)):
            name, fd = self._new_tmp()
            os.close(fd)
            os.unlink(name, dir_fd=self._tmp_fd)
