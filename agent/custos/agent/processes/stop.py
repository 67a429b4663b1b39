"""Stopping processes: SIGTERM, a grace period, SIGKILL, and evidence that each one is gone.

:func:`stop_processes` returns evidence per pid; it never signals pid 1 or
itself, and never a process that replaced a recycled pid (psutil checks the
start time). :func:`process_tree` names what to stop along with a process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

from custos.errors import InvalidInput


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
