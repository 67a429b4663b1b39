"""The control plane's background loops: run a round every ``interval`` seconds until
``stop`` is set. A failing round is logged and the loop goes on: one bad round of a
sweeper must not end custody checks for good.

``every`` is the whole loop; loops of another shape (the rules lease, the metrics
refresh, the notification dispatcher) are built of ``pause`` and ``safe``."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from custos.errors import CustosError

log = logging.getLogger("custos.periodic")
# safe() has always logged under the rules' name (the rules loop was its first user).
_rules_logger = logging.getLogger("custos.rules")


async def pause(interval: float, stop: asyncio.Event, wake: asyncio.Event | None = None) -> None:
    """Wait ``interval`` seconds, or less if ``stop`` (or ``wake``) is set meanwhile."""
    if wake is None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
        return
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def spaced(interval: float, took: float, duty: float) -> float:
    """The pause after a round that took ``took`` s: ``interval``, or longer so that rounds
    hold at most ``duty`` of the time (a round whose work grows with the fleet backs off
    instead of taking the event loop from the streams)."""
    return max(interval, took * (1.0 - duty) / duty)


async def every(interval: float, stop: asyncio.Event, round_: Callable[[], Awaitable[object]], what: str,
                *, final: bool = False) -> None:
    """Await ``round_()`` every ``interval`` s until ``stop``; once more at the end if ``final``."""
    while not stop.is_set():
        await pause(interval, stop)
        if stop.is_set() and not final:
            return
        try:
            await round_()
        except Exception as exc:  # noqa: BLE001 - the loop must outlive a bad round
            log.warning("%s failed: %s", what, exc)


async def safe(coro: Awaitable[Any], what: str) -> Any:
    """Run one background round; a failure is logged, never fatal to the loop.

    Returns the round's result, or None if it raised (nothing is raised)."""
    try:
        return await coro
    except CustosError as exc:
        _rules_logger.warning("%s failed: %s", what, exc)
    except Exception:  # the loop must outlive a bad round
        _rules_logger.exception("%s failed", what)
    return None


FULL_COLLECTIONS_OFF = 1_000_000  # gen-1 collections between automatic full ones: never, in practice


class ShortPauses:
    """Keeps the garbage collector from stopping the event loop for long: everything alive is
    moved out of the collector's generations (``gc.freeze``) every ``interval`` s, so the
    collections that run meanwhile look only at what is new. With ten thousand custody streams
    one full collection holds the loop for about a second (a halt's acks would wait behind it).
    What died among the frozen objects is collected every ``full_every`` rounds (unfreeze, one
    full collection). The collector's own full collections are left to these rounds (its third
    threshold raised): one would otherwise look at everything promoted since the last freeze
    — at a halt of ten thousand hosts, their acks and messages — and take hundreds of ms."""

    def __init__(self, interval: float = 5.0, full_every: int = 720) -> None:
        self.interval, self.full_every = interval, full_every
        self.rounds = 0

    @staticmethod
    def take_over() -> None:
        """Automatic full collections off; young ones as configured."""
        g0, g1, _ = gc.get_threshold()
        gc.set_threshold(g0, g1, FULL_COLLECTIONS_OFF)

    def round(self) -> None:
        self.rounds += 1
        if self.rounds % self.full_every == 0:
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)  # what is young and already garbage is not frozen
        gc.freeze()

    async def run(self, stop: asyncio.Event) -> None:
        self.take_over()
        self.round()
        while not stop.is_set():
            await pause(self.interval, stop)
            self.round()
