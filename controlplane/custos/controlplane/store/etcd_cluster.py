"""A connection to an etcd cluster: several endpoints, failover between them, TLS.

One gRPC channel per endpoint (so TLS checks each member's own name), one
endpoint pinned at a time. A call that fails because the member is gone, has no
leader or timed out moves the pin to the next endpoint and is tried again there
until ``retry_for`` seconds have passed, as etcd's own client does. Whether a
*write* may be tried again is the caller's business (``EtcdStore.commit`` reads
its outcome back); this module only says how many attempts were made.

Every call carries etcd's ``hasleader`` metadata: a member cut off from its
cluster refuses at once instead of hanging, and a watch on it is closed, so the
watch moves to a member that still hears the leader and resumes from the last
revision it delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from custos.controlplane.store.base import StoreUnavailable
from custos.errors import InvalidInput

log = logging.getLogger("custos.store")

T = TypeVar("T")

# etcd's "require leader" metadata (rpctypes.MetadataRequireLeaderKey).
REQUIRE_LEADER = (("hasleader", "true"),)
# Worth another endpoint: the member is down, has no leader, or did not answer in time.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# etcd answers UNKNOWN when its own context ran out (a read waiting for a new leader)
# and gRPC when a stream broke mid-way: those are worth another member too.
RETRYABLE_UNKNOWN = ("deadline exceeded", "context canceled", "stream removed", "leader changed", "timed out")


def retryable(exc: grpc.aio.AioRpcError) -> bool:
    if exc.code() in RETRYABLE:
        return True
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNKNOWN and any(s in details for s in RETRYABLE_UNKNOWN)
CHANNEL_OPTIONS = [
    # A restarted member is found again within a second, not after gRPC's 2-minute backoff.
    # (Not grpc.min_reconnect_backoff_ms: gRPC uses it as the connect timeout, too short under load.)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A member that stops answering (hung, cut off) is noticed on an idle watch stream too;
    # etcd's default keepalive enforcement allows one ping every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 << 20),
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoints(text: str) -> list[Endpoint]:
    """``h1:2379,h2:2379,[::1]:2379`` (etcdctl's ``--endpoints`` without a scheme).

    Raises InvalidInput for an empty list, a missing or bad port, a bad host or a repeat.
    """
    out: list[Endpoint] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise InvalidInput(f"empty etcd endpoint in {text!r}: want HOST:PORT[,HOST:PORT...]")
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise InvalidInput(f"bad etcd endpoint {item!r}: [{host}] is not an IPv6 address") from None
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(f"bad etcd endpoint {item!r}: want HOST:PORT")
        if ":" in host and not item.startswith("["):
            raise InvalidInput(f"bad etcd endpoint {item!r}: write an IPv6 address as [ADDR]:PORT")
        if any(c.isspace() or c in "/?#@" for c in host):
            raise InvalidInput(f"bad etcd endpoint {item!r}: bad host name")
        ep = Endpoint(host, int(port))
        if ep in out:
            raise InvalidInput(f"etcd endpoint {ep} is listed twice")
        out.append(ep)
    return out


@dataclass(frozen=True, slots=True)
class EtcdURL:
    endpoints: list[Endpoint]
    prefix: str  # "/custos/"
    tls: bool  # etcds://


def parse_etcd_url(url: str) -> EtcdURL:
    """``etcd://h1:2379,h2:2379,h3:2379[/prefix]`` (``etcds://`` for TLS); the prefix
    defaults to ``custos``. Raises InvalidInput."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "etcds"):
        raise InvalidInput(f"bad etcd URL {url!r}: want etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
    if any(c in rest for c in "?#") or any(c.isspace() or ord(c) < 32 for c in rest):
        raise InvalidInput(f"bad etcd URL {url!r}: no query, fragment or spaces (TLS files go in the config)")
    hosts, _, prefix = rest.partition("/")
    prefix = prefix.strip("/") or "custos"
    if "//" in prefix:
        raise InvalidInput(f"bad etcd URL {url!r}: empty prefix segment")
    return EtcdURL(parse_endpoints(hosts), f"/{prefix}/", scheme == "etcds")


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """TLS to etcd: a CA to check the members (None: the system's roots) and an
    optional client certificate for etcd's ``--client-cert-auth``."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidInput("etcd TLS: cert_file and key_file go together")

    def credentials(self) -> grpc.ChannelCredentials:
        """Raises InvalidInput if a file cannot be read."""
        def read(path: str | None, what: str) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise InvalidInput(f"cannot read the etcd {what} {path}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(read(self.ca_file, "CA file"), read(self.key_file, "client key"),
                                            read(self.cert_file, "client certificate"))


# A member that answered no (nothing listening, a TLS peer that refused us, no such
# name) — not one that was merely slow to connect.
REFUSED = ("connection refused", "handshake", "dns resolution failed", "name or service not known")


def _refused(exc: grpc.aio.AioRpcError) -> bool:
    details = (exc.details() or "").lower()
    return exc.code() == grpc.StatusCode.UNAVAILABLE and any(s in details for s in REFUSED)


def _describe(exc: grpc.aio.AioRpcError) -> str:
    return f"{exc.code().name}: {exc.details() or ''}".strip()


@dataclass
class _Stubs:
    channel: grpc.aio.Channel
    kv: rpc.KVStub
    watch: rpc.WatchStub


class ClusterClient:
    """Calls to whichever listed member answers. Raises StoreUnavailable."""

    def __init__(self, endpoints: list[Endpoint], *, tls: EtcdTLS | None = None, timeout: float = 5.0,
                 retry_for: float = 15.0) -> None:
        if not endpoints:
            raise InvalidInput("etcd needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout  # one attempt on one member
        self.retry_for = retry_for  # all attempts of one call, across members
        self._creds = tls.credentials() if tls is not None else None
        self._stubs: dict[int, _Stubs] = {}
        self._pin = 0
        self._closed = False
        self._down: set[int] = set()  # members whose last call failed
        self._reached = False  # some call has been answered

    def __str__(self) -> str:
        return ",".join(map(str, self.endpoints))

    @property
    def pinned(self) -> Endpoint:
        return self.endpoints[self._pin]

    def _get(self, i: int) -> _Stubs:
        s = self._stubs.get(i)
        if s is None:
            target = str(self.endpoints[i])
            if self._creds is None:
                channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(target, self._creds, options=CHANNEL_OPTIONS)
            s = self._stubs[i] = _Stubs(channel, rpc.KVStub(channel), rpc.WatchStub(channel))
        return s

    def _fail_over(self, i: int, why: str) -> None:
        """Member ``i`` failed a call: move the pin on, unless another call already did."""
        if i not in self._down:  # once per outage of a member, not once per attempt
            self._down.add(i)
            log.warning("etcd %s failed (%s); trying %s", self.endpoints[i], why,
                        self.endpoints[(i + 1) % len(self.endpoints)])
        if self._pin == i and len(self.endpoints) > 1:
            self._pin = (i + 1) % len(self.endpoints)

    async def call(self, what: str, fn: Callable[[rpc.KVStub, float, int], Awaitable[T]]) -> T:
        """``fn(kv_stub, timeout, attempt)`` on the pinned member, failing over on a
        retryable error until ``retry_for`` runs out. ``attempt`` counts from 1: above 1,
        an earlier attempt may have reached the cluster.

        A client that has never reached the cluster gives up after one round in which no
        member could even be connected to (a wrong URL, a wrong CA, etcd not started):
        fail fast at start, be patient in service.

        Raises StoreUnavailable (every member failed for ``retry_for``, or etcd refused).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        attempt = unreachable = 0
        while True:
            attempt += 1
            i = self._pin
            left = deadline - loop.time()
            try:
                result = await fn(self._get(i).kv, max(0.2, min(self.timeout, left)), attempt)
                self._down.discard(i)
                self._reached = True
                return result
            except grpc.aio.AioRpcError as exc:
                if not retryable(exc):
                    raise StoreUnavailable(f"etcd {self.endpoints[i]}: {what}: {_describe(exc)}") from None
                last = f"{self.endpoints[i]}: {_describe(exc)}"
                self._fail_over(i, _describe(exc))
                unreachable = unreachable + 1 if _refused(exc) else 0
                if not self._reached and unreachable >= len(self.endpoints):
                    raise StoreUnavailable(f"etcd cluster {self}: no member can be reached for {what}; "
                                           f"last error: {last}") from None
            except (grpc.RpcError, grpc.aio.UsageError, OSError) as exc:  # a closed client, a broken socket
                raise StoreUnavailable(f"etcd {self.endpoints[i]}: {what}: {exc or type(exc).__name__}") from None
            if loop.time() >= deadline:
                raise StoreUnavailable(f"etcd cluster {self} unavailable for {what} after {attempt} "
                                       f"attempts in {self.retry_for:.0f}s; last error: {last}")
            if attempt % len(self.endpoints) == 0:  # every member failed once: let them recover
                await asyncio.sleep(min(1.0, 0.05 * 2 ** (attempt // len(self.endpoints))))

    async def watch(self, key: bytes, range_end: bytes, start_revision: int) -> AsyncIterator[list[Any]]:
        """The events of ``[key, range_end)`` from ``start_revision`` on, one list per
        response etcd sends (it never splits a revision), deletions filtered out. After a
        failover the watch resumes from the revision after the last list delivered, so
        nothing is missed or repeated; it keeps trying members while the cluster is down.

        Raises StoreUnavailable when that history was compacted away (it cannot resume
        without loss), when etcd refused the watch, or once the client is closed.
        """
        next_rev = start_revision
        failures = 0
        while not self._closed:
            i = self._pin
            call = self._get(i).watch.Watch(metadata=REQUIRE_LEADER)
            try:
                await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=key, range_end=range_end, start_revision=next_rev, progress_notify=True,
                    filters=[rpc.WatchCreateRequest.NODELETE])))
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        why = "the member ended the watch stream"
                        break
                    if resp.compact_revision:
                        raise StoreUnavailable(
                            f"etcd {self.endpoints[i]}: watch cannot resume at revision {next_rev}: "
                            f"history compacted up to {resp.compact_revision}")
                    if resp.canceled:
                        why = f"watch canceled: {resp.cancel_reason}"
                        break
                    failures = 0
                    self._down.discard(i)
                    if resp.events:
                        yield list(resp.events)
                        next_rev = max(e.kv.mod_revision for e in resp.events) + 1
                    elif not resp.created:  # a progress notice: everything up to here was sent
                        next_rev = max(next_rev, resp.header.revision + 1)
            except grpc.aio.AioRpcError as exc:
                if not retryable(exc) and exc.code() != grpc.StatusCode.CANCELLED:
                    raise StoreUnavailable(f"etcd {self.endpoints[i]}: watch: {_describe(exc)}") from None
                why = _describe(exc)
            except (grpc.aio.UsageError, OSError) as exc:  # the stream broke under us: try again
                why = str(exc) or type(exc).__name__
            finally:
                call.cancel()
            failures += 1
            self._fail_over(i, why)
            if failures % len(self.endpoints) == 0:  # every member failed once: let them recover
                await asyncio.sleep(min(2.0, 0.05 * 2 ** (failures // len(self.endpoints))))
        raise StoreUnavailable(f"etcd cluster {self}: the client is closed")

    async def close(self) -> None:
        self._closed = True
        for s in self._stubs.values():
            # Closing a dead channel must not mask the error that brought us here.
            with contextlib.suppress(Exception):
                await s.channel.close()
        self._stubs.clear()
