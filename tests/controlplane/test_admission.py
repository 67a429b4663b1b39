"""Admission of custody-stream openings (custos.controlplane.admission).

The failure this prevents: after a restart, 10,000 agents reconnected at once; the replica
served every opening at the same time, so each took as long as the whole storm — longer than
the 15 s an agent waited for its lease — and every attempt was abandoned just before it would
have finished. No host had its lease back 300 s later. Now openings are let in a few at a
time in arrival order, the server says at once that it has the stream (the agent waits longer
for a lease then), and an opening that would wait too long is refused at once with a retry hint
the agent follows.

How an attacker (or a bug) would break it, and the test that says no:
- a place leaked by a cancelled waiter or a failed opening, until none are left: the model test
  cancels and fails openings at every point and checks every place comes back;
- an opening let in ahead of its turn, or more than ``at_once`` at a time: the model test;
- a refusal that still queued, wrote a lease or took the host's stream: the busy-replica test;
- an agent that ignores the hint and comes back in a wave: the agent test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import custos.agent.stream as stream_module
from custos.agent.stream import Backoff, Credentials, CustodyStream, first_message
from custos.client.status import RETRY_AFTER_KEY, STREAM_TAKEN_KEY, retry_after
from custos.controlplane.admission import Admission, Busy
from custos.core.hosts import cert_fingerprint
from custos.v1 import custody_pb2
from tests.servers.agentsim import enroll_fleet
from tests.servers.threadserver import ThreadServer

STREAM = "/custos.v1.Custody/Stream"


# -- the queue alone ----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


OPS = st.lists(st.one_of(st.just(("arrive", 0)), st.tuples(st.sampled_from(["finish", "fail", "cancel", "handoff"]),
                                                           st.integers(0, 30))), max_size=60)


@settings(max_examples=150, deadline=None)
@given(at_once=st.integers(1, 4), ops=OPS)
def test_openings_are_let_in_in_arrival_order_and_every_place_comes_back(at_once: int, ops: list[Any]) -> None:
    """A model of the queue: the openings holding a place are always the first ``at_once``
    still-alive arrivals, whatever finishes, fails or is cancelled (queued or holding)."""
    async def run() -> None:
        adm = Admission(at_once=at_once, max_wait_s=1e9)
        alive: list[tuple[int, asyncio.Task[None], asyncio.Event, list[str]]] = []
        holding: set[int] = set()
        n = 0

        async def opening(i: int, release: asyncio.Event, how: list[Any]) -> None:
            try:
                async with adm.opening():
                    holding.add(i)
                    try:
                        await release.wait()
                        if how[0] == "fail":
                            raise RuntimeError("the opening failed")
                    finally:
                        holding.discard(i)
            finally:
                if len(how) > 1:
                    how[1]()  # right after its place was handed on, before the next one runs

        for op, k in ops:
            if op == "arrive":
                ev, how = asyncio.Event(), ["finish"]
                alive.append((n, asyncio.create_task(opening(n, ev, how)), ev, how))
                n += 1
            elif alive:
                # a holder finishes or fails; any opening, queued or holding, may be cancelled
                _, task, ev, how = alive.pop(k % (len(alive) if op == "cancel" else min(at_once, len(alive))))
                nxt = None
                if op == "handoff" and len(alive) >= at_once:
                    # the next in line is handed the place and cancelled before it runs
                    _, nxt, _, _ = alive.pop(at_once - 1)
                    how.append(nxt.cancel)
                if op == "cancel":
                    task.cancel()
                else:
                    how[0] = "finish" if op == "handoff" else op
                    ev.set()
                for t in (task, nxt):
                    if t is not None:
                        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                            await t
            await _settle()
            want = {i for i, _, _, _ in alive[:at_once]}
            assert holding == want, (holding, want)
            assert adm.running == len(want) <= at_once
            assert adm.waiting == len(alive) - len(want)
        for _, task, ev, _ in alive:
            ev.set()
            await task
        assert (adm.running, adm.waiting) == (0, 0)

    asyncio.run(run())


@pytest.mark.parametrize(("running", "waiting", "finished_in_window", "refused", "hint"), [
    (0, 0, 0, False, 0.0),       # a place free: no wait
    (4, 0, 0, False, 0.02),      # all places taken, cold start: 1 ahead at the 50/s floor
    (4, 49, 0, False, 1.0),      # 50 ahead at 50/s: exactly the limit
    (4, 50, 0, True, 1.02),      # one more: refused, told to come back when they are through
    (4, 199, 1000, False, 1.0),  # 200/s finishing lately: 200 ahead is a second
    (4, 200, 1000, True, 1.005),
])
async def test_an_opening_that_would_wait_too_long_is_refused_with_its_wait_as_the_hint(
        running: int, waiting: int, finished_in_window: int, refused: bool, hint: float) -> None:
    clock = _Clock()
    adm = Admission(at_once=4, max_wait_s=1.0, window_s=5.0, min_rate=50.0, clock=clock)
    adm.running, adm.waiting = running, waiting
    adm._finished.extend([clock.now - 6.0] * 500)  # outside the window: not counted
    adm._finished.extend([clock.now - 1.0] * finished_in_window)
    assert adm.wait_estimate() == pytest.approx(hint)
    if not refused:
        return
    with pytest.raises(Busy) as err:
        async with adm.opening():
            raise AssertionError("let in")
    assert err.value.retry_after_s == pytest.approx(hint)
    assert (adm.running, adm.waiting, adm.refused) == (running, waiting, 1)  # nothing queued or held


def test_a_restarted_replica_measures_its_rate_over_the_time_it_has_served() -> None:
    """After a restart (or none for a window) the rate is openings finished over the time spent
    serving, not over the whole window: 200 openings served in the first second are 200/s, and
    a refusal then says 5 s for a queue of 1,000, not 25 s. Past the window, the window again."""
    clock = _Clock()
    adm = Admission(at_once=1, max_wait_s=1.0, window_s=5.0, min_rate=1.0, clock=clock)

    async def serve(n: int, every: float) -> None:
        for _ in range(n):
            async with adm.opening():
                clock.now += every

    asyncio.run(serve(200, 0.005))  # 200 in the first second
    assert adm.rate() == pytest.approx(200.0)
    adm.waiting = 1000
    assert adm.wait_estimate() == pytest.approx(1000 / 200.0)
    adm.waiting = 0
    asyncio.run(serve(200, 0.02))  # then 50/s for 4 s: 400 in 5 s of serving
    assert adm.rate() == pytest.approx(400 / 5.0)
    clock.now += 60.0  # idle for a minute, then a burst: measured over its own time again
    asyncio.run(serve(30, 0.01))
    assert adm.rate() == pytest.approx(30 / 1.0)


@pytest.mark.parametrize(("metadata", "want"), [
    (((RETRY_AFTER_KEY, "1500"),), 1.5),
    ((("other", "x"), (RETRY_AFTER_KEY, "20")), 0.02),
    (((RETRY_AFTER_KEY, "0"),), None),           # not a wait
    (((RETRY_AFTER_KEY, "-5"),), None),
    (((RETRY_AFTER_KEY, "600001"),), None),      # over ten minutes: not believed
    (((RETRY_AFTER_KEY, "soon"),), None),
    (((RETRY_AFTER_KEY, b"\xff"),), None),
    ((), None),
    (None, None),
])
def test_the_retry_hint_is_read_only_when_it_is_a_sane_wait(metadata: Any, want: float | None) -> None:
    assert retry_after(metadata) == want


def test_a_hint_spreads_the_next_attempt_over_hint_to_twice_the_hint_never_below_the_backoff() -> None:
    for seed in range(200):
        b = Backoff(base=0.5, cap=30.0)
        b._rng.seed(seed)
        assert 4.0 <= b.next(4.0) <= 8.0
        assert 0.5 <= b.next(None) <= 1.0  # attempt 2 of the backoff: unchanged by a hint before
        b.attempt = 10  # a long backoff already: the hint does not shorten it
        assert b.next(0.1) >= 15.0


# -- on a real control plane ----------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Any:
    ts = ThreadServer(tmp_path / "cp", lease_ttl=30.0).start()
    try:
        yield ts
    finally:
        ts.stop()


def _hosts(ts: ThreadServer, n: int, prefix: str) -> list[tuple[bytes, bytes]]:
    return asyncio.run(enroll_fleet(ts.dev.env, n, prefix=prefix))


def _channel(ts: ThreadServer, key: bytes, cert: bytes) -> grpc.aio.Channel:
    ca = Path(ts.dev.env["CUSTOS_CA"]).read_bytes()
    return grpc.aio.secure_channel(ts.dev.env["CUSTOS_ADDR"], grpc.ssl_channel_credentials(ca, key, cert))


def _open(ch: grpc.aio.Channel) -> Any:
    return ch.stream_stream(STREAM, request_serializer=custody_pb2.AgentMessage.SerializeToString,
                            response_deserializer=custody_pb2.ControlMessage.FromString)()


class _Held:
    """Every admission place of the server held by the test, until released."""

    def __init__(self, ts: ThreadServer) -> None:
        self.ts = ts
        self.release: asyncio.Event | None = None
        self.tasks: list[Any] = []

    def __enter__(self) -> _Held:
        adm = self.ts.cp.admission

        async def hold_all() -> None:
            self.release = asyncio.Event()
            entered = asyncio.Event()
            count = [0]

            async def one() -> None:
                async with adm.opening():
                    count[0] += 1
                    if count[0] == adm.at_once:
                        entered.set()
                    await self.release.wait()  # type: ignore[union-attr]

            self.tasks = [asyncio.create_task(one()) for _ in range(adm.at_once)]
            await entered.wait()

        self.ts.run(hold_all())
        return self

    def __exit__(self, *exc: object) -> None:
        async def go() -> None:
            assert self.release is not None
            self.release.set()
            await asyncio.gather(*self.tasks)

        self.ts.run(go())


def test_a_stream_is_taken_at_once_and_leased_when_its_turn_comes(server: ThreadServer) -> None:
    (key, cert), = _hosts(server, 1, "queued")
    server.cp.admission.at_once = 2

    async def client(held: _Held) -> None:
        ch = _channel(server, key, cert)
        try:
            call = _open(ch)
            md = await asyncio.wait_for(call.initial_metadata(), 10)
            assert (STREAM_TAKEN_KEY, "1") in tuple(md)  # taken: the agent will wait for the lease
            with pytest.raises(TimeoutError):  # queued behind the held places
                await asyncio.wait_for(asyncio.shield(read := asyncio.ensure_future(call.read())), 1.0)
            held.__exit__()
            first = await asyncio.wait_for(read, 10)
            assert first.WhichOneof("msg") == "lease"
            call.cancel()
        finally:
            await ch.close()

    held = _Held(server).__enter__()
    asyncio.run(client(held))
    _settled(server)


def _settled(server: ThreadServer) -> None:
    """Every admission place back (a cancelled stream's handler ends on the server's loop, soon)."""
    adm = server.cp.admission
    for _ in range(100):
        if (adm.running, adm.waiting) == (0, 0):
            break
        server.run(asyncio.sleep(0.05))
    assert (adm.running, adm.waiting) == (0, 0)


def test_a_busy_replica_refuses_with_a_retry_hint_and_changes_nothing(server: ThreadServer) -> None:
    (key, cert), = _hosts(server, 1, "refused")
    adm = server.cp.admission
    adm.at_once, adm.max_wait_s, adm.min_rate = 1, 0.5, 1.0  # one ahead at 1/s: a 1 s wait, over the limit

    async def client() -> tuple[grpc.StatusCode, str, float | None]:
        ch = _channel(server, key, cert)
        try:
            call = _open(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await first_message(call)
            return err.value.code(), err.value.details() or "", retry_after(err.value.trailing_metadata())
        finally:
            await ch.close()

    with _Held(server):
        code, details, hint = asyncio.run(client())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in details
        assert hint == pytest.approx(1.0, abs=0.01)
        assert adm.refused == 1 and adm.waiting == 0
        assert "refused-00000" not in server.cp.custody.streams
        lease = server.run(server.cp.store.get("leases/refused-00000"))
        assert lease is None  # the refused opening wrote no lease


def test_a_storm_of_openings_is_served_a_few_at_a_time_and_every_lease_comes(server: ThreadServer) -> None:
    """60 hosts open at once, 3 places; 10 of them give up while queued. The other 50 get their
    lease, never more than 3 openings renew at once, and every place comes back."""
    hosts = _hosts(server, 60, "storm")
    adm = server.cp.admission
    adm.at_once, adm.max_wait_s = 3, 1e9
    custody = server.cp.custody
    real_renew = custody.renew_lease
    now, most = [0], [0]

    async def counted(host: str) -> int | None:
        now[0] += 1
        most[0] = max(most[0], now[0])
        try:
            await asyncio.sleep(0.02)  # an opening that takes a while
            return await real_renew(host)
        finally:
            now[0] -= 1

    custody.renew_lease = counted  # type: ignore[method-assign]

    async def storm() -> list[str]:
        chans = [_channel(server, k, c) for k, c in hosts]
        try:
            calls = [_open(ch) for ch in chans]

            async def one(i: int) -> str:
                if i % 6 == 5:  # gives up once the server has taken it (queued)
                    await calls[i].initial_metadata()
                    calls[i].cancel()
                    return "gave up"
                first = await first_message(calls[i])
                return first.WhichOneof("msg")

            got = await asyncio.gather(*(one(i) for i in range(len(calls))))
            for c in calls:
                c.cancel()
            return list(got)
        finally:
            await asyncio.gather(*(ch.close() for ch in chans))

    try:
        got = asyncio.run(storm())
    finally:
        custody.renew_lease = real_renew  # type: ignore[method-assign]
    assert got.count("lease") == 50 and got.count("gave up") == 10
    assert most[0] <= 3
    _settled(server)


def _agent_stream(ts: ThreadServer, key: bytes, cert: bytes, *, addr: str = "", **kw: Any) -> CustodyStream:
    """The real agent's stream for an enrolled host of ``ts``: nothing to send first, and a
    removal fails the test."""
    ca = Path(ts.dev.env["CUSTOS_CA"]).read_bytes()
    creds = Credentials(ca_pem=ca, cert_pem=cert, key_pem=key, fingerprint=cert_fingerprint(cert))

    async def initial() -> list[custody_pb2.AgentMessage]:
        return []

    async def removed(reason: str) -> None:
        raise AssertionError(reason)

    return CustodyStream(addr=addr or ts.dev.env["CUSTOS_ADDR"], credentials=lambda: creds, initial_messages=initial,
                         on_lease=lambda g: None, on_removed=removed, **kw)


def test_the_agent_comes_back_after_the_hint_not_in_its_backoff(server: ThreadServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    (key, cert), = _hosts(server, 1, "agent")
    adm = server.cp.admission
    adm.at_once, adm.max_wait_s, adm.min_rate = 1, 0.5, 0.25  # one ahead at 0.25/s: told 4 s

    async def agent() -> None:
        stop = asyncio.Event()
        s = _agent_stream(server, key, cert, on_disconnected=lambda r: stop.set())
        task = asyncio.create_task(s.run(stop))
        await asyncio.wait_for(task, 20)

    with _Held(server), caplog.at_level(logging.WARNING, logger="custos.agent.stream"):
        asyncio.run(agent())
    downs = [r for r in caplog.records if r.getMessage().startswith("custody stream down")]
    assert downs, caplog.text
    fields = downs[0].fields  # type: ignore[attr-defined]
    assert "RESOURCE_EXHAUSTED" in fields["reason"] and "busy" in fields["reason"]
    assert 4.0 <= fields["retry_in_s"] <= 8.0  # the hint, spread; the backoff alone said <= 0.5 s


def _established_to(port: int) -> int:
    """This process's TCP connections to ``port`` that are still up."""
    return sum(1 for c in psutil.Process().net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


@pytest.mark.parametrize("how", ["refused", "never leased"])
def test_failed_attempts_leave_no_connection_open(server: ThreadServer, how: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every failed opening closes its connection when the agent tears it down: refused at once
    (busy), or taken and queued past the agent's wait for its lease. A refusal's AioRpcError and
    its call hold each other (the error's traceback's frames hold the call), so with the cyclic
    collector off until its next run each refused attempt used to keep its TCP connection (and
    the server's descriptor) open: a reconnect storm of 10,000 agents doubled the control
    plane's sockets to the descriptor limit. The timeout's path has no such cycle; it is here so
    that it keeps none."""
    (key, cert), = _hosts(server, 1, "agent")
    adm = server.cp.admission
    if how == "refused":
        adm.at_once, adm.max_wait_s, adm.min_rate = 1, 0.0001, 1000.0  # refused at once, come back in ms
    else:
        adm.at_once, adm.max_wait_s = 1, 3600.0  # queued behind the held place for good
        monkeypatch.setattr(stream_module, "QUEUED_LEASE_TIMEOUT", 0.1)
    port = int(server.dev.env["CUSTOS_ADDR"].rsplit(":", 1)[1])
    reasons: list[str] = []

    async def agent() -> int:
        stop = asyncio.Event()

        def down(reason: str) -> None:
            reasons.append(reason)
            if len(reasons) == 12:
                stop.set()

        s = _agent_stream(server, key, cert, on_disconnected=down, reconnect_base=0.02, reconnect_max=0.05)
        await asyncio.wait_for(s.run(stop), 30)
        await asyncio.sleep(0.5)  # the last teardown's socket closing
        return _established_to(port)

    gc.collect()
    gc.disable()  # what a busy agent's heap does between its rare full collections
    try:
        with _Held(server):
            left = asyncio.run(agent())
    finally:
        gc.enable()
    want = "RESOURCE_EXHAUSTED" if how == "refused" else "no lease in time"
    assert len(reasons) == 12 and all(want in r for r in reasons), reasons
    assert left == 0


def test_an_idle_connection_is_closed_and_a_stream_is_not(tmp_path: Path) -> None:
    """The replica's own bound on what leaked or parked connections cost it: one that carries no
    call for ``[server] idle_connection_s`` is closed; an agent's stream, however quiet, keeps its."""
    ts = ThreadServer(tmp_path / "cp", lease_ttl=30.0)
    ts.cfg.idle_connection_s = 1.0
    ts.start()
    try:
        (k1, c1), (k2, c2) = _hosts(ts, 2, "idle")
        port = int(ts.dev.env["CUSTOS_ADDR"].rsplit(":", 1)[1])

        async def run() -> tuple[int, int, str]:
            streaming, parked = _channel(ts, k1, c1), _channel(ts, k2, c2)
            try:
                call = _open(streaming)
                assert (await first_message(call)).WhichOneof("msg") == "lease"
                with contextlib.suppress(grpc.aio.AioRpcError):  # a finished call, then nothing
                    await parked.unary_unary("/custos.v1.Custody/ListHosts", request_serializer=None,
                                             response_deserializer=None)(b"", timeout=10)
                before = _established_to(port)
                await asyncio.sleep(3.0)  # three idle times, the stream silent all along
                after = _established_to(port)
                await call.write(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat()))
                answer = await asyncio.wait_for(call.read(), 10)
                call.cancel()
                return before, after, answer.WhichOneof("msg")
            finally:
                await asyncio.gather(streaming.close(), parked.close())

        before, after, answer = asyncio.run(run())
        assert (before, after, answer) == (2, 1, "lease")
    finally:
        ts.stop()


class _Relay:
    """A TCP relay on loopback in front of the control plane that holds each new connection
    ``delay`` s before passing its bytes on — the handshake of a replica in a reconnect storm,
    completed late — or (``delay=None``) for good: a replica that accepts and never answers."""

    def __init__(self, upstream: str, delay: float | None) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.port = int(port)
        self.delay = delay
        self.accepted = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            if self.delay is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.delay)  # type: ignore[arg-type]
            ur, uw = await asyncio.open_connection(self.host, self.port)
        except asyncio.CancelledError:
            writer.close()
            raise

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        for t in (asyncio.create_task(pipe(reader, uw)), asyncio.create_task(pipe(ur, writer))):
            self._tasks.add(t)


def _watched(ts: ThreadServer, key: bytes, cert: bytes, addr: str, reasons: list[str], n_down: int
             ) -> tuple[CustodyStream, asyncio.Event]:
    """The agent's stream to ``addr``, and an event set once it is leased or has gone down
    ``n_down`` times (each reason in ``reasons``)."""
    done = asyncio.Event()

    def down(reason: str) -> None:
        reasons.append(reason)
        if len(reasons) >= n_down:
            done.set()

    s = _agent_stream(ts, key, cert, addr=addr, on_connected=done.set, on_disconnected=down,
                      reconnect_base=0.02, reconnect_max=0.05)
    return s, done


async def _until(s: CustodyStream, done: asyncio.Event) -> None:
    """Run the agent's stream until ``done``."""
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    try:
        await done.wait()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_a_late_handshake_is_waited_for_not_abandoned(server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection set up late (a replica working through a storm's handshakes) is waited for,
    up to CONNECT_TIMEOUT, and the wait for the stream to be taken starts once it is up: the
    agent used to count the handshake into FIRST_LEASE_TIMEOUT, gave up on a handshake the
    server was about to finish and paid for another — each attempt of a 10,000-host storm."""
    (key, cert), = _hosts(server, 1, "agent")
    monkeypatch.setattr(stream_module, "FIRST_LEASE_TIMEOUT", 1.0)  # the handshake takes 2.5 s
    reasons: list[str] = []
    relay = _Relay(server.dev.env["CUSTOS_ADDR"], delay=2.5)

    async def agent() -> int:
        async with relay as addr:
            s, done = _watched(server, key, cert, addr, reasons, 3)
            await asyncio.wait_for(_until(s, done), 60)
            return s.connections

    assert asyncio.run(agent()) == 1 and not reasons, reasons
    assert relay.accepted == 1, "one connection, one handshake: no attempt abandoned"


def test_a_connection_that_never_comes_up_is_given_up_and_a_refused_one_at_once(
        server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The longer wait is for a connection under way only: one that never completes is given up
    after CONNECT_TIMEOUT (then the agent's backoff, and the next replica), and a refused one
    (nothing listening) fails the attempt at once with the reason — with CONNECT_TIMEOUT an hour
    the test would hang otherwise."""
    (key, cert), = _hosts(server, 1, "agent")
    reasons: list[str] = []

    async def hung() -> None:
        async with _Relay(server.dev.env["CUSTOS_ADDR"], delay=None) as addr:
            s, done = _watched(server, key, cert, addr, reasons, 2)
            await asyncio.wait_for(_until(s, done), 30)

    monkeypatch.setattr(stream_module, "CONNECT_TIMEOUT", 0.5)
    asyncio.run(hung())
    assert len(reasons) >= 2 and all("not connected within" in r for r in reasons), reasons

    refused: list[str] = []
    monkeypatch.setattr(stream_module, "CONNECT_TIMEOUT", 3600.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused

        async def nothing_there() -> None:
            s, done = _watched(server, key, cert, f"127.0.0.1:{port}", refused, 3)
            await asyncio.wait_for(_until(s, done), 30)

        asyncio.run(nothing_there())
    assert len(refused) >= 3 and all("UNAVAILABLE" in r for r in refused), refused
