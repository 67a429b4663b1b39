"""The scanner's persistent hash cache: SQLite, keyed by what no unprivileged process can forge.

An entry maps ``(device, inode, size, mtime_ns, ctime_ns)`` to the file's SHA-256,
its form and the path it was last seen at; ``ctime`` is part of the key because
no unprivileged process can set it, so content cannot be swapped under an
unchanged key. A second table holds :func:`unlike_id` of the keys of files
whose first bytes were read and begin no weight format, so an unchanged file
is read at most once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from custos.agent.scanner.records import CacheKey
from custos.core.matching import Form
from custos.errors import FailedPrecondition

log = logging.getLogger("custos.agent.scanner")

_I64 = 1 << 63


def _to_i64(v: int) -> int:
    # SQLite integers are signed 64-bit; some file systems hand out inodes >= 2^63.
    return v - (1 << 64) if v >= _I64 else v


def _from_i64(v: int) -> int:
    return v + (1 << 64) if v < 0 else v


def unlike_id(key: CacheKey) -> int:
    """A 64-bit id of a file's key: a host with millions of small files keeps one int each in memory.

    Two keys sharing an id would let a changed file skip the sniffing once; with
    a ctime no one can choose, the odds are the number of entries in 2^64.
    """
    packed = b"".join(v.to_bytes(16, "little", signed=True) for v in key)
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little", signed=True)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What the cache knows of one file: its hash, its form and the path it was last seen at."""

    sha256: str
    form: Form
    path: str


class HashCache:
    """SQLite file mapping (device, inode, size, mtime_ns, ctime_ns) -> sha256, form, last path.

    Created 0600 and refused if another user owns it: whoever can write the cache
    can make a file look like something else. A corrupt or foreign-version cache
    is discarded and rebuilt (it is only a cache). Raises FailedPrecondition.
    """

    SCHEMA_VERSION = 2  # 2 added the "unlike" table; a version 1 cache is kept and extended

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn = self._open()

    def _open(self, *, retry: bool = True) -> sqlite3.Connection:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise FailedPrecondition(f"cannot open scan cache {self.path}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FailedPrecondition(f"scan cache {self.path} is not a regular file")
            if st.st_uid != os.geteuid():
                raise FailedPrecondition(f"scan cache {self.path} is owned by uid {st.st_uid}, not by this agent")
            if st.st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._init_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if not retry:
                raise FailedPrecondition(f"cannot create scan cache {self.path}: {exc}") from None
            log.warning("scan cache %s unreadable (%s); starting a new one", self.path, exc)
            self._reset()
            return self._open(retry=False)
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, self.SCHEMA_VERSION):
            conn.execute("DROP TABLE IF EXISTS hashes")
            conn.execute("DROP TABLE IF EXISTS unlike")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hashes (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, sha256 TEXT NOT NULL, form TEXT NOT NULL, path TEXT NOT NULL,"
            " PRIMARY KEY (dev, ino, size, mtime_ns, ctime_ns)) WITHOUT ROWID"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS unlike (id INTEGER PRIMARY KEY)")
        conn.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")

    def load(self) -> tuple[dict[CacheKey, CacheEntry], set[int]]:
        """Every hash entry, and the :func:`unlike_id` of files known to be no weights.

        A cache whose pages are damaged is emptied and rebuilt.
        """
        out: dict[CacheKey, CacheEntry] = {}
        try:
            rows = self._conn.execute(
                "SELECT dev, ino, size, mtime_ns, ctime_ns, sha256, form, path FROM hashes"
            ).fetchall()
            unlike = {row[0] for row in self._conn.execute("SELECT id FROM unlike")}
        except sqlite3.DatabaseError as exc:
            log.warning("scan cache %s damaged (%s); starting a new one", self.path, exc)
            self._conn.close()
            self._reset()
            self._conn = self._open(retry=False)
            return out, set()
        for dev, ino, size, mtime, ctime, sha, form, path in rows:
            if form not in ("plaintext", "ciphertext") or not _is_hex64(sha):
                continue
            out[(_from_i64(dev), _from_i64(ino), size, mtime, ctime)] = CacheEntry(sha, form, path)
        return out, unlike

    def _reset(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise FailedPrecondition(f"cannot replace damaged scan cache {self.path}: {exc.strerror}") from None

    def update(self, put: dict[CacheKey, CacheEntry], delete: Iterable[CacheKey],
               unlike_put: Iterable[int] = (), unlike_delete: Iterable[int] = ()) -> None:
        """Apply every change in one transaction (all or nothing). Raises sqlite3.Error."""
        dels = [_key_row(k) for k in delete]
        puts = [(*_key_row(k), v.sha256, v.form, v.path) for k, v in put.items()]
        u_puts = [(i,) for i in unlike_put]
        u_dels = [(i,) for i in unlike_delete]
        if not (dels or puts or u_puts or u_dels):
            return
        with self._conn:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "DELETE FROM hashes WHERE dev=? AND ino=? AND size=? AND mtime_ns=? AND ctime_ns=?", dels
            )
            self._conn.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", puts)
            self._conn.executemany("DELETE FROM unlike WHERE id=?", u_dels)
            self._conn.executemany("INSERT OR REPLACE INTO unlike VALUES (?)", u_puts)

    def close(self) -> None:
        self._conn.close()


def _key_row(k: CacheKey) -> tuple[int, int, int, int, int]:
    return (_to_i64(k[0]), _to_i64(k[1]), k[2], k[3], k[4])


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
