"""The Store: a small transactional key-value interface with two backends.

The registry, the audit log and everything later sit on these five calls, so
the embedded SQLite file and a production etcd cluster behave the same and
pass one conformance suite (tests/controlplane/store/). A multi-key change is one
``commit``: every check holds and every write lands, or nothing does.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from custos.errors import BackendUnavailable, InvalidInput, NotFound

MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1 << 20  # etcd's default request limit is 1.5 MiB; keep headroom
MAX_TXN_OPS = 120  # etcd's default --max-txn-ops is 128


class StoreUnavailable(BackendUnavailable):
    """The store cannot be reached or refused the operation."""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: bytes
    mod_revision: int


@dataclass
class Txn:
    """Checks, then writes. ``checks`` maps key -> expected mod_revision (0: absent)."""

    checks: dict[str, int] = field(default_factory=dict)
    puts: dict[str, bytes] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        n = len(self.checks) + len(self.puts) + len(self.deletes)
        if n > MAX_TXN_OPS:
            raise InvalidInput(f"transaction too large: {n} operations > {MAX_TXN_OPS}")
        for key in [*self.checks, *self.deletes]:
            check_key(key)
        check_puts(self.puts)


def check_puts(puts: dict[str, bytes]) -> None:
    """Every key and value of ``puts`` as a transaction takes them. Raises InvalidInput."""
    for key, value in puts.items():
        check_key(key)
        if len(value) > MAX_VALUE_BYTES:
            raise InvalidInput(f"value for {key} too large: {len(value)} bytes")


def check_key(key: str) -> None:
    if not key or len(key.encode()) > MAX_KEY_BYTES or "\x00" in key:
        raise InvalidInput(f"bad store key {key[:40]!r}")


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (keys are ASCII here)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Store(abc.ABC):
    """Async transactional KV. Raises StoreUnavailable when the backend is down."""

    kind: str

    @abc.abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abc.abstractmethod
    async def range(
        self, prefix: str, *, start_after: str | None = None, limit: int = 0
    ) -> list[Entry]:
        """Entries whose key starts with ``prefix``, in key order, after ``start_after``."""

    @abc.abstractmethod
    async def commit(self, txn: Txn) -> bool:
        """Apply ``txn`` atomically if every check holds. Returns False on a failed check."""

    async def put_many(self, puts: dict[str, bytes]) -> None:
        """Unconditional puts in as few transactions as this store allows; not atomic as a
        whole (a failure part-way may leave the first transactions written). Every key and
        value is checked first: InvalidInput writes nothing. Raises StoreUnavailable."""
        check_puts(puts)
        items = list(puts.items())
        step = MAX_TXN_OPS - 10
        for i in range(0, len(items), step):
            await self.commit(Txn(puts=dict(items[i:i + step])))

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store's current revision (increases with every committed write)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def watch(self, prefix: str) -> AsyncIterator[str]:
        """Keys under ``prefix`` written (created or updated) after the call, as they
        happen — across every process sharing the store. Deletions are not reported.
        The iterator ends only when the caller stops iterating. Raises StoreUnavailable."""

    async def get_many(self, keys: Sequence[str]) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for key in keys:
            entry = await self.get(key)
            if entry is not None:
                out[key] = entry
        return out

    async def find_by_id(self, what: str, directory: str, ref: str, *, min_hex: int,
                         max_hex: int = 64) -> Entry:
        """The entry under ``directory`` named ``ref`` or, for a shorter ``ref``, the one
        name starting with it: ``min_hex`` to ``max_hex`` hex digits, any case.

        Raises InvalidInput (malformed, or a prefix two names share), NotFound.
        """
        r = (ref or "").strip().lower()
        if not (min_hex <= len(r) <= max_hex) or any(c not in "0123456789abcdef" for c in r):
            raise InvalidInput(f"bad {what} id {ref!r}: want {min_hex} to {max_hex} hex digits")
        found = await self.range(directory + r, limit=2)
        exact = [e for e in found if e.key == directory + r]
        if exact:
            return exact[0]
        if not found:
            raise NotFound(f"{what} {r} not found")
        if len(found) > 1:
            raise InvalidInput(f"{what} id prefix {r} is ambiguous")
        return found[0]
