"""One exception root for Custos, with subclasses split by blame.

Only the CLI prints and exits; the gRPC layer maps these to status codes in one
place (``custos.controlplane.api``). Messages never contain key material or
plaintext weights.
"""

from __future__ import annotations


class CustosError(Exception):
    """Root of every error Custos raises on purpose."""


class InvalidInput(CustosError):
    """The caller sent something malformed or disallowed; nothing was changed."""


class IntegrityError(CustosError):
    """Signed, hashed or authenticated data failed verification (tampering, forgery)."""


class Unauthorized(CustosError):
    """The caller is not allowed to do this."""


class NotFound(CustosError):
    """The named object does not exist."""


class Conflict(CustosError):
    """The change conflicts with existing state (exists, cycle, wrong state)."""


class FailedPrecondition(CustosError):
    """The object is in a state that forbids the operation (e.g. model halted)."""


class BackendUnavailable(CustosError):
    """A backend (store, key service, blob store, control plane) cannot be reached."""
