"""Domain values <-> the wire: relation enums and error classes <-> gRPC status codes.

One table each, shared by the control plane (which maps its errors to status codes in
one place) and its clients (the CLI, the agent, which map them back).
"""

from __future__ import annotations

from typing import cast

import grpc

from custos import errors
from custos.core.lineage import Relation
from custos.errors import CustosError, InvalidInput
from custos.v1 import registry_pb2

RELATIONS: tuple[str, ...] = tuple(r.value for r in Relation)
RELATION_TO_PB: dict[str, registry_pb2.Relation] = {
    r.value: cast("registry_pb2.Relation", registry_pb2.Relation.Value(f"RELATION_{r.name}")) for r in Relation
}
RELATION_FROM_PB: dict[int, str] = {v: k for k, v in RELATION_TO_PB.items()}


def relation_from_pb(value: int) -> str:
    """The relation's name. Raises InvalidInput for an unset or unknown value."""
    if value not in RELATION_FROM_PB:
        raise InvalidInput(f"relation is required ({', '.join(RELATIONS)})")
    return RELATION_FROM_PB[value]


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
