"""HTTP probes for orchestrators: ``/healthz`` and ``/readyz`` on their own port.

The gRPC port asks every caller for a client certificate, which a kubelet or a
load balancer does not have, so liveness and readiness are answered here, without
authentication, on ``[server] probe_listen`` (off unless configured). gRPC health
stays on the mTLS port for clients that have a certificate.

    GET|HEAD /healthz   200 while this process's event loop answers (liveness)
    GET|HEAD /readyz    200 when every readiness check answers in time and the server
                        is not draining; 503 otherwise (readiness)
    other paths 404, other methods 405, a malformed or oversized request 400 / 431,
    a request head not sent within 5 s 408; one request per connection

Readiness checks the Store (a revision read) and the key provider: its
``health()`` or ``ready()`` if it has one, else a read of the state of one key
that never exists (Transit: ``GET transit/keys/<prefix>readyz-probe``, allowed by
the control plane's policy), which fails when Vault is down, sealed or the token
has expired. The blob store is not a readiness check: S3 being down stops pushes
and pulls on every replica alike, and taking every replica out of the load
balancer for it would also stop the halts that do not need it.

Unauthenticated, so the answers say little and cost little: the body names each
check and, when it failed, the error's class, never its message (the reason goes
to the log, once per change); a result is reused for ``min_interval`` seconds and
at most one evaluation runs at a time, so a flood of probes is not a flood on
etcd or Vault; a thread-backed check that is still stuck is reported, not run a
second time; at most ``max_connections`` connections are served at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from custos.errors import FailedPrecondition, InvalidInput

log = logging.getLogger("custos.probes")

PROBE_KEY = "readyz-probe"
"""The key whose state the fallback keys check reads; it is never created."""

MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0

Check = Callable[[], Awaitable[None]]
"""A readiness check: returns when its dependency answers, raises otherwise."""

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def parse_probe_listen(value: object) -> str:
    """``[server] probe_listen``: "" (off) or "HOST:PORT". Raises InvalidInput."""
    if value == "":
        return ""
    if not isinstance(value, str):
        raise InvalidInput("[server] probe_listen must be \"HOST:PORT\"")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"[server] probe_listen must be \"HOST:PORT\", got {value!r}")
    return value


class Unhealthy(FailedPrecondition):
    """A dependency's own health report says it cannot serve."""


def _check_hook_result(result: object) -> None:
    """Read what a provider's health()/ready() returned (None or truthy is healthy, a
    ``KeyHealth``-like ``ok``/``detail``); raise Unhealthy, with the detail, when not."""
    if result is None:
        return
    ok: object = result
    for attr in ("ok", "ready", "healthy"):
        if hasattr(result, attr):
            ok = getattr(result, attr)
            break
    else:
        if isinstance(result, Mapping):
            ok = result.get("ok", result.get("ready", True))
    if not ok:
        raise Unhealthy(str(getattr(result, "detail", "") or "the key provider reports it is not healthy"))


class _ThreadCheck:
    """Runs a blocking call in a thread; while an earlier call is still stuck, does not start another."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn
        self._running: asyncio.Future[object] | None = None

    async def __call__(self) -> object:
        if self._running is not None and not self._running.done():
            raise TimeoutError("the previous check has not returned")
        self._running = asyncio.ensure_future(asyncio.to_thread(self._fn))
        # Shielded: a timeout abandons the wait, not the thread's future we track.
        return await asyncio.shield(self._running)


def keys_check(keys: object) -> Check:
    """The readiness check of a key provider (see the module docstring)."""
    hook = getattr(keys, "health", None) or getattr(keys, "ready", None)
    if hook is not None and inspect.iscoroutinefunction(hook):

        async def async_hook() -> None:
            _check_hook_result(await hook())

        return async_hook
    call: Callable[[], object] = hook if hook is not None else (lambda: keys.state(PROBE_KEY))  # type: ignore[attr-defined]
    thread = _ThreadCheck(call)

    async def check() -> None:
        result = await thread()
        if hook is not None:
            _check_hook_result(result)

    return check


def store_check(store: Any) -> Check:
    """The readiness check of a Store: it answers a revision read."""

    async def check() -> None:
        await store.revision()

    return check


def readiness_checks(*, store: Any, keys: object) -> dict[str, Check]:
    """The control plane's readiness: the Store and the key provider."""
    return {"store": store_check(store), "keys": keys_check(keys)}


async def _discard(reader: asyncio.StreamReader, most: int = 8 * MAX_HEAD, within: float = 1.0) -> None:
    """Read what a refused client still sends (boundedly), so closing does not reset the
    connection before it has read the answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    with contextlib.suppress(Exception):
        while most > 0 and (left := deadline - loop.time()) > 0:
            chunk = await asyncio.wait_for(reader.read(min(most, 65536)), left)
            if not chunk:
                return
            most -= len(chunk)


class ProbeServer:
    """A tiny HTTP/1.1 responder for ``/healthz`` and ``/readyz``; ``start``, ``drain``, ``close``."""

    def __init__(self, listen: str, checks: Mapping[str, Check], *, timeout: float = 2.0,
                 min_interval: float = 1.0, max_connections: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listen = parse_probe_listen(listen)
        self.checks = dict(checks)
        self.timeout = timeout
        self.min_interval = min_interval
        self.max_connections = max_connections
        self.clock = clock
        self.port = 0
        self.draining = False
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._last: tuple[float, dict[str, str]] | None = None
        self._evaluating: asyncio.Task[dict[str, str]] | None = None
        self._last_ready: bool | None = None

    async def start(self) -> int:
        """Bind and serve. Raises InvalidInput if the address cannot be bound."""
        host, _, port = self.listen.rpartition(":")
        try:
            self._server = await asyncio.start_server(self._serve, host.strip("[]"), int(port), limit=MAX_HEAD)
        except OSError as exc:
            raise InvalidInput(f"[server] cannot listen on {self.listen} for probes: {exc.strerror}") from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("probes listening", extra={"fields": {"listen": self.listen, "port": self.port}})
        return self.port

    def drain(self) -> None:
        """From now on ``/readyz`` says 503: the server is shutting down."""
        self.draining = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        if self._evaluating is not None:
            self._evaluating.cancel()

    # -- readiness ---------------------------------------------------------------------

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """(ready, {check: "ok" | error class name}), reusing a result younger than min_interval."""
        if self.draining:
            return False, {"server": "draining"}
        now = self.clock()
        if self._last is not None and now - self._last[0] < self.min_interval:
            results = self._last[1]
        else:
            if self._evaluating is None or self._evaluating.done():
                self._evaluating = asyncio.ensure_future(self._evaluate())
            results = await asyncio.shield(self._evaluating)
        return all(v == "ok" for v in results.values()), results

    async def _evaluate(self) -> dict[str, str]:
        names = list(self.checks)
        outcomes = await asyncio.gather(*(self._run(self.checks[n]) for n in names))
        results = {n: kind for n, (kind, _) in zip(names, outcomes, strict=True)}
        self._last = (self.clock(), results)
        ready = all(kind == "ok" for kind, _ in outcomes)
        if ready != self._last_ready:
            self._last_ready = ready
            reasons = {n: why for n, (kind, why) in zip(names, outcomes, strict=True) if kind != "ok"}
            if ready:
                log.info("ready: every readiness check answers")
            else:
                log.warning("not ready", extra={"fields": {"failing": reasons}})
        return results

    async def _run(self, check: Check) -> tuple[str, str]:
        try:
            await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return "Timeout", f"no answer within {self.timeout} s"
        except Exception as exc:  # noqa: BLE001 - any failure of a dependency means not ready
            return type(exc).__name__, str(exc)[:300]
        return "ok", ""

    # -- HTTP ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            if self._connections > self.max_connections:
                await self._respond(writer, 503, {"error": "busy"}, head_only=False)
                return
            status, body, head_only = await self._handle(reader)
            if status:
                await self._respond(writer, status, body, head_only=head_only)
            if status in (400, 431):
                await _discard(reader)
        except Exception as exc:  # noqa: BLE001 - a probe connection must never take the server down
            log.debug("probe connection failed: %s", exc)
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any], bool]:
        """(status, JSON body, HEAD?) for one request; status 0 when the client left."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except TimeoutError:
            return 408, {"error": "request head not received in time"}, False
        except asyncio.LimitOverrunError:
            return 431, {"error": "request head too large"}, False
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0, {}, False
        try:
            method, target, version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return 400, {"error": "malformed request line"}, False
        if not version.startswith("HTTP/1.") or not target.startswith("/"):
            return 400, {"error": "malformed request line"}, False
        path = target.split("?", 1)[0]
        if path not in ("/healthz", "/readyz"):
            return 404, {"error": "not found: try /healthz or /readyz"}, False
        if method not in ("GET", "HEAD"):
            return 405, {"error": "only GET and HEAD"}, False
        head_only = method == "HEAD"
        if path == "/healthz":
            return 200, {"status": "ok"}, head_only
        ready, results = await self.readiness()
        return (200 if ready else 503), {"ready": ready, "checks": results}, head_only

    async def _respond(self, writer: asyncio.StreamWriter, status: int, body: dict[str, Any], *,
                       head_only: bool) -> None:
        payload = (json.dumps(body, sort_keys=True) + "\n").encode()
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Content-Type: application/json",
                 f"Content-Length: {len(payload)}", "Cache-Control: no-store", "Connection: close"]
        if status == 405:
            lines.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else payload))
        await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
