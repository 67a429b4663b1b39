"""The custody stream: one long-lived bidi ``Custody.Stream`` per host (grpc.aio, mTLS).

Up: a full inventory on every (re)connect, then deltas; a heartbeat every
``ttl/3`` (or the configured interval, whichever is shorter); order acks.
Down: a ``Lease`` answering the stream's opening and each heartbeat; signed
orders (handed to an :class:`OrderHandler`); notices.

The local lease deadline is measured on this host's monotonic clock from the
moment the message that earned the lease was *sent* (the stream opening or a
heartbeat), plus the TTL: the server's own deadline is always later, so the
agent never believes in a lease the server has already let lapse, whatever the
two wall clocks say.

Reconnects use jittered exponential backoff (capped; reset once a connection
has had a heartbeat answered). With several control-plane addresses (replicas),
each attempt after a failed or ended connection goes to the next address, so a
dead replica costs one backoff step. A "host removed" notice, or the server
refusing the certificate, stops reconnecting until the identity on disk changes
(re-enrollment).

Orders survive a lost connection: an order being executed when its stream breaks
is carried out to the end, and its ack is sent on the next connection. A control
plane holds the lease back from a host that has not acked an order it revoked
the lease for, and sends that order first: the agent executes (or re-acks) it
before any lease, then reconnects for the lease.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from custos.agent.heldacks import HeldAcks
from custos.client.connection import parse_addrs
from custos.client.status import STREAM_TAKEN_KEY, error_for, retry_after
from custos.core.orders import order_id_of
from custos.errors import (
    CustosError,
    FailedPrecondition,
    InvalidInput,
    Unauthorized,
)
from custos.v1 import custody_pb2, custody_pb2_grpc

log = logging.getLogger("custos.agent.stream")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # Notice a dead peer behind a silent network (packets dropped, no reset), not only
    # a closed socket: a ping unanswered for 5 s closes the connection.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # This module owns reconnect pacing; keep gRPC's own backoff short.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # gRPC's own limit for one connection attempt (TCP, TLS, HTTP/2 settings; 20 s by default):
    # the agent's CONNECT_TIMEOUT decides instead.
    ("grpc.min_reconnect_backoff_ms", 60_000),
]
# For the connection itself (TCP, the TLS handshake, HTTP/2 settings). A replica in a reconnect
# storm completes its handshakes late: one given up at 15 s is a handshake both sides paid for
# and the next attempt pays again (a 10,000-host storm never ended that way). A refused or
# failed connection is not waited for: the attempt fails at once and the next replica is tried.
CONNECT_TIMEOUT = 60.0
FIRST_LEASE_TIMEOUT = 15.0  # once connected: for the control plane to take the stream (an older one: to lease it)
# Once the control plane has taken the stream (its initial metadata says so), for the lease:
# its opening may wait in the replica's admission queue, which refuses what it cannot serve
# within 20 s (custos.controlplane.admission), so a wait this long is a replica gone wrong.
QUEUED_LEASE_TIMEOUT = 60.0
CLOSE_TIMEOUT = 5.0  # after acking orders sent before a lease: for the server to read them and end the stream
REMOVAL_MARKERS = ("host removed", "was removed", "certificate not accepted")

def rpc_error(exc: grpc.RpcError, what: str) -> CustosError:
    """The CustosError for a failed call, its message prefixed with ``what``."""
    cls, details = error_for(exc)
    return cls(f"{what}: {details.splitlines()[0]}")


def is_removal(text: str) -> bool:
    """Does a notice or a refusal from the control plane say this host was removed?"""
    low = text.lower()
    return any(m in low for m in REMOVAL_MARKERS)


class HostRemoved(Unauthorized):
    """The control plane removed this host or no longer accepts its certificate."""


# -- orders -----------------------------------------------------------------------


class OrderHandler(Protocol):
    """Verifies and executes one signed order; returns the ack to send (never raises on a bad order)."""

    async def handle(self, order: custody_pb2.SignedOrder, *, received_unix_ns: int) -> custody_pb2.OrderAck:
        ...


class RefuseUnverifiedOrders:
    """The default handler: without order verification installed, no order is acted on."""

    async def handle(self, order: custody_pb2.SignedOrder, *, received_unix_ns: int) -> custody_pb2.OrderAck:
        try:
            oid = order_id_of(bytes(order.body))
        except CustosError:
            oid = ""
        log.warning("order refused: no order verification installed", extra={"fields": {"order_id": oid}})
        return custody_pb2.OrderAck(order_id=oid, verified=False, outcome="refused",
                                    reason="order verification not installed",
                                    received_unix_ns=received_unix_ns, done_unix_ns=time.time_ns())


# -- connection -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """This host's mTLS material, read from disk for each connection attempt."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    fingerprint: str

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_pem, private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)


def open_channel(addr: str, creds: grpc.ChannelCredentials, server_name: str = "") -> grpc.aio.Channel:
    """A channel to one control-plane address (of a comma-separated list: the first).
    A DNS name resolving to several addresses is tried address by address by gRPC."""
    options: list[tuple[str, Any]] = list(CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(addr.split(",", 1)[0].strip(), creds, options=options)


class Backoff:
    """Jittered exponential backoff: each delay is uniform in [d/2, d], d doubling up to ``cap``."""

    def __init__(self, *, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise InvalidInput("backoff: want 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    def next(self, hint: float | None = None) -> float:
        """The next delay. ``hint``: the control plane said when to come back (a busy replica,
        see :func:`custos.client.status.retry_after`): then a time spread over [hint, 2 hint],
        never less than the backoff's, so the refused come back spread out, not in a wave."""
        d = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        delay = self._rng.uniform(d / 2, d)
        if hint is not None and hint > 0:
            delay = max(delay, self._rng.uniform(hint, 2 * hint))
        return delay

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """A lease as this agent sees it: the local monotonic deadline and the server's numbers."""

    expires_monotonic: float
    ttl_seconds: int
    server_expires_unix_ns: int
    received_monotonic: float


class _Reconnect(Exception):
    """End this connection attempt and try again after the backoff (or the server's hint)."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


async def connection(channel: grpc.aio.Channel) -> None:
    """Wait until ``channel`` is connected (READY) or has failed (TRANSIENT_FAILURE, SHUTDOWN:
    a call made next fails at once with the reason), at most ``CONNECT_TIMEOUT``. Raises
    TimeoutError while it is still connecting then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT
    state = channel.get_state(try_to_connect=True)
    while state in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING):
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError
        await asyncio.wait_for(channel.wait_for_state_change(state), left)
        state = channel.get_state(try_to_connect=True)


async def first_message(call: Any) -> Any:
    """A new stream's first message (or EOF): ``FIRST_LEASE_TIMEOUT`` for the control plane to
    take the stream, then, once its initial metadata says it has, ``QUEUED_LEASE_TIMEOUT`` for
    the message (an older control plane sends its metadata with the lease: one timeout).
    Raises TimeoutError (the call cancelled) and the call's AioRpcError."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_LEASE_TIMEOUT
    try:
        md = await asyncio.wait_for(call.initial_metadata(), FIRST_LEASE_TIMEOUT)
        taken = any(k == STREAM_TAKEN_KEY for k, _ in (md or ()))
        wait = QUEUED_LEASE_TIMEOUT if taken else max(deadline - loop.time(), 0.001)
        return await asyncio.wait_for(call.read(), wait)
    except TimeoutError:
        call.cancel()
        raise


class CustodyStream:
    """Keeps the custody stream up. Run :meth:`run` as one task; it returns when ``stop`` is set.

    ``addr``: one control-plane address, several separated by commas, or a list: the
    replicas, in order of preference (see the module docstring).

    Callbacks (all called on the event loop):
      ``initial_messages()``  -> the full inventory to send first on each connection;
      ``on_lease(grant)``     every lease;
      ``on_connected()``, ``on_disconnected(reason)``;
      ``on_removed(reason)``  the host was removed: the owner fails closed.
    ``credentials()`` raises FailedPrecondition when there is no identity to connect with.
    """

    def __init__(
        self,
        *,
        addr: str | Sequence[str],
        credentials: Callable[[], Credentials],
        initial_messages: Callable[[], Awaitable[list[custody_pb2.AgentMessage]]],
        on_lease: Callable[[LeaseGrant], None],
        on_removed: Callable[[str], Awaitable[None]],
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        order_handler: OrderHandler | None = None,
        heartbeat_interval: float = 0.0,
        reconnect_base: float = 0.5,
        reconnect_max: float = 30.0,
        server_name: str = "",
        identity_poll: float = 2.0,
        held_acks: Path | None = None,
    ) -> None:
        self.addrs = parse_addrs(addr, "control-plane address") if addr else ("",)
        self._addr_index = 0
        self._credentials = credentials
        self._initial = initial_messages
        self._on_lease = on_lease
        self._on_removed = on_removed
        self._on_connected = on_connected or (lambda: None)
        self._on_disconnected = on_disconnected or (lambda reason: None)
        self.order_handler: OrderHandler = order_handler or RefuseUnverifiedOrders()
        # PlantCanary from the control plane (custos.agent.canary); set by the daemon. It answers
        # with CanaryPlanted on its own, so it must not block the reader.
        self.on_plant_canary: Callable[[custody_pb2.PlantCanary], None] | None = None
        self.heartbeat_interval = heartbeat_interval
        self.backoff = Backoff(base=reconnect_base, cap=reconnect_max)
        self.server_name = server_name
        self.identity_poll = identity_poll
        self.channel: grpc.aio.Channel | None = None  # set while a stream is up
        self.connected = False
        self.removed: str | None = None
        self.connections = 0
        self._out: asyncio.Queue[custody_pb2.AgentMessage | None] | None = None
        self._pending_sent: collections.deque[float] = collections.deque()
        self._last_lease = 0.0
        self._conn_leases = 0
        self._tasks: set[asyncio.Task[Any]] = set()  # this connection's: cancelled when it ends
        self._order_tasks: set[asyncio.Task[Any]] = set()  # orders being executed: never cancelled by a reconnect
        self._kept = HeldAcks(held_acks)  # the held acks on disk: they survive a restart
        self._held: list[custody_pb2.AgentMessage] = self._kept.load()  # acks waiting for a connection

    @property
    def addr(self) -> str:
        """The control-plane address the current (or next) connection uses."""
        return self.addrs[self._addr_index]

    # - sending -

    def send(self, msg: custody_pb2.AgentMessage) -> bool:
        """Queue a message on the current stream; False when there is none (a full report follows on reconnect)."""
        if self._out is None or not self.connected:
            return False
        self._out.put_nowait(msg)
        return True

    def deliver_ack(self, ack: custody_pb2.OrderAck) -> None:
        """Send an ack made off the stream (an order from the feed, the drop directory or
        apply-order): now if a stream is open, else on the next one, even after a restart."""
        self._deliver_ack(custody_pb2.AgentMessage(ack=ack))

    def _deliver_ack(self, msg: custody_pb2.AgentMessage) -> None:
        """An ack goes on the open stream (leased or not), else waits for the next one."""
        if self._out is not None:
            self._out.put_nowait(msg)
        else:
            self._held.append(msg)
            self._kept.add(msg)

    def _flush_held(self, out: asyncio.Queue[custody_pb2.AgentMessage | None]) -> None:
        held, self._held = self._held, []
        for msg in held:
            out.put_nowait(msg)

    # - main loop -

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.removed is not None:
                await self._wait_for_new_identity(stop)
                continue
            fingerprint = ""
            hint: float | None = None
            try:
                creds = self._credentials()
                fingerprint = creds.fingerprint
                await self._connect_once(creds, stop)
                reason = "the control plane closed the stream"
            except HostRemoved as exc:
                await self._removed(str(exc), fingerprint)
                continue
            except _Reconnect as exc:
                reason = str(exc)
                hint = exc.retry_after_s
            except FailedPrecondition as exc:
                reason = str(exc)  # no identity on disk (yet): keep looking
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or exc.code().name
                if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED) and \
                        is_removal(details):
                    await self._removed(details, fingerprint)
                    continue
                reason = f"{exc.code().name}: {details.splitlines()[0]}"
                hint = retry_after(exc.trailing_metadata())  # a busy replica: when to come back
                # The error and its call hold each other (its traceback's frames hold the call):
                # left to the cyclic collector, the closed channel's connection stays open until
                # that runs, one per failed attempt, on this host and in the control plane.
                exc.__traceback__ = None
            except (OSError, CustosError) as exc:
                reason = str(exc)
            except Exception as exc:  # a bug must not end reconnecting (the lease would lapse for good)
                log.exception("custody stream failed unexpectedly")
                reason = f"unexpected {type(exc).__name__}"
            finally:
                await self._teardown()
            if stop.is_set():
                return
            # A failed or ended connection: the next attempt tries the next replica.
            self._addr_index = (self._addr_index + 1) % len(self.addrs)
            delay = self.backoff.next(hint)
            log.warning("custody stream down; reconnecting", extra={"fields": {
                "reason": reason, "retry_in_s": round(delay, 2), "attempt": self.backoff.attempt,
                "next_addr": self.addr}})
            self._on_disconnected(reason)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _removed(self, reason: str, fingerprint: str) -> None:
        self.removed = fingerprint or "?"
        log.error("this host was removed from custody: failing closed and not reconnecting until re-enrolled",
                  extra={"fields": {"reason": reason}})
        self._on_disconnected(reason)
        await self._on_removed(reason)

    async def _wait_for_new_identity(self, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=self.identity_poll)
        except TimeoutError:
            pass
        try:
            fp = self._credentials().fingerprint
        except CustosError:
            return
        if fp != self.removed:
            log.info("a new identity is on disk: reconnecting", extra={"fields": {"cert_sha256": fp[:16]}})
            self.removed = None
            self.backoff.reset()

    async def _teardown(self) -> None:
        self.connected = False
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - tearing down regardless
                pass
        self._tasks.clear()
        out, self._out = self._out, None
        while out is not None and not out.empty():
            msg = out.get_nowait()
            if msg is not None and msg.WhichOneof("msg") == "ack":
                self._held.append(msg)  # not written before the stream ended: sent on the next one
                self._kept.add(msg)
        ch, self.channel = self.channel, None
        if ch is not None:
            try:
                await ch.close(grace=None)
            except Exception:  # noqa: BLE001, S110 - already broken
                pass

    async def _connect_once(self, creds: Credentials, stop: asyncio.Event) -> None:
        channel = open_channel(self.addr, creds.channel_credentials(), self.server_name)
        self.channel = channel
        try:
            await connection(channel)
        except TimeoutError:
            raise _Reconnect(f"not connected within {CONNECT_TIMEOUT:.0f} s (TCP, TLS and HTTP/2 set-up)") from None
        stub = custody_pb2_grpc.CustodyStub(channel)
        self._pending_sent.clear()
        self._conn_leases = 0
        opened = time.monotonic()
        self._pending_sent.append(opened)
        call = stub.Stream()
        out: asyncio.Queue[custody_pb2.AgentMessage | None] = asyncio.Queue()
        self._out = out
        first = await self._first_message(call)
        kind = first.WhichOneof("msg")
        if kind == "order":
            # The lease is held back until this host acks the orders it missed (a halt
            # issued while it was cut off, or whose ack died with a replica): ack them first.
            self._pending_sent.clear()  # the opening earned no lease
            n = await self._orders_before_lease(call, out, first.order, stop)
            raise _Reconnect(f"acked {n} order(s) sent before a lease; reconnecting for the lease")
        if kind == "notice" and is_removal(first.notice):
            raise HostRemoved(first.notice)
        if kind != "lease":
            raise _Reconnect(f"the first message was {kind!r}, not a lease")
        grant = self._grant(first.lease)
        self.connected = True
        self.connections += 1
        log.info("custody stream up", extra={"fields": {
            "addr": self.addr, "lease_ttl_s": grant.ttl_seconds, "connection": self.connections}})
        self._on_connected()
        self._flush_held(out)
        for m in await self._initial():
            out.put_nowait(m)
        hb = self._heartbeat_every(grant.ttl_seconds)
        writer = asyncio.create_task(self._writer(call, out))
        beat = asyncio.create_task(self._heartbeats(out, hb, grant.ttl_seconds))
        stopper = asyncio.create_task(stop.wait())
        self._tasks |= {writer, beat, stopper}
        reader = asyncio.create_task(self._reader(call))
        self._tasks.add(reader)
        done, _ = await asyncio.wait({writer, beat, stopper, reader}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            call.cancel()
            return
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc
        code = await call.code() if call.done() else None
        if code is not None and code != grpc.StatusCode.OK:
            details = await call.details()
            if is_removal(details):
                raise HostRemoved(details)
            raise _Reconnect(f"{code.name}: {details}")

    async def _first_message(self, call: grpc.aio.StreamStreamCall) -> custody_pb2.ControlMessage:
        """The stream's first message. Raises _Reconnect (none in time, or the stream ended), HostRemoved."""
        try:
            first = await first_message(call)
        except TimeoutError:
            raise _Reconnect("no lease in time: the control plane did not take the stream within "
                             f"{FIRST_LEASE_TIMEOUT:.0f} s or lease it within {QUEUED_LEASE_TIMEOUT:.0f} s"
                             ) from None
        if first is grpc.aio.EOF:
            code = await call.code()
            details = await call.details()
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED) and is_removal(details):
                raise HostRemoved(details)
            raise _Reconnect(f"stream closed before the first lease ({code.name}: {details})")
        msg: custody_pb2.ControlMessage = first
        return msg

    async def _orders_before_lease(self, call: grpc.aio.StreamStreamCall,
                                   out: asyncio.Queue[custody_pb2.AgentMessage | None],
                                   first: custody_pb2.SignedOrder, stop: asyncio.Event) -> int:
        """Execute the orders a stream brings before its lease, send their acks, and end the
        stream once the server has read them. Returns how many orders came."""
        self._flush_held(out)
        writer = asyncio.create_task(self._writer(call, out))
        stopper = asyncio.create_task(stop.wait())
        counter = [0]
        reader = asyncio.create_task(self._reader(call, counter))  # more orders, notices
        self._tasks |= {writer, stopper, reader}
        self._dispatch(first)
        counter[0] += 1
        log.warning("the control plane holds the lease until this host acks an order it missed",
                    extra={"fields": {"addr": self.addr}})
        while self._order_tasks:
            done, _ = await asyncio.wait({*self._order_tasks, writer, stopper, reader},
                                         return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                call.cancel()
                return counter[0]
            for t in done & {writer, reader}:
                exc = t.exception()
                if exc is not None:
                    raise exc
                raise _Reconnect("the stream ended before its orders were acked")
        out.put_nowait(None)  # every ack is queued: half-close once they are written
        done, _ = await asyncio.wait({writer, reader}, timeout=CLOSE_TIMEOUT, return_when=asyncio.ALL_COMPLETED)
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc
        return counter[0]

    def _heartbeat_every(self, ttl: int) -> float:
        third = max(ttl / 3.0, 0.05)
        if self.heartbeat_interval <= 0:
            return third
        if self.heartbeat_interval > third:
            log.warning("heartbeat interval longer than a third of the lease TTL; using TTL/3",
                        extra={"fields": {"configured_s": self.heartbeat_interval, "ttl_s": ttl}})
            return third
        return self.heartbeat_interval

    def _grant(self, lease: custody_pb2.Lease) -> LeaseGrant:
        now = time.monotonic()
        sent = self._pending_sent.popleft() if self._pending_sent else now
        ttl = int(lease.ttl_seconds)
        if ttl <= 0:
            raise _Reconnect("the control plane granted a lease without a TTL")
        grant = LeaseGrant(expires_monotonic=sent + ttl, ttl_seconds=ttl,
                           server_expires_unix_ns=int(lease.expires_unix_ns), received_monotonic=now)
        self._last_lease = now
        self._conn_leases += 1
        if self._conn_leases == 2:
            # A heartbeat was answered on this connection: it is healthy.
            self.backoff.reset()
        self._on_lease(grant)
        return grant

    async def _writer(self, call: grpc.aio.StreamStreamCall,
                      out: asyncio.Queue[custody_pb2.AgentMessage | None]) -> None:
        while True:
            msg = await out.get()
            if msg is None:
                await call.done_writing()
                return
            if msg.WhichOneof("msg") == "heartbeat":
                self._pending_sent.append(time.monotonic())
            await call.write(msg)
            if msg.WhichOneof("msg") == "ack":
                self._kept.written(msg)

    async def _heartbeats(self, out: asyncio.Queue[custody_pb2.AgentMessage | None], every: float,
                          ttl: int) -> None:
        while True:
            await asyncio.sleep(every)
            if time.monotonic() - self._last_lease > ttl:
                raise _Reconnect(f"no lease for {ttl} s on an open stream")
            out.put_nowait(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat(sent_unix_ns=time.time_ns())))

    async def _reader(self, call: grpc.aio.StreamStreamCall, orders: list[int] | None = None) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            kind = msg.WhichOneof("msg")
            if kind == "lease":
                self._grant(msg.lease)
            elif kind == "notice":
                log.warning("notice from the control plane", extra={"fields": {"notice": msg.notice}})
                if is_removal(msg.notice):
                    raise HostRemoved(msg.notice)
            elif kind == "order":
                self._dispatch(msg.order)
                if orders is not None:
                    orders[0] += 1
            elif kind == "report":
                pass  # a ReportReceipt: the control plane ingested a report (nothing to do here)
            elif kind == "plant_canary":
                if self.on_plant_canary is not None:
                    self.on_plant_canary(msg.plant_canary)
                else:
                    log.warning("canary request ignored: this agent plants no canaries",
                                extra={"fields": {"canary_id": msg.plant_canary.canary_id[:40]}})

    def _dispatch(self, order: custody_pb2.SignedOrder) -> None:
        t = asyncio.create_task(self._order(order))
        self._order_tasks.add(t)
        t.add_done_callback(self._order_tasks.discard)

    async def _order(self, order: custody_pb2.SignedOrder) -> None:
        received = time.time_ns()
        try:
            ack = await self.order_handler.handle(order, received_unix_ns=received)
        except Exception as exc:
            log.exception("order handler failed")
            try:
                oid = order_id_of(bytes(order.body))
            except CustosError:
                oid = ""
            ack = custody_pb2.OrderAck(order_id=oid, verified=False, outcome="refused",
                                       reason=f"order handler failed: {type(exc).__name__}",
                                       received_unix_ns=received, done_unix_ns=time.time_ns())
        self._deliver_ack(custody_pb2.AgentMessage(ack=ack))
