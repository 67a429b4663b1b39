"""Envelope keys in Vault / OpenBao Transit (production backend), through ``hvac``.

Each model KEK is a Transit key ``<key_prefix><name>`` of type ``aes256-gcm96``, not
derived, not exportable. Data keys come from ``datakey/plaintext`` and are bound to
their context with Transit's ``associated_data`` (AES-GCM additional data), which
``datakey``, ``encrypt`` and ``decrypt`` accept.

How each operation maps onto Transit (see docs/keys.md for the why):

- suspend: rotate to a fresh "suspension version" S, then ``min_decryption_version=S``
  (every version that ever wrapped a data key is refused) and ``min_encryption_version=S``
  (the marker that the key is suspended; data keys are refused client-side).
  Transit refuses ``min_decryption_version`` above the latest version, hence the rotation.
- resume: ``min_decryption_version`` back to the floor, then ``min_encryption_version=0``.
- rewrap: ``decrypt`` + ``encrypt`` with the same associated data, because the
  ``rewrap`` endpoint does not take ``associated_data`` (it fails authentication).
- destroy: ``deletion_allowed=true``, then delete the key.

The token comes from a :class:`~custos.controlplane.keys.vault_session.VaultSession`, which
renews it, obtains a new one when it must (AppRole, JWT, a token file an Agent rewrites)
and gives :meth:`VaultTransitProvider.health`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, ClassVar, NoReturn, TypeVar

import hvac
import hvac.exceptions
import requests

from custos.controlplane.keys.base import (
    DATA_KEY_BYTES,
    DataKey,
    KeyConflict,
    KeyDestroyed,
    KeyHealth,
    KeyPolicies,
    KeyProvider,
    KeyState,
    KeySuspended,
    KeyVersionRetired,
    zeroize,
)
from custos.controlplane.keys.vault_auth import StaticTokenAuth, VaultAuth
from custos.controlplane.keys.vault_session import VaultSession
from custos.core.vault_policy import PathRule, parse_policy, reaches_key
from custos.errors import (
    BackendUnavailable,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    Unauthorized,
)

__all__ = ["VaultTransitProvider"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

KEY_TYPE = "aes256-gcm96"
_MOUNT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9][A-Za-z0-9_.-]*)*")
_PREFIX_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

# Transit's error texts (Vault and OpenBao share them), by what they mean for us.
_MISSING_KEY_ERRORS = (
    "encryption key not found",
    "key not found",
    "no existing key named",
    "could not delete key; not found",
)
_TAMPER_ERRORS = (
    "message authentication failed",
    "invalid ciphertext",
    "could not decode",
    "version is too new",
)
POLICY_CACHE_S = 10.0  # how long the ACL policies read for `custos access who` are reused
_TOO_OLD_ERROR = "disallowed by policy (too old)"
_SOFT_DELETED_ERROR = "soft-deleted"


def _b64(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def _server_text(exc: hvac.exceptions.VaultError) -> str:
    # Transit error texts name keys and versions, never key material; cap the length
    # anyway so a misbehaving server cannot flood logs through us.
    errors = exc.errors or []
    return "; ".join(str(e) for e in errors)[:300] or type(exc).__name__


class VaultTransitProvider(KeyProvider):
    """KEKs in Vault / OpenBao Transit; key material never leaves the server.

    Args:
        url: server address, e.g. ``https://vault.example:8200``.
        token: a token with the ``custos-controlplane`` policy (or a narrower one), given
            once; or ``auth``: how to obtain tokens (AppRole, JWT, a token file); or
            ``session``: a session shared with the audit checkpoint signer. Exactly one.
        mount: where Transit is mounted.
        key_prefix: prepended to every key name; the policies grant ``custos-*`` only.
        verify: TLS verification: True, False, or a CA bundle path.
        timeout: seconds per HTTP request.
        check_interval: seconds between the session's health checks.

    Raises:
        InvalidInput: a malformed argument.
    """

    kind: ClassVar[str] = "vault"

    def __init__(
        self,
        *,
        url: str,
        token: str | None = None,
        auth: VaultAuth | None = None,
        session: VaultSession | None = None,
        mount: str = "transit",
        key_prefix: str = "custos-",
        verify: bool | str = True,
        timeout: float = 10.0,
        check_interval: float = 5.0,
    ) -> None:
        super().__init__()
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidInput("url must be an http:// or https:// address")
        if sum(x is not None for x in (token, auth, session)) != 1:
            raise InvalidInput("give exactly one of token, auth and session")
        if token is not None:
            auth = StaticTokenAuth(token)
        if not isinstance(mount, str) or _MOUNT_PATTERN.fullmatch(mount) is None:
            raise InvalidInput("mount must be a path like 'transit' or 'custos/transit'")
        if not isinstance(key_prefix, str) or (
            key_prefix and _PREFIX_PATTERN.fullmatch(key_prefix) is None
        ):
            raise InvalidInput("key_prefix must be lower-case letters, digits, '.', '_', '-'")
        if not isinstance(verify, bool | str):
            raise InvalidInput("verify must be a bool or a CA bundle path")
        if not isinstance(timeout, int | float) or not 0 < timeout <= 300:
            raise InvalidInput("timeout must be between 0 and 300 seconds")
        if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK_HOSTS:
            logger.warning(
                "Transit at %s is reached over plain HTTP: tokens and data keys cross the "
                "network unencrypted; use https outside a loopback test setup",
                parsed.hostname,
            )
        self._url = url
        self._mount = mount
        self._prefix = key_prefix
        self._own_session = session is None
        if session is None:
            assert auth is not None
            session = VaultSession(url=url, auth=auth, verify=verify, timeout=float(timeout),
                                   check_interval=check_interval)
        self.session = session
        self._policies_lock = threading.Lock()
        self.policy_cache_s = POLICY_CACHE_S
        self._policies: tuple[float, dict[str, list[PathRule]], list[str]] | None = None

    def __repr__(self) -> str:
        return f"VaultTransitProvider(url={self._url!r}, mount={self._mount!r})"

    # -- plumbing --------------------------------------------------------------------

    def _full(self, name: str) -> str:
        return self._prefix + name

    def _path(self, *parts: str) -> str:
        return "/v1/" + "/".join((self._mount, *parts))

    def _call(self, op: str, name: str, fn: Callable[[hvac.Client], _T]) -> _T:
        """Run one request with a live token; map every failure to a Custos error."""
        try:
            return self.session.run(fn)
        except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
            self._raise_mapped(op, name, exc)

    def _raise_mapped(self, op: str, name: str, exc: Exception) -> NoReturn:
        where = f"{op} on key {name!r}"
        if isinstance(exc, requests.exceptions.RequestException):
            raise BackendUnavailable(
                f"Transit unreachable during {where}: {type(exc).__name__}"
            ) from exc
        assert isinstance(exc, hvac.exceptions.VaultError)
        text = _server_text(exc)
        lowered = text.lower()
        if isinstance(exc, hvac.exceptions.VaultDown):
            raise BackendUnavailable(f"Transit is sealed or down during {where}") from exc
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            raise Unauthorized(f"Transit denied {where}: {text}") from exc
        if isinstance(exc, hvac.exceptions.InvalidPath):
            if "no handler for route" in lowered:
                raise FailedPrecondition(
                    f"no Transit engine mounted at {self._mount!r} ({where})"
                ) from exc
            raise KeyDestroyed(f"key {name!r} does not exist ({op})") from exc
        if isinstance(exc, hvac.exceptions.InvalidRequest):
            if any(marker in lowered for marker in _MISSING_KEY_ERRORS):
                raise KeyDestroyed(f"key {name!r} does not exist ({op})") from exc
            if _SOFT_DELETED_ERROR in lowered:
                raise KeySuspended(f"key {name!r} is soft-deleted ({op})") from exc
            if any(marker in lowered for marker in _TAMPER_ERRORS):
                raise IntegrityError(
                    f"wrapped key failed verification under key {name!r}: tampered, "
                    "from another key, or bound to another context"
                ) from exc
            raise InvalidInput(f"Transit rejected {where}: {text}") from exc
        # 5xx, rate limits, unexpected answers: the backend cannot serve us now.
        raise BackendUnavailable(f"Transit failed {where}: {text}") from exc

    def _state_from(self, name: str, data: dict[str, Any]) -> KeyState:
        try:
            latest = int(data["latest_version"])
            min_dec = int(data["min_decryption_version"])
            min_enc = int(data.get("min_encryption_version") or 0)
            deletion_allowed = bool(data.get("deletion_allowed", False))
            soft_deleted = bool(data.get("soft_deleted", False))
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendUnavailable(f"unexpected key description for {name!r}") from exc
        return KeyState(
            name=name,
            exists=True,
            latest_version=latest,
            min_decryption_version=min_dec,
            # min_encryption_version is only ever set by suspend (see module docstring);
            # an OpenBao soft-deleted key refuses everything too.
            suspended=min_enc > 0 or soft_deleted,
            deletion_allowed=deletion_allowed,
        )

    def _read(self, name: str) -> tuple[KeyState, dict[str, Any]]:
        """Read the key. Raises KeyDestroyed if it does not exist."""
        response = self._call(
            "read", name, lambda c: c.secrets.transit.read_key(name=self._full(name), mount_point=self._mount)
        )
        data = _data(response)
        if data is None:
            raise BackendUnavailable(f"empty key description for {name!r}")
        return self._state_from(name, data), data

    def _set_config(self, name: str, param: str, value: int | bool) -> None:
        # Straight to the API, one parameter per request: hvac's own check refuses
        # min_encryption_version == min_decryption_version, which suspend needs and the
        # server accepts.
        self._call(
            "configure",
            name,
            lambda c: c.adapter.post(
                self._path("keys", self._full(name), "config"), json={param: value}
            ),
        )

    def _decrypt(self, name: str, wrapped: str, context: bytes) -> bytearray:
        try:
            response = self.session.run(lambda c: c.secrets.transit.decrypt_data(
                name=self._full(name),
                ciphertext=wrapped,
                associated_data=_b64(context),
                mount_point=self._mount,
            ))
        except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
            if isinstance(exc, hvac.exceptions.InvalidRequest) and _TOO_OLD_ERROR in (
                _server_text(exc).lower()
            ):
                self._raise_too_old(name, exc)
            self._raise_mapped("unwrap", name, exc)
        return _take_key(name, response)

    def _raise_too_old(self, name: str, exc: Exception) -> NoReturn:
        state, _ = self._read(name)
        if state.suspended:
            raise KeySuspended(f"key {name!r} is suspended: unwrap refused") from exc
        raise KeyVersionRetired(
            f"wrapped key version is below the minimum decryption version "
            f"{state.min_decryption_version} of key {name!r}"
        ) from exc

    # -- hooks -------------------------------------------------------------------------

    def _ensure_key(self, name: str) -> KeyState:
        response = self._call(
            "create",
            name,
            lambda c: c.secrets.transit.create_key(
                name=self._full(name), key_type=KEY_TYPE, mount_point=self._mount
            ),
        )
        # Creating a name that exists is a silent no-op in Transit, whatever the type
        # asked for: check what is really there before trusting it as a KEK.
        data = _data(response)
        if data is None:
            _, data = self._read(name)
        problems = [
            what
            for what, bad in (
                (f"type {data.get('type')!r}", data.get("type") != KEY_TYPE),
                ("derived", bool(data.get("derived"))),
                ("exportable", bool(data.get("exportable"))),
                ("plaintext backup allowed", bool(data.get("allow_plaintext_backup"))),
                ("imported material", bool(data.get("imported_key"))),
            )
            if bad
        ]
        if problems:
            raise KeyConflict(
                f"Transit key {self._full(name)!r} exists but is not a Custos KEK: "
                + ", ".join(problems)
            )
        return self._state_from(name, data)

    def _generate_data_key(self, name: str, context: bytes) -> DataKey:
        before, _ = self._read(name)
        if before.suspended:
            raise KeySuspended(f"key {name!r} is suspended: no new data keys")
        response = self._call(
            "generate data key",
            name,
            lambda c: c.adapter.post(
                self._path("datakey", "plaintext", self._full(name)),
                # bits left at its default (256): the policy allows associated_data only.
                json={"associated_data": _b64(context)},
            ),
        )
        data = _data(response) or {}
        wrapped = data.get("ciphertext")
        plaintext = _take_key(name, response)
        try:
            if not isinstance(wrapped, str):
                raise BackendUnavailable(f"data key response for {name!r} has no ciphertext")
            data_key = DataKey(plaintext=plaintext, wrapped=wrapped)
            # A version newer than the one read before means a rotation ran in between,
            # possibly a suspension's: re-check, so no data key escapes a suspension.
            if data_key.version > before.latest_version and self._read(name)[0].suspended:
                raise KeySuspended(f"key {name!r} was suspended: no new data keys")
        except BaseException:
            zeroize(plaintext)
            raise
        return data_key

    def _unwrap(self, name: str, wrapped: str, context: bytes) -> bytearray:
        return self._decrypt(name, wrapped, context)

    def _rotate(self, name: str) -> KeyState:
        state, _ = self._read(name)
        if state.suspended:
            raise KeySuspended(f"key {name!r} is suspended: rotation refused")
        self._call(
            "rotate",
            name,
            lambda c: c.secrets.transit.rotate_key(name=self._full(name), mount_point=self._mount),
        )
        logger.info("rotated key %s", name)
        return self._read(name)[0]

    def _rewrap(self, name: str, wrapped: str, context: bytes) -> str:
        # Not the rewrap endpoint: it ignores associated_data, so it cannot open a
        # context-bound data key. The data key passes through this process, as it does
        # on every unwrap, and is zeroized at once.
        plaintext = self._decrypt(name, wrapped, context)
        try:
            response = self._call(
                "rewrap",
                name,
                lambda c: c.secrets.transit.encrypt_data(
                    name=self._full(name),
                    plaintext=_b64(plaintext),
                    associated_data=_b64(context),
                    mount_point=self._mount,
                ),
            )
        finally:
            zeroize(plaintext)
        new = (_data(response) or {}).get("ciphertext")
        if not isinstance(new, str):
            raise BackendUnavailable(f"rewrap response for {name!r} has no ciphertext")
        return new

    def _suspend(self, name: str) -> KeyState:
        state, data = self._read(name)
        min_enc = int(data.get("min_encryption_version") or 0)
        if min_enc > 0 and state.min_decryption_version >= min_enc:
            return state  # already fully suspended
        response = self._call(
            "suspend",
            name,
            lambda c: c.secrets.transit.rotate_key(name=self._full(name), mount_point=self._mount),
        )
        rotated = _data(response)
        suspension_version = (
            self._state_from(name, rotated) if rotated is not None else self._read(name)[0]
        ).latest_version
        # Order matters for a crash in between: decryption is cut first (fail closed),
        # the marker second; a retry sees no marker and suspends again.
        self._set_config(name, "min_decryption_version", suspension_version)
        self._set_config(name, "min_encryption_version", suspension_version)
        logger.warning("suspended key %s: every unwrap is refused", name)
        return self._read(name)[0]

    def _resume(self, name: str) -> KeyState:
        state, data = self._read(name)
        # The floor is the oldest version Transit still holds; Custos never raises
        # min_decryption_version except to suspend, so resuming restores the floor.
        floor = max(1, int(data.get("min_available_version") or 0))
        min_enc = int(data.get("min_encryption_version") or 0)
        # Reverse order of suspend: the marker goes last, so a crash leaves the key
        # reported suspended and a retry finishes the job.
        if state.min_decryption_version != floor:
            self._set_config(name, "min_decryption_version", floor)
        if min_enc != 0:
            self._set_config(name, "min_encryption_version", 0)
            logger.warning("resumed key %s", name)
        return self._read(name)[0]

    def _destroy(self, name: str) -> None:
        try:
            self._set_config(name, "deletion_allowed", True)
            self._call(
                "destroy",
                name,
                lambda c: c.secrets.transit.delete_key(name=self._full(name), mount_point=self._mount),
            )
        except KeyDestroyed:
            return  # already gone: destroy is idempotent
        logger.warning("destroyed key %s: its data keys are unrecoverable", name)

    def _state(self, name: str) -> KeyState:
        try:
            return self._read(name)[0]
        except KeyDestroyed:
            return KeyState.missing(name)

    def _health(self) -> KeyHealth:
        return self.session.health()

    def _policy_text(self, policy: str) -> str:
        answer = self.session.run(lambda c: c.sys.read_acl_policy(policy))
        data = _data(answer) or {}
        return str(data.get("policy", data.get("rules", "")))

    def _read_policies(self) -> tuple[dict[str, list[PathRule]], list[str]]:
        """Every ACL policy's rules (name -> rules) and the problems reading them; kept for
        POLICY_CACHE_S so that one pass over every model reads each policy once."""
        with self._policies_lock:
            cached = self._policies
            if cached is not None and time.monotonic() - cached[0] < self.policy_cache_s:
                return cached[1], cached[2]
            # Needs "list" on sys/policies/acl and "read" on sys/policies/acl/* (docs/access.md);
            # without them this raises Unauthorized, which callers report as a problem line.
            listed = self._call("list policies", "-", lambda c: c.sys.list_acl_policies())
            names = (_data(listed) or {}).get("keys")
            if not isinstance(names, list):
                raise BackendUnavailable("Vault answered the policy list without names")
            rules: dict[str, list[PathRule]] = {}
            problems: list[str] = []
            for policy in sorted(str(n) for n in names):
                if policy == "root":
                    continue  # built in, no rules to read: it allows everything
                try:
                    rules[policy] = parse_policy(self._policy_text(policy))
                except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
                    why = _server_text(exc) if isinstance(exc, hvac.exceptions.VaultError) else type(exc).__name__
                    problems.append(f"Vault policy {policy}: cannot read it ({why})"[:300])
                except InvalidInput as exc:
                    problems.append(f"Vault policy {policy}: cannot parse it ({exc})"[:300])
            if "root" in names:
                rules["root"] = [PathRule("*", frozenset({"root"}))]
            self._policies = (time.monotonic(), rules, problems)
            return rules, problems

    def _key_policies(self, name: str) -> KeyPolicies:
        rules, problems = self._read_policies()
        reach = [found for policy, rs in sorted(rules.items())
                 if (found := reaches_key(policy, rs, mount=self._mount, key=self._full(name))) is not None]
        return KeyPolicies(tuple(reach), tuple(problems))

    def _close(self) -> None:
        if self._own_session:
            self.session.close()


def _data(response: object) -> dict[str, Any] | None:
    """The ``data`` object of a JSON answer; None for an empty (204) answer."""
    if isinstance(response, dict):
        data = response.get("data")
        return data if isinstance(data, dict) else None
    return None


def _take_key(name: str, response: object) -> bytearray:
    """Decode the ``plaintext`` field into a bytearray and drop the response's copy.

    The str and bytes copies made by the HTTP and JSON layers cannot be wiped from
    Python; the bytearray is the copy the caller holds and zeroizes.
    """
    data = _data(response)
    encoded = data.pop("plaintext", None) if data is not None else None
    if not isinstance(encoded, str):
        raise BackendUnavailable(f"Transit answer for {name!r} has no plaintext")
    try:
        key = bytearray(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise BackendUnavailable(f"Transit answer for {name!r} is not base64") from exc
    if len(key) != DATA_KEY_BYTES:
        zeroize(key)
        # A 32-byte data key is all Custos ever wraps; anything else under this key
        # was not made by us.
        raise IntegrityError(f"wrapped value under key {name!r} is not a data key")
    return key
