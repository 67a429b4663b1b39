"""Which processes hold weight files: open or memory-mapped, found through /proc.

:func:`find_holders` reports every process that has one of the given files open
or memory-mapped. On Linux it reads ``/proc/PID/fd`` and ``/proc/PID/maps``
directly and matches by (device, inode) as well as by path, so a process in a
container (another mount namespace, another path) or one holding a deleted file
is still found. ``psutil.Process.open_files`` / ``memory_maps`` are the fallback
elsewhere; on Linux they are much slower (they read ``fdinfo`` per descriptor
and ``smaps``, which walks page tables: see ``bench/scan_bench.py --procs``).
Each holder is described with its user, command line, cgroup and container.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import psutil

from custos.agent.scanner import FileRecord
from custos.errors import InvalidInput

How = Literal["open", "mmap"]
Method = Literal["auto", "proc", "psutil"]
_PROC = "/proc"
_DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """Who a process is. Fields that could not be read are left blank ("?", -1, ())."""

    pid: int
    ppid: int
    user: str
    cmdline: tuple[str, ...]
    create_time: float
    cgroup: str
    container_id: str | None


@dataclass(frozen=True, slots=True)
class ProcessHold(ProcessInfo):
    """A process holding some of the asked-for files, one way (open or mmap).

    ``paths`` are the host paths as given by the caller, whatever path the
    process itself used.
    """

    paths: tuple[str, ...]
    how: How


@dataclass(frozen=True, slots=True)
class HolderScan:
    """All holds found, plus the processes that could not be inspected (fail closed: say so)."""

    holds: tuple[ProcessHold, ...]
    inaccessible: tuple[tuple[int, str], ...]  # (pid, reason)
    processes_scanned: int


# --- targets ------------------------------------------------------------------------------------

Target = str | os.PathLike[str] | FileRecord


@dataclass(slots=True)
class _Targets:
    by_key: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    by_path: dict[str, list[str]] = field(default_factory=dict)
    inodes: set[bytes] = field(default_factory=set)  # decimal, as /proc/PID/maps prints them

    def add_key(self, dev: int, ino: int, path: str) -> None:
        lst = self.by_key.setdefault((dev, ino), [])
        if path not in lst:
            lst.append(path)
        self.inodes.add(str(ino).encode())

    def add_path(self, alias: str, path: str) -> None:
        lst = self.by_path.setdefault(alias, [])
        if path not in lst:
            lst.append(path)

    def lookup(self, path: str | None, key: tuple[int, int] | None) -> list[str]:
        if key is not None and key in self.by_key:
            return self.by_key[key]
        if path is not None:
            if path.endswith(_DELETED):
                path = path[: -len(_DELETED)]
            return self.by_path.get(path, [])
        return []


def _targets(items: Iterable[Target]) -> _Targets:
    t = _Targets()
    for item in items:
        if isinstance(item, FileRecord):
            path = item.path
            t.add_key(item.device, item.inode, path)
        elif isinstance(item, str | os.PathLike):
            path = os.path.abspath(os.fspath(item))
            try:
                st = os.stat(path)
                t.add_key(st.st_dev, st.st_ino, path)
            except OSError:
                pass  # gone: still matched by path (a holder may keep a deleted file)
        else:
            raise InvalidInput(f"find_holders: want paths or FileRecords, got {type(item).__name__}")
        t.add_path(path, path)
        real = os.path.realpath(path)
        if real != path:
            t.add_path(real, path)
    return t


# --- /proc readers ------------------------------------------------------------------------------


class _Denied(Exception):
    pass


def _proc_open(pid: int, t: _Targets) -> set[str]:
    """Host paths of targets that ``pid`` has open. Raises _Denied, FileNotFoundError."""
    fd_dir = f"{_PROC}/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except PermissionError:
        raise _Denied("permission denied reading open files") from None
    found: set[str] = set()
    for fd in fds:
        link_path = f"{fd_dir}/{fd}"
        try:
            link = os.readlink(link_path)
        except OSError:
            continue  # closed meanwhile
        if not link.startswith("/"):
            continue  # socket:[…], pipe:[…], anon_inode:…
        hit = t.by_path.get(link)
        if hit is None:
            # Another mount namespace or a bind mount shows another path: compare inodes.
            try:
                st = os.stat(link_path)
            except OSError:
                continue
            hit = t.lookup(link, (st.st_dev, st.st_ino))
        found.update(hit)
    return found


def _proc_mmap(pid: int, t: _Targets) -> set[str]:
    """Host paths of targets that ``pid`` has memory-mapped. Raises _Denied, FileNotFoundError."""
    try:
        with open(f"{_PROC}/{pid}/maps", "rb") as f:
            data = f.read()
    except PermissionError:
        raise _Denied("permission denied reading memory maps") from None
    found: set[str] = set()
    inodes = t.inodes
    by_path = t.by_path
    last = b""
    for line in data.splitlines():
        # address perms offset dev inode path — a file is mapped in several segments
        # in a row, so skip repeats cheaply.
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        ino, mpath = parts[4], parts[5]
        if mpath == last:
            continue
        last = mpath
        if ino not in inodes and os.fsdecode(mpath) not in by_path:
            continue
        major, _, minor = parts[3].partition(b":")
        try:
            key = (os.makedev(int(major, 16), int(minor, 16)), int(ino))
        except ValueError:
            key = None
        found.update(t.lookup(os.fsdecode(mpath), key))
    return found


def _psutil_holds(pid: int, t: _Targets) -> tuple[set[str], set[str]]:
    """(open, mmap) host paths via psutil, matched by path only. Raises psutil errors."""
    p = psutil.Process(pid)
    opened: set[str] = set()
    for f in p.open_files():
        opened.update(t.lookup(f.path, None))
    mapped: set[str] = set()
    try:
        maps = p.memory_maps(grouped=False)
    except (AttributeError, NotImplementedError):
        maps = []
    for m in maps:
        mapped.update(t.lookup(m.path, None))
    return opened, mapped


# --- cgroups and containers ---------------------------------------------------------------------

# One path component naming a container: docker (cgroupfs "/docker/<id>" or systemd
# "docker-<id>.scope"), containerd under Kubernetes ("cri-containerd-<id>.scope" or
# "/kubepods/…/pod<uid>/<id>"), CRI-O ("crio-<id>.scope") and podman ("libpod-<id>.scope").
# The "…-conmon-<id>" monitors run outside the container and do not match.
_CONTAINER_COMPONENT = re.compile(r"^(?:(?:docker|cri-containerd|crio|libpod)-)?([0-9a-f]{64})(?:\.scope)?$")


def parse_container_id(cgroup_path: str) -> str | None:
    """The innermost container id in a cgroup path, or None (pure)."""
    for component in reversed(cgroup_path.split("/")):
        m = _CONTAINER_COMPONENT.match(component)
        if m:
            return m.group(1)
    return None


def parse_cgroup_file(text: str) -> tuple[str, str | None]:
    """(cgroup path, container id) from the text of /proc/PID/cgroup (pure).

    Prefers a line that names a container, then the unified (v2) hierarchy,
    then the first line.
    """
    paths: list[tuple[str, str]] = []
    for line in text.splitlines():
        hid, sep, rest = line.partition(":")
        if not sep:
            continue
        _controllers, sep, path = rest.partition(":")
        if sep:
            paths.append((hid, path))
    for _, path in paths:
        cid = parse_container_id(path)
        if cid:
            return path, cid
    for hid, path in paths:
        if hid == "0":
            return path, None
    return (paths[0][1], None) if paths else ("", None)


def read_cgroup(pid: int) -> tuple[str, str | None]:
    """(cgroup path, container id) of ``pid``; ("", None) where there are no cgroups."""
    try:
        with open(f"{_PROC}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return parse_cgroup_file(f.read())
    except OSError:
        return "", None


# --- finding holders ----------------------------------------------------------------------------


def _pids() -> list[int]:
    return sorted(psutil.pids())


def inspect_holders(
    targets: Iterable[Target],
    *,
    pids: Iterable[int] | None = None,
    method: Method = "auto",
    include_self: bool = False,
) -> HolderScan:
    """Find processes that hold any of ``targets`` open or memory-mapped.

    ``targets`` are paths or scanner FileRecords (whose device and inode are
    used even if the path is gone). ``method`` "auto" reads /proc on Linux and
    uses psutil elsewhere. Processes that vanish meanwhile are skipped; those we
    may not inspect are listed in ``inaccessible``. Raises InvalidInput.
    """
    if method not in ("auto", "proc", "psutil"):
        raise InvalidInput(f"unknown method {method!r}")
    use_proc = method == "proc" or (method == "auto" and sys.platform.startswith("linux") and os.path.isdir(_PROC))
    t = _targets(targets)
    if not t.by_path:
        return HolderScan((), (), 0)
    me = os.getpid()
    candidates = _pids() if pids is None else sorted(set(pids))
    holds: list[ProcessHold] = []
    denied: list[tuple[int, str]] = []
    scanned = 0
    for pid in candidates:
        if pid == me and not include_self:
            continue
        scanned += 1
        try:
            if use_proc:
                opened, mapped = _proc_holds(pid, t)
            else:
                opened, mapped = _psutil_holds(pid, t)
        except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
            continue  # exited meanwhile (zombies have no files and land here too)
        except (_Denied, PermissionError, psutil.AccessDenied) as exc:
            denied.append((pid, str(exc) or "access denied"))
            continue
        if not opened and not mapped:
            continue
        who = _describe(pid)
        if who is None:
            continue
        if opened:
            holds.append(_hold(who, opened, "open"))
        if mapped:
            holds.append(_hold(who, mapped, "mmap"))
    return HolderScan(tuple(holds), tuple(denied), scanned)


def _proc_holds(pid: int, t: _Targets) -> tuple[set[str], set[str]]:
    opened = _proc_open(pid, t)
    mapped = _proc_mmap(pid, t)
    return opened, mapped


def find_holders(
    targets: Iterable[Target], *, pids: Iterable[int] | None = None, method: Method = "auto"
) -> list[ProcessHold]:
    """The holds of :func:`inspect_holders`, as a list. Raises InvalidInput."""
    return list(inspect_holders(targets, pids=pids, method=method).holds)


def _hold(who: ProcessInfo, paths: set[str], how: How) -> ProcessHold:
    known = {f.name: getattr(who, f.name) for f in dataclasses.fields(ProcessInfo)}
    return ProcessHold(**known, paths=tuple(sorted(paths)), how=how)


def _describe(pid: int) -> ProcessInfo | None:
    """Who ``pid`` is; None if it exited. Fields we may not read are left blank ("?", -1, ())."""
    ppid, create_time, user, cmdline = -1, 0.0, "?", ()
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            ppid = p.ppid()
            create_time = p.create_time()
            try:
                user = p.username()
            except (psutil.AccessDenied, KeyError):
                user = str(p.uids().real)
            try:
                cmdline = tuple(p.cmdline())
            except psutil.AccessDenied:
                pass
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        pass
    cgroup, container_id = read_cgroup(pid)
    return ProcessInfo(pid, ppid, user, cmdline, create_time, cgroup, container_id)
