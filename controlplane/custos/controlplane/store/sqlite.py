"""SQLite Store: the embedded default, one file, no server.

WAL mode with synchronous=NORMAL: a committed transaction survives a crash or a
kill -9 of the process, and an interrupted one leaves nothing; after a power
loss or OS crash the newest commits may roll back, but the file is never left
half-written. (FULL would fsync on every commit: custody reports from 1,000
agents made that the bottleneck. Production runs on etcd, which fsyncs its
raft log.) Revisions imitate etcd's: one
store-wide counter, bumped once per committed write transaction.

Calls run on worker threads, which take the GIL back after each SQLite call. Writes go in
as one multi-row statement (puts) or one ``IN`` list (deletes), never ``executemany``: with
the event loop busy, ``executemany`` of 110 puts took 2 s, one statement 90 ms
(bench/store_bench.py). ``put_many`` writes a report group's puts in one transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from custos.controlplane.store.base import Entry, Store, StoreUnavailable, Txn, check_key, check_puts, prefix_end

WRITE_LOCK_WAIT_S = 30.0  # longest a commit waits for another process's write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
-- What a watch asks: keys written after a revision (without it, every poll scanned its whole prefix).
CREATE INDEX IF NOT EXISTS kv_rev ON kv (mod_revision);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1);
"""


# The revision index, not the key range: a poll reads what was written since the last one,
# not every key under the prefix (150,000 alerts under alerts/ were a quarter of a core).
WATCH_QUERY = ("SELECT key, mod_revision FROM kv INDEXED BY kv_rev WHERE key >= ? AND key < ? AND mod_revision > ? "
               "ORDER BY mod_revision")


MIN_SQLITE = (3, 35)  # UPDATE ... RETURNING
ROWS_PER_STATEMENT = 300  # 3 bound values a row: under SQLite's oldest limit of 999
KEYS_PER_QUERY = 500

_PUT = ("INSERT INTO kv (key, value, mod_revision) VALUES {rows} "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value, mod_revision=excluded.mod_revision")


def _bump(db: sqlite3.Connection) -> int:
    """The store's next revision, taken (inside a write transaction)."""
    return int(db.execute("UPDATE meta SET value = value + 1 WHERE name='revision' RETURNING value").fetchone()[0])


def _put(db: sqlite3.Connection, puts: dict[str, bytes], rev: int) -> None:
    items = list(puts.items())
    for i in range(0, len(items), ROWS_PER_STATEMENT):
        rows = items[i:i + ROWS_PER_STATEMENT]
        db.execute(_PUT.format(rows=",".join(["(?, ?, ?)"] * len(rows))),
                   [x for key, value in rows for x in (key, value, rev)])


def _in(n: int) -> str:
    return ",".join("?" * n)


class SQLiteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreUnavailable(f"sqlite store: SQLite {sqlite3.sqlite_version} is too old, want "
                                   f"{'.'.join(map(str, MIN_SQLITE))} or newer (UPDATE ... RETURNING)")
        try:
            # Writes wait for another process's write lock in commit(), in short steps: SQLite's own
            # busy handler sleeps up to 100 ms at a time.
            self._db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA busy_timeout=0")
            # Reads on a connection of their own: in WAL mode they never wait for a write, so a
            # read (a refused unwrap's) is not queued behind a commit waiting for the lock.
            self._rdb = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30)
            # Scans (range) on a third: a point read (the guard's host check, a lease, a refused
            # unwrap's) never waits behind a scan of 150,000 alerts or every order record.
            self._sdb = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite store {self._path}: {exc}") from None
        # One thread per connection: calls queue on its single worker, which is also what
        # serializes use of the connection (no lock needed).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-sqlite")
        self._readers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-sqlite-read")
        self._scanners = ThreadPoolExecutor(max_workers=1, thread_name_prefix="custos-sqlite-scan")

    def _run(self, fn, *args, write: bool = False, scan: bool = False):  # type: ignore[no-untyped-def]
        def guarded():  # type: ignore[no-untyped-def]
            try:
                return fn(*args)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite store: {exc}") from None

        pool = self._executor if write else self._scanners if scan else self._readers
        return asyncio.get_running_loop().run_in_executor(pool, guarded)

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, retried every millisecond while another process holds the write
        lock, for up to WRITE_LOCK_WAIT_S. Raises sqlite3.OperationalError after that."""
        deadline = time.monotonic() + WRITE_LOCK_WAIT_S
        while True:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)

    def _transaction(self, body: Callable[[sqlite3.Connection], bool]) -> Callable[[], bool]:
        """``body`` inside BEGIN IMMEDIATE on the write connection: committed if it returns
        True, rolled back if it returns False or raises. Run it on the writer thread."""
        def q() -> bool:
            db = self._db
            self._begin()
            try:
                ok = body(db)
                db.execute("COMMIT" if ok else "ROLLBACK")
                return ok
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        return q

    async def get(self, key: str) -> Entry | None:
        check_key(key)

        def q() -> Entry | None:
            row = self._rdb.execute(
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
                for k, v, r in self._rdb.execute(
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
            return [Entry(k, bytes(v), int(r)) for k, v, r in self._sdb.execute(sql, args)]

        return await self._run(q, scan=True)

    async def commit(self, txn: Txn) -> bool:
        txn.validate()

        def body(db: sqlite3.Connection) -> bool:
            # As few statements as the transaction allows (one read of every checked key, one
            # statement for all deletes and one for all puts): the write lock is held across
            # each return to Python, which may wait for the GIL behind a busy event loop.
            checks = list(txn.checks.items())
            for i in range(0, len(checks), KEYS_PER_QUERY):
                part = checks[i:i + KEYS_PER_QUERY]
                have = dict(db.execute(f"SELECT key, mod_revision FROM kv WHERE key IN ({_in(len(part))})",  # noqa: S608 - placeholders only
                                       [k for k, _ in part]).fetchall())
                if any(int(have.get(k, 0)) != want for k, want in part):
                    return False
            if txn.puts or txn.deletes:
                rev = _bump(db)
                deletes = list(dict.fromkeys(txn.deletes))
                for i in range(0, len(deletes), KEYS_PER_QUERY):
                    gone = deletes[i:i + KEYS_PER_QUERY]
                    db.execute(f"DELETE FROM kv WHERE key IN ({_in(len(gone))})", gone)  # noqa: S608 - placeholders only
                _put(db, txn.puts, rev)
            return True

        return await self._run(self._transaction(body), write=True)

    async def put_many(self, puts: dict[str, bytes]) -> None:
        """One transaction (one revision) for all of them, in one call to the writer thread:
        a report group's 640 puts were six transactions of five statements each, and every
        statement waits for the GIL behind the event loop."""
        check_puts(puts)
        if not puts:
            return

        def body(db: sqlite3.Connection) -> bool:
            _put(db, puts, _bump(db))
            return True

        await self._run(self._transaction(body), write=True)

    async def revision(self) -> int:
        def q() -> int:
            return int(self._rdb.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0])

        return await self._run(q)

    async def watch(self, prefix: str, *, poll: float = 0.1) -> AsyncIterator[str]:
        """Polls: SQLite has no change feed across processes. Each poll reads, in one snapshot,
        the keys written under ``prefix`` since the last and the store's revision, and the next
        poll starts from that revision: a quiet prefix is not rescanned for every write made
        elsewhere since the watch began (the revision index holds all of them)."""
        check_key(prefix)
        last = await self.revision()
        hi = prefix_end(prefix)

        def q(since: int) -> tuple[list[str], int]:
            db = self._rdb
            db.execute("BEGIN")
            try:
                rev = int(db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0])
                keys = [str(k) for k, _ in db.execute(WATCH_QUERY, (prefix, hi, since))]
            finally:
                db.execute("COMMIT")
            return keys, rev

        while True:
            await asyncio.sleep(poll)
            keys, last = await self._run(q, last)
            for key in keys:
                yield key

    async def close(self) -> None:
        def q(db: sqlite3.Connection) -> None:
            db.close()

        await self._run(q, self._rdb)
        await self._run(q, self._sdb, scan=True)
        await self._run(q, self._db, write=True)
        self._executor.shutdown(wait=False)
        self._readers.shutdown(wait=False)
        self._scanners.shutdown(wait=False)
