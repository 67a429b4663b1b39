"""Opens the agent only watches: fanotify notifications on registered weights, and the inotify fallback.

:class:`NotifyReader` reads a FAN_CLASS_NOTIF group whose inode marks (FAN_OPEN)
sit on the registered weight files under the scan roots: an open by a process
outside the custody policy (not the agent, not a supervised workload, not an
allow-listed executable) is reported as a read. Nothing waits on it: the process
may be gone by the time its event is read, and is then reported with what is left
(its pid).

:class:`InotifyReader` is the degraded mode, without CAP_SYS_ADMIN or when
configured: IN_OPEN watches on protected directories (and the directories below
them) and on canary files. inotify says which file was opened, never by whom, and
blocks nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from custos.agent.guard.fanotify import FAN_Q_OVERFLOW, Fanotify, fd_path
from custos.agent.guard.policy import Key, Policy
from custos.agent.guard.procinfo import Opener, describe
from custos.agent.guard.responder import Opened
from custos.agent.scanner.watch import IN_CREATE, IN_IGNORED, IN_ISDIR, IN_MOVED_TO, IN_OPEN, IN_Q_OVERFLOW, Inotify

log = logging.getLogger("custos.agent.guard")

DIR_MASK = IN_OPEN | IN_CREATE | IN_MOVED_TO  # children opened; new subdirectories to watch
FILE_MASK = IN_OPEN


@dataclass(frozen=True, slots=True)
class Registered:
    """A registered weight file the notification group watches."""

    path: str
    sha256: str
    artifact_id: str


class NotifyReader:
    """Reads a notification group; reports opens of registered weights from outside the custody policy."""

    def __init__(self, group: Fanotify, policy: Policy, *, lookup: Callable[[Key], Registered | None],
                 on_report: Callable[[Opened], None]) -> None:
        self.group = group
        self.policy = policy
        self.lookup = lookup
        self.on_report = on_report
        self.seen = 0
        self.overflows = 0
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="custos-guard-notify", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                events = self.group.read(0.2)
            except OSError as exc:
                if not self._closing.is_set():
                    self.failed = f"reading the notification group failed: {exc}"
                    log.error("weight-read notifications stopped", extra={"fields": {"error": self.failed}})
                return
            for ev in events:
                try:
                    self._handle(ev.mask, ev.fd, ev.pid)
                except Exception:  # one bad event must not end the reader
                    log.exception("handling a weight-read notification failed")

    def _handle(self, mask: int, fd: int, pid: int) -> None:
        if mask & FAN_Q_OVERFLOW:
            self.overflows += 1
            log.warning("fanotify notification queue overflowed: some opens of registered weights were not seen")
            return
        if fd < 0:
            return
        try:
            if pid == self.policy.own_pid:
                return
            st = os.fstat(fd)
            path = fd_path(fd)
        finally:
            os.close(fd)
        reg = self.lookup((st.st_dev, st.st_ino))
        if reg is None:
            return
        self.seen += 1
        opener = describe(pid, keep_exe=True)  # first: nothing holds the process, it may be gone soon
        if self.policy.custody_reason(pid) is not None:
            opener.release()
            return
        shown = path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path
        self.on_report(Opened(kind="read", opener=opener, path=shown or reg.path, key=(st.st_dev, st.st_ino),
                              zone=None, reason="opened by a process outside the custody policy",
                              at_unix_ns=time.time_ns(), mode="fanotify-notify"))


class InotifyReader:
    """IN_OPEN watches on protected trees and canary files (degraded: no pid, no blocking).

    ``classify(path)`` says what an open of a path is: ("canary" | "read", reason) or None.
    """

    def __init__(self, *, classify: Callable[[str], tuple[str, str] | None],
                 on_report: Callable[[Opened], None]) -> None:
        self.ino = Inotify()
        self.classify = classify
        self.on_report = on_report
        self._lock = threading.Lock()
        self._wds: dict[int, str] = {}
        self._by_path: dict[str, int] = {}
        self._trees: set[str] = set()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.problems: dict[str, str] = {}

    @property
    def watches(self) -> int:
        with self._lock:
            return len(self._wds)

    def set_watches(self, dirs: Iterable[str], files: Iterable[str]) -> None:
        """Watch exactly these directories (opens of their children) and files."""
        want = {d: DIR_MASK for d in dirs}
        want.update({f: FILE_MASK for f in files if f not in want})
        self._trees = set(d for d in want if want[d] == DIR_MASK)
        with self._lock:
            have = dict(self._by_path)
        for path, wd in have.items():
            if path not in want:
                self.ino.rm(wd)
                with self._lock:
                    self._wds.pop(wd, None)
                    self._by_path.pop(path, None)
        for path, mask in want.items():
            if path not in have:
                self._add(path, mask)

    def _add(self, path: str, mask: int) -> None:
        try:
            wd = self.ino.add(path, mask)
        except OSError as exc:
            if self.problems.get(path) != exc.strerror:
                log.warning("cannot watch a guarded path", extra={"fields": {"path": path, "error": exc.strerror}})
            self.problems[path] = exc.strerror or str(exc)
            if exc.errno == errno.ENOSPC:
                self.problems[path] = "inotify ran out of watches (raise fs.inotify.max_user_watches)"
            return
        self.problems.pop(path, None)
        with self._lock:
            self._wds[wd] = path
            self._by_path[path] = wd

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="custos-guard-inotify", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.ino.close()

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                events = self.ino.read(0.2)
            except OSError as exc:
                log.error("inotify guard stopped", extra={"fields": {"error": str(exc)}})
                return
            for wd, mask, name in events:
                try:
                    self._handle(wd, mask, name)
                except Exception:
                    log.exception("handling an inotify guard event failed")

    def _handle(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            log.warning("inotify guard queue overflowed: some opens were not seen")
            return
        with self._lock:
            base = self._wds.get(wd)
            if base is not None and mask & IN_IGNORED:
                self._wds.pop(wd, None)
                self._by_path.pop(base, None)
                return
        if base is None:
            return
        path = f"{base}/{name}" if name else base
        if mask & IN_ISDIR:
            if mask & (IN_CREATE | IN_MOVED_TO) and base in self._trees:
                self._add(path, DIR_MASK)  # a new directory inside a protected tree
                self._trees.add(path)
            return
        if not mask & IN_OPEN:
            return
        what = self.classify(path)
        if what is None:
            return
        kind, reason = what
        self.on_report(Opened(kind=kind, opener=Opener(pid=0), path=path, key=None, zone=None,
                              reason=reason, at_unix_ns=time.time_ns(), mode="inotify"))
