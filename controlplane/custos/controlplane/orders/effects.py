"""Effects of an executed order, after its quorum transaction: the order sent to the
agents, Transit keys suspended (halt, drill), resumed (lift) or deleted with the
ciphertext objects (destroy), leases of hosts holding scoped copies revoked, and the
object-store copies marked. Idempotent: resumed after a restart or by another replica.

A key change that fails (Vault unreachable, sealed, its token refused) does not hold up the
rest — the agents have the order, the models are halted in the Store so no unwrap is
handed out, leases are revoked — and is retried with backoff until it succeeds, audited
when it first fails and when it finally succeeds. Until then the order's effects are not
done, so it cannot complete; another replica or a restart resumes the retries."""

from __future__ import annotations

import asyncio
import logging
import time

from custos.blobs.base import BlobStore
from custos.controlplane.audit import SYSTEM, AuditLog
from custos.controlplane.custody import Custody
from custos.controlplane.keys.base import KeyDestroyed, KeyProvider
from custos.controlplane.orders.book import OrderBook
from custos.controlplane.orders.completion import Completion
from custos.controlplane.orders.fanout import Fanout
from custos.controlplane.orders.feed import OrderFeed
from custos.controlplane.orders.fleet import enrolled_among, hosts_with_copies
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.orders import Order
from custos.errors import CustosError

log = logging.getLogger("custos.orders")

RETRY_FIRST_S, RETRY_MAX_S = 0.5, 15.0  # backoff of a failed key change: doubles up to the cap
_KEY_ACTION = {"lift": "ResumeKey", "destroy": "DestroyKey"}  # anything else suspends
_MODEL_STATE = {"lift": "active", "destroy": "destroyed"}  # what the order made its models (else halted)


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
        self.feed: OrderFeed | None = None  # the order feed in the blob store (set by the orders service)
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
            if self.feed is not None:
                self.feed.publish(record)  # in the background: never holds the order up
            real = set(order.models)  # every model in the signed scope really changes state
            failing = await self._change_keys(oid, order, list(order.models), attempt=1)
            if order.action == "destroy":
                await self._shred(order)
            hosts = await enrolled_among(self.store, await hosts_with_copies(self.store, order.artifacts))
            if order.action != "lift":
                await self.custody.revoke_leases(sorted(hosts), oid)
            await self._mark_object_copies(order, real, done=real - set(failing))
            await self._retry_keys(oid, order, real, failing)
            await self.audit.record(SYSTEM, "ExecuteOrder", f"order/{oid}",
                                    f"{order.action}: keys and leases done; sent to {len(self.custody.streams)} agents")
            await self._mark_done(oid)
            await self.completion.check(oid)
        except Exception:
            log.exception("order %s: execution failed; will resume", oid[:16])

    async def _change_keys(self, oid: str, order: Order, models: list[str], *, attempt: int) -> list[str]:
        """Suspend, resume or destroy the Transit key of each model; the models whose change failed."""
        change = {"lift": self.keys.resume, "destroy": self.keys.destroy}.get(order.action, self.keys.suspend)
        action = _KEY_ACTION.get(order.action, "SuspendKey")
        failing = []
        for model in models:
            try:
                await asyncio.to_thread(change, model)
            except KeyDestroyed as exc:
                # A model never pushed has no key: nothing to suspend is not a failure.
                log.info("order %s: key of %s: %s", oid[:16], model, exc)
            except CustosError as exc:
                failing.append(model)
                if attempt == 1:
                    log.error("order %s: %s of model %s failed, retrying until it succeeds: %s",
                              oid[:16], action, model, exc)
                    await self.audit.record(SYSTEM, action, f"model/{model}",
                                            f"error: {type(exc).__name__}: {exc}; order {oid[:16]}: retrying")
                elif attempt % 10 == 0:
                    log.error("order %s: %s of model %s still failing (attempt %d): %s",
                              oid[:16], action, model, attempt, exc)
            else:
                if attempt > 1:
                    log.warning("order %s: %s of model %s done at attempt %d", oid[:16], action, model, attempt)
                    await self.audit.record(SYSTEM, action, f"model/{model}",
                                            f"ok: order {oid[:16]}, after {attempt} attempts")
        return failing

    async def _retry_keys(self, oid: str, order: Order, real: set[str], failing: list[str]) -> None:
        """Retry the failed key changes with backoff until each succeeds or a later order supersedes it."""
        delay, attempt = RETRY_FIRST_S, 1
        while failing:
            await asyncio.sleep(delay)
            delay, attempt = min(delay * 2, RETRY_MAX_S), attempt + 1
            wanted = [m for m in failing if await self._still_wanted(order, m)]
            failing = await self._change_keys(oid, order, wanted, attempt=attempt)
            await self._mark_object_copies(order, real, done=set(wanted) - set(failing))

    async def _still_wanted(self, order: Order, model: str) -> bool:
        """Whether the model is still in the state this order gave it (a later order takes over if not)."""
        if order.action == "destroy":
            return True  # destroy is final: nothing supersedes it
        try:
            state = (await self.registry.get_model(model))["state"]
        except CustosError:
            return True
        if state != _MODEL_STATE.get(order.action, "halted"):
            log.warning("order %s: model %s is now %s: a later order changes its key", order.id[:16], model, state)
            return False
        return True

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

    async def _mark_object_copies(self, order: Order, real: set[str], *, done: set[str]) -> None:
        """Mark the object-store copies: of models whose key change is ``done``, and of unordered models."""
        for aid in order.artifacts:
            for e in await self.store.range(f"copies/{aid}/"):
                c = dict(decode_canonical(e.value))
                if c["location_kind"] != "object-store" or c.get("state") == "shredded":
                    continue  # crypto-shredded is final: no later order marks it otherwise
                if c["model"] not in real:
                    c["state"] = "present"
                    continue
                if c["model"] not in done:
                    continue  # its key change is still being retried: its state would be a claim
                c["state"] = {"destroy": "shredded", "lift": "present"}.get(order.action, "key-suspended")
                c["evidence"] = f"order {order.id[:16]}: " + {
                    "destroy": "Transit key deleted and ciphertext objects deleted",
                    "lift": "Transit key resumed"}.get(order.action, "Transit key suspended: no unwrap possible")
                await self.store.commit(Txn(puts={e.key: encode_canonical(c)}))
