"""Fan-out: signed orders down the agents' streams — to the agents connected to this
replica, to agents that (re)connect later, and for orders executed on other replicas
(learned through the Store's watch)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from custos.controlplane.custody import Custody
from custos.controlplane.orders.acks import ack_key
from custos.controlplane.orders.book import EXECUTED_STATES, all_records
from custos.controlplane.orders.chain import SignerChain
from custos.controlplane.store.base import Store
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.orders import Order
from custos.core.signers import decode_signatures
from custos.errors import CustosError
from custos.v1 import custody_pb2

log = logging.getLogger("custos.orders")

PACE = 64  # streams woken per event-loop iteration by a broadcast


class Fanout:
    """Sends each executed order once per agent stream; hooks Custody's ``on_attach``."""

    def __init__(self, store: Store, custody: Custody, signers: SignerChain) -> None:
        self.store = store
        self.custody = custody
        self.signers = signers
        self._sent: dict[str, set[str]] = {}  # order id -> hosts whose current stream has it
        self._bytes: dict[tuple[str, str, int, bytes], bytes] = {}  # (order id, signatures, chain) -> message
        self.catching_up: set[asyncio.Task[None]] = set()  # catch-ups of streams that (re)attached
        self.on_order: list[Callable[[Order], None]] = []  # told of every executed order pushed here

    def message_bytes(self, record: dict[str, Any]) -> bytes:
        """``signed_message`` serialized, once per order, signatures and signer chain."""
        chain = self.signers.cached  # only ever grows: its length and newest set name it
        key = (record["id"], record["signatures"], len(chain), chain[-1][0] if chain else b"")
        data = self._bytes.get(key)
        if data is None:
            if len(self._bytes) > 64:
                self._bytes.clear()
            data = self._bytes[key] = self.signed_message(record).SerializeToString()
        return data

    async def push(self, record: dict[str, Any]) -> None:
        """Broadcast with the chain as the Store has it now (a rotation may be newer), PACE
        streams at a time: every stream woken costs its writer's step on this event loop, and
        waking ten thousand at once would make one loop iteration of them — every other call
        (a refused unwrap, an ack) waiting behind it. Between the groups the loop runs the rest."""
        order = Order.decode(record["body"].encode())
        for hook in self.on_order:
            hook(order)  # the key broker refuses its models' unwraps from now on, without a read
        await self.signers.refresh()
        data = self.message_bytes(record)
        sent = self._sent.setdefault(record["id"], set())
        todo = [(h, q) for h, q in list(self.custody.streams.items()) if h not in sent]
        for i in range(0, len(todo), PACE):
            for host, q in todo[i:i + PACE]:
                if host not in sent and self.custody.send_order(host, q, data):
                    sent.add(host)
            await asyncio.sleep(0)

    async def run(self, stop: asyncio.Event) -> None:
        """Replicas learn of orders executed elsewhere through the Store's watch
        (etcd watch) and push them to their own agents."""
        while not stop.is_set():
            try:
                async for key in self.store.watch("orders/"):
                    entry = await self.store.get(key)
                    if entry is None:
                        continue
                    rec = dict(decode_canonical(entry.value))
                    if rec["state"] in EXECUTED_STATES:
                        await self.push(rec)
            except CustosError as exc:
                log.warning("order watch failed, retrying: %s", exc)
                await asyncio.sleep(1.0)
                await self._catch_up_executed()

    async def _catch_up_executed(self) -> None:
        """After a watch broke: push every executed order (broadcast sends each once per
        stream), so an order executed while this replica was not watching still goes out."""
        try:
            for rec in await all_records(self.store):
                if rec["state"] in EXECUTED_STATES:
                    await self.push(rec)
        except CustosError as exc:
            log.warning("order catch-up failed, the watch will retry: %s", exc)

    def signed_message(self, record: dict[str, Any]) -> custody_pb2.ControlMessage:
        """The order as agents receive it: body, signatures, and the chain to verify them."""
        sigs = decode_signatures(record["signatures"].encode())
        chain = self.signers.cached
        dry = record.get("dry_run") or {"artifacts": [], "models": []}
        register = record.get("drill_register") or {"body": "", "signatures": ""}
        return custody_pb2.ControlMessage(order=custody_pb2.SignedOrder(
            drill_register=register["body"].encode(), drill_register_signatures=register["signatures"].encode(),
            dry_run_models=dry["models"], dry_run_artifacts=dry["artifacts"],
            body=record["body"].encode(),
            signatures=[custody_pb2.OrderSignature(key_id=s.key_id, signature=s.sig.encode()) for s in sigs],
            signer_set=chain[-1][0] if chain else b"",
            signer_chain=[encode_canonical({"set": s.decode(), "signatures": g.decode()}) for s, g in chain[1:]],
        ))

    def on_attach(self, host: str) -> None:
        """A stream opened for ``host``: catch it up, in the background."""
        for hosts in self._sent.values():
            hosts.discard(host)  # a new stream: what the old one had may be lost
        task = asyncio.get_running_loop().create_task(self._catch_up(host))
        self.catching_up.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self.catching_up.discard)

    async def _catch_up(self, host: str) -> None:
        """A host (re)connected: send it every executed order it has not acked, oldest first."""
        await self.signers.refresh()
        pending = []
        for rec in await all_records(self.store):
            if rec["state"] not in EXECUTED_STATES:
                continue
            if await self.store.get(ack_key(rec["id"], host)) is not None:
                continue
            pending.append((Order.decode(rec["body"].encode()).sequence, rec))
        q = self.custody.streams.get(host)
        for _, rec in sorted(pending, key=lambda p: p[0]):
            sent = self._sent.setdefault(rec["id"], set())
            # A broadcast meanwhile may have sent it; the stream may have ended.
            if q is not None and host not in sent and self.custody.send_order(host, q, self.message_bytes(rec)):
                sent.add(host)
