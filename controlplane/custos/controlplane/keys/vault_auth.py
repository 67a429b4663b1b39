"""Vault / OpenBao authentication: the ways the control plane obtains a token.

A halt suspends Transit keys, so a token that silently expired would disable the kill
switch itself. Four ways to authenticate (``[keys] auth``, docs/keys.md):

- ``token``: a token given once (``CUSTOS_VAULT_TOKEN``). Renewed before it expires, if it
  is renewable; it cannot be re-obtained, so when Vault refuses to renew it, it dies loudly.
- ``token_file``: a token in a file, re-read whenever the file changes — the sink of a
  Vault Agent / OpenBao Agent auto-auth, which is how operators usually run it.
- ``approle``: a role id and a secret id (its file is re-read at every login, so it can be
  rotated under a running control plane).
- ``jwt``: a signed JWT from a file and a role — how a Kubernetes service account logs in
  (the projected token file is re-read at every login: the kubelet rotates it).

Keeping the token alive (renewal, re-login, health) is custos.controlplane.keys.vault_session.
"""

from __future__ import annotations

import abc
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import hvac
import hvac.exceptions
import requests

from custos.errors import BackendUnavailable, CustosError, FailedPrecondition, InvalidInput, Unauthorized

__all__ = [
    "AUTH_METHODS",
    "AppRoleAuth",
    "JwtAuth",
    "Login",
    "StaticTokenAuth",
    "TokenFileAuth",
    "VaultAuth",
    "auth_from_config",
    "login_from",
    "lookup_token",
    "map_vault_error",
    "vault_call",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_MOUNT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9][A-Za-z0-9_.-]*)*")
_MAX_SECRET_BYTES = 64 * 1024  # a token, secret id or JWT is small; refuse to slurp a wrong file


def map_vault_error(what: str, exc: Exception) -> CustosError:
    """The Custos error for a failed Vault request (``what`` names it in the message)."""
    if isinstance(exc, requests.exceptions.RequestException):
        return BackendUnavailable(f"Vault unreachable during {what}: {type(exc).__name__}")
    if isinstance(exc, hvac.exceptions.VaultDown):
        return BackendUnavailable(f"Vault is sealed or down during {what}")
    if isinstance(exc, hvac.exceptions.VaultError):
        text = " ".join("; ".join(str(e) for e in (exc.errors or [])).split())[:300] or type(exc).__name__
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized
                      | hvac.exceptions.InvalidRequest):
            return Unauthorized(f"Vault refused {what}: {text}")
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return FailedPrecondition(f"Vault has nothing at the path of {what} (not mounted?): {text}")
        return BackendUnavailable(f"Vault failed {what}: {text}")
    return BackendUnavailable(f"{what} failed: {type(exc).__name__}")


def vault_call(what: str, fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
        raise map_vault_error(what, exc) from exc


def _read_secret(path: Path, what: str) -> str:
    """The stripped contents of a small secret file. Raises Unauthorized (cannot log in without it)."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise Unauthorized(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise Unauthorized(f"the {what} {path} is not text") from None
    if not text or len(raw) > _MAX_SECRET_BYTES or any(c.isspace() for c in text):
        raise Unauthorized(f"the {what} {path} is empty, too long, or not one line")
    return text


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None  # an Agent replacing the file: keep the token we have until it is back
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Login:
    """A token and what Vault said about it: ``ttl_s`` 0 means it never expires."""

    token: str = field(repr=False)
    ttl_s: float
    renewable: bool


def login_from(answer: object, what: str) -> Login:
    auth = answer.get("auth") if isinstance(answer, dict) else None
    token = auth.get("client_token") if isinstance(auth, dict) else None
    ttl = auth.get("lease_duration") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token or not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        raise BackendUnavailable(f"unexpected answer to {what}: no token")
    assert isinstance(auth, dict)
    return Login(token, float(ttl), bool(auth.get("renewable")))


def lookup_token(client: hvac.Client, token: str, what: str) -> Login:
    """What Vault says about ``token`` (lookup-self). Raises Unauthorized if it is invalid."""
    client.token = token
    answer = vault_call(what, client.auth.token.lookup_self)
    data = answer.get("data") if isinstance(answer, dict) else None
    ttl = data.get("ttl") if isinstance(data, dict) else None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
        raise BackendUnavailable(f"unexpected answer to {what}: no ttl")
    assert isinstance(data, dict)
    return Login(token, float(ttl), bool(data.get("renewable")))


class VaultAuth(abc.ABC):
    """One way of obtaining a Vault token."""

    method: ClassVar[str]
    relogin: ClassVar[bool] = True
    """Whether a new login can give a new token (False: the token given is all there is)."""

    @abc.abstractmethod
    def login(self, client: hvac.Client) -> Login:
        """Obtain a token with ``client`` (which carries no token).

        Raises:
            Unauthorized: the credentials are refused, missing or unreadable.
            BackendUnavailable: Vault cannot be reached or answers oddly.
            FailedPrecondition: the auth method is not mounted where configured.
        """

    def changed(self) -> bool:
        """Whether the credential's source changed since the last login (a new token file)."""
        return False

    @property
    def polls(self) -> bool:
        """Whether :meth:`changed` should be asked about every second."""
        return False


class StaticTokenAuth(VaultAuth):
    """A token given once. It is renewed, but never re-obtained."""

    method = "token"
    relogin = False

    def __init__(self, token: str) -> None:
        if not isinstance(token, str) or not token or token.strip() != token:
            raise InvalidInput("token must be a non-empty string without surrounding spaces")
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenAuth(<token>)"

    def login(self, client: hvac.Client) -> Login:
        return lookup_token(client, self._token, "token lookup")


class TokenFileAuth(VaultAuth):
    """A token in a file that an Agent rewrites: re-read whenever the file changes."""

    method = "token_file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, str | os.PathLike) or not str(path):
            raise InvalidInput("token_file must be a file path")
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None

    def login(self, client: hvac.Client) -> Login:
        seen = _file_signature(self.path)
        token = _read_secret(self.path, "Vault token file")
        self._seen = seen
        return lookup_token(client, token, f"lookup of the token in {self.path}")

    def changed(self) -> bool:
        now = _file_signature(self.path)
        return now is not None and now != self._seen

    @property
    def polls(self) -> bool:
        return True


def _check_mount(mount: object, what: str) -> str:
    if not isinstance(mount, str) or _MOUNT_PATTERN.fullmatch(mount) is None:
        raise InvalidInput(f"{what} must be a mount path like 'approle' or 'kubernetes-jwt'")
    return mount


def _check_path(value: object, what: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise InvalidInput(f"{what} must be a file path")
    return Path(value)


class AppRoleAuth(VaultAuth):
    """AppRole: a role id (given, or from a file) and a secret id from a file, read at each login.

    ``secret_id_file`` may be None for a role bound by CIDR only (``bind_secret_id=false``).
    """

    method = "approle"

    def __init__(self, *, role_id: str | None = None, role_id_file: str | os.PathLike[str] | None = None,
                 secret_id_file: str | os.PathLike[str] | None = None, mount: str = "approle") -> None:
        if (role_id is None) == (role_id_file is None):
            raise InvalidInput("auth = \"approle\" needs exactly one of role_id and role_id_file")
        if role_id is not None and (not isinstance(role_id, str) or not role_id or role_id.strip() != role_id):
            raise InvalidInput("role_id must be a non-empty string without spaces")
        self._role_id = role_id
        self._role_id_file = None if role_id_file is None else _check_path(role_id_file, "role_id_file")
        self._secret_id_file = None if secret_id_file is None else _check_path(secret_id_file, "secret_id_file")
        self.mount = _check_mount(mount, "auth_mount")

    def login(self, client: hvac.Client) -> Login:
        role_id = self._role_id or _read_secret(self._role_id_file, "AppRole role id file")  # type: ignore[arg-type]
        secret_id = None if self._secret_id_file is None else _read_secret(self._secret_id_file,
                                                                           "AppRole secret id file")
        answer = vault_call(f"AppRole login at auth/{self.mount}", lambda: client.auth.approle.login(
            role_id=role_id, secret_id=secret_id, use_token=False, mount_point=self.mount))
        return login_from(answer, "AppRole login")


class JwtAuth(VaultAuth):
    """JWT / OIDC auth (a Kubernetes service account's projected token): role + JWT file, read at each login."""

    method = "jwt"

    def __init__(self, *, role: str, jwt_file: str | os.PathLike[str], mount: str = "jwt") -> None:
        if not isinstance(role, str) or not role or role.strip() != role:
            raise InvalidInput("auth = \"jwt\" needs role, a non-empty string without spaces")
        self.role = role
        self.jwt_file = _check_path(jwt_file, "jwt_file")
        self.mount = _check_mount(mount, "auth_mount")

    def login(self, client: hvac.Client) -> Login:
        jwt = _read_secret(self.jwt_file, "JWT file")
        answer = vault_call(f"JWT login at auth/{self.mount} as role {self.role!r}", lambda: client.auth.jwt.jwt_login(
            role=self.role, jwt=jwt, use_token=False, path=self.mount))
        return login_from(answer, "JWT login")


AUTH_METHODS = ("token", "token_file", "approle", "jwt")
_AUTH_KEYS = {
    "token": set(),
    "token_file": {"token_file"},
    "approle": {"role_id", "role_id_file", "secret_id_file", "auth_mount"},
    "jwt": {"role", "jwt_file", "auth_mount"},
}


def auth_from_config(keys: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> VaultAuth:
    """The auth method of a ``[keys]`` table (paths already resolved).

    ``auth`` defaults to ``token_file`` when one is given, else ``token`` (from
    ``CUSTOS_VAULT_TOKEN``). Raises InvalidInput for an unknown method, a missing or
    malformed field, or a field that belongs to another method.
    """
    env = os.environ if environ is None else environ
    method = keys.get("auth", "token_file" if keys.get("token_file") else "token")
    if method not in AUTH_METHODS:
        raise InvalidInput(f"[keys] auth must be one of {', '.join(AUTH_METHODS)}, not {str(method)[:40]!r}")
    stray = sorted(set().union(*_AUTH_KEYS.values()) - _AUTH_KEYS[method] & set(keys))
    if stray:
        raise InvalidInput(f"[keys] {', '.join(stray)} do(es) not apply to auth = {method!r}")
    if method == "token":
        token = env.get("CUSTOS_VAULT_TOKEN", "")
        if not token:
            raise InvalidInput("[keys] provider = \"vault\" needs auth (token_file, approle, jwt) or "
                               "CUSTOS_VAULT_TOKEN")
        return StaticTokenAuth(token.strip())
    if method == "token_file":
        if not keys.get("token_file"):
            raise InvalidInput("[keys] auth = \"token_file\" needs token_file")
        return TokenFileAuth(keys["token_file"])
    if method == "approle":
        return AppRoleAuth(role_id=keys.get("role_id"), role_id_file=keys.get("role_id_file"),
                           secret_id_file=keys.get("secret_id_file"), mount=keys.get("auth_mount", "approle"))
    if not keys.get("role") or not keys.get("jwt_file"):
        raise InvalidInput("[keys] auth = \"jwt\" needs role and jwt_file")
    return JwtAuth(role=keys["role"], jwt_file=keys["jwt_file"], mount=keys.get("auth_mount", "jwt"))
