"""A session with the control plane: one channel, the per-call timeout and request ids, one error root.

With several control-plane addresses (replicas) the channel is a
:class:`~custos.client.connection.FailoverChannel`: a call goes to the first
replica that connects, and a call that never left this process is made on the
next one; a call that reached a replica is not repeated.

Every operation in :mod:`custos.client` goes through :meth:`Client.call`, which
turns a failed call (``grpc.RpcError``) into the :mod:`custos.errors` subclass
its status names, with the server's details as the message, so that callers
(the CLI, the agent, a console) handle one error root.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from custos.client.connection import ClientConfig, FailoverChannel
from custos.client.status import error_from_rpc
from custos.errors import BackendUnavailable
from custos.v1 import (
    access_pb2_grpc,
    audit_pb2_grpc,
    custody_pb2_grpc,
    incidents_pb2_grpc,
    keys_pb2_grpc,
    orders_pb2_grpc,
    registry_pb2_grpc,
)

R = TypeVar("R", bound=Message)


class Client:
    """A session with the control plane over one mTLS channel. Close it (or use it as a
    context manager) when done."""

    def __init__(self, *, config: ClientConfig, timeout: float | None = 30.0) -> None:
        """Opens the channel. Raises InvalidInput if a certificate or key cannot be read."""
        self.config = config
        self.timeout = timeout
        self.channel = config.channel()
        self.registry = registry_pb2_grpc.RegistryStub(self.channel)
        self.keys = keys_pb2_grpc.KeysStub(self.channel)
        self.orders = orders_pb2_grpc.OrdersStub(self.channel)
        self.custody = custody_pb2_grpc.CustodyStub(self.channel)
        self.alerts = custody_pb2_grpc.AlertsStub(self.channel)
        self.audit = audit_pb2_grpc.AuditStub(self.channel)
        self.incidents = incidents_pb2_grpc.IncidentsStub(self.channel)
        self.access = access_pb2_grpc.AccessStub(self.channel)

    @classmethod
    def from_env(cls, *, addr: str | Sequence[str] | None = None, ca: str | None = None,
                 cert: str | None = None, key: str | None = None, role: str | None = None,
                 timeout: float | None = 30.0) -> Client:
        """A client configured by flags over the environment (see :class:`ClientConfig`).
        Raises InvalidInput naming what is missing or unreadable."""
        return cls(config=ClientConfig.from_env(addr=addr, ca=ca, cert=cert, key=key, role=role),
                   timeout=timeout)

    @property
    def addr(self) -> str:
        """The address calls go to now (the replica that answered last)."""
        return self.channel.addr if isinstance(self.channel, FailoverChannel) else self.config.addr

    def _tried(self) -> str:
        if isinstance(self.channel, FailoverChannel) and self.channel.tried:
            return ", ".join(self.channel.tried)
        return self.addr

    def call(self, method: Callable[..., object], request: Message, response: type[R]) -> R:
        """Make one unary call (``method`` is a stub's method) with the timeout and a fresh
        ``x-request-id``. Raises the CustosError for the status the server returned."""
        try:
            result = method(request, timeout=self.timeout, metadata=(("x-request-id", uuid.uuid4().hex),))
        except grpc.RpcError as exc:
            if self.timeout and hasattr(exc, "details") and exc.details() == "Deadline Exceeded":
                # This client's own deadline: say where (with several replicas, a silent one).
                raise BackendUnavailable(f"no answer from the control plane at {self._tried()} within "
                                         f"{self.timeout:g} s (Deadline Exceeded)") from None
            raise error_from_rpc(exc, self._tried()) from None
        if not isinstance(result, response):
            raise TypeError(f"expected {response.__name__} from the call, got {type(result).__name__}")
        return result

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
