"""Group commit: many callers' requests answered by one round trip to the Store.

``GroupCommit(handler)`` runs at most one ``handler(keys)`` at a time; the requests that
arrive while it runs form the next batch. A lone request is handled at once (no timer,
no added latency); under load a batch grows to what arrived during one round trip, so a
fleet's heartbeats cost a few Store transactions a round instead of one each.

``max_batch`` caps the keys one handler call takes (the rest wait for the next), so one
crowd never makes a single request wait behind all of it.

The handler returns a result, or an exception, per key. An exception raised by the
handler itself (the Store is down) is every waiter's. A waiter that is cancelled (its
stream closed) leaves the batch running for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class GroupCommit(Generic[K, R]):
    def __init__(self, handler: Callable[[list[K]], Awaitable[dict[K, R | BaseException]]],
                 what: str, *, max_batch: int = 0) -> None:
        self._handler = handler
        self._what = what
        self._max = max_batch  # 0: everything pending
        self._pending: dict[K, list[asyncio.Future[R]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # handler calls so far (for tests and metrics)

    async def submit(self, key: K) -> R:
        """The handler's result for ``key``, from the next batch that includes it. Two
        requests for one key in the same batch share its result."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(fut)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=f"group commit: {self._what}")
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            if self._max and len(self._pending) > self._max:
                taken = list(self._pending)[:self._max]
                batch = {k: self._pending.pop(k) for k in taken}
            else:
                batch, self._pending = self._pending, {}
            keys = [k for k, futs in batch.items() if not all(f.done() for f in futs)]
            if not keys:
                continue
            self.batches += 1
            try:
                results = await self._handler(keys)
            except asyncio.CancelledError:
                for futs in batch.values():
                    for f in futs:
                        f.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - every waiter gets it, the loop goes on
                results = {k: exc for k in keys}
            for k in keys:
                res = results.get(k, RuntimeError(f"{self._what}: no result for {k!r}"))
                for f in batch[k]:
                    if f.done():
                        continue
                    if isinstance(res, BaseException):
                        f.set_exception(res)
                    else:
                        f.set_result(res)
