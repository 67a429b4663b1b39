"""The one interceptor that authenticates, authorizes, attributes and maps errors for
every call.

Every RPC goes through ``GuardInterceptor``: identity from the verified client
certificate, refused if that certificate is on the revocation list
(custos.controlplane.revocations) or has expired since its connection opened, a row
of ``authz.POLICY`` or PERMISSION_DENIED, for an agent
certificate an enrolled host it was issued to (removed, pending or re-enrolled:
refused, whatever the RPC), a ``Caller`` in a context variable for the audit log,
a request that does not parse refused as INVALID_ARGUMENT, and CustosError
subclasses mapped to status codes here and nowhere else (details bounded).
Unexpected exceptions become INTERNAL with a request id; the traceback goes to
the log, never to the caller.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from custos.client.status import status_for
from custos.controlplane import authz
from custos.controlplane.audit import AuditLog, Caller, current_caller
from custos.controlplane.certificates import iso
from custos.controlplane.custody import Custody
from custos.controlplane.pki import Identity, identity_from_pem
from custos.controlplane.registry import Registry
from custos.core.hosts import cert_fingerprint
from custos.errors import CustosError, InvalidInput, Unauthorized

log = logging.getLogger("custos.api")


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def peer_host(peer: str) -> str:
    # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:/path"
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1:rest.index("]")]
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return rest or peer


CERT_CACHE = 16_384  # client certificates parsed once each (a fleet's hosts reconnect and call often)


@functools.lru_cache(maxsize=CERT_CACHE)
def read_client_certificate(pem: bytes) -> tuple[Identity, str]:
    """(identity, SHA-256 fingerprint) of a client certificate the TLS layer verified: a pure
    function of its bytes, so parsed once, not on every call. Raises InvalidInput (not cached)."""
    return identity_from_pem(pem), cert_fingerprint(pem)


_MAX_DETAILS = 2000  # status details travel in a header: an echoed 100 kB name must not drop the reply


def bounded_details(exc: Exception) -> str:
    """An error's message as status details: bounded, and always encodable."""
    text = str(exc)
    if len(text) > _MAX_DETAILS:
        text = text[:_MAX_DETAILS] + "… (truncated)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Undecodable:
    """A request message that did not parse (corrupt wire format, a string field that is not
    UTF-8): handed to the guard, which refuses it as bad input once the caller is known,
    instead of gRPC answering UNKNOWN with the parser's exception before any check."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return _Undecodable(str(exc)[:200])

    return decode


def _passthrough(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A response serializer that sends bytes as they are: a message serialized once (an
    order going down every custody stream) is not serialized again per stream."""
    if serializer is None:
        return None

    def encode(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serializer(message)

    return encode


def decoded(request: Any) -> Any:
    """A request as the guard's tolerant deserializer gave it; raises InvalidInput for one that did
    not parse. (Handlers on the reader API, ``context.read()``, call it on what they read.)"""
    if isinstance(request, _Undecodable):
        raise InvalidInput(f"the request does not decode: {request.reason}")
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield decoded(request)


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates, authorizes and attributes every call; maps its errors to status codes.

    ``custody``: whose ``check_agent`` vouches for every call by an agent certificate (the
    host is enrolled, not removed, and this is the certificate issued to it). Without one,
    a view over the audit log's store does the same check.
    """

    def __init__(self, audit: AuditLog, custody: Custody | None = None) -> None:
        self.audit = audit
        self.custody = custody or Custody(Registry(audit.store, audit), ca=None)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        guard = self._guard
        decode = _tolerant(handler.request_deserializer)
        encode = _passthrough(handler.response_serializer)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def uu(request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await guard(method, context, lambda: inner_uu(decoded(request), context))

            return grpc.unary_unary_rpc_method_handler(uu, decode, encode)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def us(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async for item in guard_stream(method, context, lambda: inner_us(decoded(request), context)):
                    yield item

            guard_stream = self._guard_stream
            return grpc.unary_stream_rpc_method_handler(us, decode, encode)
        if handler.stream_stream is not None and inspect.iscoroutinefunction(handler.stream_stream):
            inner_rw = handler.stream_stream  # the reader/writer API: it reads with decoded()

            async def rw(request_iter: Any, context: grpc.aio.ServicerContext) -> None:
                await guard(method, context, lambda: inner_rw(request_iter, context))

            return grpc.stream_stream_rpc_method_handler(rw, decode, encode)
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def ss(request_iter: Any, context: grpc.aio.ServicerContext) -> Any:
                async for item in self._guard_stream(method, context,
                                                     lambda: inner_ss(_decoded_stream(request_iter), context)):
                    yield item

            return grpc.stream_stream_rpc_method_handler(ss, decode, encode)
        inner_su = handler.stream_unary

        async def su(request_iter: Any, context: grpc.aio.ServicerContext) -> Any:
            return await guard(method, context, lambda: inner_su(_decoded_stream(request_iter), context))

        return grpc.stream_unary_rpc_method_handler(su, decode, encode)

    async def _authenticate(self, method: str, context: grpc.aio.ServicerContext) -> Caller:
        md = dict(context.invocation_metadata() or ())
        rid = str(md.get("x-request-id", ""))
        if not _REQUEST_ID.match(rid):
            rid = uuid.uuid4().hex
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        try:
            ident, fingerprint = read_client_certificate(pems[0])
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, bounded_details(exc))
        caller = Caller(principal=ident.principal, role=ident.role,
                        host=peer_host(context.peer() or ""), request_id=rid,
                        cert_sha256=fingerprint)
        await self._check_certificate(caller, ident.not_after_ns, method, context)
        if not authz.is_allowed(method, ident.role):
            await self._audit_denial(caller, method)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {ident.role!r} may not call {method.rsplit('/', 1)[-1]}",
            )
        if ident.role == authz.AGENT:
            # Every call an agent certificate makes, not only the ones that hand out keys:
            # a removed host (or an old certificate of a re-enrolled one) learns nothing more.
            try:
                await self.custody.check_agent(caller, need_lease=False)
            except CustosError as exc:
                await self._audit_denial(caller, method)
                await context.abort(status_for(exc), bounded_details(exc))
        return caller

    async def _check_certificate(self, caller: Caller, not_after_ns: int, method: str,
                                 context: grpc.aio.ServicerContext) -> None:
        """Abort the call of a revoked certificate (every replica's copy of the list is at most
        a poll old), or of one that expired on a connection opened before."""
        try:
            revoked = await self.custody.revocations.check(caller.cert_sha256)
        except CustosError as exc:
            await context.abort(status_for(exc), bounded_details(exc))
        if revoked is not None:
            await self._audit_denial(caller, method)
            # "not accepted": what an agent reads as "removed: fail closed, stop reconnecting".
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, bounded_details(Unauthorized(
                f"certificate not accepted: revoked at {iso(revoked['revoked_at_ns'])}: {revoked['reason']}")))
        if not_after_ns and not_after_ns < time.time_ns():
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"the client certificate expired at {iso(not_after_ns)}; connect with a renewed one")

    async def _audit_denial(self, caller: Caller, method: str) -> None:
        if not authz.is_mutating(method):
            return
        try:
            await self.audit.record(caller, method.rsplit("/", 1)[-1], "-", "denied")
        except CustosError:
            pass  # denied either way; the store being down must not turn this into a 503

    @contextlib.asynccontextmanager
    async def _guarded(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Authenticate, authorize and attribute the call; map its errors to status codes in one
        place: a CustosError to its status, anything unexpected to INTERNAL with a request id."""
        caller = await self._authenticate(method, context)
        token = current_caller.set(caller)
        try:
            yield
        except CustosError as exc:
            await context.abort(status_for(exc), bounded_details(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s (request %s)", method, caller.request_id)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error (request id {caller.request_id})")
        finally:
            current_caller.reset(token)

    async def _guard(self, method: str, context: grpc.aio.ServicerContext,
                     call: Callable[[], Awaitable[Any]]) -> Any:
        async with self._guarded(method, context):
            return await call()

    async def _guard_stream(self, method: str, context: grpc.aio.ServicerContext,
                            call: Callable[[], Any]) -> Any:
        async with self._guarded(method, context):
            async for item in call():
                yield item
