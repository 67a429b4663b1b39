"""Effects of an executed order, after its quorum transaction: the order sent to the
agents, Transit keys suspended (halt, drill), resumed (lift) or deleted with the
ciphertext objects (destroy), leases of hosts holding scoped copies revoked, and the
object-store copies marked. Idempotent: resumed after a restart or by another replica."""

from __future__ import annotations

import asyncio
import logging
import time

from custos.blobs.base import BlobStore
from custos.controlplane.audit import SYSTEM, AuditLog
from custos.controlplane.custody import Custody
from custos.controlplane.keys.base import KeyProvider
from custos.controlplane.orders.book import OrderBook
from custos.controlplane.orders.completion import Completion
from custos.controlplane.orders.fanout import Fanout
from custos.controlplane.orders.fleet import enrolled_hosts, hosts_with_copies
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.orders import Order
from custos.errors import CustosError

log = logging.getLogger("custos.orders")


class Effects:
    """Runs each executing order's side effects in one task per order and replica."""

    def __init__(self, store: Store, registry: Registry, audit: AuditLog, custody: Custody, *,
                 keys: KeyProvider, blobs: BlobStore, book: OrderBook, fanout: Fanout,
                 completion: Completion) -> None:
        self.store = store
        self.registry = registry
        self.audit = audit
        self.custody = custody
        self.keys = keys
        self.blobs = blobs
        self.book = book
        self.fanout = fanout
        self.completion = completion
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, oid: str) -> None:
        """Run the effects of order ``oid`` unless they are running here already."""
        if oid not in self.tasks or self.tasks[oid].done():
            self.tasks[oid] = asyncio.create_task(self._run(oid))

    async def _run(self, oid: str) -> None:
        try:
            record = await self.book.get(oid)
            order = Order.decode(record["body"].encode())
            # Agents first: each verifies the order itself, so nothing below needs to
            # happen before they can start stopping processes.
            await self.fanout.push(record)
            real = set(order.models)  # every model in the signed scope really changes state
            for model in order.models:
                try:
                    if order.action == "lift":
                        await asyncio.to_thread(self.keys.resume, model)
                    elif order.action == "destroy":
                        await asyncio.to_thread(self.keys.destroy, model)
                    else:
                        await asyncio.to_thread(self.keys.suspend, model)
                except CustosError as exc:
                    # A model never pushed has no key: nothing to suspend is not a failure.
                    log.info("order %s: key of %s: %s", oid[:16], model, exc)
            if order.action == "destroy":
                await self._shred(order)
            hosts = await hosts_with_copies(self.store, order.artifacts) & await enrolled_hosts(self.store)
            if order.action != "lift":
                await self.custody.revoke_leases(sorted(hosts), oid)
            await self._mark_object_copies(order, real)
            await self.audit.record(SYSTEM, "ExecuteOrder", f"order/{oid}",
                                    f"{order.action}: keys and leases done; sent to {len(self.custody.streams)} agents")
            await self._mark_done(oid)
            await self.completion.check(oid)
        except Exception:
            log.exception("order %s: execution failed; will resume", oid[:16])

    async def _mark_done(self, oid: str) -> None:
        for _ in range(10):
            entry = await self.store.get(f"orders/{oid}")
            if entry is None:
                return
            rec = dict(decode_canonical(entry.value))
            rec["effects_done_ns"] = time.time_ns()
            if await self.store.commit(Txn(checks={entry.key: entry.mod_revision},
                                           puts={entry.key: encode_canonical(rec)})):
                return

    async def _shred(self, order: Order) -> None:
        """Crypto-shred: delete the ciphertext objects of every scoped artifact."""
        for aid in order.artifacts:
            try:
                art = await self.registry.get_artifact(aid)
            except CustosError:
                continue
            for obj in (art.storage or {}).get("objects", []):
                await asyncio.to_thread(self.blobs.delete, obj["key"])

    async def _mark_object_copies(self, order: Order, real: set[str]) -> None:
        for aid in order.artifacts:
            for e in await self.store.range(f"copies/{aid}/"):
                c = dict(decode_canonical(e.value))
                if c["location_kind"] != "object-store" or c.get("state") == "shredded":
                    continue  # crypto-shredded is final: no later order marks it otherwise
                if c["model"] not in real:
                    c["state"] = "present"
                    continue
                c["state"] = {"destroy": "shredded", "lift": "present"}.get(order.action, "key-suspended")
                c["evidence"] = f"order {order.id[:16]}: " + {
                    "destroy": "Transit key deleted and ciphertext objects deleted",
                    "lift": "Transit key resumed"}.get(order.action, "Transit key suspended: no unwrap possible")
                await self.store.commit(Txn(puts={e.key: encode_canonical(c)}))
