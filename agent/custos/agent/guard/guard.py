"""The agent's guard over opens of plaintext weights: marks, modes, halts, canaries, reports.

:class:`Guard` keeps the kernel's marks in step with what the agent knows and
turns every reported open into a ``custody_pb2.AccessEvent``:

- **fanotify** (CAP_SYS_ADMIN): a permission group (FAN_CLASS_CONTENT,
  FAN_OPEN_PERM) on every workload's run directory (each directory marked with
  FAN_EVENT_ON_CHILD, each pulled file with an inode mark, so hard links and
  renames stay guarded), on the configured protected paths (walked again every
  ``REWALK_S``) and on canary files (always allowed, always reported); answered by
  :class:`~custos.agent.guard.responder.PermissionResponder` under
  :class:`~custos.agent.guard.policy.Policy`. A notification group
  (FAN_CLASS_NOTIF, FAN_OPEN) with inode marks on the registered weight files the
  inventory found under the scan roots (plaintext whose SHA-256 is in a manifest
  the agent knows) reports reads from outside the custody policy;
- **inotify (degraded)**: without CAP_SYS_ADMIN, or ``mode = "inotify"``: IN_OPEN on
  protected trees and canaries, no pid, nothing refused;
- **off**.

``deny_all(scope)`` (called by the halter right after it starts refusing runs,
before any process is signalled) makes the scope's zones refuse every process but
the agent at once; ``lift(scope)`` ends that. Reports are deduplicated per
(kind, pid, path) — canaries within 1 s only — and handed to ``on_event`` from the
guard's reporter thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from custos.agent.guard.fanotify import (
    FAN_CLASS_CONTENT,
    FAN_CLASS_NOTIF,
    FAN_EVENT_ON_CHILD,
    FAN_OPEN,
    FAN_OPEN_PERM,
    FAN_UNLIMITED_MARKS,
    Fanotify,
)
from custos.agent.guard.notify import InotifyReader, NotifyReader, Registered
from custos.agent.guard.policy import AllowEntry, ExeKey, Key, Policy, WorkloadMembers, Zone, hash_exe
from custos.agent.guard.procinfo import user_name
from custos.agent.guard.responder import Opened, PermissionResponder
from custos.agent.scanner import FileRecord
from custos.errors import FailedPrecondition, InvalidInput
from custos.v1 import custody_pb2

if TYPE_CHECKING:
    from custos.agent.blocks import ManifestCache
    from custos.agent.workloads import Supervisor

log = logging.getLogger("custos.agent.guard")

MODES = ("auto", "fanotify", "inotify", "off")
DEGRADED = "inotify (degraded)"
REWALK_S = 10.0  # protected trees are walked again this often (new subdirectories)
CANARY_DEDUPE_S = 1.0
REPORT_QUEUE = 4096
MAX_TREE_ENTRIES = 200_000  # directories and files marked per protected path
DIR_MASK = FAN_OPEN_PERM | FAN_EVENT_ON_CHILD
FILE_MASK = FAN_OPEN_PERM


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardSettings:
    """The ``[guard]`` section of the agent config. Raises InvalidInput."""

    mode: str = "auto"
    protected_paths: tuple[str, ...] = ()
    allow: tuple[AllowEntry, ...] = ()
    response_timeout_ms: int = 250
    protected_fail: str = "closed"  # closed | open: what an open of a protected path gets without an answer
    watch_registered: bool = True
    read_dedupe_s: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInput(f"guard.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.protected_fail not in ("closed", "open"):
            raise InvalidInput(f"guard.protected_fail must be closed or open, got {self.protected_fail!r}")
        if not 10 <= self.response_timeout_ms <= 5000:
            raise InvalidInput("guard.response_timeout_ms must be between 10 and 5000")
        if not 0 <= self.read_dedupe_s <= 86400:
            raise InvalidInput("guard.read_dedupe_s must be between 0 and 86400")
        for p in self.protected_paths:
            if not os.path.isabs(p) or "\0" in p or os.path.normpath(p) != p or p == "/":
                raise InvalidInput(f"guard.protected_paths: {p!r} must be an absolute, normalized path other than /")


@dataclass(frozen=True, slots=True)
class WorkloadZone:
    """A running workload's guarded run directory, its pulled files and its processes."""

    members: WorkloadMembers
    run_dir: str
    files: tuple[tuple[str, Key, str], ...]  # (path, (device, inode), sha256)


def workload_zones(supervisor: Supervisor) -> list[WorkloadZone]:
    """The supervisor's running workloads as the guard needs them (thread-safe)."""
    out = []
    for w, _pids, _paths in supervisor.supervised():
        if w.run_dir is None or not w.pid:
            continue
        members = WorkloadMembers(workload_id=w.id, artifact_id=w.artifact_id, root_pid=w.pid,
                                  root_create_time=w.create_time, members=dict(w.members))
        out.append(WorkloadZone(members=members, run_dir=str(w.run_dir),
                                files=tuple((r.path, (r.device, r.inode), r.sha256) for r in w.records)))
    return out


def fanotify_problem(exc: OSError) -> str:
    """One line saying why fanotify cannot be used here."""
    if exc.errno == errno.EPERM:
        return "fanotify_init refused: no CAP_SYS_ADMIN"
    if exc.errno == errno.ENOSYS:
        return "this kernel has no fanotify"
    if exc.errno == errno.EINVAL:
        return "this kernel's fanotify has no permission events (FAN_CLASS_CONTENT)"
    return f"fanotify unavailable: {exc.strerror or exc}"


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _lkey(path: str) -> Key | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _walk(root: str, budget: int) -> tuple[list[str], list[tuple[str, Key]], bool]:
    """(directories, (file, key) pairs, complete) of a tree, symlinks not followed, within ``budget``."""
    dirs: list[str] = []
    files: list[tuple[str, Key]] = []
    try:
        st = os.lstat(root)
    except OSError:
        return dirs, files, True
    if stat.S_ISREG(st.st_mode):
        return dirs, [(root, (st.st_dev, st.st_ino))], True
    if not stat.S_ISDIR(st.st_mode):
        return dirs, files, True
    stack = [root]
    while stack:
        d = stack.pop()
        dirs.append(d)
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            if len(dirs) + len(files) + len(stack) >= budget:
                return dirs, files, False
            try:
                est = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(e.path)
            elif stat.S_ISREG(est.st_mode):
                files.append((e.path, (est.st_dev, est.st_ino)))
    return dirs, files, True


class Guard:
    """Kernel-checked opens for this host (see the module docstring). Thread-safe.

    ``workloads`` lists the running workloads (:func:`workload_zones`), ``records``
    the inventory's file records, ``manifests`` the manifests the agent knows,
    ``managed_bases`` the supervisor's plaintext bases (never watched as scan-root
    copies: their runs are guarded as workloads), ``on_event`` gets every AccessEvent.
    """

    def __init__(self, settings: GuardSettings, *, workloads: Callable[[], list[WorkloadZone]] = list,
                 records: Callable[[], list[FileRecord]] = list, manifests: ManifestCache | None = None,
                 managed_bases: Callable[[], Iterable[str | Path]] = tuple,
                 on_event: Callable[[custody_pb2.AccessEvent], None] | None = None,
                 own_pid: int | None = None, hasher: Callable[[int, ExeKey], str | None] = hash_exe,
                 halted: tuple[bool, Collection[str]] = (False, ())) -> None:
        self.settings = settings
        self.policy = Policy(own_pid=own_pid, allow=settings.allow, hasher=hasher)
        self._workloads = workloads
        self._records = records
        self._manifests = manifests
        self._managed_bases = managed_bases
        self.on_event = on_event or (lambda ev: None)
        self.mode = "off"
        self.reason: str | None = "not started"
        self._perm: Fanotify | None = None
        self._notif: Fanotify | None = None
        self.responder: PermissionResponder | None = None
        self._notify: NotifyReader | None = None
        self._inotify: InotifyReader | None = None
        self._lock = threading.RLock()  # marks and zones
        self._halt_lock = threading.Lock()
        self._halt_all, self._halted = halted[0], frozenset(halted[1])
        self._drills: frozenset[str] = frozenset()  # drill scopes: only bytes that are theirs alone
        self._files_of: dict[str, frozenset[str]] = {}
        self.denied_all_at_ns = 0
        self._canaries: dict[str, str] = {}
        self._perm_marks: dict[str, int] = {}
        self._perm_sig: Any = None  # what the permission marks were last built from
        self._notif_marks: dict[str, Key] = {}
        self._registered: dict[Key, Registered] = {}
        self._known: dict[Key, tuple[str, str]] = {}  # (sha256, artifact id) of plaintext the agent can name
        self._digests: dict[str, str] = {}
        self._digests_for: frozenset[str] | None = None
        self._trees: dict[str, tuple[float, list[str], list[tuple[str, Key]]]] = {}
        self._zone_counts: dict[str, int] = {"workload": 0, "protected": 0, "canary": 0}
        self.problems: dict[str, str] = {}
        self._reports: queue.Queue[Opened] = queue.Queue(maxsize=REPORT_QUEUE)
        self._dedupe: dict[tuple[str, int, str], float] = {}
        self.reported = self.suppressed = self.dropped = 0
        self._closing = threading.Event()
        self._reporter: threading.Thread | None = None

    # - modes -

    @property
    def mode_text(self) -> str:
        """What ``custos hosts`` shows: fanotify | inotify (degraded) | off."""
        return DEGRADED if self.mode == "inotify" else self.mode

    def start(self) -> None:
        """Open the groups (or fall back) and place the marks. Raises FailedPrecondition when
        ``mode = "fanotify"`` is configured and fanotify cannot be had."""
        want = self.settings.mode
        self.policy.update(halt_all=self._halt_all, halted=self._halted)
        if want == "off":
            self.mode, self.reason = "off", "configured off"
            return
        if want in ("auto", "fanotify"):
            try:
                self._perm = Fanotify(FAN_CLASS_CONTENT | FAN_UNLIMITED_MARKS)
                if self.settings.watch_registered:
                    self._notif = Fanotify(FAN_CLASS_NOTIF | FAN_UNLIMITED_MARKS)
            except OSError as exc:
                self._close_groups()
                why = fanotify_problem(exc)
                if want == "fanotify":
                    raise FailedPrecondition(f'[guard] mode = "fanotify", but {why}') from None
                self.reason = f"{why}: inotify instead (no pid, no blocking)"
                log.warning("kernel-checked opens degraded to inotify", extra={"fields": {"reason": why}})
            else:
                self.mode, self.reason = "fanotify", None
                self.responder = PermissionResponder(self._perm, self.policy,
                                                     bound_s=self.settings.response_timeout_ms / 1000,
                                                     on_report=self._queue_report)
                if self._notif is not None:
                    self._notify = NotifyReader(self._notif, self.policy,
                                                lookup=lambda key: self._registered.get(key),
                                                on_report=self._queue_report)
        if self.mode != "fanotify":
            try:
                self._inotify = InotifyReader(classify=self._classify, on_report=self._queue_report)
            except OSError as exc:
                self.mode = "off"
                self.reason = f"neither fanotify nor inotify available: {exc.strerror or exc}"
                log.error("no kernel-checked opens", extra={"fields": {"reason": self.reason}})
                return
            self.mode = "inotify"
            if want == "inotify":
                self.reason = "configured inotify (no pid, no blocking)"
        self._reporter = threading.Thread(target=self._report_loop, name="custos-guard-report", daemon=True)
        self._reporter.start()
        for reader in (self.responder, self._notify, self._inotify):
            if reader is not None:
                reader.start()
        self.tick(force=True)
        log.info("kernel-checked opens", extra={"fields": {
            "mode": self.mode_text, "reason": self.reason, "protected": list(self.settings.protected_paths),
            "allow": [e.path for e in self.settings.allow],
            "response_timeout_ms": self.settings.response_timeout_ms}})

    def close(self) -> None:
        """Stop guarding (the kernel allows whatever is still pending) and stop reporting."""
        self._closing.set()
        for reader in (self.responder, self._notify, self._inotify):
            if reader is not None:
                reader.close()
        self._close_groups()
        if self._reporter is not None:
            self._reporter.join(timeout=2.0)

    def _close_groups(self) -> None:
        for g in (self._perm, self._notif):
            if g is not None:
                g.close()

    # - halts -

    def deny_all(self, scope: Collection[str] | None, drill: bool = False) -> None:
        """From now on the scope's zones (every zone: None) refuse every process but the agent:
        its workloads' run directories, and protected files holding its bytes — for a ``drill``,
        only bytes no other artifact the agent knows holds (a drill never reaches production).
        Never raises: a halt must go on whatever the guard does."""
        try:
            with self._halt_lock:
                if scope is None:
                    self._halt_all = True
                elif drill:
                    self._drills = self._drills | frozenset(scope)
                else:
                    self._halted = self._halted | frozenset(scope)
                self.policy.update(halt_all=self._halt_all, halted=self._halted | self._drills)
                self.denied_all_at_ns = time.time_ns()
            self._refresh_halted_inodes()
            log.warning("guarded opens of the halted scope refused from now on", extra={"fields": {
                "scope": "all" if scope is None else sorted(a[:12] for a in scope), "mode": self.mode_text}})
        except Exception:
            log.exception("the guard could not switch to deny-all")

    def lift(self, scope: Collection[str] | None) -> None:
        """End :meth:`deny_all` for ``scope`` (None: the everything state). Never raises."""
        try:
            with self._halt_lock:
                if scope is None:
                    self._halt_all = False
                else:
                    self._halted = self._halted - frozenset(scope)
                    self._drills = self._drills - frozenset(scope)
                self.policy.update(halt_all=self._halt_all, halted=self._halted | self._drills)
            self._refresh_halted_inodes()
        except Exception:
            log.exception("the guard could not lift deny-all")

    def _refresh_halted_inodes(self) -> None:
        halted, drills = self._halted, self._drills
        if not halted and not drills:
            self.policy.update(halted_inodes=frozenset())
            return
        self._digest_map()
        self._refresh_known()
        files = self._files_of
        bytes_of = set().union(*(files.get(a, frozenset()) for a in halted))
        others = set().union(*(f for a, f in files.items() if a not in drills))
        bytes_of |= set().union(*(files.get(a, frozenset()) for a in drills)) - others
        keys = frozenset(k for k, (sha, _a) in self._known.items() if sha in bytes_of)
        self.policy.update(halted_inodes=keys)

    # - canaries -

    def set_canaries(self, canaries: Mapping[str, str]) -> None:
        """Watch these decoy files (path -> canary id): any open but the agent's is reported at once.
        Raises InvalidInput for a path that is not absolute."""
        m: dict[str, str] = {}
        for path, cid in canaries.items():
            if not isinstance(path, str) or not os.path.isabs(path) or not isinstance(cid, str) or not cid:
                raise InvalidInput(f"canary {path!r}: want an absolute path and a canary id")
            m[os.path.normpath(path)] = cid
        with self._lock:
            self._canaries = m
        if self.mode != "off" and not self._closing.is_set():
            self.tick()

    # - keeping marks in step -

    def tick(self, *, force: bool = False) -> None:
        """Bring zones and marks in line with the workloads, protected paths, canaries and registered
        weights. Called when the workloads change and every second or so."""
        if self.mode == "off" or self._closing.is_set():
            return
        try:
            self._refresh_trees(force=force)
            with self._lock:
                if self.mode == "fanotify":
                    self._sync_permission()
                    if self._notif is not None:
                        self._sync_registered()
                else:
                    self._sync_inotify()
            if self._halted or self._drills:
                self._refresh_halted_inodes()
        except Exception:  # the next tick tries again
            log.exception("updating the guard's marks failed")

    def sync_workloads(self) -> None:
        """Mark a new workload's run directory now (before its id is handed to anyone)."""
        if self.mode != "fanotify" or self._closing.is_set():
            return
        try:
            with self._lock:
                self._sync_permission()
        except Exception:
            log.exception("marking a workload's run directory failed")

    def _refresh_trees(self, *, force: bool) -> None:
        now = time.monotonic()
        for root in self.settings.protected_paths:
            old = self._trees.get(root)
            if old is not None and not force and now - old[0] < REWALK_S:
                continue
            dirs, files, complete = _walk(root, MAX_TREE_ENTRIES)
            if not dirs and not files:
                self._problem(root, "protected path does not exist (watched again every "
                                    f"{REWALK_S:.0f} s)")
            elif not complete:
                self._problem(root, f"protected path has more than {MAX_TREE_ENTRIES} entries: only the first "
                                    "are guarded")
            else:
                self._clear_problem(root)
            self._trees[root] = (now, dirs, files)

    def _sync_permission(self) -> None:
        workload_list = self._workloads()
        sig = (tuple(self._trees.get(r, (0.0,))[0] for r in self.settings.protected_paths),
               tuple((wz.members.workload_id, wz.run_dir, wz.files) for wz in workload_list),
               tuple(sorted((p, c, _lkey(p)) for p, c in self._canaries.items())))
        if sig == self._perm_sig:
            # Only the workloads' processes changed: no walk over every mark.
            self.policy.update(workloads={wz.members.workload_id: wz.members for wz in workload_list})
            return
        zones: dict[str, Zone] = {}
        by_inode: dict[Key, Zone] = {}
        want: dict[str, int] = {}
        counts = {"workload": 0, "protected": 0, "canary": 0}
        fail_closed = self.settings.protected_fail == "closed"
        for root in self.settings.protected_paths:
            z = Zone(kind="protected", root=root, fail_closed=fail_closed)
            _t, dirs, files = self._trees.get(root, (0.0, [], []))
            if not dirs and not files:
                continue
            zones[root] = z
            counts["protected"] += 1
            for d in dirs:
                want[d] = DIR_MASK
            for f, key in files:
                want.setdefault(f, FILE_MASK)
                by_inode[key] = z
        workloads: dict[str, WorkloadMembers] = {}
        for wz in workload_list:
            m = wz.members
            workloads[m.workload_id] = m
            z = Zone(kind="workload", root=wz.run_dir, fail_closed=True, workload_id=m.workload_id,
                     artifact_id=m.artifact_id)
            zones[wz.run_dir] = z
            counts["workload"] += 1
            want[wz.run_dir] = DIR_MASK
            for path, key, _sha in wz.files:
                d = os.path.dirname(path)
                while _under(d, wz.run_dir) and d != wz.run_dir:
                    want[d] = DIR_MASK
                    d = os.path.dirname(d)
                want[path] = want.get(path, 0) | FILE_MASK
                by_inode[key] = z
        for path, cid in self._canaries.items():
            z = Zone(kind="canary", root=path, fail_closed=False, canary_id=cid)
            try:
                st = os.lstat(path)
            except OSError:
                self._problem(path, "canary file missing")
                continue
            if not stat.S_ISREG(st.st_mode):
                self._problem(path, "canary is not a regular file: not watched")
                continue
            self._clear_problem(path)
            zones[path] = z
            by_inode[(st.st_dev, st.st_ino)] = z
            want[path] = want.get(path, 0) | FILE_MASK
            counts["canary"] += 1
        # The policy first, then the marks: an event never finds a mark the policy does not know.
        self.policy.update(zones=zones, by_inode=by_inode, workloads=workloads)
        self._zone_counts = counts
        assert self._perm is not None
        for path, mask in want.items():
            if self._perm_marks.get(path) != mask:
                try:
                    self._perm.mark(path, mask)
                except OSError as exc:
                    self._problem(path, f"cannot mark: {exc.strerror}")
                    continue
                self._perm_marks[path] = mask
        for path in [p for p in self._perm_marks if p not in want]:
            with contextlib.suppress(OSError):  # gone with its inode (a wiped run)
                self._perm.unmark(path, self._perm_marks[path])
            del self._perm_marks[path]
        failed = any(self._perm_marks.get(p) != m for p, m in want.items())
        self._perm_sig = None if failed else sig  # a mark that failed is tried again next tick

    def _digest_map(self) -> dict[str, str]:
        """sha256 -> artifact id over every manifest the agent knows (cached while that set is unchanged)."""
        if self._manifests is None:
            return {}
        known = frozenset(self._manifests.known())
        if known != self._digests_for:
            digests: dict[str, str] = {}
            files_of: dict[str, frozenset[str]] = {}
            for aid in sorted(known):
                m = self._manifests.get(aid)
                shas = [f.sha256 for f in m.files if f.size > 0] if m is not None else []
                files_of[aid] = frozenset(shas)
                for sha in shas:
                    digests.setdefault(sha, aid)
            self._digests, self._files_of, self._digests_for = digests, files_of, known
        return self._digests

    def _refresh_known(self) -> list[FileRecord]:
        digests = self._digest_map()
        records = [r for r in self._records() if r.form == "plaintext" and r.sha256 in digests]
        known = {(r.device, r.inode): (r.sha256, digests[r.sha256]) for r in records}
        for wz in self._workloads():
            for _p, key, sha in wz.files:
                known[key] = (sha, wz.members.artifact_id)
        self._known = known
        return records

    def _sync_registered(self) -> None:
        assert self._notif is not None
        bases = [str(b) for b in self._managed_bases()]
        canaries = set(self._canaries)
        want: dict[str, Registered] = {}
        keys: dict[str, Key] = {}
        for r in self._refresh_known():
            if r.path in canaries or any(_under(r.path, b) for b in bases):
                continue
            want[r.path] = Registered(path=r.path, sha256=r.sha256, artifact_id=self._known[(r.device, r.inode)][1])
            keys[r.path] = (r.device, r.inode)
        registered: dict[Key, Registered] = {}
        for path, reg in want.items():
            key = keys[path]
            if self._notif_marks.get(path) != key:
                try:
                    st = os.lstat(path)
                    if (st.st_dev, st.st_ino) != key or not stat.S_ISREG(st.st_mode):
                        continue  # changed since it was hashed: the next scan says what it is
                    self._notif.mark(path, FAN_OPEN)
                except OSError as exc:
                    self._problem(path, f"cannot watch registered weights: {exc.strerror}")
                    continue
                self._notif_marks[path] = key
            registered[key] = reg
        for path in [p for p in self._notif_marks if p not in want]:
            with contextlib.suppress(OSError):
                self._notif.unmark(path, FAN_OPEN)
            del self._notif_marks[path]
        self._registered = registered

    def _sync_inotify(self) -> None:
        assert self._inotify is not None
        dirs: list[str] = []
        files: list[str] = list(self._canaries)
        counts = {"workload": 0, "protected": 0, "canary": len(self._canaries)}
        for root in self.settings.protected_paths:
            _t, tdirs, tfiles = self._trees.get(root, (0.0, [], []))
            if tdirs or tfiles:
                counts["protected"] += 1
            dirs.extend(tdirs)  # IN_OPEN on a directory reports its children's opens
            if not tdirs:
                files.extend(f for f, _k in tfiles)  # a protected path that is one file
        self._inotify.set_watches(dirs, files)
        self._zone_counts = counts
        for path, why in list(self._inotify.problems.items()):
            self._problem(path, f"cannot watch: {why}")

    def _classify(self, path: str) -> tuple[str, str] | None:
        if path in self._canaries:
            return "canary", "canary opened (inotify: the opener is not known)"
        if any(_under(path, r) for r in self.settings.protected_paths):
            return "read", "protected file opened (inotify: the opener is not known; nothing refused)"
        return None

    def _problem(self, path: str, why: str) -> None:
        if self.problems.get(path) != why:
            log.warning("guard problem", extra={"fields": {"path": path, "problem": why}})
        self.problems[path] = why

    def _clear_problem(self, path: str) -> None:
        if self.problems.pop(path, None) is not None:
            log.info("guard problem resolved", extra={"fields": {"path": path}})

    # - reports -

    def _queue_report(self, o: Opened) -> None:
        try:
            self._reports.put_nowait(o)
        except queue.Full:
            o.opener.release()
            self.dropped += 1

    def _report_loop(self) -> None:
        while not self._closing.is_set() or not self._reports.empty():
            try:
                o = self._reports.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                ev = self._event_of(o)
                if ev is not None:
                    self.reported += 1
                    self.on_event(ev)
            except Exception:
                log.exception("reporting a guarded open failed")
            finally:
                o.opener.release()

    def _event_of(self, o: Opened) -> custody_pb2.AccessEvent | None:
        window = CANARY_DEDUPE_S if o.kind == "canary" else self.settings.read_dedupe_s
        k = (o.kind, o.opener.pid, o.path)
        now = time.monotonic()
        last = self._dedupe.get(k)
        if last is not None and now - last < window:
            o.opener.release()
            self.suppressed += 1
            return None
        self._dedupe[k] = now
        if len(self._dedupe) > 10_000:
            horizon = max(window, self.settings.read_dedupe_s, CANARY_DEDUPE_S)
            self._dedupe = {kk: t for kk, t in self._dedupe.items() if now - t < horizon}
        sha, aid = self._known.get(o.key, ("", "")) if o.key is not None else ("", "")
        if not aid and o.zone is not None and o.zone.kind == "workload":
            aid = o.zone.artifact_id
        canary_id = o.zone.canary_id if o.zone is not None and o.zone.kind == "canary" else \
            self._canaries.get(o.path, "") if o.kind == "canary" else ""
        op = o.opener
        exe_sha = self.policy.digests.get(op.exe_key) or ""
        if exe_sha:
            op.release()
        else:
            exe_sha = op.exe_sha256()  # releases the descriptor
            if exe_sha and op.exe_key is not None:
                self.policy.digests.put(op.exe_key, exe_sha)
        where = f" ({o.zone.label})" if o.zone is not None else ""
        return custody_pb2.AccessEvent(
            kind=o.kind, mode=o.mode, pid=max(0, op.pid), exe=op.exe[:4096], exe_sha256=exe_sha,
            user=user_name(op.uid) if op.pid > 0 else "", cgroup=op.cgroup, container_id=op.container_id,
            cmdline=op.cmdline, path=o.path[:4096], sha256=sha, artifact_id=aid, canary_id=canary_id,
            at_unix_ns=o.at_unix_ns, detail=f"{o.reason}{where}"[:1000])

    # - status -

    def status(self) -> dict[str, Any]:
        """The guard's part of the agent's status (and of its metrics)."""
        halted: Any = "all" if self._halt_all else sorted(self._halted | self._drills) or None
        out: dict[str, Any] = {
            "mode": self.mode_text, "reason": self.reason, "zones": dict(self._zone_counts),
            "marks": len(self._perm_marks), "registered_watched": len(self._notif_marks),
            "inotify_watches": self._inotify.watches if self._inotify is not None else 0,
            "response_timeout_ms": self.settings.response_timeout_ms, "protected_fail": self.settings.protected_fail,
            "halted": halted, "denied_all_at_unix_ns": self.denied_all_at_ns,
            "events": {"reported": self.reported, "suppressed": self.suppressed, "dropped": self.dropped},
            "problems": sorted(f"{p}: {w}" for p, w in self.problems.items())[:50],
        }
        if self.responder is not None:
            out.update(self.responder.stats.as_dict())
            out["pending"] = self.responder.pending
            if self.responder.failed:
                out["failed"] = self.responder.failed
        else:
            out.update({"answered": 0, "allowed": 0, "denied": 0, "defaults": 0, "watchdog_takeovers": 0,
                        "max_response_ms": 0.0})
        if self._notify is not None:
            out["notifications"] = {"seen": self._notify.seen, "overflows": self._notify.overflows}
        return out
