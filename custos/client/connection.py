"""Connect to the control plane: addresses, mTLS material and role from env or flags.

Environment (what `source D/dev.env` sets):
    CUSTOS_ADDR       host:port of the control plane, or several (its replicas)
                      separated by commas, in order of preference
    CUSTOS_CA         CA certificate that signed the server's certificate
    CUSTOS_CERT, CUSTOS_KEY        this caller's client certificate and key, or
    CUSTOS_CERT_DIR + CUSTOS_ROLE  a directory of ROLE.pem / ROLE.key (dev)
    CUSTOS_IDENTITY   a person's file pair NAME.pem / NAME.key in CUSTOS_CERT_DIR,
                      over the role's (dev: sec1, sec2 — two people of the security team)

With several addresses, a call goes to the first replica that connects (see
:class:`FailoverChannel`); an address may also be a DNS name resolving to
several replicas, which gRPC tries in turn.
"""

from __future__ import annotations

import os
import re
import shlex
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from custos.errors import InvalidInput

CONNECT_TIMEOUT = 5.0  # seconds to give one replica to connect before trying the next
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]
# What gRPC says when a call never left this process: no replica connection to send it on.
_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a file name in CUSTOS_CERT_DIR, no path
_NOT_SENT = ("failed to connect to all addresses", "dns resolution failed", "name resolution failure")


def parse_addrs(value: str | Sequence[str] | None, what: str = "CUSTOS_ADDR (--addr)") -> tuple[str, ...]:
    """Control-plane addresses in order of preference: one, several separated by commas,
    or a list of either (a repeated flag). Duplicates are dropped. Raises InvalidInput
    for an empty entry or one with blanks in it."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            addr = part.strip()
            if not addr or any(ch.isspace() for ch in addr):
                raise InvalidInput(f"{what}: bad address {part!r} in {str(item)!r}: want HOST:PORT[,HOST:PORT...]")
            if addr not in out:
                out.append(addr)
    return tuple(out)


@dataclass
class ClientConfig:
    """Where and as whom to connect. ``addr`` may name several replicas (commas); after
    construction it is the first of them and ``addrs`` holds them all."""

    addr: str
    ca: Path
    cert: Path
    key: Path
    role: str = ""
    addrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.addrs or self.addr:
            self.addrs = parse_addrs(self.addrs or self.addr)
            self.addr = self.addrs[0]

    @classmethod
    def from_env(
        cls,
        *,
        addr: str | Sequence[str] | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        role: str | None = None,
        identity: str | None = None,
    ) -> ClientConfig:
        """Flags win over environment. Raises InvalidInput naming what is missing.

        ``identity`` (env CUSTOS_IDENTITY) picks CUSTOS_CERT_DIR/NAME.pem and NAME.key: one
        person's certificate, where a role names a kind of caller. Certificate flags win
        over it; a ``role`` flag wins over CUSTOS_IDENTITY from the environment."""
        env = os.environ
        if identity is None:
            identity = "" if role else env.get("CUSTOS_IDENTITY", "")
        if identity and (not cert or not key):
            if not _IDENTITY.match(identity):
                raise InvalidInput(f"bad identity {identity[:64]!r} (--identity): want a file name like sec2")
            ident_dir = env.get("CUSTOS_CERT_DIR")
            if not ident_dir:
                raise InvalidInput(f"--identity {identity} needs CUSTOS_CERT_DIR (the directory of NAME.pem/NAME.key)")
            if not (Path(ident_dir) / f"{identity}.pem").is_file():
                raise InvalidInput(f"no identity {identity!r}: {Path(ident_dir) / (identity + '.pem')} does not exist")
            cert = cert or str(Path(ident_dir) / f"{identity}.pem")
            key = key or str(Path(ident_dir) / f"{identity}.key")
        addrs = parse_addrs(addr or env.get("CUSTOS_ADDR") or None)
        ca = ca or env.get("CUSTOS_CA")
        role = role or env.get("CUSTOS_ROLE", "")
        cert = cert or (env.get("CUSTOS_CERT") if not role or role == env.get("CUSTOS_ROLE") else None)
        key = key or (env.get("CUSTOS_KEY") if not role or role == env.get("CUSTOS_ROLE") else None)
        cert_dir = env.get("CUSTOS_CERT_DIR")
        if (not cert or not key) and cert_dir and role:
            cert = cert or str(Path(cert_dir) / f"{role}.pem")
            key = key or str(Path(cert_dir) / f"{role}.key")
        missing = [n for n, v in (("CUSTOS_ADDR (--addr)", addrs), ("CUSTOS_CA (--ca)", ca),
                                  ("CUSTOS_CERT (--tls-cert)", cert), ("CUSTOS_KEY (--tls-key)", key)) if not v]
        if missing:
            raise InvalidInput(
                "not configured: " + ", ".join(missing)
                + " — run `custos server --dev --data-dir D` and `source D/dev.env`"
            )
        return cls(addr=addrs[0], ca=Path(str(ca)), cert=Path(str(cert)), key=Path(str(key)),
                   role=role, addrs=addrs)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: Path, what: str) -> bytes:
            try:
                return p.read_bytes()
            except OSError as exc:
                raise InvalidInput(f"cannot read {what} {p}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca, "CA certificate"),
            private_key=read(self.key, "client key"),
            certificate_chain=read(self.cert, "client certificate"),
        )

    def channel(self) -> grpc.Channel:
        """A channel to the control plane: a plain one for one address, a
        :class:`FailoverChannel` for several. Raises InvalidInput (unreadable files)."""
        creds = self.credentials()
        if len(self.addrs) == 1:
            return grpc.secure_channel(self.addr, creds, options=CHANNEL_OPTIONS)
        return FailoverChannel(self.addrs, creds)

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel to the first address (no failover)."""
        return grpc.aio.secure_channel(self.addr, self.credentials(), options=CHANNEL_OPTIONS)


def not_sent(exc: grpc.RpcError) -> bool:
    """Did a call fail before reaching any server (so repeating it elsewhere is safe)?"""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return code == grpc.StatusCode.UNAVAILABLE and any(m in details.lower() for m in _NOT_SENT)


class FailoverChannel(grpc.Channel):  # type: ignore[misc]  # grpc ships no type hints
    """One channel over several control-plane replicas, for unary calls.

    A call goes to the replica that answered last (at first, the first address). A
    replica that does not connect within ``connect_timeout`` — refused, unreachable,
    or silent — is passed over for the next, and so is one whose connection broke
    before the call was sent. A call that reached a replica is never repeated on
    another (it may have taken effect): its error is the caller's. Streaming calls
    go to the current replica without failover. ``tried`` names the addresses the
    last call went to.
    """

    def __init__(self, addrs: Sequence[str], credentials: grpc.ChannelCredentials, *,
                 options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        if not addrs:
            raise InvalidInput("no control-plane address")
        self.addrs = tuple(addrs)
        self.connect_timeout = connect_timeout
        self.current = 0
        self.tried: tuple[str, ...] = ()
        self._creds = credentials
        self._options = list(options)
        self._channels: dict[int, grpc.Channel] = {}
        self._connected: set[int] = set()
        self._lock = threading.Lock()

    @property
    def addr(self) -> str:
        return self.addrs[self.current]

    def _channel(self, i: int) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(i)
            if ch is None:
                ch = self._channels[i] = grpc.secure_channel(self.addrs[i], self._creds, options=self._options)
            return ch

    def _connects(self, ch: grpc.Channel, timeout: float) -> bool:
        """Does ``ch`` reach READY before it fails or ``timeout`` passes?"""
        seen: list[grpc.ChannelConnectivity] = []
        settled = threading.Event()
        final = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                 grpc.ChannelConnectivity.SHUTDOWN)

        def watch(state: grpc.ChannelConnectivity) -> None:
            if state in final and not settled.is_set():
                seen.append(state)
                settled.set()

        ch.subscribe(watch, try_to_connect=True)
        try:
            settled.wait(timeout)
        finally:
            ch.unsubscribe(watch)
        return seen[:1] == [grpc.ChannelConnectivity.READY]

    def invoke(self, call: Callable[[grpc.Channel], Any], timeout: float | None = None) -> Any:
        """Run ``call(channel)`` on the first replica that takes it (see the class).
        Raises the last replica's grpc.RpcError."""
        n = len(self.addrs)
        start = self.current
        tried: list[str] = []
        budget = self.connect_timeout if timeout is None else min(self.connect_timeout, timeout)
        for k in range(n):
            i = (start + k) % n
            last = k == n - 1
            ch = self._channel(i)
            tried.append(self.addrs[i])
            self.tried = tuple(tried)
            # The last candidate is called whatever its state: its error is the answer.
            if i not in self._connected and not last:
                if not self._connects(ch, budget):
                    continue
                self._connected.add(i)
            try:
                result = call(ch)
            except grpc.RpcError as exc:
                self._connected.discard(i)
                if not last and not_sent(exc):
                    continue
                raise
            self.current = i
            self._connected.add(i)
            return result
        raise AssertionError("unreachable: the last replica is always called")

    # - grpc.Channel -

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> grpc.UnaryUnaryMultiCallable:
        return _FailoverUnaryUnary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return lambda *a, **kw: self._channel(self.current).unary_stream(
            method, request_serializer, response_deserializer)(*a, **kw)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return lambda *a, **kw: self._channel(self.current).stream_unary(
            method, request_serializer, response_deserializer)(*a, **kw)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return lambda *a, **kw: self._channel(self.current).stream_stream(
            method, request_serializer, response_deserializer)(*a, **kw)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        self._channel(self.current).subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        for ch in list(self._channels.values()):
            ch.unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            ch.close()

    def __enter__(self) -> FailoverChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FailoverUnaryUnary(grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]  # grpc: untyped
    """A unary method on a :class:`FailoverChannel`."""

    def __init__(self, channel: FailoverChannel, method: str, serializer: Any, deserializer: Any) -> None:
        self._failover = channel
        self._method = method
        self._ser = serializer
        self._de = deserializer

    def _on(self, ch: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
        return ch.unary_unary(self._method, request_serializer=self._ser, response_deserializer=self._de)

    def __call__(self, request: Any, timeout: float | None = None, **kw: Any) -> Any:
        return self._failover.invoke(lambda ch: self._on(ch)(request, timeout=timeout, **kw), timeout)

    def with_call(self, request: Any, timeout: float | None = None, **kw: Any) -> Any:
        return self._failover.invoke(lambda ch: self._on(ch).with_call(request, timeout=timeout, **kw), timeout)

    def future(self, request: Any, timeout: float | None = None, **kw: Any) -> Any:
        return self._on(self._failover._channel(self._failover.current)).future(request, timeout=timeout, **kw)


def parse_dev_env(path: Path) -> dict[str, str]:
    """The ``export K=V`` lines of a dev server's dev.env (what `source D/dev.env` sets).
    Raises InvalidInput."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path} ({exc.strerror}): is `custos server --dev` running "
                           "with this --data-dir?") from None
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            try:
                env[k] = shlex.split(v)[0] if v else ""
            except (ValueError, IndexError):
                env[k] = ""
    return env
