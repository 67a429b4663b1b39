"""The completion sweep: orders left executing are picked up — after a restart, and
periodically, when their executing replica died before finishing their side effects —
and checked for completion (hosts pass their fail-closed deadline while nobody acks)."""

from __future__ import annotations

import asyncio
import time

from custos.controlplane.orders.book import all_records
from custos.controlplane.orders.completion import Completion
from custos.controlplane.orders.effects import Effects
from custos.controlplane.periodic import every
from custos.controlplane.store.base import Store

ORPHAN_AFTER_NS = 10_000_000_000  # quorum this long ago and effects not done: their replica died


class CompletionSweep:
    """Finishes what other replicas (or this one, before a restart) left executing."""

    def __init__(self, store: Store, effects: Effects, completion: Completion) -> None:
        self.store = store
        self.effects = effects
        self.completion = completion

    async def resume_pending(self) -> None:
        """After a restart: finish the side effects of orders that were executing."""
        for rec in await all_records(self.store):
            if rec["state"] == "executing":
                self.effects.start(rec["id"])

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """A round every ``interval`` seconds until ``stop``."""
        await every(interval, stop, self.round, "order completion check")

    async def round(self) -> None:
        """Check every executing order, first restarting effects that were orphaned."""
        for rec in await all_records(self.store):
            if rec["state"] != "executing":
                continue
            # Any replica finishes the side effects (idempotent) of an order whose
            # executing replica died before it could.
            if not rec.get("effects_done_ns") and time.time_ns() - rec["quorum_at_ns"] > ORPHAN_AFTER_NS:
                self.effects.start(rec["id"])
            await self.completion.check(rec["id"])
