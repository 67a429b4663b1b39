"""The SQLite Store's watch reads what was written since its last poll, not its whole prefix."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from custos.controlplane.store.base import Txn
from custos.controlplane.store.sqlite import WATCH_QUERY, SQLiteStore


async def test_the_watch_polls_through_the_revision_index(tmp_path: Path) -> None:
    """Every poll of a watch on alerts/ with 150,000 alerts scanned all of them (a quarter of a
    core at 10 polls a second); the query must go through the revision index, also on a file
    written before the index existed."""
    path = tmp_path / "custos.db"
    store = SQLiteStore(path)
    for i in range(0, 5000, 100):
        await store.commit(Txn(puts={f"alerts/{j:06d}": b"{}" for j in range(i, i + 100)}))
    await store.close()
    old = sqlite3.connect(path)
    old.execute("DROP INDEX kv_rev")  # a file from before the index
    old.commit()
    old.close()

    store = SQLiteStore(path)
    try:
        db = sqlite3.connect(path)
        rows = db.execute("EXPLAIN QUERY PLAN " + WATCH_QUERY, ("alerts/", "alerts0", 1))
        plan = " ".join(str(row[-1]) for row in rows)
        db.close()
        assert "kv_rev" in plan, plan

        seen: list[str] = []

        async def watch() -> None:
            async for key in store.watch("alerts/", poll=0.01):
                seen.append(key)
                if key == "alerts/new":
                    return

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.05)
        await store.commit(Txn(puts={"other/x": b"{}"}))
        await store.commit(Txn(puts={"alerts/new": b"{}"}))
        await asyncio.wait_for(task, 10)
        assert seen == ["alerts/new"]
    finally:
        await store.close()


async def test_a_quiet_watch_does_not_rescan_what_was_written_elsewhere(tmp_path: Path) -> None:
    """A watch's poll started from the last revision it had yielded a key of: a watch of
    orders/ (written at a halt, seldom else) rescanned every write made anywhere since the
    watch began, ten times a second — at a fleet's first contact, a growing share of a core.
    After a poll, the next one must cost the same whatever was written before it."""
    store = SQLiteStore(tmp_path / "custos.db")
    try:
        seen: list[str] = []

        async def watch() -> None:
            async for key in store.watch("orders/", poll=0.01):
                seen.append(key)

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.05)
        for i in range(0, 20_000, 100):
            await store.commit(Txn(puts={f"other/{j:06d}": b"{}" for j in range(i, i + 100)}))
        await asyncio.sleep(0.1)  # polls that read those writes' revisions

        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        # set on the reader's own thread: from another, it can deadlock with a running query
        await store._run(lambda: store._rdb.set_progress_handler(count, 1000))
        await asyncio.sleep(0.3)  # about 30 polls with nothing new
        await store._run(lambda: store._rdb.set_progress_handler(None, 1000))
        # rescanning 20,000 index entries a poll is thousands of handler calls; a poll of
        # nothing new is a few dozen VM steps
        assert steps[0] < 50, steps[0]

        await store.commit(Txn(puts={"orders/o1": b"{}"}))
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert seen == ["orders/o1"]
        task.cancel()
    finally:
        await store.close()


async def test_a_point_read_does_not_wait_behind_a_scan(tmp_path: Path) -> None:
    """A scan (a range over 150,000 alerts, every order record) and the point reads the guard and
    the leases make shared one reader thread: in a 10,000-host reconnect storm the guard's host
    checks queued behind the incident rounds' scans until no stream was taken in time. A point
    read must complete while a scan is held in the middle of its query."""
    store = SQLiteStore(tmp_path / "custos.db")
    try:
        await store.put_many({f"alerts/{i:06d}": b"{}" for i in range(300)} | {"hosts/h1": b'{"n": 1}'})
        entered, release = threading.Event(), threading.Event()

        def hold() -> int:
            entered.set()
            release.wait(30)
            return 0

        # set on the scanner's own thread (from another it can deadlock with a running query)
        await store._run(lambda: store._sdb.set_progress_handler(hold, 100), scan=True)
        scan = asyncio.create_task(store.range("alerts/"))
        assert await asyncio.to_thread(entered.wait, 10)
        try:
            got = await asyncio.wait_for(store.get("hosts/h1"), 5)
            many = await asyncio.wait_for(store.get_many(["hosts/h1", "alerts/000001"]), 5)
        finally:
            release.set()
        assert got is not None and got.value == b'{"n": 1}' and set(many) == {"hosts/h1", "alerts/000001"}
        assert len(await scan) == 300
        await store._run(lambda: store._sdb.set_progress_handler(None, 100), scan=True)
    finally:
        await store.close()
