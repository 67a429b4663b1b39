#!/usr/bin/env python3
"""The SQLite Store's calls while the event loop is busy, against the same calls on an idle loop.

The SQLite Store runs its statements on worker threads. Every ``sqlite3_step`` releases the
GIL and takes it back; with the event loop busy (a fleet's custody streams), each take waits
up to the interpreter's switch interval. A call's cost under load is then set by how many
steps it takes, not by how much work SQLite does. This bench times, in one run:

- ``get_many`` of 500 keys, ``range`` of 2,000 keys, ``put_many`` of 640 puts (a report
  group's first-contact writes), and a 110-put ``commit``,
- each on an idle loop (the limit: the same call, nothing competing) and with a busy loop
  (a task doing pure-Python work between short yields, as stream handlers do),

and prints busy / idle per call. A call that takes one step a row shows a ratio in the
hundreds; one step a statement, a small one.

    python bench/store_bench.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from custos.controlplane.store.base import Txn
from custos.controlplane.store.sqlite import SQLiteStore

VALUE = os.urandom(270)  # about a copy record's size


async def hog(stop: asyncio.Event) -> None:
    """Pure-Python work with a yield every ~2 ms: the loop is never idle."""
    while not stop.is_set():
        deadline = time.perf_counter() + 0.002
        x = 0
        while time.perf_counter() < deadline:
            x += 1
        await asyncio.sleep(0)


async def timed(call: Callable[[], Awaitable[object]], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore(Path(d) / "bench.db")
        try:
            await store.put_many({f"copies/{i:06d}": VALUE for i in range(5000)})
            keys = [f"copies/{i:06d}" for i in range(0, 5000, 10)]
            seq = iter(range(10**9))

            def put_many() -> Awaitable[None]:
                n = next(seq)
                return store.put_many({f"new/{n}/{i:04d}": VALUE for i in range(640)})

            def commit() -> Awaitable[bool]:
                n = next(seq)
                return store.commit(Txn(puts={f"txn/{n}/{i:04d}": VALUE for i in range(110)}))

            calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("get_many 500 keys", lambda: store.get_many(keys)),
                ("range 2,000 keys", lambda: store.range("copies/00", limit=2000)),
                ("put_many 640 puts", put_many),
                ("commit 110 puts", commit),
            ]
            print(f"SQLite Store, {os.cpu_count()} cores, switch interval {sys.getswitchinterval() * 1000:.0f} ms, "
                  f"median of {args.rounds}")
            for name, call in calls:
                got = await store.get_many(keys)
                if len(got) != len(keys):
                    print(f"  {name}: a read lost keys ({len(got)} of {len(keys)}); no figures")
                    return 1
                idle = await timed(call, args.rounds)
                stop = asyncio.Event()
                hogs = [asyncio.create_task(hog(stop)) for _ in range(4)]
                try:
                    busy = await timed(call, args.rounds)
                finally:
                    stop.set()
                    await asyncio.gather(*hogs)
                print(f"  {name:<20}: idle loop {idle * 1000:8.2f} ms   busy loop {busy * 1000:8.2f} ms   "
                      f"ratio {busy / idle:7.1f}")
        finally:
            await store.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
