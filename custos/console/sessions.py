"""Browser sessions and WebAuthn challenges, in memory.

A session is a random 256-bit token in an ``HttpOnly; Secure; SameSite=Strict``
cookie named with the ``__Host-`` prefix (so no other host or path can set it);
only its SHA-256 is kept. Sessions end after ``idle_s`` without a request or
``max_s`` after login, whichever comes first, on logout, and when the console
restarts.

A challenge is random, bound to one purpose (``login``, ``enroll``) and to what it
was issued for (a user, an enrollment token), valid for ``CHALLENGE_TTL_S`` and
taken once: :meth:`Challenges.take` removes it whether or not the response that
carries it verifies, so a replayed or retried response always fails.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from custos.errors import InvalidInput, Unauthorized

COOKIE = "__Host-custos-session"
CHALLENGE_TTL_S = 120.0
MAX_CHALLENGES = 10_000
MAX_SESSIONS = 10_000


class NotLoggedIn(Unauthorized):
    """No live session: the browser must log in (HTTP 401)."""


@dataclass
class Session:
    user: str
    role: str
    created: float
    last: float


class Sessions:
    def __init__(self, *, idle_s: float = 1800.0, max_s: float = 12 * 3600.0) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self._lock = threading.Lock()
        self._by_hash: OrderedDict[str, Session] = OrderedDict()

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def create(self, user: str, role: str, *, now: float | None = None) -> str:
        """A new session's token (for the cookie)."""
        t = time.monotonic() if now is None else now
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._by_hash[self._key(token)] = Session(user, role, t, t)
            while len(self._by_hash) > MAX_SESSIONS:
                self._by_hash.popitem(last=False)
        return token

    def get(self, token: str | None, *, now: float | None = None) -> Session:
        """The live session of ``token``, touched. Raises NotLoggedIn."""
        if not token:
            raise NotLoggedIn("not logged in")
        t = time.monotonic() if now is None else now
        key = self._key(token)
        with self._lock:
            s = self._by_hash.get(key)
            if s is None:
                raise NotLoggedIn("not logged in (the session is unknown or over)")
            if t - s.last > self.idle_s or t - s.created > self.max_s:
                del self._by_hash[key]
                raise NotLoggedIn("the session has expired: log in again")
            s.last = t
            return s

    def end(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._by_hash.pop(self._key(token), None)

    def end_user(self, user: str) -> None:
        with self._lock:
            for k in [k for k, s in self._by_hash.items() if s.user == user]:
                del self._by_hash[k]


@dataclass(frozen=True)
class Challenge:
    purpose: str
    value: bytes  # the random nonce (login) or challenge (enroll)
    subject: str  # the user (login) or the enrollment token's hash (enroll)
    expires: float


class Challenges:
    def __init__(self, *, ttl_s: float = CHALLENGE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, Challenge] = OrderedDict()

    def issue(self, purpose: str, subject: str, *, now: float | None = None) -> tuple[str, bytes]:
        """(challenge id, 32 random bytes), valid once for ``ttl_s``."""
        t = time.monotonic() if now is None else now
        cid, value = secrets.token_urlsafe(16), secrets.token_bytes(32)
        with self._lock:
            for k in [k for k, c in self._by_id.items() if c.expires <= t]:
                del self._by_id[k]
            self._by_id[cid] = Challenge(purpose, value, subject, t + self.ttl_s)
            while len(self._by_id) > MAX_CHALLENGES:
                self._by_id.popitem(last=False)
        return cid, value

    def take(self, cid: object, purpose: str, *, now: float | None = None) -> Challenge:
        """Remove and return challenge ``cid`` of ``purpose``. Raises InvalidInput (unknown, used,
        expired or of another purpose: one message)."""
        t = time.monotonic() if now is None else now
        with self._lock:
            c = self._by_id.pop(cid, None) if isinstance(cid, str) else None
        if c is None or c.purpose != purpose or c.expires <= t:
            raise InvalidInput("the challenge is unknown, used or expired: start again")
        return c
