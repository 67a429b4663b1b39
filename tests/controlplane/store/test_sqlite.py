"""The SQLite Store's watch reads what was written since its last poll, not its whole prefix."""

from __future__ import annotations

import asyncio
import sqlite3
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
