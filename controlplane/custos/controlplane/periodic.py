"""The control plane's background loops: run a round every ``interval`` seconds until
``stop`` is set. A failing round is logged and the loop goes on: one bad round of a
sweeper must not end custody checks for good."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("custos.periodic")


async def every(interval: float, stop: asyncio.Event, round_: Callable[[], Awaitable[object]], what: str,
                *, final: bool = False) -> None:
    """Await ``round_()`` every ``interval`` s until ``stop``; once more at the end if ``final``."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
        if stop.is_set() and not final:
            return
        try:
            await round_()
        except Exception as exc:  # noqa: BLE001 - the loop must outlive a bad round
            log.warning("%s failed: %s", what, exc)
