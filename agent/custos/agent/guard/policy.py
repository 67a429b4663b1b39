"""Who may open a guarded file: the custody policy of kernel-checked opens.

Guarded files lie in **zones**: a supervised workload's private run directory
(class ``workload``, always fail closed), a configured protected path (class
``protected``, fail closed unless configured open) or a canary file (class
``canary``: every open is allowed and reported). An open of a file in a zone is
allowed for

1. the agent itself;
2. the processes of a supervised workload — of *that* workload for its own run
   directory, of any workload for protected paths: a pid the supervisor tracks
   (same start time, so a reused pid is not taken for it), any process of the
   workload's session (sessions cannot be joined, only inherited), or a
   descendant of a tracked pid (children forked since the supervisor last looked);
3. a process whose executable (``/proc/PID/exe``: the inode really running, not a
   path that can be swapped) has an allow-listed path *and* SHA-256. Digests are
   cached by (device, inode, size, mtime, ctime);

and refused for everyone else. From a halt on, the zones of the halted scope
(every zone for a halt of everything) refuse everyone but the agent itself — the
workload too: the agent still has to wipe them.

:class:`Policy` holds an immutable :class:`PolicyState` that writers replace whole,
so the responder reads it without a lock. Deciding reads only /proc.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from custos.agent.guard.procinfo import ProcStat, exe_identity, read_exe, read_stat
from custos.errors import InvalidInput

ZoneKind = Literal["workload", "protected", "canary"]
Key = tuple[int, int]  # (device, inode)
ExeKey = tuple[int, int, int, int, int]
START_TOLERANCE_S = 0.5  # /proc start times have clock-tick resolution
MAX_ANCESTRY = 64
EXE_HASH_MAX = 1 << 30  # an allow-listed executable larger than this is not hashed (refused)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Zone:
    """A guarded place: a directory tree (or one file) and what an unanswered open of it gets."""

    kind: ZoneKind
    root: str
    fail_closed: bool
    workload_id: str = ""
    artifact_id: str = ""
    canary_id: str = ""

    @property
    def label(self) -> str:
        if self.kind == "workload":
            return f"workload {self.workload_id} plaintext"
        if self.kind == "canary":
            return f"canary {self.canary_id}"
        return f"protected path {self.root}"


@dataclass(frozen=True, slots=True)
class WorkloadMembers:
    """A running workload as the policy sees it: its root process and the pids the supervisor tracks."""

    workload_id: str
    artifact_id: str
    root_pid: int
    root_create_time: float
    members: Mapping[int, float]  # pid -> create time


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """An allow-listed executable: its path and the SHA-256 its bytes must have."""

    path: str
    sha256: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not os.path.isabs(self.path) or "\0" in self.path:
            raise InvalidInput(f"allow-listed executable: path must be absolute, got {self.path!r}")
        if not isinstance(self.sha256, str) or not _SHA256.match(self.sha256):
            raise InvalidInput(f"allow-listed executable {self.path}: sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one open and what to report (``report``: an AccessEvent kind, or None)."""

    allow: bool
    reason: str
    report: str | None = None


@dataclass(frozen=True, slots=True)
class NeedDigest:
    """The decision waits on the SHA-256 of an allow-listed path's executable (slow: a worker's job)."""

    pid: int
    exe: str
    exe_key: ExeKey
    entry: AllowEntry
    zone: Zone


@dataclass(frozen=True, slots=True)
class PolicyState:
    """Everything a decision reads. Replaced whole, never changed in place."""

    zones: Mapping[str, Zone] = field(default_factory=dict)  # root path -> zone
    by_inode: Mapping[Key, Zone] = field(default_factory=dict)  # marked files -> zone
    workloads: Mapping[str, WorkloadMembers] = field(default_factory=dict)
    halt_all: bool = False
    halted: frozenset[str] = frozenset()  # artifact ids
    halted_inodes: frozenset[Key] = frozenset()  # protected files holding bytes of a halted artifact


AGENT = Decision(True, "the agent itself")
NOT_GUARDED = Decision(True, "not a guarded file")


class ExeDigests:
    """SHA-256 of executables by (device, inode, size, mtime, ctime). Thread-safe, bounded."""

    def __init__(self, limit: int = 1024) -> None:
        self._lock = threading.Lock()
        self._d: OrderedDict[ExeKey, str] = OrderedDict()
        self.limit = limit

    def get(self, key: ExeKey | None) -> str | None:
        if key is None:
            return None
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: ExeKey, digest: str) -> None:
        with self._lock:
            self._d[key] = digest
            self._d.move_to_end(key)
            while len(self._d) > self.limit:
                self._d.popitem(last=False)


def hash_exe(pid: int, key: ExeKey) -> str | None:
    """SHA-256 of the executable ``pid`` runs, read through /proc/PID/exe; None if the process is
    gone, the file is too large, or it changed while being read (its identity key moved)."""
    if key[2] > EXE_HASH_MAX:
        return None
    h = hashlib.sha256()
    try:
        with open(f"/proc/{pid}/exe", "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest() if exe_identity(pid) == key else None


def _parents(path: str) -> Iterable[str]:
    p = path
    while True:
        yield p
        if p in ("/", ""):
            return
        p = os.path.dirname(p)


class Policy:
    """Decides opens of guarded files. Thread-safe; :meth:`decide` never blocks on a file."""

    def __init__(self, *, own_pid: int | None = None, allow: Iterable[AllowEntry] = (),
                 hasher: Callable[[int, ExeKey], str | None] = hash_exe) -> None:
        self.own_pid = os.getpid() if own_pid is None else own_pid
        # Compared with /proc/PID/exe, which shows the resolved path.
        self.allow: dict[str, AllowEntry] = {}
        for e in allow:
            self.allow[e.path] = e
            self.allow.setdefault(os.path.realpath(e.path), e)
        self.hasher = hasher
        self.digests = ExeDigests()
        self.state = PolicyState()
        self._write = threading.Lock()

    # - writers -

    def update(self, **changes: object) -> None:
        """Replace fields of the state (keyword names of :class:`PolicyState`)."""
        with self._write:
            self.state = replace(self.state, **changes)  # type: ignore[arg-type]

    # - lookups -

    def zone_for(self, key: Key | None, path: str) -> Zone | None:
        """The zone of an opened file: by inode (hard links, renames), else by the deepest zone root
        above its path (files created in a guarded directory since it was marked)."""
        st = self.state
        if key is not None:
            z = st.by_inode.get(key)
            if z is not None:
                return z
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        if not path.startswith("/"):
            return None
        for p in _parents(path):
            z = st.zones.get(p)
            if z is not None:
                return z
        return None

    def halted(self, zone: Zone, key: Key | None) -> bool:
        st = self.state
        if zone.kind == "canary":
            return False
        if st.halt_all:
            return True
        if zone.kind == "workload":
            return zone.artifact_id in st.halted
        return key is not None and key in st.halted_inodes

    def workload_of(self, pid: int, stat: ProcStat | None = None) -> str | None:
        """The workload ``pid`` belongs to (tracked pid, its session, or a tracked ancestor), or None."""
        workloads = self.state.workloads
        if not workloads:
            return None
        st = stat or read_stat(pid)
        if st is None:
            return None
        for w in workloads.values():
            ct = w.members.get(pid)
            if ct is not None and abs(ct - st.create_time) < START_TOLERANCE_S:
                return w.workload_id
        for w in workloads.values():
            if st.session == w.root_pid and w.root_pid > 1:
                root = read_stat(w.root_pid)
                if root is not None and abs(root.create_time - w.root_create_time) < START_TOLERANCE_S:
                    return w.workload_id
        cur = st
        for _ in range(MAX_ANCESTRY):
            ppid = cur.ppid
            if ppid <= 1 or ppid == self.own_pid:
                return None
            parent = read_stat(ppid)
            if parent is None:
                return None
            for w in workloads.values():
                ct = w.members.get(ppid)
                if ct is not None and abs(ct - parent.create_time) < START_TOLERANCE_S:
                    return w.workload_id
            cur = parent
        return None

    # - decisions -

    def decide(self, pid: int, zone: Zone, key: Key | None) -> Decision | NeedDigest:
        """The answer for ``pid`` opening a file of ``zone`` — or the digest it waits on."""
        if pid == self.own_pid:
            return AGENT
        if zone.kind == "canary":
            return Decision(True, "canary: allowed, so the decoy does not show itself", report="canary")
        if self.halted(zone, key):
            return Decision(False, f"halted: {zone.label} refuses every process but the agent", report="denied")
        wid = self.workload_of(pid)
        if wid is not None and (zone.kind == "protected" or wid == zone.workload_id):
            return Decision(True, f"supervised workload {wid}")
        exe = read_exe(pid)
        entry = self.allow.get(exe)
        if entry is None:
            who = f"workload {wid} (another run's directory)" if wid else "not in the custody policy"
            return Decision(False, f"{who}: {exe or 'unknown executable'}", report="denied")
        ekey = exe_identity(pid)
        if ekey is None:
            return Decision(False, f"{exe}: executable cannot be inspected", report="denied")
        digest = self.digests.get(ekey)
        if digest is None:
            return NeedDigest(pid=pid, exe=exe, exe_key=ekey, entry=entry, zone=zone)
        return self._by_digest(exe, digest, entry)

    def resolve(self, need: NeedDigest) -> Decision:
        """Finish a decision that waited on a digest (blocking: hashes the executable)."""
        digest = self.hasher(need.pid, need.exe_key)
        if digest is None:
            return Decision(False, f"{need.exe}: executable could not be hashed", report="denied")
        self.digests.put(need.exe_key, digest)
        return self._by_digest(need.exe, digest, need.entry)

    def decide_now(self, pid: int, zone: Zone, key: Key | None) -> Decision:
        """:meth:`decide`, hashing in this thread when it must (for notifications: nothing waits)."""
        d = self.decide(pid, zone, key)
        return self.resolve(d) if isinstance(d, NeedDigest) else d

    def custody_reason(self, pid: int) -> str | None:
        """Why ``pid`` is inside the custody policy (the agent, a workload, an allow-listed executable),
        or None. May hash an executable: for notifications, which nothing waits on."""
        if pid == self.own_pid:
            return AGENT.reason
        wid = self.workload_of(pid)
        if wid is not None:
            return f"supervised workload {wid}"
        exe = read_exe(pid)
        entry = self.allow.get(exe)
        ekey = exe_identity(pid) if entry is not None else None
        if entry is None or ekey is None:
            return None
        digest = self.digests.get(ekey)
        if digest is None:
            digest = self.hasher(pid, ekey)
            if digest is None:
                return None
            self.digests.put(ekey, digest)
        return f"allow-listed executable {exe}" if digest == entry.sha256 else None

    @staticmethod
    def _by_digest(exe: str, digest: str, entry: AllowEntry) -> Decision:
        if digest == entry.sha256:
            return Decision(True, f"allow-listed executable {exe}")
        return Decision(False, f"{exe}: SHA-256 {digest[:16]} is not the allow-listed {entry.sha256[:16]}",
                        report="denied")
