"""The orders service: the one face the rest of the control plane calls, composing
the parts of quorum-signed orders — proposal, signatures, execution at quorum, acks,
reports.

The control plane runs the same pure verifier as the agents (custos.core.orders)
against the signer set in the Store, and executes an order only when it
verifies. Execution, in this order:

1. one transaction (with its audit event): the executed-orders state moves
   (replay protection), the order becomes ``executing``, the scoped models
   become ``halted`` (lift: ``active``; destroy: ``destroyed``) — from this
   moment every unwrap for them is refused (book);
2. side effects, idempotent and resumed after a restart: Transit keys suspended
   (halt, drill of the drill model), resumed (lift) or deleted with the
   ciphertext objects (destroy); leases of hosts holding scoped copies revoked (effects);
3. the signed order goes down every agent stream (and to agents that connect
   later), where each agent verifies it again before acting (fanout).

Agents' acks (acks) then bring every copy to a final state (completion, sweep).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from custos.blobs.base import BlobStore
from custos.client.orderfeed import FEED_PREFIX
from custos.controlplane.audit import Caller
from custos.controlplane.custody import Custody
from custos.controlplane.keys.base import KeyProvider
from custos.controlplane.orders.acks import Acks
from custos.controlplane.orders.book import OrderBook, all_records
from custos.controlplane.orders.chain import SignerChain
from custos.controlplane.orders.completion import Completion
from custos.controlplane.orders.effects import Effects
from custos.controlplane.orders.fanout import Fanout
from custos.controlplane.orders.feed import OrderFeed
from custos.controlplane.orders.report import order_report, signed_report
from custos.controlplane.orders.report_signer import ReportSigner
from custos.controlplane.orders.sweep import CompletionSweep
from custos.controlplane.registry import Registry
from custos.core.orders import OrderVerification
from custos.core.signers import SignerSet
from custos.errors import FailedPrecondition


class OrdersService:
    """Builds the parts and hooks them into Custody (acks, stream attach, the pinned set)."""

    def __init__(self, registry: Registry, custody: Custody, *, keys: KeyProvider, blobs: BlobStore,
                 clock: Callable[[], float] = time.time, agent_ca_pem: bytes = b"",
                 report_signer: ReportSigner | None = None) -> None:
        store, audit = registry.store, registry.audit
        self.signers = SignerChain(store, audit)
        self.book = OrderBook(store, registry, audit, self.signers, clock=clock)
        self.fanout = Fanout(store, custody, self.signers)
        self.completion = Completion(store, audit, custody)
        self.effects = Effects(store, registry, audit, custody, keys=keys, blobs=blobs, book=self.book,
                               fanout=self.fanout, completion=self.completion)
        self.sweep = CompletionSweep(store, self.effects, self.completion)
        self.acks = Acks(store, custody, self.book, agent_ca_pem=agent_ca_pem)  # the CA acks are checked against
        self.report_signer = report_signer
        self.store = store
        self.custody = custody
        self.feed: OrderFeed | None = None  # the order feed, once enable_feed is called
        custody.on_ack = self.acks.enqueue
        custody.on_attach = self.fanout.on_attach
        custody.signer_set = self.signers.pinned

    # -- signer sets (chain) ----------------------------------------------------------

    async def install_bootstrap(self, signer_set: SignerSet) -> None:
        """Install version 1 if no set is installed yet (idempotent, audited). Raises InvalidInput."""
        await self.signers.install_bootstrap(signer_set)

    async def refresh_pinned(self) -> None:
        """Reload the pinned version 1 that agents check their chains against."""
        await self.signers.refresh_pinned()

    async def chain(self) -> list[tuple[bytes, bytes]]:
        """Every installed version, oldest first: (canonical set bytes, rotation signatures)."""
        return await self.signers.load()

    async def refresh_chain(self) -> None:
        """Reload the chain that goes down the streams with every order."""
        await self.signers.refresh()

    async def current_set(self) -> SignerSet:
        """The newest installed set. Raises NoSignerSet."""
        return await self.signers.current_set()

    async def rotate(self, caller: Caller, *, new_set: bytes, signatures: bytes) -> SignerSet:
        """Install version n+1. Raises RotationRejected (IntegrityError), InvalidInput, NoSignerSet."""
        return await self.signers.rotate(caller, new_set=new_set, signatures=signatures)

    # -- the drill register -----------------------------------------------------------

    async def drill_register(self) -> dict[str, Any]:
        """The installed drill register as data. Raises NoSignerSet."""
        return await self.book.drills.info()

    async def prepare_drill_register(self, *, add: list[str], remove: list[str]) -> dict[str, Any]:
        """The next register, unsigned. Raises NotFound, FailedPrecondition, NoSignerSet."""
        register = await self.book.drills.prepare(add=add, remove=remove)
        return await self.book.drills.info(register.encode(), [])

    async def set_drill_register(self, caller: Caller, *, body: bytes, signatures: bytes) -> dict[str, Any]:
        """Install a signed register. Raises InvalidInput, DrillRegisterRejected (IntegrityError),
        FailedPrecondition, NotFound, NoSignerSet."""
        await self.book.drills.install(caller, body=body, signatures=signatures)
        return await self.book.drills.info()

    # -- the order book ---------------------------------------------------------------

    async def propose(self, caller: Caller, *, action: str, models: list[str], reason: str,
                      expires_seconds: int, drill: bool) -> dict[str, Any]:
        """Create an order over ``models`` and all their derivatives. Raises InvalidInput, NotFound."""
        record = await self.book.propose(caller, action=action, models=models, reason=reason,
                                         expires_seconds=expires_seconds, drill=drill)
        return await self.book.describe(record)

    async def get(self, order_id: str) -> dict[str, Any]:
        """An order's record by id or unique prefix. Raises InvalidInput, NotFound."""
        return await self.book.get(order_id)

    async def list_orders(self) -> list[dict[str, Any]]:
        """Every order, described."""
        return [await self.book.describe(rec) for rec in await all_records(self.store)]

    async def verify(self, record: dict[str, Any]) -> OrderVerification:
        """The agents' verifier run on ``record`` against the Store. Raises NoSignerSet."""
        return await self.book.verify(record)

    async def describe(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its decoded order, who signed, and what is missing. Raises NoSignerSet."""
        return await self.book.describe(record)

    async def attach(self, caller: Caller, *, order_id: str, signatures: bytes) -> dict[str, Any]:
        """Add signatures; at quorum, execute. Raises InvalidInput, NotFound, FailedPrecondition."""
        record = await self.book.attach(caller, order_id=order_id, signatures=signatures)
        if record["state"] == "executing":
            self.effects.start(record["id"])
        return await self.book.describe(record)

    # -- effects, fan-out, completion -------------------------------------------------

    def enable_feed(self, blobs: BlobStore, prefix: str = FEED_PREFIX) -> OrderFeed:
        """Publish every order that becomes executing to the order feed under ``prefix`` of
        ``blobs`` (orders.feed). Raises InvalidInput (a bad prefix)."""
        self.feed = OrderFeed(blobs, signed_message=self.fanout.signed_message, prefix=prefix)
        self.effects.feed = self.feed
        return self.feed

    def start_effects(self, oid: str) -> None:
        """Run the side effects of an executing order unless they are running here already."""
        self.effects.start(oid)

    async def resume_pending(self) -> None:
        """After a restart: finish the side effects of orders that were executing."""
        await self.sweep.resume_pending()

    async def run_fanout(self, stop: asyncio.Event) -> None:
        """Push orders executed on other replicas (the Store's watch) to this replica's agents."""
        await self.fanout.run(stop)

    async def check_complete(self, oid: str) -> bool:
        """Whether the order is complete; completes it when every copy is final."""
        return await self.completion.check(oid)

    async def run_completion(self, interval: float, stop: asyncio.Event) -> None:
        """The completion sweep, every ``interval`` seconds until ``stop``."""
        await self.sweep.run(interval, stop)

    async def completion_round(self) -> None:
        """One completion sweep over the executing orders."""
        await self.sweep.round()

    # -- acks and reports -------------------------------------------------------------

    async def enqueue_ack(self, host: str, ack: Any, received_ns: int) -> None:
        """Queue an agent's ack for the ack worker."""
        await self.acks.enqueue(host, ack, received_ns)

    async def run_ack_worker(self, stop: asyncio.Event) -> None:
        """Record queued acks until ``stop``."""
        await self.acks.run_worker(stop)

    async def record_ack(self, host: str, ack: Any, received_ns: int = 0) -> None:
        """Store an agent's ack and apply its evidence to that host's copies."""
        await self.acks.record(host, ack, received_ns)

    async def report(self, order_id: str) -> dict[str, Any]:
        """Everything the completion report needs, as data. Raises InvalidInput, NotFound."""
        return await order_report(self.store, self.custody, self.book, order_id)

    async def signed_report(self, order_id: str) -> bytes:
        """The signed report file (custos.core.evidence). Raises InvalidInput, NotFound,
        FailedPrecondition, BackendUnavailable."""
        return await signed_report(self.store, self.custody, self.book, self.signers, self.report_signer, order_id)

    async def report_key(self) -> tuple[bytes, str, str]:
        """The report key: (public key PEM, key id, what holds it). Raises FailedPrecondition
        (none configured), BackendUnavailable (Transit unreachable since start)."""
        signer = self.report_signer
        if signer is None:
            raise FailedPrecondition("no report key is configured on this control plane ([keys] report_key)")
        pem = await asyncio.to_thread(signer.public_key_pem)  # Transit: may have to read the key
        return pem, signer.key_id(), signer.label
