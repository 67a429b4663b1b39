"""Who opened a guarded file: the process as /proc shows it while its open waits on the agent.

Only reads under /proc (never a guarded file, so the responder can call these on
its own thread without raising a permission event it would have to answer
itself). Every reader returns a blank value for what it cannot read: the process
may exit at any moment.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import threading
from dataclasses import dataclass
from functools import lru_cache

import psutil

from custos.agent.processes.holders import read_cgroup

_PROC = "/proc"
CMDLINE_MAX = 4096
EXE_FDS_MAX = 64  # O_PATH descriptors of refused processes' executables held for hashing at once
EXE_HASH_MAX = 1 << 30
_exe_fds = threading.BoundedSemaphore(EXE_FDS_MAX)


@lru_cache(maxsize=1)
def _clock() -> tuple[float, float]:
    """(boot time, clock ticks per second): how /proc/PID/stat's start time becomes wall time."""
    return float(psutil.boot_time()), float(os.sysconf("SC_CLK_TCK"))


@dataclass(frozen=True, slots=True)
class ProcStat:
    """Fields of /proc/PID/stat that the policy uses."""

    pid: int
    ppid: int
    session: int
    create_time: float  # seconds since the epoch, as psutil's create_time()


def parse_stat(pid: int, text: str) -> ProcStat | None:
    """ProcStat from the text of /proc/PID/stat (pure). The command name may hold spaces
    and parentheses, so fields are counted from the last ')'."""
    head, sep, rest = text.rpartition(")")
    if not sep or "(" not in head:
        return None
    fields = rest.split()
    if len(fields) < 20:
        return None
    try:
        ppid, session, start = int(fields[1]), int(fields[3]), int(fields[19])
    except ValueError:
        return None
    boot, ticks = _clock()
    return ProcStat(pid=pid, ppid=ppid, session=session, create_time=boot + start / ticks)


def read_stat(pid: int) -> ProcStat | None:
    """/proc/PID/stat of a live process, or None."""
    try:
        fd = os.open(f"{_PROC}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # on every decision: kept cheap
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_stat(pid, raw.decode("utf-8", "replace"))


def read_exe(pid: int) -> str:
    """The path of the process's executable ("" for kernel threads, exited or unreadable)."""
    try:
        return os.readlink(f"{_PROC}/{pid}/exe")
    except OSError:
        return ""


def exe_identity(pid: int) -> tuple[int, int, int, int, int] | None:
    """(device, inode, size, mtime ns, ctime ns) of the file the process executes, or None.

    stat(2) through the /proc link: the inode really running, whatever its path shows.
    ctime is in the key because no one can set it back: a binary changed in place and
    its mtime restored still gets a new key.
    """
    try:
        st = os.stat(f"{_PROC}/{pid}/exe")
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_uid(pid: int) -> int:
    """The real uid of the process (-1 if unknown)."""
    try:
        with open(f"{_PROC}/{pid}/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def read_cmdline(pid: int) -> str:
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as f:
            raw = f.read(CMDLINE_MAX + 1)
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")[:CMDLINE_MAX]


def user_name(uid: int) -> str:
    if uid < 0:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True, slots=True)
class Opener:
    """A process that opened a guarded file, read while it was still there (blank fields: gone)."""

    pid: int
    uid: int = -1
    exe: str = ""
    exe_key: tuple[int, int, int, int, int] | None = None
    cmdline: str = ""
    cgroup: str = ""
    container_id: str = ""
    exe_fd: int = -1  # O_PATH descriptor of the executable, for hashing after the process is gone

    def exe_sha256(self) -> str:
        """SHA-256 of the executable through ``exe_fd`` ("" if none, too large or unreadable);
        releases the descriptor."""
        if self.exe_fd < 0:
            return ""
        try:
            if self.exe_key is not None and self.exe_key[2] > EXE_HASH_MAX:
                return ""
            h = hashlib.sha256()
            # Opening the magic link is a real open of the same inode (O_PATH was not).
            with open(f"/proc/self/fd/{self.exe_fd}", "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            st = os.fstat(self.exe_fd)
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != self.exe_key:
                return ""  # changed since the process was described: this digest would name nothing
            return h.hexdigest()
        except OSError:
            return ""
        finally:
            self.release()

    def release(self) -> None:
        if self.exe_fd >= 0:
            try:
                os.close(self.exe_fd)
            finally:
                object.__setattr__(self, "exe_fd", -1)
                _exe_fds.release()


def _exe_path_fd(pid: int) -> int:
    """An O_PATH descriptor of the process's executable, or -1. O_PATH opens raise no fanotify
    event, so this is safe on the responder's own thread even for a guarded executable."""
    if not _exe_fds.acquire(blocking=False):
        return -1
    try:
        return os.open(f"{_PROC}/{pid}/exe", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        _exe_fds.release()
        return -1


def describe(pid: int, *, keep_exe: bool = False) -> Opener:
    """Read who ``pid`` is now. Cheap (a few small /proc reads); never raises. ``keep_exe``
    also holds the executable (see :attr:`Opener.exe_fd`) — the caller must release it."""
    if pid <= 0:
        return Opener(pid=pid)
    cgroup, cid = read_cgroup(pid)
    return Opener(pid=pid, uid=read_uid(pid), exe=read_exe(pid), exe_key=exe_identity(pid),
                  cmdline=read_cmdline(pid), cgroup=cgroup[:1024], container_id=cid or "",
                  exe_fd=_exe_path_fd(pid) if keep_exe else -1)
