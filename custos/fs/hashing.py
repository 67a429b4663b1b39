"""Build a manifest from a directory: walk safely, hash files on every core.

hashlib releases the GIL while it hashes buffers larger than 2 KiB, so a thread
pool with one reusable buffer per thread hashes files in parallel at close to
``hashlib`` speed times the number of cores. Files are opened with O_NOFOLLOW
after the walk has decided what they are, and the bytes hashed must match the
size seen at open, so a file swapped or grown during hashing is an error, not a
silent wrong digest.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from custos.core.manifest import FileEntry, Manifest, ManifestError, validate_relpath
from custos.errors import InvalidInput

READ_BUFFER = 1 << 20  # 1 MiB: large enough to amortise syscalls, small enough for L2


@dataclass(frozen=True, slots=True)
class PlannedFile:
    relpath: str
    abspath: str  # the path to open: the file itself, or the in-tree target of a symlink


def plan_directory(root: str | os.PathLike[str]) -> list[PlannedFile]:
    """List the regular files under ``root`` as safe relative paths.

    Symlinks are followed only when their target resolves inside ``root`` and is
    a regular file; a symlink leaving ``root``, a symlinked directory, a device,
    FIFO or socket is refused. Raises ManifestError, InvalidInput if ``root`` is
    not a readable directory.
    """
    base = Path(root)
    try:
        real_root = base.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise InvalidInput(f"{root}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    if not real_root.is_dir():
        raise InvalidInput(f"{root}: not a directory")
    planned: list[PlannedFile] = []
    stack = [(str(real_root), "")]
    while stack:
        dirpath, relprefix = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InvalidInput(f"cannot read directory {relprefix or '.'}: {exc.strerror}") from None
        for entry in entries:
            rel = f"{relprefix}{entry.name}"
            validate_relpath(rel)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, rel + "/"))
            elif stat.S_ISREG(st.st_mode):
                planned.append(PlannedFile(rel, entry.path))
            elif stat.S_ISLNK(st.st_mode):
                target = Path(entry.path).resolve()
                if not target.is_relative_to(real_root):
                    raise ManifestError(f"symlink leaves the artifact directory: {rel}")
                try:
                    tst = target.stat()
                except OSError:
                    raise ManifestError(f"dangling symlink: {rel}") from None
                if not stat.S_ISREG(tst.st_mode):
                    raise ManifestError(f"symlink to a non-regular file: {rel}")
                planned.append(PlannedFile(rel, str(target)))
            else:
                raise ManifestError(f"special file not allowed: {rel}")
    if not planned:
        raise InvalidInput(f"{root}: no files to register")
    planned.sort(key=lambda p: p.relpath.encode())
    return planned


_local = threading.local()


def _buffer() -> memoryview:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = memoryview(bytearray(READ_BUFFER))
        _local.buf = buf
    return buf


def hash_file(path: str, display: str | None = None) -> tuple[int, str]:
    """Return (size, sha256 hex) of the regular file at ``path``.

    Raises InvalidInput if it cannot be read, is not a regular file, or changes
    size while being hashed.
    """
    name = display or path
    try:
        # O_NONBLOCK: a FIFO swapped in after the walk must not hang a hashing thread.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InvalidInput(f"cannot open {name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"not a regular file: {name}")
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        h = hashlib.sha256()
        buf = _buffer()
        total = 0
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                break
            h.update(buf[:n])
            total += n
        if total != st.st_size:
            raise InvalidInput(f"{name} changed while it was being hashed")
        return total, h.hexdigest()
    except OSError as exc:
        raise InvalidInput(f"cannot read {name}: {exc.strerror}") from None
    finally:
        os.close(fd)


def build_manifest(
    root: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Manifest:
    """Walk ``root`` and hash every file on ``workers`` threads (default: all cores).

    ``progress`` is called with the byte count of each finished file.
    Raises ManifestError / InvalidInput.
    """
    planned = plan_directory(root)
    n = workers or os.cpu_count() or 1

    def one(p: PlannedFile) -> FileEntry:
        size, digest = hash_file(p.abspath, p.relpath)
        if progress is not None:
            progress(size)
        return FileEntry(path=p.relpath, size=size, sha256=digest)

    # Largest files first keeps every core busy until the end.
    order = sorted(planned, key=lambda p: -_size_hint(p.abspath))
    if n == 1 or len(order) == 1:
        entries = [one(p) for p in order]
    else:
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="custos-hash") as pool:
            entries = list(pool.map(one, order))
    return Manifest.from_entries(entries)


def _size_hint(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
