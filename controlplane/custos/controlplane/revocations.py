"""The revocation list: client certificates every replica refuses, whatever their CA says.

Store keys:
    revoked/{fingerprint}   {fingerprint, principal, role, reason, revoked_at_ns, revoked_by, not_after_ns}

An entry is written in the same audited transaction as the change that revokes it (a
host's removal or revocation, `custos host revoke --cert`) and never deleted: a
revocation is final. Each replica keeps the list in memory:

- ``check(fp)`` answers from it, re-reading the list first (one range read) when the
  copy is older than ``poll`` seconds, so every replica refuses a revoked certificate
  within ``poll`` seconds even if nothing else runs;
- ``run(stop)`` follows the Store's watch for new entries and re-reads the whole list
  every ``poll`` seconds (a watch misses what is written while it reconnects), and
  hands each entry it has not handled yet to ``on_revoked`` (Custody closes the
  stream of the host it belongs to).

Fail closed: a replica that has not read the list for ``max_stale`` seconds refuses
every call (StoreUnavailable) rather than trust an old copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from custos.controlplane.periodic import pause
from custos.controlplane.store.base import Store, StoreUnavailable
from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import CustosError, InvalidInput

log = logging.getLogger("custos.revocations")

PREFIX = "revoked/"
POLL = 2.0
MAX_STALE = 30.0
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def check_fingerprint(fp: str) -> str:
    """A certificate fingerprint as stored: 64 lowercase hex digits. Raises InvalidInput."""
    norm = (fp or "").strip().lower().replace(":", "")
    if not _FINGERPRINT.match(norm):
        raise InvalidInput(f"bad certificate fingerprint {fp[:80]!r}: want the SHA-256 of its DER, 64 hex digits")
    return norm


def revocation_puts(entries: list[dict[str, Any]]) -> dict[str, bytes]:
    """The Store writes that revoke ``entries`` (records from :func:`revocation`)."""
    return {f"{PREFIX}{e['fingerprint']}": encode_canonical(e) for e in entries}


def revocation(fingerprint: str, *, principal: str, role: str, reason: str, by: str,
               not_after_ns: int = 0) -> dict[str, Any]:
    """One revocation record. Raises InvalidInput (bad fingerprint)."""
    return {"fingerprint": check_fingerprint(fingerprint), "not_after_ns": int(not_after_ns),
            "principal": principal, "reason": reason[:500], "revoked_at_ns": time.time_ns(),
            "revoked_by": by, "role": role}


class RevocationList:
    """This replica's copy of ``revoked/``; see the module docstring."""

    def __init__(self, store: Store, *, poll: float = POLL, max_stale: float = MAX_STALE) -> None:
        self.store = store
        self.poll = poll
        self.max_stale = max(max_stale, 5 * poll)
        self.on_revoked: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self._entries: dict[str, dict[str, Any]] = {}
        self._read_at: float | None = None  # monotonic time of the last complete read
        self._reading: asyncio.Future[None] | None = None
        self._retry_at = 0.0  # after a failed read, when check() may try again
        self._error = ""
        self._handled: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # - lookups -

    def is_revoked(self, fingerprint: str) -> bool:
        """From the copy in memory, without reading the Store."""
        return fingerprint in self._entries

    def learn(self, entries: list[dict[str, Any]]) -> None:
        """Revocations this replica has just committed: refused here at once."""
        for e in entries:
            self._entries[e["fingerprint"]] = e

    async def check(self, fingerprint: str) -> dict[str, Any] | None:
        """The revocation of ``fingerprint``, or None; the copy is re-read first when older than
        ``poll``. Raises StoreUnavailable when the list cannot be read and the copy is older
        than ``max_stale`` (or there is none)."""
        age = self._age()
        if (age is None or age > self.poll) and time.monotonic() >= self._retry_at:
            try:
                await self.refresh()
            except CustosError as exc:
                # Not again for a poll: while the Store is down, calls must not each wait for it.
                self._retry_at = time.monotonic() + self.poll
                self._error = str(exc)
                log.warning("revocation list not refreshed (copy from %s s ago): %s",
                            "-" if age is None else f"{age:.1f}", exc)
        age = self._age()
        if age is None or age > self.max_stale:
            raise StoreUnavailable(f"the certificate revocation list cannot be read: {self._error}")
        return self._entries.get(fingerprint)

    async def entries(self) -> list[dict[str, Any]]:
        """Every revocation, oldest first, read from the Store. Raises StoreUnavailable."""
        await self.refresh()
        return sorted(self._entries.values(), key=lambda e: (e["revoked_at_ns"], e["fingerprint"]))

    def _age(self) -> float | None:
        return None if self._read_at is None else time.monotonic() - self._read_at

    async def refresh(self) -> None:
        """Re-read the whole list (concurrent callers share one read). Raises StoreUnavailable."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading)

    async def _read(self) -> None:
        started = time.monotonic()
        found = {e.key[len(PREFIX):]: dict(decode_canonical(e.value)) for e in await self.store.range(PREFIX)}
        self._entries.update(found)  # never forgets one: entries are never deleted
        self._read_at = started

    # - following the Store -

    def ensure_running(self) -> None:
        """Start :meth:`run` in the background once (the first custody stream on this replica does)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(self._stop))

    def close(self) -> None:
        self._stop.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the Store's watch and re-read the list every ``poll`` s until ``stop``; hand
        every entry not handled yet to ``on_revoked``."""
        follower = asyncio.create_task(self._follow(stop))
        try:
            while not stop.is_set():
                try:
                    await self.refresh()
                except CustosError as exc:
                    log.warning("re-reading the revocation list failed: %s", exc)
                await self._hand_over()
                await pause(self.poll, stop)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _follow(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async for key in self.store.watch(PREFIX):
                    entry = await self.store.get(key)
                    if entry is not None:
                        self._entries[key[len(PREFIX):]] = dict(decode_canonical(entry.value))
                        await self._hand_over()
            except CustosError as exc:
                log.warning("revocation watch failed, retrying (the list is re-read every %.1f s): %s",
                            self.poll, exc)
                await pause(1.0, stop)

    async def _hand_over(self) -> None:
        for fp, entry in list(self._entries.items()):
            if fp in self._handled:
                continue
            try:
                if self.on_revoked is not None:
                    await self.on_revoked(entry)
            except CustosError as exc:  # the Store, most likely: the next round tries again
                log.warning("acting on the revocation of %s failed, will retry: %s", fp[:16], exc)
                continue
            except Exception:  # a bug: logged, and not retried every round
                log.exception("acting on the revocation of %s failed", fp[:16])
            self._handled.add(fp)
