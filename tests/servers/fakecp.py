"""A fake control plane: a real gRPC server with the real control plane's TLS
server key, trusting its CA, so a real agent (`custos agent run`) connects to it
and believes it. It plays a compromised control plane: it keeps each agent's
custody lease alive (a Lease on the stream's opening and on every heartbeat,
as the real one sends) and delivers whatever ``SignedOrder`` a test hands it,
then returns the agent's ack. Orders are valid by their signatures alone, so
whatever the agent does with them must not depend on who delivered them. Handed
nothing, it is the control plane that renews leases but drops every order
(tests/e2e/test_order_feed.py: the agents halt from the order feed anyway).

Every other RPC is refused: ``Registry.GetArtifact`` with UNAVAILABLE unless a
test installs ``get_artifact``; anything else with UNIMPLEMENTED. ``calls``
records every method an agent called, in order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from custos.core.orders import order_id_of
from custos.v1 import custody_pb2, custody_pb2_grpc, registry_pb2, registry_pb2_grpc

GetArtifact = Callable[[registry_pb2.GetArtifactRequest, grpc.ServicerContext], registry_pb2.GetArtifactResponse]


@dataclass
class _Connection:
    """One open custody stream: what goes down, and what came up."""

    host: str
    out: queue.Queue[custody_pb2.ControlMessage | None] = field(default_factory=queue.Queue)
    heartbeats: int = 0
    inventories: int = 0
    closed: bool = False


class _Recorder(grpc.ServerInterceptor):
    def __init__(self, calls: list[str], lock: threading.Lock) -> None:
        self.calls = calls
        self.lock = lock

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        with self.lock:
            self.calls.append(handler_call_details.method)
        return continuation(handler_call_details)


class _Custody(custody_pb2_grpc.CustodyServicer):
    def __init__(self, fake: FakeControlPlane) -> None:
        self.fake = fake

    def Stream(self, request_iterator: Iterator[custody_pb2.AgentMessage],
               context: grpc.ServicerContext) -> Iterator[custody_pb2.ControlMessage]:
        names = context.auth_context().get("x509_common_name") or [b"?"]
        conn = _Connection(host=names[0].decode())
        self.fake._attach(conn)
        conn.out.put(self.fake.lease())
        context.add_callback(lambda: conn.out.put(None))
        threading.Thread(target=self._read, args=(request_iterator, conn), daemon=True,
                         name=f"fakecp-read-{conn.host}").start()
        try:
            while (msg := conn.out.get()) is not None:
                yield msg
        finally:
            self.fake._detach(conn)

    def _read(self, it: Iterator[custody_pb2.AgentMessage], conn: _Connection) -> None:
        try:
            for msg in it:
                kind = msg.WhichOneof("msg")
                if kind == "heartbeat":
                    conn.out.put(self.fake.lease())
                    self.fake._on_heartbeat(conn)
                elif kind == "inventory":
                    conn.inventories += 1
                elif kind == "ack":
                    self.fake._on_ack(conn.host, msg.ack)
        except grpc.RpcError:
            pass  # the agent went away
        finally:
            conn.out.put(None)


class _Registry(registry_pb2_grpc.RegistryServicer):
    def __init__(self, fake: FakeControlPlane) -> None:
        self.fake = fake

    def GetArtifact(self, request: registry_pb2.GetArtifactRequest,
                    context: grpc.ServicerContext) -> registry_pb2.GetArtifactResponse:
        hook = self.fake.get_artifact
        if hook is not None:
            return hook(request, context)
        context.abort(grpc.StatusCode.UNAVAILABLE, "this control plane serves no artifacts")
        raise AssertionError("abort raises")


class FakeControlPlane:
    """A compromised control plane on ``127.0.0.1:port`` (see the module docstring).

    ``start`` raises RuntimeError if the port cannot be bound; ``deliver`` raises
    AssertionError when the host is not connected or does not ack in time.
    """

    def __init__(self, *, port: int, server_cert_pem: bytes, server_key_pem: bytes, client_ca_pem: bytes,
                 lease_ttl: int = 20) -> None:
        self.port = port
        self.lease_ttl = lease_ttl
        self._creds = grpc.ssl_server_credentials([(server_key_pem, server_cert_pem)],
                                                  root_certificates=client_ca_pem, require_client_auth=True)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._conns: dict[str, _Connection] = {}
        self._acks: dict[str, list[custody_pb2.OrderAck]] = {}
        self.calls: list[str] = []
        self.leases_sent = 0
        self.get_artifact: GetArtifact | None = None
        self._server: grpc.Server | None = None

    @classmethod
    def impersonating(cls, data_dir: Path, port: int, *, lease_ttl: int = 20) -> FakeControlPlane:
        """A fake holding the TLS server key and CA of the dev control plane in ``data_dir``."""
        tls = data_dir / "tls"
        return cls(port=port, server_cert_pem=(tls / "server.pem").read_bytes(),
                   server_key_pem=(tls / "server.key").read_bytes(), client_ca_pem=(tls / "ca.pem").read_bytes(),
                   lease_ttl=lease_ttl)

    # - lifecycle -

    def start(self) -> FakeControlPlane:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="fakecp"),
                             interceptors=[_Recorder(self.calls, self._lock)])
        custody_pb2_grpc.add_CustodyServicer_to_server(_Custody(self), server)
        registry_pb2_grpc.add_RegistryServicer_to_server(_Registry(self), server)
        if server.add_secure_port(f"127.0.0.1:{self.port}", self._creds) != self.port:
            raise RuntimeError(f"the fake control plane cannot listen on 127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(10)
            self._server = None

    # - the stream -

    def lease(self) -> custody_pb2.ControlMessage:
        """A fresh lease, as the real control plane grants one."""
        with self._lock:
            self.leases_sent += 1
        return custody_pb2.ControlMessage(lease=custody_pb2.Lease(
            expires_unix_ns=time.time_ns() + self.lease_ttl * 1_000_000_000, ttl_seconds=self.lease_ttl))

    def _attach(self, conn: _Connection) -> None:
        with self._changed:
            old = self._conns.get(conn.host)
            if old is not None:
                old.closed = True
            self._conns[conn.host] = conn
            self._changed.notify_all()

    def _detach(self, conn: _Connection) -> None:
        with self._changed:
            conn.closed = True
            if self._conns.get(conn.host) is conn:
                del self._conns[conn.host]
            self._changed.notify_all()

    def _on_heartbeat(self, conn: _Connection) -> None:
        with self._changed:
            conn.heartbeats += 1
            self._changed.notify_all()

    def _on_ack(self, host: str, ack: custody_pb2.OrderAck) -> None:
        with self._changed:
            self._acks.setdefault(host, []).append(ack)
            self._changed.notify_all()

    def wait_for_host(self, host: str, timeout: float = 30) -> None:
        """Until ``host`` holds a stream here and has had a heartbeat answered."""
        with self._changed:
            ok = self._changed.wait_for(lambda: (c := self._conns.get(host)) is not None and c.heartbeats > 0,
                                        timeout)
        assert ok, f"host {host} did not connect to the fake control plane within {timeout:.0f} s"

    def acks(self, host: str) -> list[custody_pb2.OrderAck]:
        """Every ack ``host`` sent here, oldest first."""
        with self._lock:
            return list(self._acks.get(host, []))

    def deliver(self, host: str, order: custody_pb2.SignedOrder, timeout: float = 60) -> custody_pb2.OrderAck:
        """Push ``order`` down ``host``'s stream and return the next ack it sends, whatever order id
        that names (an agent whose handler failed names none). Deliver one order at a time."""
        with self._lock:
            conn = self._conns.get(host)
            seen = len(self._acks.get(host, []))
        assert conn is not None and not conn.closed, f"host {host} is not connected to the fake control plane"
        conn.out.put(custody_pb2.ControlMessage(order=order))
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self._acks.get(host, [])) > seen, timeout)
            assert ok, f"host {host} did not ack order {order_id_of(bytes(order.body))[:16]} within {timeout:.0f} s"
            return self._acks[host][seen]

    def connected(self, host: str) -> bool:
        """Whether ``host`` holds a stream here now."""
        with self._lock:
            return host in self._conns
