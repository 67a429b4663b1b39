"""A supervised workload's processes: starting its command as the caller, its process tree, its exit.

The command runs in its own session. For another user's run a fresh, isolated
interpreter drops to that user first (:data:`_DROP_PRIVILEGES`). The agent,
a child subreaper, adopts what the workload orphans, so its whole tree can be
tracked and stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from custos.agent.processes import process_tree
from custos.agent.workloads.request import RunRequest
from custos.errors import FailedPrecondition, InvalidInput


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (Linux prctl); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def alive(pid: int, create_time: float) -> bool:
    """Is ``pid`` still the process that started at ``create_time``, and not a zombie?"""
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def sessions() -> dict[int, list[int]]:
    """Session id -> pids, from /proc (Linux); {} elsewhere."""
    out: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for n in names:
        if not n.isdigit():
            continue
        try:
            with open(f"/proc/{n}/stat", "rb") as f:
                data = f.read()
            # pid (comm) state ppid pgrp session ... — comm may hold spaces and parentheses
            rest = data[data.rindex(b")") + 2:].split()
            out.setdefault(int(rest[3]), []).append(int(n))
        except (OSError, ValueError, IndexError):
            continue
    return out


def members(root: int, known: dict[int, float], by_session: dict[int, list[int]]) -> dict[int, float]:
    """pid -> create time of a workload's processes: the tree under ``root``, its session, and the
    ``known`` ones that still live (reparented away from the tree, still ours)."""
    pids = set(process_tree(root)) | set(by_session.get(root, ()))
    fresh: dict[int, float] = {}
    for pid in pids:
        if pid in known:
            fresh[pid] = known[pid]
            continue
        try:
            fresh[pid] = psutil.Process(pid).create_time()
        except psutil.Error:
            continue
    for pid, ct in known.items():
        if pid not in fresh and alive(pid, ct):
            fresh[pid] = ct
    return fresh


def reap_adopted(roots: set[int]) -> None:
    """Reap zombies this agent adopted as a subreaper (not the workload roots: their watchers do)."""
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    for c in children:
        if c.pid in roots:
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(c.pid, os.WNOHANG)


def reap(pid: int) -> int | None:
    """Collect an exited child's exit code; None if someone else reaped it (a halt) or it will not say."""
    for _ in range(10):
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None  # reaped by the halt's stop_processes; it noted the code
        if got:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    return None


def watch_exit(pid: int, on_exit: Callable[[], None]) -> bool:
    """Call ``on_exit`` on the running loop when ``pid`` exits (a pidfd); False where there are no pidfds."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return False

    def ready() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        on_exit()

    loop.add_reader(fd, ready)
    return True


async def exited(pid: int) -> None:
    """Return once ``pid`` has exited, looking every 100 ms (without pidfds; a zombie has exited)."""
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        await asyncio.sleep(0.1)


class Launch:
    """How to start one run's command: what to exec, where, with which environment and stdio.

    :meth:`start` starts it; :meth:`close` (always, started or not) closes this side's
    descriptors and hands another user's run its environment.
    """

    def __init__(self, req: RunRequest, env: dict[str, str], fds: list[int], log_path: Path) -> None:
        """``fds``: stdin, stdout, stderr of an attached run, or [] (output goes to ``log_path``).
        Raises InvalidInput (environment too large for another user's run)."""
        self.req = req
        self.argv, self.cwd, self.env = list(req.argv), req.cwd, env
        self.env_pipe: tuple[int, int] | None = None
        self.env_data = b""
        if req.uid != os.geteuid():
            # Another user's run: a fresh, isolated interpreter with a clean environment
            # drops to that user, then enters the caller's directory and execs with the
            # caller's environment (read from a pipe). Nothing runs privileged with
            # the caller's environment (LD_PRELOAD and friends), and the agent itself
            # never fork()s with gRPC's threads alive (subprocess uses vfork here).
            self.env_data = json.dumps(env).encode()
            if len(self.env_data) >= _ENV_PIPE_MAX:
                raise InvalidInput("the environment is too large to pass to another user's workload")
            self.env_pipe = os.pipe()
            self.argv = [sys.executable, "-I", "-S", "-c", _DROP_PRIVILEGES, str(self.env_pipe[0]), str(req.uid),
                         str(req.gid), ",".join(map(str, _groups_of(req.uid, req.gid))), req.cwd, *req.argv]
            self.cwd, self.env = "/", {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        self.log_file: int | None = None
        self.stdin: int
        if len(fds) == 3:
            self.stdin, self.stdout, self.stderr = fds
        else:
            self.stdin = subprocess.DEVNULL
            log_path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            if req.uid != os.geteuid():
                os.fchown(fd, req.uid, req.gid)
            self.log_file = self.stdout = self.stderr = fd

    def start(self) -> subprocess.Popen[bytes]:
        """Start the command in its own session. Raises InvalidInput (no such command or
        directory), FailedPrecondition (any other failure to start)."""
        try:
            return subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=self.stdin, stdout=self.stdout,
                                    stderr=self.stderr, start_new_session=True, close_fds=True,
                                    pass_fds=(self.env_pipe[0],) if self.env_pipe else ())
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise InvalidInput(f"cannot start {self.req.argv[0]!r} in {self.req.cwd}: {exc.strerror}") from None
        except OSError as exc:
            raise FailedPrecondition(f"cannot start {self.req.argv[0]!r}: {exc.strerror}") from None

    def close(self) -> None:
        if self.log_file is not None:
            os.close(self.log_file)
            self.log_file = None
        if self.env_pipe is not None:
            os.close(self.env_pipe[0])
            try:
                os.write(self.env_pipe[1], self.env_data)  # fits the pipe buffer: never blocks
            except OSError:
                pass  # the child died; its exit says why
            os.close(self.env_pipe[1])
            self.env_pipe = None


# Runs as root in a fresh `python -I -S` with a clean environment; stdlib only.
# argv: ENV_FD UID GID GROUPS CWD CMD [ARG...]
_DROP_PRIVILEGES = """
import json, os, sys, warnings  # every import first: the interpreter may be unreadable to the user
fd, uid, gid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
with os.fdopen(fd, "rb") as f:
    env = json.loads(f.read())
os.setgroups([int(g) for g in sys.argv[4].split(",") if g])
os.setgid(gid)
os.setuid(uid)
if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
    os._exit(126)
try:
    os.chdir(sys.argv[5])
except OSError as e:
    sys.stderr.write("custos run: cannot enter %s: %s\\n" % (sys.argv[5], e.strerror))
    os._exit(126)
try:
    os.execvpe(sys.argv[6], sys.argv[6:], env)
except OSError as e:
    sys.stderr.write("custos run: cannot start %r: %s\\n" % (sys.argv[6], e.strerror))
    os._exit(127)
"""
_ENV_PIPE_MAX = 60 << 10


def _groups_of(uid: int, gid: int) -> list[int]:
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return []
