"""Error classes <-> gRPC status codes: one table each way.

The control plane maps its errors to status codes in one place (the interceptor,
with :func:`status_for`); its clients — the CLI, the agent — map them back
(:func:`error_for`, :func:`error_from_rpc`), so callers handle one error root.
"""

from __future__ import annotations

import grpc

from custos import errors
from custos.errors import CustosError

STATUS_BY_ERROR: list[tuple[type[CustosError], grpc.StatusCode]] = [
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.IntegrityError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unauthorized, grpc.StatusCode.PERMISSION_DENIED),
    (errors.BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
]
"""Error class -> the status a server answers with (first match wins; anything else is INTERNAL)."""

ERROR_BY_STATUS: dict[grpc.StatusCode, type[CustosError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInput,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.PERMISSION_DENIED: errors.Unauthorized,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthorized,
    grpc.StatusCode.UNAVAILABLE: errors.BackendUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.BackendUnavailable,
    grpc.StatusCode.CANCELLED: errors.BackendUnavailable,
    grpc.StatusCode.ALREADY_EXISTS: errors.Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
}
"""Status code -> the error class a client raises; any other code is a plain CustosError."""


def status_for(exc: CustosError) -> grpc.StatusCode:
    """The status code a server answers ``exc`` with."""
    for cls, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_for(exc: grpc.RpcError) -> tuple[type[CustosError], str]:
    """The error class for a failed call and the server's details (the status name when
    there are none). A failed call is a grpc.Call (sync) or an AioRpcError: both have
    code() and details()."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or code.name
    return ERROR_BY_STATUS.get(code, CustosError), details


def error_from_rpc(exc: grpc.RpcError, addr: str) -> CustosError:
    """The CustosError for a failed call to the control plane at ``addr``: the server's
    details as its message (the status name when there are none); an unreachable
    server says so and where."""
    cls, details = error_for(exc)
    if hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNAVAILABLE:
        details = f"cannot reach the control plane at {addr}: {details.splitlines()[0]}"
    return cls(details)


# A custody stream's opening (custos.controlplane.admission, custos.agent.stream).
STREAM_TAKEN_KEY = "custos-stream"
"""Initial metadata the control plane sends as soon as it has a stream, before its opening
waits for admission: the agent then waits for its lease longer than for the stream."""
RETRY_AFTER_KEY = "custos-retry-after-ms"
"""Trailing metadata of an opening refused because the replica is busy: when to come back."""
MAX_RETRY_AFTER_S = 600.0


def retry_after(metadata: object) -> float | None:
    """The retry hint (seconds) in a call's trailing metadata; None if absent or not a
    number in (0, MAX_RETRY_AFTER_S] (a hint never makes an agent wait for hours)."""
    try:
        items = list(metadata or ())  # type: ignore[call-overload]
    except TypeError:
        return None
    for item in items:
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key != RETRY_AFTER_KEY:
            continue
        try:
            ms = int(value)
        except (TypeError, ValueError):
            return None
        return ms / 1000 if 0 < ms <= MAX_RETRY_AFTER_S * 1000 else None
    return None
