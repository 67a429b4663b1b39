"""Console users, their passkeys and their one-time enrollment tokens: one private file.

``users.json`` (mode 0600, in the console's state directory) holds each user's
name, role and registered credentials (credential id, COSE algorithm, public key,
signature counter), and the SHA-256 of each unused enrollment token with the
user it enrolls and when it expires. The token itself is shown once, to whoever
runs ``custos console add-user``: whoever can write this file administers the
console. No private key is ever in it.

Every change is a read-modify-write under an exclusive lock beside the file, so
``custos console add-user`` and a running console never lose each other's
writes; the console re-reads the file when it changed, so a removed user is
logged out at their next request.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from custos.core.webauthn import ALGORITHMS, b64url, unb64url
from custos.errors import Conflict, InvalidInput, NotFound
from custos.fs.private import private_dir, write_private

ROLES = ("executive", "auditor", "security-team")
"""Console roles; each is served with the control-plane client certificate of the same role."""

USER_NAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,63}")
"""A console user name, also usable as a signer name in a signer set (custos.core.signers)."""

TOKEN_TTL_S = 24 * 3600
MAX_CREDENTIALS = 10


@dataclass(frozen=True, slots=True)
class Credential:
    credential_id: bytes
    alg: int
    public: bytes
    sign_count: int
    created_ns: int
    user_verified: bool

    def to_json(self) -> dict[str, Any]:
        return {"alg": self.alg, "created_ns": self.created_ns, "id": b64url(self.credential_id),
                "public": self.public.hex(), "sign_count": self.sign_count, "user_verified": self.user_verified}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Credential:
        return cls(credential_id=unb64url(obj["id"], "credential id"), alg=int(obj["alg"]),
                   public=bytes.fromhex(obj["public"]), sign_count=int(obj["sign_count"]),
                   created_ns=int(obj["created_ns"]), user_verified=bool(obj["user_verified"]))


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    handle: bytes  # the WebAuthn user.id: random, not the name
    created_ns: int
    credentials: tuple[Credential, ...] = ()

    def credential(self, credential_id: bytes) -> Credential | None:
        return next((c for c in self.credentials if hmac.compare_digest(c.credential_id, credential_id)), None)

    def to_json(self) -> dict[str, Any]:
        return {"created_ns": self.created_ns, "credentials": [c.to_json() for c in self.credentials],
                "handle": b64url(self.handle), "role": self.role}


@dataclass(frozen=True, slots=True)
class Enrollment:
    user: str
    expires_ns: int


@dataclass
class _State:
    users: dict[str, User] = field(default_factory=dict)
    enrollments: dict[str, Enrollment] = field(default_factory=dict)  # sha256(token) hex -> enrollment

    def encode(self) -> bytes:
        return json.dumps({
            "enrollments": {h: {"expires_ns": e.expires_ns, "user": e.user} for h, e in self.enrollments.items()},
            "users": {n: u.to_json() for n, u in self.users.items()},
            "version": 1,
        }, indent=1, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes, where: Path) -> _State:
        try:
            obj = json.loads(data)
            if obj.get("version") != 1:
                raise ValueError("unknown version")
            users = {n: User(name=n, role=u["role"], handle=unb64url(u["handle"], "user handle"),
                             created_ns=int(u["created_ns"]),
                             credentials=tuple(Credential.from_json(c) for c in u["credentials"]))
                     for n, u in obj["users"].items()}
            enrollments = {h: Enrollment(user=e["user"], expires_ns=int(e["expires_ns"]))
                           for h, e in obj["enrollments"].items()}
        except (ValueError, KeyError, TypeError, AttributeError, InvalidInput) as exc:
            raise InvalidInput(f"console user file {where} is unreadable ({exc}); restore it or move it away") from None
        return cls(users, enrollments)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def check_name(name: object) -> str:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise InvalidInput(f"bad user name {str(name)[:64]!r}: want 1-64 of a-z 0-9 . _ @ + - starting with a "
                           "letter or digit")
    return name


def check_role(role: object) -> str:
    if role not in ROLES:
        raise InvalidInput(f"bad role {str(role)[:32]!r}: want one of {', '.join(ROLES)}")
    return str(role)


class UserStore:
    """The user file of one console (see the module). Thread-safe; safe across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], _State] | None = None

    # -- file access

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.path.parent)
        fd = os.open(self.path.parent / f".{self.path.name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                yield
        finally:
            os.close(fd)

    def _read(self) -> _State:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return _State()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        state = _State.decode(self.path.read_bytes(), self.path)
        self._cache = (stamp, state)
        return state

    def _write(self, state: _State) -> None:
        write_private(self.path, state.encode())
        self._cache = None

    # -- reads

    def get(self, name: str) -> User | None:
        with self._lock:
            return self._read().users.get(name)

    def users(self) -> list[User]:
        with self._lock:
            return sorted(self._read().users.values(), key=lambda u: u.name)

    def by_credential(self, credential_id: bytes) -> tuple[User, Credential] | None:
        with self._lock:
            for u in self._read().users.values():
                c = u.credential(credential_id)
                if c is not None:
                    return u, c
        return None

    def enrollment(self, token: str, *, now_ns: int | None = None) -> Enrollment:
        """The unused, unexpired enrollment of ``token``. Raises NotFound (one message for every
        reason: an unknown, used or expired token)."""
        now = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            e = self._read().enrollments.get(token_hash(token))
        if e is None or e.expires_ns <= now:
            raise NotFound("this enrollment link is unknown, used or expired: ask for a new one "
                           "(custos console add-user)")
        return e

    # -- changes

    def add_user(self, name: str, role: str, *, ttl_s: int = TOKEN_TTL_S, now_ns: int | None = None) -> str:
        """Create ``name`` with ``role`` (or, for an existing user of that role, enroll another passkey)
        and return a one-time enrollment token. Raises InvalidInput, Conflict (another role)."""
        check_name(name)
        check_role(role)
        if not isinstance(ttl_s, int) or not 60 <= ttl_s <= 30 * 86400:
            raise InvalidInput("enrollment token lifetime: want 60 s to 30 days")
        now = time.time_ns() if now_ns is None else now_ns
        token = secrets.token_urlsafe(32)
        with self._locked():
            state = self._read()
            user = state.users.get(name)
            if user is not None and user.role != role:
                raise Conflict(f"user {name} exists with role {user.role}; remove it first to change the role")
            if user is None:
                state.users[name] = User(name=name, role=role, handle=secrets.token_bytes(16), created_ns=now)
            state.enrollments = {h: e for h, e in state.enrollments.items() if e.expires_ns > now}
            state.enrollments[token_hash(token)] = Enrollment(user=name, expires_ns=now + ttl_s * 1_000_000_000)
            self._write(state)
        return token

    def remove_user(self, name: str) -> User:
        """Remove a user, their passkeys and their enrollment tokens. Raises NotFound."""
        with self._locked():
            state = self._read()
            user = state.users.pop(name, None)
            if user is None:
                raise NotFound(f"no console user {name!r}")
            state.enrollments = {h: e for h, e in state.enrollments.items() if e.user != name}
            self._write(state)
        return user

    def enroll(self, token: str, credential: Credential, *, now_ns: int | None = None) -> User:
        """Use ``token`` (once) to add ``credential`` to its user. Raises NotFound (token), Conflict
        (the credential is registered already), InvalidInput (too many credentials)."""
        now = time.time_ns() if now_ns is None else now_ns
        with self._locked():
            state = self._read()
            h = token_hash(token)
            e = state.enrollments.get(h)
            user = state.users.get(e.user) if e is not None else None
            if e is None or e.expires_ns <= now or user is None:
                raise NotFound("this enrollment link is unknown, used or expired: ask for a new one")
            if any(u.credential(credential.credential_id) for u in state.users.values()):
                raise Conflict("this passkey is registered already")
            if len(user.credentials) >= MAX_CREDENTIALS:
                raise InvalidInput(f"user {user.name} has {MAX_CREDENTIALS} passkeys already")
            del state.enrollments[h]
            user = replace(user, credentials=(*user.credentials, credential))
            state.users[user.name] = user
            self._write(state)
        return user

    def bump_counter(self, name: str, credential_id: bytes, count: int) -> None:
        """Record a credential's new signature counter (it only grows)."""
        with self._locked():
            state = self._read()
            user = state.users.get(name)
            cred = user.credential(credential_id) if user is not None else None
            if user is None or cred is None or count <= cred.sign_count:
                return
            creds = tuple(replace(c, sign_count=count) if c is cred else c for c in user.credentials)
            state.users[name] = replace(user, credentials=creds)
            self._write(state)


def algorithm_name(alg: int) -> str:
    return {-7: "ES256", -8: "EdDSA"}.get(alg, str(alg)) if alg in ALGORITHMS else str(alg)
