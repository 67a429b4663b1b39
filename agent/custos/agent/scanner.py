"""Inventory of weight-like files on this host, by content hash.

A :class:`Scanner` walks its roots with ``os.scandir`` (symlinks are not followed
unless asked, and never into a loop), picks the files that look like weights (by
suffix, or by size), and hashes them on a bounded thread pool at idle I/O
priority with :func:`custos.fs.hashing.hash_file`. A persistent cache keyed by
``(device, inode, size, mtime_ns, ctime_ns)`` means an unchanged file is never
hashed twice; ``ctime`` is part of the key because no unprivileged process can
set it, so content cannot be swapped under an unchanged key.

One bad file never stops a scan: unreadable directories, symlink loops, files
that vanish or change while being hashed become :class:`ScanProblem` entries and
the walk goes on.

Between full scans a :class:`Watcher` reports changed paths (inotify through
ctypes on Linux, polling elsewhere or when inotify runs out of watches), and
:meth:`Scanner.rescan_paths` updates only those.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fnmatch
import logging
import os
import re
import select
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

from custos.core.matching import Form
from custos.errors import CustosError, FailedPrecondition, InvalidInput
from custos.fs.hashing import hash_file

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES: tuple[str, ...] = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".onnx",
    ".h5",
    ".msgpack",
    ".npz",
)
DEFAULT_MIN_SIZE = 256 << 20
# Pseudo file systems hold no weights and reading some of their files has side effects.
DEFAULT_EXCLUDE: tuple[str, ...] = ("/proc", "/sys")
# The first bytes of every file in the Custos chunked ciphertext format
# (custos.core.chunked.MAGIC; a test keeps the two equal). Not imported, so the
# scanner does not depend on the cipher module.
CUSTOS_MAGIC = b"\x89CUSTOS\n"

ProblemKind = Literal["missing", "unreadable", "loop", "vanished", "changed", "error", "cache"]
Hasher = Callable[[str], tuple[int, str]]
CacheKey = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanConfig:
    """What to scan and what counts as weight-like.

    ``exclude`` holds ``fnmatch`` patterns tested against both the full path and
    the base name of every entry (``"/data/scratch"``, ``"*.tmp"``, ``".git"``);
    an excluded directory is not entered. A file is weight-like when its name
    ends with one of ``patterns`` (case-insensitive) or, if ``min_size`` > 0,
    when it is at least ``min_size`` bytes. Raises InvalidInput on bad values.
    """

    roots: Sequence[Path | str]
    exclude: Sequence[str] = DEFAULT_EXCLUDE
    patterns: tuple[str, ...] = WEIGHT_SUFFIXES
    min_size: int = DEFAULT_MIN_SIZE
    workers: int = field(default_factory=_default_workers)
    follow_symlinks: bool = False
    magic: bytes = CUSTOS_MAGIC
    low_priority: bool = True
    _exclude_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.roots, str | Path) or not self.roots:
            raise InvalidInput("scan config: roots must be a non-empty list of directories")
        roots = tuple(Path(os.path.abspath(os.fspath(r))) for r in self.roots)
        object.__setattr__(self, "roots", roots)
        if isinstance(self.exclude, str):
            raise InvalidInput("scan config: exclude must be a list of patterns, not one string")
        if not all(isinstance(p, str) and p for p in self.exclude):
            raise InvalidInput("scan config: exclude patterns must be non-empty strings")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.exclude:
            # One compiled alternation: the walk tests every entry against it twice.
            joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in self.exclude)
            object.__setattr__(self, "_exclude_re", re.compile(joined))
        if isinstance(self.patterns, str):
            raise InvalidInput("scan config: patterns must be a tuple of suffixes, not one string")
        pats = []
        for p in self.patterns:
            if not isinstance(p, str) or not p.strip("."):
                raise InvalidInput(f"scan config: bad suffix pattern {p!r}")
            pats.append(p.lower() if p.startswith(".") else "." + p.lower())
        object.__setattr__(self, "patterns", tuple(pats))
        if not isinstance(self.min_size, int) or isinstance(self.min_size, bool) or self.min_size < 0:
            raise InvalidInput("scan config: min_size must be an int >= 0 (0 disables the size rule)")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise InvalidInput("scan config: workers must be an int >= 1")
        if not isinstance(self.magic, bytes) or not 1 <= len(self.magic) <= 64:
            raise InvalidInput("scan config: magic must be 1 to 64 bytes")

    @property
    def root_paths(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.roots)

    def is_excluded(self, path: str, name: str | None = None) -> bool:
        rx = self._exclude_re
        if rx is None:
            return False
        base = name if name is not None else os.path.basename(path)
        return rx.match(path) is not None or rx.match(base) is not None

    def is_weight_like(self, name: str, size: int) -> bool:
        if name.lower().endswith(self.patterns):
            return True
        return self.min_size > 0 and size >= self.min_size


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One weight-like file on this host and the SHA-256 of its bytes."""

    path: str
    size: int
    sha256: str
    device: int
    inode: int
    mtime_ns: int
    ctime_ns: int
    form: Form = "plaintext"

    @property
    def key(self) -> CacheKey:
        return (self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns)


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """Something the scan could not inventory; the scan went on without it."""

    path: str
    kind: ProblemKind
    message: str


@dataclass(frozen=True, slots=True)
class ScanStats:
    files_seen: int = 0  # regular files looked at
    candidates: int = 0  # of those, weight-like
    cache_hits: int = 0
    hashed: int = 0  # files handed to the hasher
    bytes_hashed: int = 0
    symlinks_skipped: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The host's inventory after a scan (every known record, sorted by path)."""

    records: tuple[FileRecord, ...]
    problems: tuple[ScanProblem, ...]
    stats: ScanStats

    def by_path(self) -> dict[str, FileRecord]:
        return {r.path: r for r in self.records}


# --- priority -----------------------------------------------------------------------------------

_priority_note_lock = threading.Lock()
_priority_noted = False


def lower_thread_priority() -> str | None:
    """Put the calling thread at idle I/O priority and nice 10; best effort.

    Linux keeps I/O and CPU priority per thread, so each hashing thread calls
    this for itself. Returns None on success or why it could not (never raises).
    """
    reasons = []
    tid = threading.get_native_id()
    ioclass = getattr(psutil, "IOPRIO_CLASS_IDLE", None)
    if ioclass is not None:
        try:
            psutil.Process(tid).ionice(ioclass)
        except (psutil.Error, OSError, ValueError) as exc:
            reasons.append(f"ionice idle: {exc}")
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current < 10:
            os.setpriority(os.PRIO_PROCESS, tid, 10)
    except (AttributeError, OSError) as exc:
        reasons.append(f"nice: {exc}")
    return "; ".join(reasons) or None


def _lower_priority_once_noted() -> None:
    global _priority_noted
    reason = lower_thread_priority()
    if reason:
        with _priority_note_lock:
            if not _priority_noted:
                _priority_noted = True
                log.info("scanner runs at normal priority: %s", reason)


# --- cache --------------------------------------------------------------------------------------

_I64 = 1 << 63


def _to_i64(v: int) -> int:
    # SQLite integers are signed 64-bit; some file systems hand out inodes >= 2^63.
    return v - (1 << 64) if v >= _I64 else v


def _from_i64(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


@dataclass(frozen=True, slots=True)
class _Cached:
    sha256: str
    form: Form
    path: str


class HashCache:
    """SQLite file mapping (device, inode, size, mtime_ns, ctime_ns) -> sha256, form, last path.

    Created 0600 and refused if another user owns it: whoever can write the cache
    can make a file look like something else. A corrupt or foreign-version cache
    is discarded and rebuilt (it is only a cache). Raises FailedPrecondition.
    """

    SCHEMA_VERSION = 1

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn = self._open()

    def _open(self, *, retry: bool = True) -> sqlite3.Connection:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise FailedPrecondition(f"cannot open scan cache {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FailedPrecondition(f"scan cache {self.path} is not a regular file")
            if st.st_uid != os.geteuid():
                raise FailedPrecondition(f"scan cache {self.path} is owned by uid {st.st_uid}, not by this agent")
            if st.st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._init_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if not retry:
                raise FailedPrecondition(f"cannot create scan cache {self.path}: {exc}") from None
            log.warning("scan cache %s unreadable (%s); starting a new one", self.path, exc)
            self._reset()
            return self._open(retry=False)
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, self.SCHEMA_VERSION):
            conn.execute("DROP TABLE IF EXISTS hashes")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hashes (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, sha256 TEXT NOT NULL, form TEXT NOT NULL, path TEXT NOT NULL,"
            " PRIMARY KEY (dev, ino, size, mtime_ns, ctime_ns)) WITHOUT ROWID"
        )
        conn.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")

    def load(self) -> dict[CacheKey, _Cached]:
        """Every entry; a cache whose pages are damaged is emptied and rebuilt."""
        out: dict[CacheKey, _Cached] = {}
        try:
            rows = self._conn.execute(
                "SELECT dev, ino, size, mtime_ns, ctime_ns, sha256, form, path FROM hashes"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            log.warning("scan cache %s damaged (%s); starting a new one", self.path, exc)
            self._conn.close()
            self._reset()
            self._conn = self._open(retry=False)
            return out
        for dev, ino, size, mtime, ctime, sha, form, path in rows:
            if form not in ("plaintext", "ciphertext") or not _is_hex64(sha):
                continue
            out[(_from_i64(dev), _from_i64(ino), size, mtime, ctime)] = _Cached(sha, form, path)
        return out

    def _reset(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise FailedPrecondition(f"cannot replace damaged scan cache {self.path}: {exc.strerror}") from None

    def update(self, put: dict[CacheKey, _Cached], delete: Iterable[CacheKey]) -> None:
        """Apply both changes in one transaction (all or nothing). Raises sqlite3.Error."""
        dels = [(_to_i64(k[0]), _to_i64(k[1]), k[2], k[3], k[4]) for k in delete]
        puts = [(_to_i64(k[0]), _to_i64(k[1]), k[2], k[3], k[4], v.sha256, v.form, v.path) for k, v in put.items()]
        if not dels and not puts:
            return
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "DELETE FROM hashes WHERE dev=? AND ino=? AND size=? AND mtime_ns=? AND ctime_ns=?", dels
            )
            self._conn.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", puts)

    def close(self) -> None:
        self._conn.close()


# --- walking ------------------------------------------------------------------------------------


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _key(st: os.stat_result) -> CacheKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class _Job:
    path: str  # where the file appears
    open_path: str  # what to open: the path itself, or a followed symlink's target
    st: os.stat_result


@dataclass(slots=True)
class _Walk:
    jobs: list[_Job] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    failed_dirs: list[str] = field(default_factory=list)
    visited: set[tuple[int, int]] = field(default_factory=set)
    files_seen: int = 0
    symlinks_skipped: int = 0


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _under_any(path: str, prefixes: set[str]) -> bool:
    """Is ``path`` or one of its parents in ``prefixes``? O(depth), whatever the set's size."""
    if not prefixes:
        return False
    while True:
        if path in prefixes:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


# --- the scanner --------------------------------------------------------------------------------


class Scanner:
    """Inventories weight-like files under ``config.roots``, caching hashes in ``cache_path``.

    ``hasher`` (default :func:`custos.fs.hashing.hash_file`) takes a path and returns
    (size, sha256 hex); tests inject a counting one. Methods are serialised by a
    lock, so one Scanner may be shared between threads. Raises FailedPrecondition
    if the cache cannot be opened safely.
    """

    def __init__(
        self,
        config: ScanConfig,
        cache_path: str | os.PathLike[str],
        *,
        hasher: Hasher = hash_file,
    ) -> None:
        self.config = config
        self._hasher = hasher
        self._cache_db = HashCache(cache_path)
        self._cache = self._cache_db.load()
        self._records: dict[str, FileRecord] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._cache_db.close()

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def records(self) -> tuple[FileRecord, ...]:
        """The inventory as of the last scan or rescan, sorted by path."""
        with self._lock:
            return self._sorted_records()

    def _sorted_records(self) -> tuple[FileRecord, ...]:
        return tuple(sorted(self._records.values(), key=lambda r: r.path))

    # - full scan -

    def scan(self) -> ScanResult:
        """Walk every root, hash what changed, prune cache entries of files gone.

        Never raises for a bad file or directory: those become ScanProblems.
        """
        with self._lock:
            t0 = time.perf_counter()
            walk = _Walk()
            for root in self.config.root_paths:
                self._walk_root(root, walk)
            records, problems, stats = self._process(walk)
            # A directory we could not read this time keeps its cache entries: a
            # transient permission or mount problem must not cost a full rehash.
            seen = {r.key for r in records}
            stale = [
                k
                for k, v in self._cache.items()
                if k not in seen and not any(_under(v.path, d) for d in walk.failed_dirs)
            ]
            self._records = {r.path: r for r in records}
            problems += self._commit(records, stale)
            return self._result(problems, stats, t0)

    # - incremental -

    def rescan_paths(self, paths: Iterable[str | os.PathLike[str]]) -> ScanResult:
        """Update the inventory for ``paths`` only (files or directories, present or gone).

        A directory is walked again and replaces every record under it; a path that
        no longer exists drops its records. Paths outside the roots are ignored.
        Returns the whole updated inventory; problems are those of this pass.
        """
        with self._lock:
            t0 = time.perf_counter()
            walk = _Walk()
            drop: list[str] = []  # path prefixes whose old records are replaced
            for raw in paths:
                p = os.path.abspath(os.fspath(raw))
                root = self._root_of(p)
                if root is None:
                    continue
                drop.append(p)
                if self._excluded_under(root, p):
                    continue
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    walk.problems.append(ScanProblem(p, "unreadable", f"cannot stat: {exc.strerror}"))
                    drop.pop()  # keep what we knew
                    continue
                if stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key not in walk.visited:  # named twice, or inside a directory already walked
                        walk.visited.add(key)
                        self._walk_dir(p, (key,), walk)
                elif stat.S_ISREG(st.st_mode):
                    walk.files_seen += 1
                    if self.config.is_weight_like(os.path.basename(p), st.st_size):
                        walk.jobs.append(_Job(p, p, st))
                elif stat.S_ISLNK(st.st_mode) and self.config.follow_symlinks:
                    self._follow_symlink(p, os.path.basename(p), (), walk)
            records, problems, stats = self._process(walk)
            drop_set, failed = set(drop), set(walk.failed_dirs)
            removed = [
                r for path, r in self._records.items() if _under_any(path, drop_set) and not _under_any(path, failed)
            ]
            for r in removed:
                del self._records[r.path]
            for r in records:
                self._records[r.path] = r
            live = {r.key for r in self._records.values()}
            stale = {r.key for r in removed if r.key not in live}
            problems += self._commit(records, stale)
            return self._result(problems, stats, t0)

    # - internals -

    def _result(self, problems: list[ScanProblem], stats: ScanStats, t0: float) -> ScanResult:
        stats = dataclasses.replace(stats, elapsed_s=time.perf_counter() - t0)
        return ScanResult(records=self._sorted_records(), problems=tuple(problems), stats=stats)

    def _root_of(self, path: str) -> str | None:
        for root in self.config.root_paths:
            if _under(path, root):
                return root
        return None

    def _excluded_under(self, root: str, path: str) -> bool:
        """Would the walk from ``root`` skip ``path``? (excluded, or behind a symlink it does not follow)

        The walk checks each entry as it descends; a direct path must check every
        component between its root and itself the same way.
        """
        p = path
        while p != root and len(p) > len(root):
            if self.config.is_excluded(p):
                return True
            parent = os.path.dirname(p)
            if not self.config.follow_symlinks and parent != root and os.path.islink(parent):
                return True
            p = parent
        return False

    def _walk_root(self, root: str, walk: _Walk) -> None:
        try:
            st = os.stat(root)  # a root named by the operator may itself be a symlink
        except FileNotFoundError:
            walk.problems.append(ScanProblem(root, "missing", "scan root does not exist"))
            walk.failed_dirs.append(root)
            return
        except OSError as exc:
            walk.problems.append(ScanProblem(root, "unreadable", f"cannot stat scan root: {exc.strerror}"))
            walk.failed_dirs.append(root)
            return
        if not stat.S_ISDIR(st.st_mode):
            walk.problems.append(ScanProblem(root, "unreadable", "scan root is not a directory"))
            return
        key = (st.st_dev, st.st_ino)
        if key in walk.visited:
            return  # overlapping roots: already walked
        walk.visited.add(key)
        self._walk_dir(root, (key,), walk)

    def _walk_dir(self, top: str, top_ancestors: tuple[tuple[int, int], ...], walk: _Walk) -> None:
        cfg = self.config
        stack: list[tuple[str, tuple[tuple[int, int], ...]]] = [(top, top_ancestors)]
        while stack:
            dirpath, ancestors = stack.pop()
            try:
                with os.scandir(dirpath) as it:
                    entries = list(it)
            except OSError as exc:
                walk.problems.append(ScanProblem(dirpath, "unreadable", f"cannot read directory: {exc.strerror}"))
                walk.failed_dirs.append(dirpath)
                continue
            for entry in entries:
                path = entry.path
                if cfg.is_excluded(path, entry.name):
                    continue
                try:
                    if entry.is_symlink():
                        if cfg.follow_symlinks:
                            sub = self._follow_symlink(path, entry.name, ancestors, walk)
                            if sub is not None:
                                stack.append(sub)
                        else:
                            walk.symlinks_skipped += 1
                    elif entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        key = (st.st_dev, st.st_ino)
                        if key in ancestors:
                            walk.problems.append(
                                ScanProblem(
                                    path, "loop", "directory loop (a bind mount of one of its parents); not entered"
                                )
                            )
                        elif key not in walk.visited:
                            walk.visited.add(key)
                            stack.append((path, (*ancestors, key)))
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        walk.files_seen += 1
                        if cfg.is_weight_like(entry.name, st.st_size):
                            walk.jobs.append(_Job(path, path, st))
                    # devices, FIFOs and sockets hold no weights and may block a reader
                except FileNotFoundError:
                    continue  # gone between readdir and stat: nothing to inventory
                except OSError as exc:
                    walk.problems.append(ScanProblem(path, "unreadable", f"cannot stat: {exc.strerror}"))

    def _follow_symlink(
        self, path: str, name: str, ancestors: tuple[tuple[int, int], ...], walk: _Walk
    ) -> tuple[str, tuple[tuple[int, int], ...]] | None:
        """Handle a symlink in follow mode; return a directory to descend into, if any."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None  # dangling: points at nothing to inventory
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                walk.problems.append(ScanProblem(path, "loop", "symlink loop; not followed"))
            else:
                walk.problems.append(ScanProblem(path, "unreadable", f"cannot follow symlink: {exc.strerror}"))
            return None
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                walk.problems.append(
                    ScanProblem(path, "loop", "symlink loop: points to one of its own parent directories")
                )
                return None
            if key in walk.visited:
                return None  # an alias of a directory already walked
            walk.visited.add(key)
            return (path, (*ancestors, key))
        if stat.S_ISREG(st.st_mode):
            walk.files_seen += 1
            if self.config.is_weight_like(name, st.st_size):
                walk.jobs.append(_Job(path, os.path.realpath(path), st))
        return None

    def _process(self, walk: _Walk) -> tuple[list[FileRecord], list[ScanProblem], ScanStats]:
        records: list[FileRecord] = []
        todo: list[_Job] = []
        queued: set[str] = set()
        for job in walk.jobs:
            if job.path in queued:
                continue  # named twice in one rescan
            queued.add(job.path)
            k = _key(job.st)
            hit = self._cache.get(k)
            if hit is None:
                todo.append(job)
            else:
                records.append(_record(job, hit.sha256, hit.form))
        problems = list(walk.problems)
        hits = len(records)
        bytes_hashed = 0
        if todo:
            # Largest first keeps every worker busy until the end.
            todo.sort(key=lambda j: -j.st.st_size)
            n = min(self.config.workers, len(todo))
            init = _lower_priority_once_noted if self.config.low_priority else None
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="custos-scan", initializer=init) as pool:
                for out in pool.map(self._hash_job, todo):
                    if isinstance(out, FileRecord):
                        records.append(out)
                        bytes_hashed += out.size
                    else:
                        problems.append(out)
        stats = ScanStats(
            files_seen=walk.files_seen,
            candidates=len(queued),
            cache_hits=hits,
            hashed=len(todo),
            bytes_hashed=bytes_hashed,
            symlinks_skipped=walk.symlinks_skipped,
        )
        return records, problems, stats

    def _hash_job(self, job: _Job) -> FileRecord | ScanProblem:
        """Runs on a worker thread; never raises."""
        try:
            form = self._read_form(job)
            size, digest = self._hasher(job.open_path)
            after = os.stat(job.open_path, follow_symlinks=False)
        except _Changed:
            return ScanProblem(job.path, "changed", "replaced while being scanned; will be hashed on the next scan")
        except FileNotFoundError:
            return ScanProblem(job.path, "vanished", "file vanished while being hashed")
        except (CustosError, OSError) as exc:
            if not os.path.lexists(job.open_path):
                return ScanProblem(job.path, "vanished", "file vanished while being hashed")
            if isinstance(exc, OSError):
                return ScanProblem(job.path, "unreadable", f"cannot read: {exc.strerror}")
            msg = str(exc)
            kind: ProblemKind = "changed" if "changed while" in msg else "unreadable"
            return ScanProblem(job.path, kind, msg)
        except Exception as exc:  # noqa: BLE001 - one bad file (or hasher bug) must never stop the scan
            return ScanProblem(job.path, "error", f"unexpected {type(exc).__name__} while hashing: {exc}")
        if _key(after) != _key(job.st) or size != job.st.st_size:
            return ScanProblem(job.path, "changed", "changed while being hashed; will be hashed again on the next scan")
        return _record(job, digest, form)

    def _read_form(self, job: _Job) -> Form:
        # O_NONBLOCK: if a FIFO was swapped in since the walk, open must not hang.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(job.open_path, flags)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (job.st.st_dev, job.st.st_ino):
                raise _Changed
            head = os.pread(fd, len(self.config.magic), 0)
        finally:
            os.close(fd)
        return "ciphertext" if head == self.config.magic else "plaintext"

    def _commit(self, records: list[FileRecord], stale: Iterable[CacheKey]) -> list[ScanProblem]:
        put = {r.key: _Cached(r.sha256, r.form, r.path) for r in records if r.key not in self._cache}
        stale = list(stale)
        try:
            self._cache_db.update(put, stale)
        except sqlite3.Error as exc:
            # The inventory is still right; only the next scan will rehash more.
            return [ScanProblem(str(self._cache_db.path), "cache", f"cannot write the scan cache: {exc}")]
        finally:
            for k in stale:
                self._cache.pop(k, None)
            self._cache.update(put)
        return []


class _Changed(Exception):
    """The path no longer names the file the walk saw."""


def _record(job: _Job, sha256: str, form: Form) -> FileRecord:
    st = job.st
    return FileRecord(
        path=job.path,
        size=st.st_size,
        sha256=sha256,
        device=st.st_dev,
        inode=st.st_ino,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        form=form,
    )


# --- change watching ----------------------------------------------------------------------------

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_WATCH_MASK = (
    IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len — then len bytes of NUL-padded name


class _WatchBudget(Exception):
    """inotify cannot take another watch (system limit or our own budget)."""


class _Inotify:
    """The three inotify calls through ctypes. Raises OSError if unavailable."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library is already loaded
        try:
            self._init1 = libc.inotify_init1
            self._add = libc.inotify_add_watch
            self._rm = libc.inotify_rm_watch
        except AttributeError:
            raise OSError(errno.ENOSYS, "this C library has no inotify") from None
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = self._init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd: int = fd

    def add(self, path: str) -> int:
        wd = self._add(self.fd, os.fsencode(path), _WATCH_MASK)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
        return int(wd)

    def rm(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL if the kernel already dropped it: nothing to do

    def read(self, timeout: float) -> list[tuple[int, int, str]]:
        """Events available within ``timeout`` seconds as (wd, mask, name)."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000))):
            return []
        out: list[tuple[int, int, str]] = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            pos = 0
            while pos + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
                pos += _EVENT.size
                name = os.fsdecode(buf[pos : pos + length].rstrip(b"\0"))
                pos += length
                out.append((wd, mask, name))
        return out

    def close(self) -> None:
        os.close(self.fd)


class Watcher:
    """Reports paths under the scan roots that changed since the last call.

    Uses inotify (close-after-write, moves, deletes, new directories, added
    recursively) on Linux. Falls back to polling every ``poll_interval`` seconds
    when inotify is unavailable, when the kernel runs out of watches, or when
    ``max_watches`` (our own budget, so the agent cannot starve other programs
    of the per-user limit) is exceeded; ``mode`` and ``fallback_reason`` say so.
    A queue overflow or a fallback reports the roots themselves, i.e. "rescan
    everything". Not thread-safe: use from one thread.
    """

    def __init__(
        self,
        config: ScanConfig,
        *,
        poll_interval: float = 60.0,
        settle_s: float = 0.05,
        use_inotify: bool = True,
        max_watches: int | None = None,
    ) -> None:
        if poll_interval <= 0 or settle_s < 0:
            raise InvalidInput("watcher: poll_interval must be > 0 and settle_s >= 0")
        self.config = config
        self.poll_interval = poll_interval
        self.settle_s = settle_s
        self.max_watches = max_watches
        self.mode: Literal["inotify", "polling"] = "polling"
        self.fallback_reason: str | None = None
        self._ino: _Inotify | None = None
        self._wds: dict[int, str] = {}
        self._pending: set[str] = set()
        self._snapshot: dict[str, tuple[int, int, int, int]] = {}
        self._next_poll = 0.0
        self._closed = False
        if not use_inotify:
            self._fall_back("inotify disabled by configuration", report=False)
            return
        try:
            self._ino = _Inotify()
        except OSError as exc:
            self._fall_back(f"inotify unavailable: {exc.strerror or exc}", report=False)
            return
        self.mode = "inotify"
        try:
            for root in config.root_paths:
                if os.path.isdir(root):
                    self._add_tree(root)
        except _WatchBudget as exc:
            self._fall_back(str(exc), report=False)

    @property
    def watch_count(self) -> int:
        return len(self._wds)

    def close(self) -> None:
        self._closed = True
        self._stop_inotify()

    def _stop_inotify(self) -> None:
        if self._ino is not None:
            self._ino.close()
            self._ino = None
        self._wds.clear()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[list[str]]:
        """Yield non-empty batches of changed paths, forever (until closed)."""
        while not self._closed:
            batch = self.poll(self.poll_interval)
            if batch:
                yield batch

    def poll(self, timeout: float | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds (None: forever) for changes; return them sorted."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            if self.mode == "inotify":
                self._read_events(self._remaining(deadline, cap=1.0))
                if self._pending:
                    # Let a burst (a checkpoint being written) settle into one batch.
                    self._read_events(self.settle_s)
            else:
                now = time.monotonic()
                if now >= self._next_poll:
                    self._poll_once()
                    self._next_poll = time.monotonic() + self.poll_interval
                if not self._pending:
                    wait = self._next_poll - time.monotonic()
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                    if wait > 0:
                        time.sleep(wait)
            if self._pending:
                out = sorted(self._pending)
                self._pending.clear()
                return out
            if deadline is not None and time.monotonic() >= deadline:
                return []
        return []

    @staticmethod
    def _remaining(deadline: float | None, cap: float) -> float:
        if deadline is None:
            return cap
        return max(0.0, min(cap, deadline - time.monotonic()))

    # - inotify -

    def _add_tree(self, top: str) -> None:
        """Watch ``top`` and every directory below it. Raises _WatchBudget."""
        assert self._ino is not None
        stack = [top]
        while stack:
            d = stack.pop()
            if self.max_watches is not None and len(self._wds) >= self.max_watches:
                raise _WatchBudget(f"inotify watch budget of {self.max_watches} directories exceeded")
            try:
                wd = self._ino.add(d)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise _WatchBudget("inotify ran out of watches (raise fs.inotify.max_user_watches)") from None
                continue  # vanished, not a directory, or unreadable: the next full scan will say so
            self._wds[wd] = d
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False) and not self.config.is_excluded(e.path, e.name):
                            stack.append(e.path)
            except OSError:
                continue

    def _drop_tree(self, top: str) -> None:
        assert self._ino is not None
        for wd, p in list(self._wds.items()):
            if _under(p, top):
                self._ino.rm(wd)
                del self._wds[wd]

    def _read_events(self, timeout: float) -> None:
        if self._ino is None:
            return
        try:
            events = self._ino.read(timeout)
            for wd, mask, name in events:
                self._handle(wd, mask, name)
        except _WatchBudget as exc:
            self._fall_back(str(exc), report=True)

    def _handle(self, wd: int, mask: int, name: str) -> None:
        assert self._ino is not None
        if mask & IN_Q_OVERFLOW:
            log.warning("inotify queue overflowed; asking for a rescan of every root")
            self._pending.update(self.config.root_paths)
            return
        base = self._wds.get(wd)
        if base is None:
            return
        if mask & IN_IGNORED:
            del self._wds[wd]
            return
        if not name:  # the watched directory itself was deleted or moved away
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                self._pending.add(base)
            return
        path = f"{base}/{name}"
        if self.config.is_excluded(path, name):
            return
        if mask & IN_ISDIR:
            if mask & (IN_MOVED_FROM | IN_DELETE):
                self._drop_tree(path)
            if mask & (IN_CREATE | IN_MOVED_TO):
                # Files may have landed before the new watch existed: report the
                # directory, and the rescan walks it.
                self._add_tree(path)
            self._pending.add(path)
        elif mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE):
            self._pending.add(path)

    # - polling -

    def _fall_back(self, reason: str, *, report: bool) -> None:
        self._stop_inotify()
        self.mode = "polling"
        self.fallback_reason = reason
        log.warning("file watcher falls back to polling every %.1f s: %s", self.poll_interval, reason)
        self._snapshot = self._take_snapshot()
        self._next_poll = time.monotonic() + self.poll_interval
        if report:
            # Events may have been lost while switching: ask for a full rescan.
            self._pending.update(self.config.root_paths)

    def _take_snapshot(self) -> dict[str, tuple[int, int, int, int]]:
        snap: dict[str, tuple[int, int, int, int]] = {}
        visited: set[tuple[int, int]] = set()
        stack = [r for r in self.config.root_paths]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = list(it)
            except OSError:
                continue
            for e in entries:
                if self.config.exclude and self.config.is_excluded(e.path, e.name):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) not in visited:
                        visited.add((st.st_dev, st.st_ino))
                        stack.append(e.path)
                else:
                    snap[e.path] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return snap

    def _poll_once(self) -> None:
        new = self._take_snapshot()
        old = self._snapshot
        for path, sig in new.items():
            if old.get(path) != sig:
                self._pending.add(path)
        self._pending.update(p for p in old if p not in new)
        self._snapshot = new
