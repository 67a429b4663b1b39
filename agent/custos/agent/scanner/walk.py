"""The scan itself: walk the roots, pick the weight-like files, hash what the cache does not know.

A :class:`Scanner` walks its roots with ``os.scandir`` (symlinks are not followed
unless asked, and never into a loop), picks the files that look like weights (by
suffix, or by size, or — read on the hashing threads — by the first bytes of a
weight format, :mod:`.formats`), and hashes them on a bounded thread pool at idle
I/O priority with :func:`custos.fs.hashing.hash_file`. The hash cache
(:class:`~custos.agent.scanner.cache.HashCache`) means an unchanged file is
never hashed twice, nor its first bytes read twice; names of one inode (hard
links) are hashed once and each becomes a record.

One bad file never stops a scan: unreadable directories, symlink loops, files
that vanish or change while being hashed become :class:`ScanProblem` entries and
the walk goes on. :meth:`Scanner.rescan_paths` updates only the paths a
watcher reported.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil

from custos.agent.scanner.cache import CacheEntry, HashCache, unlike_id
from custos.agent.scanner.formats import HEAD_BYTES, sniff
from custos.agent.scanner.records import (
    CacheKey,
    FileRecord,
    Hasher,
    ProblemKind,
    ScanConfig,
    ScanProblem,
    ScanResult,
    ScanStats,
    is_under,
)
from custos.core.matching import Form
from custos.errors import CustosError
from custos.fs.hashing import hash_file

log = logging.getLogger("custos.agent.scanner")

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


# --- walking ------------------------------------------------------------------------------------


def _key(st: os.stat_result) -> CacheKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class _Job:
    path: str  # where the file appears
    open_path: str  # what to open: the path itself, or a followed symlink's target
    st: os.stat_result
    sniff: bool = False  # weight-like only if its first bytes say so


@dataclass(slots=True)
class _Walk:
    jobs: list[_Job] = field(default_factory=list)
    problems: list[ScanProblem] = field(default_factory=list)
    failed_dirs: list[str] = field(default_factory=list)
    visited: set[tuple[int, int]] = field(default_factory=set)
    unlike_seen: set[int] = field(default_factory=set)  # unlike ids of files the cache knows are no weights
    files_seen: int = 0
    symlinks_skipped: int = 0


@dataclass(frozen=True, slots=True)
class _NotWeights:
    """A sniffed file whose first bytes begin no weight format."""

    unlike_id: int
    paths: int


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
        self._cache, self._unlike = self._cache_db.load()
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
            records, unlike_new, problems, stats = self._process(walk)
            # A directory we could not read this time keeps its cache entries: a
            # transient permission or mount problem must not cost a full rehash.
            seen = {r.key for r in records}
            stale = [
                k
                for k, v in self._cache.items()
                if k not in seen and not any(is_under(v.path, d) for d in walk.failed_dirs)
            ]
            # Unlike entries carry no path: one not seen is dropped (it costs a read, never a hash).
            keep = walk.unlike_seen.union(unlike_new)
            unlike_stale = [k for k in self._unlike if k not in keep]
            self._records = {r.path: r for r in records}
            problems += self._commit(records, stale, unlike_new, unlike_stale)
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
                    self._consider(p, p, os.path.basename(p), st, walk)
                elif stat.S_ISLNK(st.st_mode) and self.config.follow_symlinks:
                    self._follow_symlink(p, os.path.basename(p), (), walk)
            records, unlike_new, problems, stats = self._process(walk)
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
            problems += self._commit(records, stale, unlike_new, ())
            return self._result(problems, stats, t0)

    # - internals -

    def _result(self, problems: list[ScanProblem], stats: ScanStats, t0: float) -> ScanResult:
        stats = dataclasses.replace(stats, elapsed_s=time.perf_counter() - t0)
        return ScanResult(records=self._sorted_records(), problems=tuple(problems), stats=stats)

    def _root_of(self, path: str) -> str | None:
        for root in self.config.root_paths:
            if is_under(path, root):
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
                        self._consider(path, path, entry.name, entry.stat(follow_symlinks=False), walk)
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
            self._consider(path, os.path.realpath(path), name, st, walk)
        return None

    def _consider(self, path: str, open_path: str, name: str, st: os.stat_result, walk: _Walk) -> None:
        """A regular file the walk met: queue it if its name or size makes it weight-like, or to sniff."""
        walk.files_seen += 1
        if self.config.is_weight_like(name, st.st_size):
            walk.jobs.append(_Job(path, open_path, st))
        elif self.config.should_sniff(st.st_size):
            uid = unlike_id(_key(st))
            if uid in self._unlike:
                walk.unlike_seen.add(uid)
            else:
                walk.jobs.append(_Job(path, open_path, st, sniff=True))

    def _process(self, walk: _Walk) -> tuple[list[FileRecord], list[int], list[ScanProblem], ScanStats]:
        """Hash what the cache does not know; returns records, new unlike ids, problems, stats."""
        records: list[FileRecord] = []
        groups: dict[CacheKey, list[_Job]] = {}  # one inode, all its names (hard links)
        queued: set[str] = set()
        for job in walk.jobs:
            if job.path in queued:
                continue  # named twice in one rescan
            queued.add(job.path)
            groups.setdefault(_key(job.st), []).append(job)
        todo: list[tuple[list[_Job], CacheEntry | None]] = []
        for k, jobs in groups.items():
            hit = self._cache.get(k)
            if hit is not None and not all(j.sniff for j in jobs):
                records += [_record(j, hit.sha256, hit.form) for j in jobs]
            else:
                # Known bytes under names that are only sniffed: the head is read again (not the
                # file), so a change of rules or of names cannot keep a file reported.
                todo.append((jobs, hit))
        problems = list(walk.problems)
        hits = len(records)
        bytes_hashed = hashed = sniffed = found = not_weights_paths = 0
        unlike: list[int] = []
        if todo:
            # Largest first keeps every worker busy until the end.
            todo.sort(key=lambda t: -t[0][0].st.st_size)
            n = min(self.config.workers, len(todo))
            init = _lower_priority_once_noted if self.config.low_priority else None
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="custos-scan", initializer=init) as pool:
                for (jobs, hit), out in zip(todo, pool.map(self._hash_group, todo), strict=True):
                    sniffing = all(j.sniff for j in jobs)
                    sniffed += sniffing
                    if isinstance(out, _NotWeights):
                        unlike.append(out.unlike_id)
                        not_weights_paths += out.paths
                        continue
                    if isinstance(out, ScanProblem):
                        problems.append(out)
                        continue
                    found += sniffing
                    records += out
                    if hit is not None:
                        hits += len(out)
                    else:
                        hashed += 1
                        bytes_hashed += out[0].size
        stats = ScanStats(
            files_seen=walk.files_seen,
            candidates=len(queued) - not_weights_paths,
            cache_hits=hits,
            hashed=hashed,
            bytes_hashed=bytes_hashed,
            symlinks_skipped=walk.symlinks_skipped,
            sniffed=sniffed,
            sniff_found=found,
            sniff_known=len(walk.unlike_seen),
        )
        return records, unlike, problems, stats

    def _hash_group(self, item: tuple[list[_Job], CacheEntry | None]) -> list[FileRecord] | ScanProblem | _NotWeights:
        """Hash one inode for all its names; runs on a worker thread; never raises.

        A group whose every name is only a candidate for sniffing is hashed only
        when its first bytes begin a weight format; with ``hit`` (the cache knows
        its bytes) it is not hashed at all.
        """
        jobs, hit = item
        job = next((j for j in jobs if not j.sniff), jobs[0])
        try:
            head = self._read_head(job)
            if job.sniff and sniff(head, job.st.st_size, ciphertext_magic=self.config.magic) is None:
                return _NotWeights(unlike_id(_key(job.st)), len(jobs))
            if hit is not None:
                return [_record(j, hit.sha256, hit.form) for j in jobs]
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
        form: Form = "ciphertext" if head.startswith(self.config.magic) else "plaintext"
        return [_record(j, digest, form) for j in jobs]

    def _read_head(self, job: _Job) -> bytes:
        """The file's first bytes, from the inode the walk saw (else _Changed)."""
        # O_NONBLOCK: if a FIFO was swapped in since the walk, open must not hang.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(job.open_path, flags)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (job.st.st_dev, job.st.st_ino):
                raise _Changed
            return os.pread(fd, HEAD_BYTES if job.sniff else len(self.config.magic), 0)
        finally:
            os.close(fd)

    def _commit(self, records: list[FileRecord], stale: Iterable[CacheKey],
                unlike_new: Iterable[int], unlike_stale: Iterable[int]) -> list[ScanProblem]:
        put = {r.key: CacheEntry(r.sha256, r.form, r.path) for r in records if r.key not in self._cache}
        stale, unlike_new, unlike_stale = list(stale), list(unlike_new), list(unlike_stale)
        try:
            self._cache_db.update(put, stale, unlike_new, unlike_stale)
        except sqlite3.Error as exc:
            # The inventory is still right; only the next scan will rehash more.
            return [ScanProblem(str(self._cache_db.path), "cache", f"cannot write the scan cache: {exc}")]
        finally:
            for k in stale:
                self._cache.pop(k, None)
            self._cache.update(put)
            self._unlike.difference_update(unlike_stale)
            self._unlike.update(unlike_new)
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
