"""Between full scans: which paths under the scan roots changed (inotify through ctypes, or polling).

A :class:`Watcher` uses inotify on Linux and falls back to polling elsewhere, or
when inotify runs out of watches; the scanner's ``rescan_paths`` takes what it
reports.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import stat
import struct
import time
from collections.abc import Iterator
from typing import Literal

from custos.agent.scanner.records import ScanConfig, is_under
from custos.errors import InvalidInput

log = logging.getLogger("custos.agent.scanner")

IN_CLOSE_WRITE = 0x00000008
IN_OPEN = 0x00000020
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


class Inotify:
    """The three inotify calls through ctypes (also the agent's guard fallback). Raises OSError if unavailable."""

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

    def add(self, path: str, mask: int = _WATCH_MASK) -> int:
        wd = self._add(self.fd, os.fsencode(path), mask)
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
        self._ino: Inotify | None = None
        self._wds: dict[int, str] = {}
        self._pending: set[str] = set()
        self._snapshot: dict[str, tuple[int, int, int, int]] = {}
        self._next_poll = 0.0
        self._closed = False
        if not use_inotify:
            self._fall_back("inotify disabled by configuration", report=False)
            return
        try:
            self._ino = Inotify()
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
            if is_under(p, top):
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
