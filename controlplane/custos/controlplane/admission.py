"""Admission of custody-stream openings: a reconnect storm is served first come, first served.

After a control-plane restart every agent reconnects within its backoff's spread: ten
thousand openings (a host read, a lease written, the first report) arrive in a few
seconds. Served all at once, they share the replica's CPU evenly, so every one of them
takes as long as the whole storm, longer than an agent waits for its lease: each attempt
is abandoned just before it would have finished and the storm never ends (measured: no
host of 10,000 had its lease back 300 s after a restart).

``Admission`` lets ``at_once`` openings run and queues the rest in arrival order, so the
first ones finish in their own time and the queue drains at the replica's rate. An
opening that would wait longer than ``max_wait_s`` (the queue ahead of it, at the rate
openings finished over the last ``window_s``) is refused at once with ``Busy`` and a
retry hint (the time the queue ahead of it takes to drain): a refusal costs a handshake
and an RPC, an abandoned attempt costs its whole opening.

The agent's side (``custos.agent.stream``): the server takes a stream by sending its
initial metadata before it queues it; once it has, the agent waits ``QUEUED_LEASE_TIMEOUT``
for the lease instead of ``FIRST_LEASE_TIMEOUT``, and a refusal's hint sets its next delay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from custos.errors import BackendUnavailable


class Busy(BackendUnavailable):
    """This replica has more stream openings queued than it can serve in ``max_wait_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Admission:
    def __init__(self, *, at_once: int = 64, max_wait_s: float = 20.0, window_s: float = 5.0,
                 min_rate: float = 50.0, clock: Callable[[], float] = time.monotonic) -> None:
        if at_once < 1 or max_wait_s <= 0 or window_s <= 0 or min_rate <= 0:
            raise ValueError("admission: want at_once >= 1 and positive max_wait_s, window_s, min_rate")
        self.at_once = at_once
        self.max_wait_s = max_wait_s
        self.window_s = window_s
        self.min_rate = min_rate  # openings/s assumed while too few have finished (a cold start)
        self.clock = clock
        self.running = 0
        self.waiting = 0
        self.refused = 0  # since start (metrics, tests)
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()  # arrival order
        self._finished: collections.deque[float] = collections.deque()
        self._busy_since: float | None = None  # when openings began after none for a window

    def rate(self) -> float:
        """Openings finished a second over the last ``window_s`` (at least ``min_rate``) — or,
        in the first ``window_s`` of serving after none for a window (a restarted replica), over
        the time it has served (at least 1 s): dividing the first second's openings by the whole
        window told a storm's first refused hosts to come back five times too late."""
        now = self.clock()
        while self._finished and self._finished[0] < now - self.window_s:
            self._finished.popleft()
        span = self.window_s
        if self._busy_since is not None:
            span = min(self.window_s, max(1.0, now - self._busy_since))
        return max(self.min_rate, len(self._finished) / span)

    def wait_estimate(self) -> float:
        """Seconds an opening arriving now would wait for its place."""
        ahead = self.waiting + self.running - self.at_once + 1
        return max(0.0, ahead / self.rate())

    @contextlib.asynccontextmanager
    async def opening(self) -> AsyncIterator[float]:
        """Hold one of the ``at_once`` places for the block; yields the seconds waited for
        it. Raises Busy at once (nothing queued) when the wait would exceed ``max_wait_s``."""
        wait = self.wait_estimate()  # (rate() dropped the finished openings past the window)
        if not self._finished and self.running == 0 and self.waiting == 0:
            self._busy_since = self.clock()
        if wait > self.max_wait_s:
            self.refused += 1
            raise Busy(f"control plane busy: {self.waiting} stream openings queued, about {wait:.0f} s "
                       f"to serve them; retry in {wait:.0f} s", wait)
        t0 = self.clock()
        await self._acquire()
        try:
            yield self.clock() - t0
        finally:
            self._finished.append(self.clock())
            self._release()

    async def _acquire(self) -> None:
        if self.running < self.at_once and not self.waiting:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        self.waiting += 1
        try:
            await fut  # _release counted this opening as running before waking it
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # given the place, cancelled before taking it
            raise  # (a cancelled future stays queued; _release skips it)
        finally:
            self.waiting -= 1

    def _release(self) -> None:
        self.running -= 1
        while self._queue and self.running < self.at_once:
            fut = self._queue.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(None)
