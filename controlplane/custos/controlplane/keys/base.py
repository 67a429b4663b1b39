"""The key-provider interface: envelope keys for model weights.

One key-encryption key (KEK, a Transit key in production) per model, one data key per
artifact. A :class:`KeyProvider` creates KEKs, generates data keys wrapped by them,
unwraps them, rotates, rewraps, suspends (reversible) and destroys (crypto-shredding).
Every wrapped data key is bound to a caller-chosen *context* (the artifact id): it
unwraps only with the same key name and the same context.

The public methods here check their arguments once, for every backend, and then call
one hook per operation (``_ensure_key``, ``_generate_data_key``...) that a backend
implements. Providers are synchronous; async callers use ``asyncio.to_thread``.

Key material is handed out only in ``bytearray``s so that callers can zeroize it
(:func:`zeroize`, :meth:`DataKey.zeroize`). Errors and logs carry key names and
versions, never key material.
"""

from __future__ import annotations

import abc
import re
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar

from custos.core.keymaterial import zeroize
from custos.core.vault_policy import PolicyReach
from custos.errors import Conflict, FailedPrecondition, IntegrityError, InvalidInput, NotFound

__all__ = [
    "DATA_KEY_BYTES",
    "KEY_NAME_PATTERN",
    "MAX_CONTEXT_BYTES",
    "DataKey",
    "KeyConflict",
    "KeyDestroyed",
    "KeyHealth",
    "KeyPolicies",
    "KeyProvider",
    "KeyState",
    "KeySuspended",
    "KeyVersionRetired",
    "ProviderClosed",
    "validate_context",
    "validate_key_name",
    "wrapped_key_version",
    "zeroize",
]

DATA_KEY_BYTES = 32
"""Every data key is an AES-256 key."""

# Lower-case, starts and ends with a letter or digit. The brief form would allow a
# trailing "-", "." or "_", but Transit routes key names with `\w(([\w-.]+)?\w)?`, so
# a name ending in "-" or "." could be created nowhere; refuse it here, for every backend.
KEY_NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?")

MAX_CONTEXT_BYTES = 1024
"""A context is an identifier (an artifact id), not data: keep it small."""

_MAX_WRAPPED_CHARS = 4096
# "<backend>:v<version>:<base64 payload>", the shape Transit uses ("vault:v1:...").
_WRAPPED_PATTERN = re.compile(r"([a-z]+):v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})")


class KeySuspended(FailedPrecondition):
    """The key is suspended (model halted): no data key is unwrapped or generated."""


class KeyVersionRetired(FailedPrecondition):
    """The wrapped key's version is below the key's minimum decryption version."""


class KeyDestroyed(NotFound):
    """The key does not exist: destroyed (crypto-shredded) or never created.

    Transit keeps no trace of a deleted key, so the two cases are one error.
    """


class KeyConflict(Conflict):
    """A key of that name exists but is not a usable envelope KEK (type, export...)."""


class ProviderClosed(FailedPrecondition):
    """The provider was closed."""


@dataclass(frozen=True)
class KeyHealth:
    """Whether a provider can serve now, and why not: what ``/readyz`` and the metrics report.

    Truthy when ``ok``. ``token_ttl_s`` is how long the backend credential is still valid
    (None: it does not expire, or the backend has none). Carries no secrets.
    """

    ok: bool
    detail: str
    token_ttl_s: float | None = None

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class KeyPolicies:
    """The backend's access policies that let a token obtain key material of one KEK
    (decrypt, a plaintext data key, export), and what could not be read.

    ``problems`` are for people (one line each): a policy that could not be read or
    parsed, a backend without policies. Carries no secrets.
    """

    reach: tuple[PolicyReach, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyState:
    """What a provider reports about one KEK. Carries no key material.

    ``latest_version`` is 0 and every flag false when ``exists`` is false.
    ``suspended`` means every unwrap and every new data key is refused.
    """

    name: str
    exists: bool
    latest_version: int
    min_decryption_version: int
    suspended: bool
    deletion_allowed: bool

    @classmethod
    def missing(cls, name: str) -> KeyState:
        """The state of a key that does not exist."""
        return cls(name, False, 0, 0, False, False)


@dataclass(eq=False)
class DataKey:
    """A fresh 32-byte data key and its wrapped form.

    ``plaintext`` is a ``bytearray`` the caller zeroizes when done (it is excluded from
    ``repr``). ``wrapped`` is the provider's ciphertext string (``vault:v1:...``,
    ``local:v1:...``): safe to store next to the artifact, useless without the KEK.
    """

    plaintext: bytearray = field(repr=False)
    wrapped: str

    def __post_init__(self) -> None:
        if not isinstance(self.plaintext, bytearray) or len(self.plaintext) != DATA_KEY_BYTES:
            raise InvalidInput(f"a data key is a bytearray of {DATA_KEY_BYTES} bytes")
        wrapped_key_version(self.wrapped)

    @property
    def version(self) -> int:
        """The KEK version that wrapped this data key."""
        return wrapped_key_version(self.wrapped)

    def zeroize(self) -> None:
        """Overwrite the plaintext key in place."""
        zeroize(self.plaintext)


def validate_key_name(name: object) -> str:
    """Return ``name`` if it is a valid key name.

    Raises:
        InvalidInput: not a str, or not ``[a-z0-9]`` + ``[a-z0-9._-]*`` + ``[a-z0-9]``
            (1 to 128 characters).
    """
    if not isinstance(name, str) or KEY_NAME_PATTERN.fullmatch(name) is None:
        shown = name[:40] if isinstance(name, str) else type(name).__name__
        raise InvalidInput(
            f"invalid key name {shown!r}: use 1-128 characters of a-z 0-9 . _ -, "
            "starting and ending with a letter or digit"
        )
    return name


def validate_context(context: object) -> bytes:
    """Return ``context`` if it is a usable binding context.

    Raises:
        InvalidInput: not ``bytes``, empty, or longer than ``MAX_CONTEXT_BYTES``.
    """
    if not isinstance(context, bytes):
        raise InvalidInput(f"context must be bytes, not {type(context).__name__}")
    # An empty context would bind a data key to nothing; refuse it rather than allow
    # an unbound key by accident.
    if not 1 <= len(context) <= MAX_CONTEXT_BYTES:
        raise InvalidInput(f"context must be 1 to {MAX_CONTEXT_BYTES} bytes")
    return context


def _parse_wrapped(wrapped: object) -> tuple[str, int, str]:
    if not isinstance(wrapped, str):
        raise InvalidInput(f"wrapped key must be str, not {type(wrapped).__name__}")
    if len(wrapped) > _MAX_WRAPPED_CHARS:
        raise IntegrityError("wrapped key is too long to be one")
    match = _WRAPPED_PATTERN.fullmatch(wrapped)
    if match is None:
        raise IntegrityError("wrapped key is malformed")
    return match.group(1), int(match.group(2)), match.group(3)


def wrapped_key_version(wrapped: str) -> int:
    """The KEK version in a wrapped key (``vault:v3:...`` -> 3).

    Useful to find wrapped keys older than a rotation, to rewrap them.

    Raises:
        InvalidInput: not a str.
        IntegrityError: not of the form ``<backend>:v<N>:<base64>``.
    """
    return _parse_wrapped(wrapped)[1]


class KeyProvider(abc.ABC):
    """Envelope-key operations on one backend (Vault/OpenBao Transit, or a local file).

    Every method validates its arguments first (:class:`~custos.errors.InvalidInput`,
    nothing sent to the backend) and may also raise
    :class:`~custos.errors.BackendUnavailable` (unreachable, sealed, timed out),
    :class:`~custos.errors.Unauthorized` (bad token, denied by policy) and
    :class:`ProviderClosed` (after :meth:`close`).

    Semantics shared by all backends (the conformance suite checks them):
    versions start at 1 and grow by rotation; suspension is reversible and refuses
    every unwrap, data key, rotation and rewrap; destruction deletes every version.
    """

    kind: ClassVar[str]
    """``"vault"`` or ``"local"``; also the prefix of this backend's wrapped keys."""

    def __init__(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()

    # -- public API: checks, then one backend hook --------------------------------

    def ensure_key(self, key_name: str) -> KeyState:
        """Create the KEK ``key_name`` if it does not exist; return its state.

        Idempotent: an existing key is left as it is (not re-created, not resumed).
        After :meth:`destroy`, this creates a *new* key with new material under the
        same name; data keys wrapped by the destroyed key stay unrecoverable.

        Raises:
            KeyConflict: a key of that name exists with another type or is exportable.
        """
        self._check_open()
        return self._ensure_key(validate_key_name(key_name))

    def generate_data_key(self, key_name: str, context: bytes) -> DataKey:
        """Generate a 32-byte data key, wrapped by the latest KEK version, bound to ``context``.

        Raises:
            KeyDestroyed: no such key.
            KeySuspended: the key is suspended.
        """
        self._check_open()
        return self._generate_data_key(validate_key_name(key_name), validate_context(context))

    def unwrap(self, key_name: str, wrapped: str, context: bytes) -> bytearray:
        """Return the plaintext data key of ``wrapped`` (a fresh bytearray to zeroize).

        Raises:
            IntegrityError: ``wrapped`` is malformed, tampered with, from another key or
                backend, or bound to another context.
            KeySuspended: the key is suspended.
            KeyVersionRetired: the version is below the minimum decryption version.
            KeyDestroyed: no such key.
        """
        self._check_open()
        name = validate_key_name(key_name)
        ctx = validate_context(context)
        self._check_wrapped_kind(wrapped)
        return self._unwrap(name, wrapped, ctx)

    def rotate(self, key_name: str) -> KeyState:
        """Add a new KEK version; new data keys use it, old wrapped keys still unwrap.

        Raises:
            KeyDestroyed: no such key.
            KeySuspended: the key is suspended.
        """
        self._check_open()
        return self._rotate(validate_key_name(key_name))

    def rewrap(self, key_name: str, wrapped: str, context: bytes) -> str:
        """Re-wrap ``wrapped`` under the latest KEK version, same data key, same context.

        Raises:
            the errors of :meth:`unwrap`.
        """
        self._check_open()
        name = validate_key_name(key_name)
        ctx = validate_context(context)
        self._check_wrapped_kind(wrapped)
        return self._rewrap(name, wrapped, ctx)

    def suspend(self, key_name: str) -> KeyState:
        """Refuse every unwrap and every new data key until :meth:`resume`. Idempotent.

        Raises:
            KeyDestroyed: no such key.
        """
        self._check_open()
        return self._suspend(validate_key_name(key_name))

    def resume(self, key_name: str) -> KeyState:
        """Undo :meth:`suspend`: every version unwraps again. Idempotent.

        Raises:
            KeyDestroyed: no such key.
        """
        self._check_open()
        return self._resume(validate_key_name(key_name))

    def destroy(self, key_name: str) -> None:
        """Delete every version of the KEK (crypto-shredding). Irreversible, idempotent.

        Every data key it wrapped becomes unrecoverable, suspended or not.
        """
        self._check_open()
        self._destroy(validate_key_name(key_name))

    def state(self, key_name: str) -> KeyState:
        """Report the key's state (``exists=False`` when there is no such key)."""
        self._check_open()
        return self._state(validate_key_name(key_name))

    def key_policies(self, key_name: str) -> KeyPolicies:
        """The backend's access policies that allow decrypt, plaintext data keys or export on
        the KEK ``key_name``: who besides the control plane could unwrap its data keys.
        A policy that cannot be read or parsed is a problem line, not an error.

        Raises:
            BackendUnavailable, Unauthorized: the list of policies cannot be read.
        """
        self._check_open()
        return self._key_policies(validate_key_name(key_name))

    def health(self) -> KeyHealth:
        """Whether this provider can serve requests now (the readiness of the control plane).

        Cheap and non-blocking (a cached view kept fresh by the backend, never a request to
        it), so probes may call it as often as they like. Never raises.
        """
        if self._closed:
            return KeyHealth(False, f"the {self.kind} key provider is closed")
        return self._health()

    def ready(self) -> bool:
        """``health().ok``."""
        return self.health().ok

    def close(self) -> None:
        """Release connections and files. Idempotent; later calls raise ProviderClosed."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def __enter__(self) -> KeyProvider:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- shared helpers ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderClosed(f"the {self.kind} key provider is closed")

    def _check_wrapped_kind(self, wrapped: object) -> int:
        kind, version, _ = _parse_wrapped(wrapped)
        if kind != self.kind:
            raise IntegrityError(f"wrapped key was made by a {kind!r} provider, not {self.kind!r}")
        return version

    # -- backend hooks: arguments are already valid ------------------------------

    def _key_policies(self, name: str) -> KeyPolicies:
        # A backend without access policies of its own (the local file) has none to report.
        return KeyPolicies(problems=(f"{self.kind} keys: no access policies to read",))

    def _health(self) -> KeyHealth:
        # A backend without a remote service (the local file) is ready while open.
        return KeyHealth(True, f"{self.kind} key provider open")

    @abc.abstractmethod
    def _ensure_key(self, name: str) -> KeyState: ...

    @abc.abstractmethod
    def _generate_data_key(self, name: str, context: bytes) -> DataKey: ...

    @abc.abstractmethod
    def _unwrap(self, name: str, wrapped: str, context: bytes) -> bytearray: ...

    @abc.abstractmethod
    def _rotate(self, name: str) -> KeyState: ...

    @abc.abstractmethod
    def _rewrap(self, name: str, wrapped: str, context: bytes) -> str: ...

    @abc.abstractmethod
    def _suspend(self, name: str) -> KeyState: ...

    @abc.abstractmethod
    def _resume(self, name: str) -> KeyState: ...

    @abc.abstractmethod
    def _destroy(self, name: str) -> None: ...

    @abc.abstractmethod
    def _state(self, name: str) -> KeyState: ...

    @abc.abstractmethod
    def _close(self) -> None: ...
