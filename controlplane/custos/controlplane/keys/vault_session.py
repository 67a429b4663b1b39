"""Keeping a Vault / OpenBao token alive: renewal, re-login, and the health it gives.

A halt suspends Transit keys, so a token that silently expired would disable the kill
switch itself. :class:`VaultSession` holds the token obtained by a
:class:`~custos.controlplane.keys.vault_auth.VaultAuth`. A background thread renews it at
two thirds of its TTL, logs in again when renewal is refused or no longer extends it (near
the token's max TTL), picks up a token file an Agent rewrote, and checks every
``check_interval`` seconds that Vault answers and the token works. A request denied because
the token died is retried once with a new one. :meth:`VaultSession.health` is the cached
outcome: what ``/readyz`` and the metrics show.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import hvac
import hvac.exceptions
import requests

from custos.controlplane.keys.base import KeyHealth
from custos.controlplane.keys.vault_auth import Login, VaultAuth, login_from, lookup_token, map_vault_error
from custos.errors import BackendUnavailable, CustosError, InvalidInput, Unauthorized

__all__ = ["RENEW_FRACTION", "VaultSession"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

RENEW_FRACTION = 2 / 3  # renew when this much of the TTL has passed
_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 5.0
_FILE_POLL_S = 1.0  # how often a token file is looked at for an Agent's new token


@dataclass
class _Token:
    login: Login
    obtained_at: float  # monotonic, taken before the request that obtained it
    full_ttl_s: float  # the TTL the last login gave: renewals that give much less are near max_ttl

    @property
    def expires_at(self) -> float | None:
        return None if self.login.ttl_s <= 0 else self.obtained_at + self.login.ttl_s


class VaultSession:
    """A Vault address and a token that is kept alive; one hvac client per thread.

    Args:
        url: server address. verify: TLS verification (bool or CA bundle path).
        auth: how to obtain tokens. timeout: seconds per request.
        check_interval: seconds between health checks (lookup-self) by the background thread.
        background: run the background thread (tests of one round at a time pass False and
            call :meth:`refresh` / :meth:`check`).

    Raises:
        InvalidInput: a malformed argument.
    """

    def __init__(self, *, url: str, auth: VaultAuth, verify: bool | str = True, timeout: float = 10.0,
                 check_interval: float = 5.0, background: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(auth, VaultAuth):
            raise InvalidInput("auth must be a VaultAuth")
        if isinstance(check_interval, bool) or not isinstance(check_interval, int | float) \
                or not 0.1 <= check_interval <= 300:
            raise InvalidInput("health_interval must be between 0.1 and 300 seconds")
        self.url, self.auth = url, auth
        self._verify, self._timeout, self._check_interval = verify, float(timeout), float(check_interval)
        self._clock = clock
        self._lock = threading.RLock()  # token state; logins and renewals run under it
        self._token: _Token | None = None
        self._refresh_at: float | None = None
        self._next_check = 0.0
        self._auth_error: CustosError | None = None
        self._auth_failed_at = 0.0
        self._retry_s = _RETRY_FIRST_S
        self._contact_ok_at = 0.0
        self._contact_failed_at = 0.0
        self._contact_error = ""
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._own = self._new_client()  # logins, renewals and checks, under the lock
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="custos-vault-auth", daemon=True)
            self._thread.start()

    def __repr__(self) -> str:
        return f"VaultSession(url={self.url!r}, auth={self.auth.method!r})"

    # -- requests ------------------------------------------------------------------

    def _new_client(self) -> hvac.Client:
        # token="": never hvac's fallback to VAULT_TOKEN or ~/.vault-token.
        client = hvac.Client(url=self.url, token="", verify=self._verify, timeout=self._timeout)
        with self._lock:
            self._clients.append(client)
        return client

    def client(self) -> hvac.Client:
        """This thread's client, carrying a live token (logging in first if there is none).

        Raises:
            Unauthorized, BackendUnavailable, FailedPrecondition: no token can be had now
                (the last login failed less than a few seconds ago: its error again, at once).
        """
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
        client.token = self._current().login.token
        return client

    def run(self, fn: Callable[[hvac.Client], _T]) -> _T:
        """``fn(client)`` with a live token; if Vault says the token is dead, once more with a new one.

        hvac and requests exceptions propagate (the caller maps them, it knows the operation);
        so do the errors of :meth:`client`.
        """
        client = self.client()
        used = client.token
        try:
            try:
                result = fn(client)
            except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
                if not self._replaced(used):
                    raise
                result = fn(self.client())
        except (requests.exceptions.RequestException, hvac.exceptions.VaultDown) as exc:
            self._note_unreachable(exc)
            raise
        self._note_ok()
        return result

    # -- the token -------------------------------------------------------------------

    def _current(self) -> _Token:
        with self._lock:
            now = self._clock()
            tok = self._token
            changed = self.auth.changed()
            if tok is not None and not self._expired(tok, now) and not changed:
                return tok
            # A login failed a moment ago: fail fast with its error, unless the source changed since.
            if self._auth_error is not None and now - self._auth_failed_at < self._retry_s and not changed:
                err = self._auth_error
                raise type(err)(str(err))
            return self._login_locked()

    def _expired(self, tok: _Token, now: float) -> bool:
        expires = tok.expires_at
        return expires is not None and now >= expires

    def _login_locked(self) -> _Token:
        started = self._clock()
        self._own.token = ""
        try:
            login = self.auth.login(self._own)
        except CustosError as exc:
            self._fail_auth(exc)
            raise
        tok = _Token(login, started, login.ttl_s)
        self._set_token(tok, started)
        logger.info("Vault login (%s): token valid for %s, renewable: %s", self.auth.method,
                    f"{login.ttl_s:.0f} s" if login.ttl_s else "ever", login.renewable)
        return tok

    def _set_token(self, tok: _Token, now: float) -> None:
        self._token = tok
        self._auth_error = None
        self._retry_s = _RETRY_FIRST_S
        self._contact_ok_at = max(self._contact_ok_at, now)
        ttl = tok.login.ttl_s
        self._refresh_at = None if ttl <= 0 else tok.obtained_at + ttl * RENEW_FRACTION

    def _fail_auth(self, exc: CustosError) -> None:
        now = self._clock()
        if isinstance(exc, BackendUnavailable):
            self._contact_failed_at, self._contact_error = now, str(exc)
        else:
            self._contact_ok_at = now  # Vault answered: it refused
        if self._auth_error is None or str(self._auth_error) != str(exc):
            logger.error("Vault authentication (%s) failed: %s", self.auth.method, exc)
        self._auth_error, self._auth_failed_at = exc, now
        self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)

    def _replaced(self, used: str) -> bool:
        """After a denial with token ``used``: True if a new token is in place (the old one was dead)."""
        with self._lock:
            if self._token is not None and self._token.login.token != used:
                return True  # another thread replaced it already
            try:
                lookup_token(self._own, used, "token lookup")
                return False  # the token is fine: the request itself is denied by policy
            except Unauthorized:
                logger.warning("Vault token (%s) is no longer valid; obtaining a new one", self.auth.method)
                self._token = None
            except CustosError:
                return False
            try:
                return self._login_locked().login.token != used
            except CustosError:
                return False

    def refresh(self) -> None:
        """Renew the token, or obtain a new one if it cannot be renewed (one background round).

        Raises:
            the errors of :meth:`client` when no live token can be had.
        """
        with self._lock:
            now = self._clock()
            tok = self._token
            if tok is None or self._expired(tok, now) or self.auth.changed():
                self._login_locked()
                return
            if tok.login.ttl_s <= 0:
                return
            renewed = self._renew_locked(tok) if tok.login.renewable else None
            # Vault gives whole seconds: a renewal short of the full TTL by more than one is capped
            # by the token's max TTL, after which it dies whatever we do.
            capped = renewed is not None and renewed.login.ttl_s < tok.full_ttl_s - 1
            if renewed is not None and not (capped and self.auth.relogin):
                if capped:
                    logger.warning("Vault token (%s) is near its max TTL and cannot be re-obtained: it expires "
                                   "in %.0f s", self.auth.method, renewed.login.ttl_s)
                self._set_token(renewed, now)
                return
            if self.auth.relogin:  # refused, not renewable, or capped: a new login before it runs out
                self._login_locked()
                return
            left = (tok.expires_at or now) - now
            logger.error("Vault token (%s) cannot be renewed or re-obtained: it expires in %.0f s",
                         self.auth.method, left)
            self._refresh_at = now + max(1.0, left / 2)  # a few loud lines, not one a second

    def _renew_locked(self, tok: _Token) -> _Token | None:
        """The renewed token, or None if Vault refused. Raises BackendUnavailable if unreachable."""
        started = self._clock()
        self._own.token = tok.login.token
        try:
            answer = self._own.auth.token.renew_self()
        except (requests.exceptions.RequestException, hvac.exceptions.VaultDown) as exc:
            mapped = map_vault_error("token renewal", exc)
            self._contact_failed_at, self._contact_error = self._clock(), str(mapped)
            self._refresh_at = self._clock() + self._retry_s
            self._retry_s = min(self._retry_s * 2, _RETRY_MAX_S)
            raise mapped from exc
        except hvac.exceptions.VaultError as exc:
            # Any answer but success is a refusal: revoked, not renewable, past its max TTL
            # (OpenBao answers that one with a 500).
            logger.warning("Vault refused to renew the token (%s): %s", self.auth.method,
                           map_vault_error("token renewal", exc))
            return None
        try:
            login = login_from(answer, "token renewal")
        except BackendUnavailable:
            return None
        if login.ttl_s <= 0:
            return None  # renewed to nothing: it is at its max TTL
        return _Token(Login(tok.login.token, login.ttl_s, login.renewable), started, tok.full_ttl_s)

    def check(self) -> None:
        """Ask Vault whether the token still works (lookup-self); replace it if it does not.

        Raises:
            the errors of :meth:`client` when no live token can be had.
        """
        with self._lock:
            tok = self._token
            if tok is None:
                self._login_locked()
                return
            started = self._clock()
            try:
                lookup_token(self._own, tok.login.token, "token check")
            except Unauthorized:
                logger.error("Vault token (%s) was revoked or expired early; obtaining a new one", self.auth.method)
                self._token = None
                self._login_locked()
                return
            except BackendUnavailable as exc:
                self._contact_failed_at, self._contact_error = self._clock(), str(exc)
                raise
            self._contact_ok_at = started

    # -- health ----------------------------------------------------------------------

    def _note_ok(self) -> None:
        with self._lock:
            self._contact_ok_at = self._clock()

    def _note_unreachable(self, exc: Exception) -> None:
        with self._lock:
            self._contact_failed_at = self._clock()
            self._contact_error = str(map_vault_error("a request", exc))

    def health(self) -> KeyHealth:
        """The cached view: reachable, authenticated, token not expired. Never blocks on Vault."""
        with self._lock:
            now = self._clock()
            tok = self._token
            if self._closing.is_set():
                return KeyHealth(False, "the Vault session is closed")
            if self._contact_failed_at > self._contact_ok_at:
                return KeyHealth(False, f"Vault unreachable for {now - self._contact_failed_at:.0f} s: "
                                        f"{self._contact_error}")
            if tok is None or self._expired(tok, now):
                why = f": {self._auth_error}" if self._auth_error is not None else ""
                state = "expired" if tok is not None else "not obtained"
                return KeyHealth(False, f"no valid Vault token ({self.auth.method}, {state}){why}")
            left = None if tok.expires_at is None else tok.expires_at - now
            shown = "does not expire" if left is None else f"valid for {left:.0f} s"
            failing = f"; obtaining the next one fails: {self._auth_error}" if self._auth_error else ""
            return KeyHealth(True, f"Vault reachable; token ({self.auth.method}) {shown}{failing}", left)

    # -- the background thread ---------------------------------------------------------

    def _loop(self) -> None:
        while not self._closing.wait(self._next_delay()):
            try:
                self._round()
            except CustosError:
                pass  # recorded in health and logged where it happened
            except Exception:
                logger.exception("Vault token renewal round failed")

    def _next_delay(self) -> float:
        with self._lock:
            now = self._clock()
            due = [self._next_check]
            if self._token is None or self._auth_error is not None:
                due.append(self._auth_failed_at + self._retry_s)
            elif self._refresh_at is not None:
                due.append(self._refresh_at)
            if self.auth.polls:
                due.append(now + _FILE_POLL_S)
            return min(max(0.05, min(due) - now), self._check_interval)

    def _round(self) -> None:
        with self._lock:
            now = self._clock()
            # After a failed login, wait out the backoff: an outage must not become a login storm.
            may_retry = self._auth_error is None or now >= self._auth_failed_at + self._retry_s
            refresh = may_retry and (self._token is None or self.auth.changed()
                                     or (self._refresh_at is not None and now >= self._refresh_at))
            check = now >= self._next_check
            if check:
                self._next_check = now + self._check_interval
        if refresh:
            self.refresh()
        elif check:
            self.check()

    def close(self) -> None:
        """Stop the background thread and close every connection. Idempotent."""
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._timeout + 1)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.adapter.close()
