"""The permission responder: every FAN_OPEN_PERM event answered within a bound, whatever happens.

Three kinds of threads share a table of pending events (each keyed by its event
descriptor; whoever pops an entry answers it and closes the descriptor, so an
event is answered exactly once and a descriptor never closed twice):

- the **responder** reads the group, enters each event in the table at once, and
  decides it there when it can (the agent's own opens, workload members, refusals:
  a few reads of /proc). A decision that needs an allow-listed executable's digest
  goes to a **worker**, which answers when the digest is known;
- the **watchdog** answers every event older than the bound with its zone's
  default (fail closed: deny; fail open: allow; zone not yet known: deny), and,
  if the responder has not come round its loop for ``stall_s``, reads and answers
  the group itself with those defaults (the agent's own opens still allowed)
  until the responder is back. The host never waits on a stuck decision; a
  stuck responder costs defaults, not hangs.

Before a refusal is written, the refused process is described (/proc: it waits in
open(2) until answered, so it is still there), and the refusal reported.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from custos.agent.guard.fanotify import Fanotify, FanotifyEvent, fd_path
from custos.agent.guard.policy import AGENT, NOT_GUARDED, Decision, Key, NeedDigest, Policy, Zone
from custos.agent.guard.procinfo import Opener, describe

log = logging.getLogger("custos.agent.guard")

# Response-time histogram bucket bounds, in seconds (Prometheus-style, cumulative when exported).
REPORT_EVERY_S = 1.0  # one report per (kind, pid, path) a second at most: a flood costs answers, not /proc reads
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(slots=True)
class ResponderStats:
    """Counters of answered events. Updated under the responder's lock."""

    answered: int = 0
    allowed: int = 0
    denied: int = 0
    defaults: int = 0  # answered with the zone's default: no decision within the bound
    takeovers: int = 0  # the watchdog found the responder stalled
    answer_errors: int = 0
    max_s: float = 0.0
    sum_s: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))

    def record(self, seconds: float, allow: bool, default: bool) -> None:
        self.answered += 1
        if allow:
            self.allowed += 1
        else:
            self.denied += 1
        if default:
            self.defaults += 1
        self.max_s = max(self.max_s, seconds)
        self.sum_s += seconds
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1

    def as_dict(self) -> dict[str, Any]:
        cumulative, total = [], 0
        for n in self.buckets:
            total += n
            cumulative.append(total)
        return {"answered": self.answered, "allowed": self.allowed, "denied": self.denied,
                "defaults": self.defaults, "watchdog_takeovers": self.takeovers,
                "answer_errors": self.answer_errors, "max_response_ms": round(self.max_s * 1000, 3),
                "response_seconds_sum": self.sum_s,
                "response_buckets": [[b, c] for b, c in zip([*BUCKETS, "+Inf"], cumulative, strict=True)]}


@dataclass(frozen=True, slots=True)
class Opened:
    """A guarded open to report: who opened what, how it was seen, and the answer."""

    kind: str  # denied | read | canary
    opener: Opener
    path: str
    key: Key | None
    zone: Zone | None
    reason: str
    at_unix_ns: int
    mode: str = "fanotify-perm"  # fanotify-perm | fanotify-notify | inotify


@dataclass(slots=True, eq=False)
class _Pending:
    ev: FanotifyEvent
    received: float
    deadline: float
    at_unix_ns: int
    zone: Zone | None = None
    key: Key | None = None
    path: str = ""


class PermissionResponder:
    """Answers one permission group's events (see the module docstring). ``on_report`` gets a
    :class:`Opened` for each reported open (from any of its threads; it must not block)."""

    def __init__(self, group: Fanotify, policy: Policy, *, bound_s: float = 0.25,
                 on_report: Callable[[Opened], None] | None = None, stall_s: float | None = None,
                 workers: int = 2) -> None:
        if not 0.001 <= bound_s <= 60:
            raise ValueError("the response bound must be between 1 ms and 60 s")
        self.group = group
        self.policy = policy
        self.bound_s = bound_s
        self.stall_s = stall_s if stall_s is not None else max(1.0, 4 * bound_s)
        self.on_report = on_report or (lambda r: None)
        self.stats = ResponderStats()
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._closing = threading.Event()
        self._beat = time.monotonic()
        self._taken_over = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="custos-guard-digest")
        self._threads: list[threading.Thread] = []
        self._reported: dict[tuple[str, int, str], float] = {}
        self.failed: str | None = None

    # - life cycle -

    def start(self) -> None:
        for name, fn in (("custos-guard-responder", self._responder), ("custos-guard-watchdog", self._watchdog)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop answering: pending events get their defaults, then the threads end. The caller
        closes the group (the kernel allows whatever is still queued)."""
        self._closing.set()
        for t in self._threads:
            t.join(timeout=max(2.0, 4 * self.bound_s))
        for p in self._pop_all():
            self._answer(p, self._default(p), default=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    # - the responder thread -

    def _responder(self) -> None:
        while not self._closing.is_set():
            self._beat = time.monotonic()
            try:
                events = self.group.read(0.1)
            except OSError as exc:
                if self._closing.is_set():
                    return
                self._fail(f"reading the fanotify group failed: {exc}")
                return
            for ev in events:
                self._take(ev)

    def _take(self, ev: FanotifyEvent, *, defaults_only: bool = False) -> None:
        if not ev.is_permission:
            if ev.fd >= 0:
                os.close(ev.fd)
            return
        now = time.monotonic()
        p = _Pending(ev=ev, received=now, deadline=now + self.bound_s, at_unix_ns=time.time_ns())
        with self._lock:
            self._pending[ev.fd] = p
        try:
            d = self._decide(p, defaults_only=defaults_only)
        except Exception:  # a bug here must cost one default, not the responder
            log.exception("deciding an open failed; answering with the zone's default")
            d = self._default(p)
        if d is not None:
            self._finish(p, d)

    def _decide(self, p: _Pending, *, defaults_only: bool) -> Decision | None:
        ev = p.ev
        if ev.pid == self.policy.own_pid:
            return AGENT
        try:
            st = os.fstat(ev.fd)
            p.key = (st.st_dev, st.st_ino)
        except OSError:
            p.key = None
        p.path = fd_path(ev.fd)
        p.zone = self.policy.zone_for(p.key, p.path)
        if p.zone is None:
            return NOT_GUARDED
        if defaults_only:
            return self._default(p)
        d = self.policy.decide(ev.pid, p.zone, p.key)
        if isinstance(d, NeedDigest):
            try:
                self._pool.submit(self._digest_job, p, d)
            except RuntimeError:  # shutting down
                return self._default(p)
            return None
        return d

    def _digest_job(self, p: _Pending, need: NeedDigest) -> None:
        with self._lock:
            if self._pending.get(p.ev.fd) is not p:
                return  # answered by the deadline meanwhile
        try:
            d = self.policy.resolve(need)
        except Exception:
            log.exception("hashing an allow-listed executable failed")
            d = self._default(p)
        self._finish(p, d)

    # - answering -

    def _default(self, p: _Pending) -> Decision:
        if p.ev.pid == self.policy.own_pid:
            return AGENT
        if p.zone is None:
            return Decision(False, "no decision within the bound (zone not yet known: refused)", report="denied")
        if p.zone.kind == "canary":
            return Decision(True, "canary: no decision within the bound; allowed", report="canary")
        if p.zone.fail_closed:
            return Decision(False, f"no decision within {self.bound_s * 1000:.0f} ms: {p.zone.label} fails closed",
                            report="denied")
        return Decision(True, f"no decision within {self.bound_s * 1000:.0f} ms: {p.zone.label} fails open")

    def _finish(self, p: _Pending, d: Decision, *, default: bool = False) -> None:
        with self._lock:
            if self._pending.get(p.ev.fd) is not p:
                return  # someone else answered it (and the descriptor number may be another event's now)
            del self._pending[p.ev.fd]
        self._answer(p, d, default=default)

    def _answer(self, p: _Pending, d: Decision, *, default: bool) -> None:
        allow = d.allow
        if allow and p.zone is not None and p.ev.pid != self.policy.own_pid and self.policy.halted(p.zone, p.key):
            # A halt began while this was being decided: from the halt on, nothing opens.
            d = Decision(False, f"halted: {p.zone.label} refuses every process but the agent", report="denied")
            allow = False
        opener = describe(p.ev.pid, keep_exe=True) if d.report and self._first(d.report, p) else None
        # (described before the answer lets the process go)
        try:
            self.group.answer(p.ev, allow)
        except OSError as exc:
            with self._lock:
                self.stats.answer_errors += 1
            log.warning("could not answer a fanotify event", extra={"fields": {"error": str(exc)}})
        with self._lock:
            self.stats.record(time.monotonic() - p.received, allow, default)
        if d.report and opener is not None:
            try:
                self.on_report(Opened(kind=d.report, opener=opener, path=p.path, key=p.key, zone=p.zone,
                                       reason=d.reason, at_unix_ns=p.at_unix_ns))
            except Exception:
                opener.release()
                log.exception("reporting a guarded open failed")

    def _first(self, kind: str, p: _Pending) -> bool:
        """Is this the first report of (kind, pid, path) within REPORT_EVERY_S?"""
        now = time.monotonic()
        k = (kind, p.ev.pid, p.path)
        with self._lock:
            last = self._reported.get(k)
            if last is not None and now - last < REPORT_EVERY_S:
                return False
            self._reported[k] = now
            if len(self._reported) > 4096:
                self._reported = {kk: t for kk, t in self._reported.items() if now - t < REPORT_EVERY_S}
        return True

    def _pop_all(self) -> list[_Pending]:
        with self._lock:
            items = list(self._pending.values())
            self._pending.clear()
        return items

    # - the watchdog thread -

    def _watchdog(self) -> None:
        tick = min(0.05, self.bound_s / 4)
        while not self._closing.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [p for p in self._pending.values() if p.deadline <= now]
            for p in late:
                self._finish(p, self._default(p), default=True)
            stalled = now - self._beat > self.stall_s
            if stalled and not self._taken_over:
                self._taken_over = True
                with self._lock:
                    self.stats.takeovers += 1
                log.error("the fanotify responder is stalled: the watchdog answers opens with each zone's default",
                          extra={"fields": {"stalled_s": round(now - self._beat, 3)}})
            elif not stalled and self._taken_over:
                self._taken_over = False
                log.warning("the fanotify responder is back")
            if self._taken_over:
                try:
                    for ev in self.group.read(0):
                        self._take(ev, defaults_only=True)
                except OSError as exc:
                    if not self._closing.is_set():
                        self._fail(f"the watchdog cannot read the fanotify group: {exc}")
                    return

    def _fail(self, why: str) -> None:
        """The group cannot be read any more: answer what is pending and stop (the guard closes the group)."""
        self.failed = why
        log.error("kernel-checked opens stopped", extra={"fields": {"error": why}})
        for p in self._pop_all():
            self._answer(p, self._default(p), default=True)
