"""The rules-and-incidents loop holds at most DUTY of the time, and a kick still runs at once.

A round reads every alert; after a 10,000-host first contact (150,000 alerts) a restarted
replica ran such rounds back to back, 40 % of its event loop, while 10,000 agents waited for their
streams to be taken. The loop is driven here with rounds of a known length (the loop's own code,
its lease and round replaced)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from types import SimpleNamespace
from typing import Any

from custos.controlplane.incidents import runtime
from custos.controlplane.incidents.runtime import IncidentsRuntime


def _loop(round_s: float, interval_s: float) -> tuple[Any, list[float]]:
    starts: list[float] = []
    second = asyncio.Event()

    async def lead() -> bool:
        return True

    async def round_() -> list[Any]:
        starts.append(time.monotonic())
        if len(starts) == 2:
            second.set()
        await asyncio.sleep(round_s)
        return []

    fake = SimpleNamespace(lead=lead, round=round_, rules=SimpleNamespace(interval_s=interval_s),
                           _kicked=asyncio.Event(), second=second)
    return fake, starts


async def test_slow_rounds_are_spaced_to_the_duty_cycle() -> None:
    fake, starts = _loop(round_s=0.05, interval_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(IncidentsRuntime.run(fake, stop))  # type: ignore[arg-type]
    await asyncio.sleep(1.0)
    stop.set()
    await task
    # back to back (every 0.06 s) that would be ~16 rounds; at DUTY 0.25, one every 0.2 s
    assert runtime.DUTY == 0.25
    assert 2 <= len(starts) <= 7, len(starts)  # a loaded machine runs fewer, never more
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.05 / runtime.DUTY * 0.9


async def test_a_kick_during_the_spaced_pause_runs_the_next_round_at_once() -> None:
    fake, starts = _loop(round_s=0.4, interval_s=0.01)  # then a pause of 1.2 s
    stop = asyncio.Event()
    task = asyncio.create_task(IncidentsRuntime.run(fake, stop))  # type: ignore[arg-type]
    await asyncio.sleep(0.5)  # the first round is done, the pause has begun
    kicked = time.monotonic()
    fake._kicked.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fake.second.wait(), 0.8)
    stop.set()
    await task
    # unkicked, the second round would start 1.1 s after the kick
    assert len(starts) >= 2 and starts[1] - kicked < 0.8, (starts, kicked)
