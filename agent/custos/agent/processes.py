"""Which processes hold weight files, and stopping them.

:func:`find_holders` reports every process that has one of the given files open
or memory-mapped. On Linux it reads ``/proc/PID/fd`` and ``/proc/PID/maps``
directly and matches by (device, inode) as well as by path, so a process in a
container (another mount namespace, another path) or one holding a deleted file
is still found. ``psutil.Process.open_files`` / ``memory_maps`` are the fallback
elsewhere; on Linux they are much slower (they read ``fdinfo`` per descriptor
and ``smaps``, which walks page tables: see ``bench/scan_bench.py --procs``).

:func:`stop_processes` sends SIGTERM, waits, sends SIGKILL and confirms each
process gone, returning evidence per pid; it never signals pid 1 or itself, and
never a process that replaced a recycled pid (psutil checks the start time).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import psutil

from custos.agent.scanner import FileRecord
from custos.errors import InvalidInput

log = logging.getLogger(__name__)

How = Literal["open", "mmap"]
Method = Literal["auto", "proc", "psutil"]
_PROC = "/proc"
_DELETED = " (deleted)"


@dataclass(frozen=True, slots=True)
class ProcessHold:
    """A process holding some of the asked-for files, one way (open or mmap).

    ``paths`` are the host paths as given by the caller, whatever path the
    process itself used.
    """

    pid: int
    ppid: int
    user: str
    cmdline: tuple[str, ...]
    create_time: float
    cgroup: str
    container_id: str | None
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
            holds.append(who.hold(opened, "open"))
        if mapped:
            holds.append(who.hold(mapped, "mmap"))
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


@dataclass(frozen=True, slots=True)
class _Who:
    pid: int
    ppid: int
    user: str
    cmdline: tuple[str, ...]
    create_time: float
    cgroup: str
    container_id: str | None

    def hold(self, paths: set[str], how: How) -> ProcessHold:
        return ProcessHold(
            pid=self.pid,
            ppid=self.ppid,
            user=self.user,
            cmdline=self.cmdline,
            create_time=self.create_time,
            cgroup=self.cgroup,
            container_id=self.container_id,
            paths=tuple(sorted(paths)),
            how=how,
        )


def _describe(pid: int) -> _Who | None:
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
    return _Who(pid, ppid, user, cmdline, create_time, cgroup, container_id)


# --- GPU processes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    gpu_index: int
    gpu_uuid: str
    used_memory: int | None  # bytes; None where the driver does not say


_gpu_note_lock = threading.Lock()
_gpu_noted = False


def _note_no_gpu(reason: str) -> None:
    global _gpu_noted
    with _gpu_note_lock:
        if not _gpu_noted:
            _gpu_noted = True
            log.info("no GPU process attribution: %s", reason)


def gpu_processes() -> list[GpuProcess]:
    """Processes using a GPU, through NVML where present.

    No NVML library, no driver or no GPU is not an error: returns [] and logs
    the reason once per process lifetime.
    """
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        _note_no_gpu("pynvml is not installed")
        return []
    nvml_errors = (getattr(pynvml, "NVMLError", OSError), OSError)
    try:
        pynvml.nvmlInit()
    except nvml_errors as exc:  # no driver, no library, no GPU
        _note_no_gpu(f"NVML unavailable: {exc}")
        return []
    out: list[GpuProcess] = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            seen: set[int] = set()
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                fn = getattr(pynvml, getter, None)
                if fn is None:
                    continue
                try:
                    procs = fn(handle)
                except nvml_errors as exc:
                    log.debug("NVML %s on GPU %d: %s", getter, i, exc)
                    continue
                for pr in procs:
                    if pr.pid in seen:
                        continue
                    seen.add(pr.pid)
                    mem = getattr(pr, "usedGpuMemory", None)
                    out.append(GpuProcess(int(pr.pid), i, uuid, int(mem) if isinstance(mem, int) else None))
        if not out and pynvml.nvmlDeviceGetCount() == 0:
            _note_no_gpu("NVML reports no GPU")
    except nvml_errors as exc:
        _note_no_gpu(f"NVML query failed: {exc}")
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except nvml_errors as exc:  # a failed shutdown changes nothing we report
            log.debug("NVML shutdown: %s", exc)
    return out


# --- process trees and stopping -----------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` followed by all its descendants; [] if ``pid`` does not exist."""
    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    except psutil.AccessDenied:
        return [pid]
    return [pid, *(c.pid for c in children)]


@dataclass(frozen=True, slots=True)
class StopResult:
    """Evidence of stopping one process.

    ``signals`` are the signals actually delivered, in order; ``exit_code`` is
    known only for our own children (negative: killed by that signal);
    ``refused`` says why nothing was sent; ``error`` why stopping failed.
    """

    pid: int
    name: str
    create_time: float | None
    signals: tuple[str, ...]
    exited: bool
    exit_code: int | None
    elapsed_s: float
    refused: str | None = None
    error: str | None = None


@dataclass(slots=True)
class _Stopping:
    pid: int
    proc: psutil.Process | None
    name: str = ""
    create_time: float | None = None
    signals: list[str] = field(default_factory=list)
    exited: bool = False
    exit_code: int | None = None
    refused: str | None = None
    error: str | None = None
    done_at: float | None = None


def _poll_exit(p: psutil.Process) -> tuple[bool, int | None]:
    try:
        code = p.wait(timeout=0)  # reaps our own children and returns their code
        return True, None if code is None else int(code)
    except psutil.TimeoutExpired:
        pass
    except psutil.NoSuchProcess:
        return True, None
    try:
        # A killed process whose parent has not reaped it yet no longer runs.
        return p.status() == psutil.STATUS_ZOMBIE, None
    except psutil.NoSuchProcess:
        return True, None


def _signal(s: _Stopping, sig: signal.Signals) -> None:
    assert s.proc is not None
    try:
        s.proc.send_signal(sig)  # psutil refuses if the pid was recycled since
        s.signals.append(sig.name)
    except psutil.NoSuchProcess:
        s.exited = True
    except psutil.AccessDenied:
        s.error = f"permission denied sending {sig.name}"


def _wait_all(states: list[_Stopping], deadline: float, t0: float) -> None:
    pending = [s for s in states if s.proc is not None and not s.exited and s.error is None]
    delay = 0.005
    while pending:
        for s in list(pending):
            assert s.proc is not None
            gone, code = _poll_exit(s.proc)
            if gone:
                s.exited, s.exit_code, s.done_at = True, code, time.monotonic() - t0
                pending.remove(s)
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def stop_processes(pids: Iterable[int], grace_s: float, *, kill_wait_s: float = 5.0) -> list[StopResult]:
    """Stop ``pids``: SIGTERM, wait up to ``grace_s``, SIGKILL the rest, confirm them gone.

    Returns one StopResult per distinct pid, in the order given. Never signals
    pid 0, pid 1, negative pids (process groups) or this process. Raises
    InvalidInput for a non-integer pid or a negative grace.
    """
    if not isinstance(grace_s, int | float) or grace_s < 0 or kill_wait_s < 0:
        raise InvalidInput("stop_processes: grace_s and kill_wait_s must be >= 0")
    order: list[int] = []
    for pid in pids:
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise InvalidInput(f"stop_processes: pid must be an int, got {pid!r}")
        if pid not in order:
            order.append(pid)
    t0 = time.monotonic()
    me = os.getpid()
    states: list[_Stopping] = []
    for pid in order:
        if pid <= 1:
            states.append(_Stopping(pid, None, refused="refusing to signal pid <= 1 (init or a process group)"))
            continue
        if pid == me:
            states.append(_Stopping(pid, None, refused="refusing to signal the agent itself"))
            continue
        try:
            p = psutil.Process(pid)
            s = _Stopping(pid, p, create_time=p.create_time())
            try:
                s.name = p.name()
            except psutil.AccessDenied:
                pass
        except psutil.NoSuchProcess:
            s = _Stopping(pid, None, exited=True, done_at=0.0)
        states.append(s)
    for s in states:
        if s.proc is not None:
            _signal(s, signal.SIGTERM)
    _wait_all(states, t0 + grace_s, t0)
    for s in states:
        if s.proc is not None and not s.exited and s.error is None:
            _signal(s, signal.SIGKILL)
    _wait_all(states, time.monotonic() + kill_wait_s, t0)
    out = []
    for s in states:
        error = s.error
        if s.proc is not None and not s.exited and error is None:
            error = "still running after SIGKILL (uninterruptible sleep?)"
        out.append(
            StopResult(
                pid=s.pid,
                name=s.name,
                create_time=s.create_time,
                signals=tuple(s.signals),
                exited=s.exited,
                exit_code=s.exit_code,
                elapsed_s=s.done_at if s.done_at is not None else time.monotonic() - t0,
                refused=s.refused,
                error=error,
            )
        )
    return out
