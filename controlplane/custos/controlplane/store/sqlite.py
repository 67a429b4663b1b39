"""SQLite Store: the embedded default, one file, no server.

WAL mode with synchronous=NORMAL: a committed transaction survives a crash or a
kill -9 of the process, and an interrupted one leaves nothing; after a power
loss or OS crash the newest commits may roll back, but the file is never left
half-written. (FULL would fsync on every commit: custody reports from 1,000
agents made that the bottleneck. Production runs on etcd, which fsyncs its
raft log.) Revisions imitate etcd's: one
store-wide counter, bumped once per committed write transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from custos.controlplane.store.base import Entry, Store, StoreUnavailable, Txn, check_key, prefix_end

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1);
"""


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        try:
            self._db = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite store {self._path}: {exc}") from None
        # One connection, one thread: every call queues on a single worker, which is
        # also what serializes use of the connection (no lock needed).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-sqlite")

    def _run(self, fn, *args):  # type: ignore[no-untyped-def]
        def guarded():  # type: ignore[no-untyped-def]
            try:
                return fn(*args)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite store: {exc}") from None

        return asyncio.get_running_loop().run_in_executor(self._executor, guarded)

    async def get(self, key: str) -> Entry | None:
        check_key(key)

        def q() -> Entry | None:
            row = self._db.execute(
                "SELECT value, mod_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
            return Entry(key, bytes(row[0]), int(row[1])) if row else None

        return await self._run(q)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        """One query for many keys (the base class asks one at a time)."""
        for k in keys:
            check_key(k)
        wanted = list(dict.fromkeys(keys))

        def q() -> dict[str, Entry]:
            out: dict[str, Entry] = {}
            for i in range(0, len(wanted), 500):
                part = wanted[i:i + 500]
                marks = ",".join("?" * len(part))
                for k, v, r in self._db.execute(
                        f"SELECT key, value, mod_revision FROM kv WHERE key IN ({marks})", part):  # noqa: S608 - placeholders only
                    out[str(k)] = Entry(str(k), bytes(v), int(r))
            return out

        return await self._run(q) if wanted else {}

    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int = 0
    ) -> list[Entry]:
        check_key(prefix)
        lo = prefix if start_after is None or start_after < prefix else start_after
        op = ">" if start_after is not None and start_after >= prefix else ">="
        hi = prefix_end(prefix)

        def q() -> list[Entry]:
            sql = f"SELECT key, value, mod_revision FROM kv WHERE key {op} ? AND key < ? ORDER BY key"  # noqa: S608 - op is one of two literals
            args: tuple[object, ...] = (lo, hi)
            if limit:
                sql += " LIMIT ?"
                args += (limit,)
            return [Entry(k, bytes(v), int(r)) for k, v, r in self._db.execute(sql, args)]

        return await self._run(q)

    async def commit(self, txn: Txn) -> bool:
        txn.validate()

        def q() -> bool:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for key, want in txn.checks.items():
                    row = db.execute("SELECT mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
                    have = int(row[0]) if row else 0
                    if have != want:
                        db.execute("ROLLBACK")
                        return False
                if txn.puts or txn.deletes:
                    rev = db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0] + 1
                    db.execute("UPDATE meta SET value = ? WHERE name='revision'", (rev,))
                    for key in txn.deletes:
                        db.execute("DELETE FROM kv WHERE key = ?", (key,))
                    for key, value in txn.puts.items():
                        db.execute(
                            "INSERT INTO kv (key, value, mod_revision) VALUES (?, ?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
                            "mod_revision=excluded.mod_revision",
                            (key, value, rev),
                        )
                db.execute("COMMIT")
                return True
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        return await self._run(q)

    async def revision(self) -> int:
        def q() -> int:
            return int(self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0])

        return await self._run(q)

    async def watch(self, prefix: str, *, poll: float = 0.1) -> AsyncIterator[str]:
        """Polls: SQLite has no change feed across processes."""
        check_key(prefix)
        last = await self.revision()
        hi = prefix_end(prefix)
        while True:
            await asyncio.sleep(poll)
            def q(since: int) -> list[tuple[str, int]]:
                return [(str(k), int(r)) for k, r in self._db.execute(
                    "SELECT key, mod_revision FROM kv WHERE key >= ? AND key < ? AND mod_revision > ? "
                    "ORDER BY mod_revision", (prefix, hi, since))]

            for key, rev in await self._run(q, last):
                last = max(last, rev)
                yield key

    async def close(self) -> None:
        def q() -> None:
            self._db.close()

        await self._run(q)
        self._executor.shutdown(wait=False)
