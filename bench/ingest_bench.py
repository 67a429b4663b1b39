#!/usr/bin/env python3
"""Control-plane ingestion of inventory reports from a simulated fleet of host agents.

Starts a real `custos server --dev` (SQLite store, or --store URL), registers
artifacts, enrolls N hosts through the API (AddHost + Enroll, a fresh key and
CSR each), opens N custody streams (one mTLS channel each, as real agents do),
then runs rounds in which every host at once sends a full inventory (FILES
records, MATCHING of them forming a complete copy of a registered artifact, the
rest unregistered weight files, one process holding a matched file) followed
by a heartbeat, as agents do; the report's ReportReceipt marks it as ingested (the heartbeat is
answered at once, whatever the report costs). Outside the rounds every host heartbeats every
--heartbeat s, as agents do (a lease lapses otherwise).

Prints, per round: reports/s (N / time from the first send to the last
answer) against the goal of 2,000 reports/s, and the time-to-ingest of one
report (p50 / p99 / max). Round 1 is first contact (every copy and alert is
new); later rounds are the steady state (the same reports again).

    python bench/ingest_bench.py [--hosts 1000] [--files 20] [--matching 5] [--rounds 3] [--store URL | --etcd]
    python bench/ingest_bench.py --hosts 10000 --rounds 1 --restart   # the reconnect storm

Every host connects as the agent does: a new channel per attempt with the agent's channel
options, its wait for the connection (custos.agent.stream.connection: CONNECT_TIMEOUT for TCP, TLS
and HTTP/2, a refused or failed one not waited for), for the lease (first_message:
FIRST_LEASE_TIMEOUT for the control plane to take the stream once connected, QUEUED_LEASE_TIMEOUT
once it has), and its jittered
exponential backoff (from 0.5 s) between attempts, or a busy replica's retry hint; at the start
the hosts begin --connect-rate a second.

With --restart, after the rounds the control plane is stopped and started again on the same
data and port while every host reconnects, then sends a full report and a heartbeat. Prints:
restart -> every stream leased again, -> every report ingested, the attempts it took and the
failed ones by what failed once the server was up (a server busy with handshakes times some
out; the agent retries), CANCELLED among them (goal 0), and the alerts the storm raised and
the incidents holding one (goal 0: the same hosts with the same files).

A run in which a host is not leased within --connect-timeout, or a leased stream breaks,
prints that and no figures (exit status 1).

Client and server share this machine's cores: on a small machine the
simulated fleet's own CPU time is part of what is measured. To keep that part small, as
it is in a real fleet (each agent on its own host), each report is serialized once before
the rounds and the fleet (this process) runs at nice --fleet-nice (10) while the control
plane and its Store run at 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import hashlib
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from custos.agent.stream import CHANNEL_OPTIONS, Backoff, connection, first_message
from custos.client.status import retry_after
from custos.core.manifest import FileEntry, Manifest
from custos.v1 import custody_pb2, custody_pb2_grpc, incidents_pb2, incidents_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.servers.agentsim import enroll_fleet
from tests.servers.custos import DevServer
from tests.servers.etcd import EtcdServer
from tests.servers.ports import free_port

GOAL = 2000.0
STREAM = "/custos.v1.Custody/Stream"
ARTIFACTS = 10


def digest(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()


def artifact_manifest(k: int, files: int) -> Manifest:
    return Manifest.from_entries(FileEntry(path=f"model-{j:05d}.safetensors", size=(1 << 30) + j,
                                           sha256=digest("artifact", k, j)) for j in range(files))


def report(i: int, manifests: list[Manifest], files: int, matching: int) -> custody_pb2.Inventory:
    m = manifests[i % len(manifests)]
    root = f"/data/models/copy-{i % len(manifests)}"
    recs = [custody_pb2.FileRecord(path=f"{root}/{f.path}", size=f.size, sha256=f.sha256, form="plaintext")
            for f in m.files[:matching]]
    recs += [custody_pb2.FileRecord(path=f"/scratch/u{i}/ckpt-{j}.pt", size=4096 + j,
                                    sha256=digest("host", i, j), form="plaintext")
             for j in range(files - len(recs))]
    proc = custody_pb2.ProcessRecord(pid=1000 + i, user="svc", cmdline="python serve.py", how="mmap",
                                     paths=[recs[0].path])
    return custody_pb2.Inventory(full=True, files=recs, processes=[proc])


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def register_artifacts(server: DevServer, files: int) -> list[Manifest]:
    env = server.env
    certs = Path(env["CUSTOS_CERT_DIR"])
    ch = grpc.aio.secure_channel(env["CUSTOS_ADDR"], grpc.ssl_channel_credentials(
        Path(env["CUSTOS_CA"]).read_bytes(), (certs / "security-team.key").read_bytes(),
        (certs / "security-team.pem").read_bytes()))
    reg = registry_pb2_grpc.RegistryStub(ch)
    await reg.RegisterModel(registry_pb2.RegisterModelRequest(name="bench", training_flops=3e26), timeout=30)
    manifests = [artifact_manifest(k, files) for k in range(ARTIFACTS)]
    for m in manifests:
        await reg.RegisterArtifact(registry_pb2.RegisterArtifactRequest(model="bench", manifest=m.encode()),
                                   timeout=30)
    await ch.close()
    return manifests


def cpu_seconds(server: DevServer | RawServer | None) -> float:
    """User + system CPU seconds of the control plane's (or the raw server's) process (None:
    of this one)."""
    if server is None:
        t = os.times()
        return t.user + t.system
    assert server.proc is not None
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RawServer:
    """bench/ingest_raw.py on the dev server's TLS: the stack's limit (see its docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> RawServer:
        """Start the raw server (it says "serving" once it is; ``timeout``: as DevServer's, unused)."""
        tls = self.data_dir / "tls"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("ingest_raw.py")), "--listen", self.addr,
             "--ca", str(tls / "ca.pem"), "--cert", str(tls / "server.pem"), "--key", str(tls / "server.key")],
            stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"serving":
            raise RunFailed("the raw server did not start")
        renice(self.proc.pid, 0)  # started by the fleet's process: the control plane's priority
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


def renice(pid: int, value: int) -> None:
    """Every thread of process ``pid`` to nice ``value`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(tid), value)


class RunFailed(Exception):
    """The run cannot give figures (a stream broke, a host never got its lease back)."""


HEARTBEAT = custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat()).SerializeToString()


class Host:
    def __init__(self, i: int, addr: str, ca: bytes, key: bytes, cert: bytes) -> None:
        self.i = i
        self.addr = addr
        self.creds = grpc.ssl_channel_credentials(ca, key, cert)
        self.channel: grpc.aio.Channel | None = None
        self.call: Any = None
        self._beats: collections.deque[float] = collections.deque()  # heartbeats sent, not yet answered
        self.answered: list[float] = []  # seconds from a heartbeat to its lease, since last taken
        self.ttl = 0.0  # of the lease the stream opened with
        self.failed: list[tuple[bool, str]] = []  # the current connect's failed attempts
        self._write = asyncio.Lock()  # one write at a time on a call
        self._sent = 0  # reports sent on this stream
        self._receipts = 0  # their receipts read
        self._answered = asyncio.Event()
        self._broken: str | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, up: asyncio.Event, rng: random.Random, *, backoff_first: bool
                      ) -> tuple[float, int, list[tuple[bool, str]]]:
        """As the agent: a new channel (the agent's options) and stream per attempt, the agent's
        backoff between attempts (and before the first, after a break), until the first message
        is a lease. The stream sends bytes as they are (each report is serialized once, before
        the rounds: a real fleet serializes on its own CPUs). Returns when it was leased, the
        attempts, and each failed attempt's (was the server up when it began, what failed)."""
        await self.disconnect()
        backoff, attempts = Backoff(rng=rng), 0
        failed: list[tuple[bool, str]] = []
        self.failed = failed  # as it grows: the storm's progress report reads it
        hint: float | None = None
        while True:
            if backoff_first or attempts:
                await asyncio.sleep(backoff.next(hint))
            attempts += 1
            hint = None
            was_up = up.is_set()
            self.channel = grpc.aio.secure_channel(self.addr, self.creds, options=CHANNEL_OPTIONS)
            try:
                await connection(self.channel)
            except TimeoutError:
                failed.append((was_up, "not connected in time"))
                await self.channel.close()
                continue
            self.call = self.channel.stream_stream(
                STREAM, request_serializer=None, response_deserializer=custody_pb2.ControlMessage.FromString)()
            try:
                first = await first_message(self.call)
                if first is not grpc.aio.EOF and first.WhichOneof("msg") == "lease":
                    self._sent = self._receipts = 0
                    self._beats.clear()
                    self.ttl = float(first.lease.ttl_seconds)
                    self._broken = None
                    self._reader = asyncio.create_task(self._read())
                    return time.perf_counter(), attempts, failed
                failed.append((was_up, "no lease first"))
            except grpc.aio.AioRpcError as exc:
                hint = retry_after(exc.trailing_metadata())
                failed.append((was_up, exc.code().name + (" (busy: retry hint)" if hint else "")))
                exc.__traceback__ = None  # as the agent: it and its call would keep the connection open
            except TimeoutError as exc:
                failed.append((was_up, "no lease in time"))
                exc.__traceback__ = None  # (as above: its frames hold the cancelled call)
            await self.channel.close()

    async def _read(self) -> None:
        """Every message of the stream: report receipts counted."""
        try:
            while (msg := await self.call.read()) is not grpc.aio.EOF:
                kind = msg.WhichOneof("msg")
                if kind == "report":
                    self._receipts += 1
                    self._answered.set()
                elif kind == "lease" and self._beats:  # the answer to the oldest heartbeat
                    self.answered.append(time.perf_counter() - self._beats.popleft())
            self._broken = f"stream ended: {await self.call.details()}"
        except grpc.aio.AioRpcError as exc:
            self._broken = f"a leased stream broke: {exc.code().name} {exc.details()}"
            exc.__traceback__ = None  # (see connect)
        self._answered.set()

    async def send(self, data: bytes, *, report: bool = False) -> None:
        async with self._write:
            if data is HEARTBEAT:
                self._beats.append(time.perf_counter())
            await self.call.write(data)
            if report:
                self._sent += 1

    async def heartbeat(self) -> None:
        """What the agent does every heartbeat interval, in a round too (its heartbeats run on a
        task of their own); a failure is the reader's to see."""
        if self._reader is not None and not self._reader.done():
            try:
                await self.send(HEARTBEAT)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError):
                pass
            except asyncio.CancelledError:
                # A write on a call cancelled meanwhile (the host reconnecting) raises this too.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise

    async def round(self, inv: bytes, start: asyncio.Event) -> tuple[float, float]:
        """A full report then a heartbeat; done when the report's receipt came."""
        await start.wait()
        t0 = time.perf_counter()
        try:
            await self.send(inv, report=True)
            await self.send(HEARTBEAT)
        except grpc.aio.AioRpcError as exc:
            raise RunFailed(f"host {self.i}: a leased stream broke: {exc.code().name}") from None
        target = self._sent
        while self._receipts < target:
            if self._broken is not None:
                raise RunFailed(f"host {self.i}: {self._broken}")
            self._answered.clear()
            await self._answered.wait()
        return t0, time.perf_counter()

    async def disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    async def close(self) -> None:
        if self.channel is not None and self._broken is None:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
                await self.call.done_writing()
        await self.disconnect()


def beats_answered(hosts: list[Host], interval: float) -> str:
    """The heartbeats answered since last asked: how long their leases took against the slack an
    agent has (a lease renewed later than TTL - interval after the last one has lapsed)."""
    took = [t for h in hosts for t in h.answered]
    ttl = max(h.ttl for h in hosts)
    for h in hosts:
        h.answered.clear()
    unanswered = sum(len(h._beats) for h in hosts)
    if not took:
        return f"heartbeats answered: none ({unanswered} waiting)"
    return (f"heartbeats answered: {len(took)}, lease back p50 {statistics.median(took) * 1e3:.0f} ms, "
            f"p99 {pct(took, 0.99) * 1e3:.0f} ms, max {max(took) * 1e3:.0f} ms (slack {ttl - interval:.0f} s); "
            f"{unanswered} waiting")


async def heartbeats(hosts: list[Host], interval: float, stop: asyncio.Event) -> None:
    """The fleet's heartbeats, every ``interval`` s per host, spread over the interval (agents
    start at different times); a host in a round sends its own."""
    while not stop.is_set():
        for i in range(0, len(hosts), 100):
            await asyncio.gather(*(h.heartbeat() for h in hosts[i:i + 100]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval * 100 / len(hosts))
            if stop.is_set():
                return


async def counts(server: DevServer) -> tuple[dict[str, str], dict[str, tuple[str, set[str]]]]:
    """The alerts (id -> rule) and the open incidents (id -> (what, their alerts' ids)), as the
    security team sees them."""
    env = server.env
    certs = Path(env["CUSTOS_CERT_DIR"])
    ch = grpc.aio.secure_channel(env["CUSTOS_ADDR"], grpc.ssl_channel_credentials(
        Path(env["CUSTOS_CA"]).read_bytes(), (certs / "security-team.key").read_bytes(),
        (certs / "security-team.pem").read_bytes()),
        options=[("grpc.max_receive_message_length", 1 << 30)])  # 15 alerts a host: 30 MB at 10,000
    try:
        alerts = await custody_pb2_grpc.AlertsStub(ch).ListAlerts(custody_pb2.ListAlertsRequest(), timeout=60)
        incidents = await incidents_pb2_grpc.IncidentsStub(ch).ListIncidents(
            incidents_pb2.ListIncidentsRequest(), timeout=60)
        return ({a.id: a.rule for a in alerts.alerts},
                {i.id: (f"{i.category_title[:60]} ({i.severity}; rules {', '.join(sorted({a.rule for a in i.alerts}))})",
                        {a.id for a in i.alerts}) for i in incidents.incidents})
    finally:
        await ch.close()


def attempts_summary(done: list[tuple[float, int, list[tuple[bool, str]]]], after_up: bool) -> str:
    """Attempts per host and the failed ones by what failed (only those begun once the server
    was up, if ``after_up``)."""
    attempts = [a for _, a, _ in done]
    failed = [code for _, _, f in done for was_up, code in f if was_up or not after_up]
    by = ", ".join(f"{c} {failed.count(c)}" for c in sorted(set(failed))) or "none"
    return (f"attempts per host p50 {statistics.median(attempts):.0f}, max {max(attempts)}; failed attempts"
            f"{' once it was up' if after_up else ''}: {by}")


async def gathered(tasks: list[asyncio.Task[Any]], limit: float, what: str) -> list[Any]:
    """The tasks' results; RunFailed if some host could not ``what`` within ``limit`` s."""
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for t in pending:
        t.cancel()
    if pending:
        raise RunFailed(f"{len(pending)} of {len(tasks)} hosts did not {what} within {limit:.0f} s")
    return [t.result() for t in tasks]


async def open_streams(hosts: list[Host], ns: argparse.Namespace, what: str) -> None:
    """Every host opens its stream, ``ns.connect_rate`` a second, as the agent does."""
    t = time.perf_counter()
    up, rng, opening = asyncio.Event(), random.Random(0), []
    up.set()
    for i in range(0, len(hosts), 50):  # paced: a fleet's hosts never all handshake in one millisecond
        opening += [asyncio.create_task(h.connect(up, random.Random(rng.random()), backoff_first=False))
                    for h in hosts[i:i + 50]]
        if ns.connect_rate > 0:
            await asyncio.sleep(50 / ns.connect_rate)
    done = await gathered(opening, ns.connect_timeout, "open its stream")
    print(f"  opened {len(hosts)} {what:<21}: {time.perf_counter() - t:6.2f} s "
          f"({f'{ns.connect_rate:.0f} a second' if ns.connect_rate > 0 else 'all at once'}; "
          f"{attempts_summary(done, False)})")


async def timed_round(hosts: list[Host], reports: list[bytes], server: DevServer | RawServer, label: str,
                      ns: argparse.Namespace) -> float:
    """Every host sends its report and a heartbeat at once; prints and returns reports/s."""
    cpu0 = cpu_seconds(server), cpu_seconds(None)
    start = asyncio.Event()
    tasks = [asyncio.create_task(h.round(reports[h.i], start)) for h in hosts]
    await asyncio.sleep(0)
    start.set()
    spans = await asyncio.gather(*tasks)
    cpu = cpu_seconds(server) - cpu0[0], cpu_seconds(None) - cpu0[1]
    first = min(s for s, _ in spans)
    last = max(e for _, e in spans)
    lat = [e - s for s, e in spans]
    rate = len(hosts) / (last - first)
    print(f"  {label:31}: {rate:8.0f} reports/s  ratio {rate / GOAL:.2f} "
          f"(goal >= {GOAL:.0f}/s); fleet ingested in {last - first:5.2f} s; one report "
          f"p50 {statistics.median(lat) * 1e3:.0f} ms, p99 {pct(lat, 0.99) * 1e3:.0f} ms, "
          f"max {max(lat) * 1e3:.0f} ms; CPU per report: server {cpu[0] / len(hosts) * 1e6:.0f} µs, "
          f"fleet {cpu[1] / len(hosts) * 1e6:.0f} µs")
    print(f"    {beats_answered(hosts, ns.heartbeat)}")
    return rate


async def collect_garbage(every: float, stop: asyncio.Event, pauses: list[float]) -> None:
    """Full collections every ``every`` s until ``stop``. A real agent is a small process whose
    collector runs often; this one process plays 10,000 of them, its heap is large and its full
    collections rare, and a failed attempt's reference cycles inside gRPC (an error's traceback
    and its call; the agent drops the one it knows of) would keep the attempt's connection and
    TLS state until then: 24 GB and both sides' descriptors in one 10,000-host storm."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        t = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - t)


async def storm_progress(hosts: list[Host], back: list[asyncio.Task[Any]], t_up: float) -> None:
    """Every 10 s of a reconnect storm: how many are leased, the failed attempts so far by what
    failed, and this process's memory — a run that does not finish still says how far it got."""
    while True:
        await asyncio.sleep(10)
        failed = [code for h in hosts for _, code in h.failed]
        by = ", ".join(f"{c} {failed.count(c)}" for c in sorted(set(failed))) or "none"
        rss = next(int(line.split()[1]) // 1024 for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        print(f"    {time.perf_counter() - t_up:5.0f} s after up: leased {sum(t.done() for t in back)} of "
              f"{len(back)}; failed attempts {by}; the fleet's RSS {rss} MiB", flush=True)


async def reconnect_storm(server: DevServer | RawServer, hosts: list[Host], reports: list[bytes], limit: float
                          ) -> tuple[float, float, float, float, list[Any], list[float]]:
    """Stop ``server``, start it again, let every host reconnect and send its report. Returns
    when it was stopped and up again, when the last stream was leased and the last report's
    receipt came, each host's (leased at, attempts, failed attempts) and the fleet's pauses."""
    gc.collect()
    gc.freeze()  # what the fleet holds now is no garbage: the storm's collections skip it
    collected = asyncio.Event()
    pauses: list[float] = []
    collector = asyncio.create_task(collect_garbage(2.0, collected, pauses))
    up = asyncio.Event()
    rng = random.Random(1)
    t_stop = time.perf_counter()
    await asyncio.to_thread(server.stop)
    back = [asyncio.create_task(h.connect(up, random.Random(rng.random()), backoff_first=True)) for h in hosts]
    await asyncio.to_thread(server.start, 120)
    assert server.proc is not None
    renice(server.proc.pid, 0)  # started by the fleet's process: back to the control plane's priority
    t_up = time.perf_counter()
    up.set()
    progress = asyncio.create_task(storm_progress(hosts, back, t_up))
    try:
        done = await gathered(back, limit, "reconnect")
    finally:
        progress.cancel()
    leased = max(t for t, _, _ in done)
    start = asyncio.Event()
    start.set()
    spans = await asyncio.gather(*[h.round(reports[h.i], start) for h in hosts])
    reported = max(e for _, e in spans)
    collected.set()
    await collector
    return t_stop, t_up, leased, reported, done, pauses


async def restart_storm(server: DevServer, hosts: list[Host], reports: list[bytes], limit: float,
                        heartbeat: float, raw: float | None) -> None:
    """Stop the control plane, start it again, and let every host reconnect and report."""
    alerts0, _ = await counts(server)
    t_stop, t_up, leased, reported, done, pauses = await reconnect_storm(server, hosts, reports, limit)
    cancelled = sum(code == "CANCELLED" for _, _, failed in done for was_up, code in failed if was_up)
    alerts1, incidents1 = await counts(server)
    # An incident the storm caused holds an alert raised during it; the rounds' own alerts may
    # still be joining incidents meanwhile (the rules' correlation runs on its own period).
    caused = {i: what for i, (what, ids) in incidents1.items() if ids - alerts0.keys()}
    lapsed = sum(rule == "lease-lapsed" for a, rule in alerts1.items() if a not in alerts0)
    print(f"  restart ({len(hosts)} hosts reconnect)   : server down and up again in {t_up - t_stop:5.2f} s; "
          f"every stream leased {leased - t_up:5.2f} s after it was up, every report ingested "
          f"{reported - t_up:5.2f} s after; {attempts_summary(done, True)}; cancelled {cancelled} (goal 0); "
          f"new alerts {len(alerts1.keys() - alerts0.keys())} ({lapsed} leases lapsed), incidents holding one "
          f"{len(caused)} (goal 0)")
    print(f"    {beats_answered(hosts, heartbeat)}; the fleet's collections during it: {len(pauses)}, "
          f"longest {max(pauses, default=0) * 1e3:.0f} ms")
    if raw is not None:
        print(f"    against the raw server's storm (same fleet, same run): every stream leased "
              f"{(leased - t_up) / raw:.2f}x its time")
    for i, what in sorted(caused.items()):
        print(f"    incident {i[:12]}: {what}")


async def run(ns: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8 * ns.hosts + 1024  # a channel may hold more than one descriptor, and a retry opens another
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))  # the server inherits it
    except (ValueError, PermissionError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, want)), hard))
    data = Path(ns.dir) if ns.dir else Path(tempfile.mkdtemp(prefix="custos-ingest-bench-"))
    etcd = None
    if ns.etcd:
        (data / "etcd").mkdir(parents=True, exist_ok=True)
        etcd = EtcdServer(str(data / "etcd"))
        etcd.start()
        ns.store = f"etcd://{etcd.endpoint}/bench"
    server = DevServer(data / "cp", store=ns.store,
                       extra=["--config", ns.server_config] if ns.server_config else None).start()
    renice(os.getpid(), ns.fleet_nice)  # the fleet below the control plane (see the module's doc)
    try:
        print(f"{ns.hosts} simulated agents, {ns.files} files per report ({ns.matching} of a registered "
              f"artifact), store {ns.store or 'sqlite (dev)'}, {os.cpu_count()} cores, fleet at nice {ns.fleet_nice}")
        manifests = await register_artifacts(server, ns.matching)
        t = time.perf_counter()
        ids = await enroll_fleet(server.env, ns.hosts, prefix="bench")
        print(f"  enrolled {ns.hosts} hosts through the API    : {time.perf_counter() - t:6.2f} s "
              f"({ns.hosts / (time.perf_counter() - t):.0f} hosts/s)")
        ca = Path(server.env["CUSTOS_CA"]).read_bytes()
        reports = [custody_pb2.AgentMessage(inventory=report(i, manifests, ns.files, ns.matching)).SerializeToString()
                   for i in range(ns.hosts)]
        raw_rates: list[float] = []
        raw_storm: float | None = None
        if ns.raw_rounds:
            # The stack's limit first, on streams of its own (closed before Custos's open: one
            # connection a host at a time), the same reports, heartbeats and pacing.
            raw = RawServer(data / "cp").start()
            try:
                rhosts = [Host(i, raw.addr, ca, k, c) for i, (k, c) in enumerate(ids)]
                rstop = asyncio.Event()
                rbeats = asyncio.create_task(heartbeats(rhosts, ns.heartbeat, rstop))
                await open_streams(rhosts, ns, "raw streams")
                for r in range(1, ns.raw_rounds + 1):
                    raw_rates.append(await timed_round(rhosts, reports, raw, f"raw round {r}", ns))
                if ns.restart:
                    # The stack's own limit for the storm: the raw server restarted under the
                    # same fleet, every host reconnecting at once as below.
                    _, r_up, r_leased, r_reported, r_done, _ = await reconnect_storm(
                        raw, rhosts, reports, ns.connect_timeout)
                    raw_storm = r_leased - r_up
                    print(f"  raw restart ({len(rhosts)} hosts reconnect): every stream leased {raw_storm:5.2f} s "
                          f"after it was up, every report answered {r_reported - r_up:5.2f} s after; "
                          f"{attempts_summary(r_done, True)}")
                rstop.set()
                await rbeats
                await asyncio.gather(*[h.close() for h in rhosts])
            finally:
                raw.stop()
            print(f"  raw limit (the stack alone)     : {statistics.median(raw_rates):8.0f} reports/s "
                  f"(median of {[round(x) for x in raw_rates]})")
        hosts = [Host(i, server.env["CUSTOS_ADDR"], ca, k, c) for i, (k, c) in enumerate(ids)]
        stop_beats = asyncio.Event()
        beats = asyncio.create_task(heartbeats(hosts, ns.heartbeat, stop_beats))  # as each host is leased
        await open_streams(hosts, ns, "custody streams")
        if ns.idle:
            await asyncio.sleep(ns.idle)  # the fleet idles, heartbeating
        print(f"  while opening and idle: {beats_answered(hosts, ns.heartbeat)}")
        rates = []
        for r in range(1, ns.rounds + 1):
            label = f"round {r} ({'first contact' if r == 1 else 'steady state'})"
            rates.append(await timed_round(hosts, reports, server, label, ns))
        if raw_rates:
            limit = statistics.median(raw_rates)
            steady = f"steady {statistics.median(rates[1:]) / limit:.2f}" if len(rates) > 1 else "no steady round"
            print(f"  Custos against the raw limit    : first contact {rates[0] / limit:.2f}, {steady} "
                  f"(reports/s over the raw limit's, this run)")
        alerts, _ = await counts(server)
        lapsed = sum(rule == "lease-lapsed" for rule in alerts.values())
        print(f"  leases lapsed during the rounds            : {lapsed} (goal 0)")
        if ns.restart:
            await restart_storm(server, hosts, reports, ns.connect_timeout, ns.heartbeat, raw_storm)
        stop_beats.set()
        await beats
        await asyncio.gather(*[h.close() for h in hosts])
    finally:
        server.stop()
        if etcd is not None:
            etcd.stop()
        if not ns.dir:
            shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--files", type=int, default=20, help="files per report")
    ap.add_argument("--matching", type=int, default=5, help="of them, a complete copy of a registered artifact")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--raw-rounds", type=int, default=3,
                    help="rounds against the raw server first (bench/ingest_raw.py: the stack's limit; 0: none)")
    ap.add_argument("--store", help="store URL for the control plane (default: the dev SQLite file)")
    ap.add_argument("--etcd", action="store_true", help="start a real etcd and use it as the store")
    ap.add_argument("--dir", help="keep the control plane's data here")
    ap.add_argument("--connect-rate", type=float, default=1000,
                    help="new streams a second at the start (default 1000; 0: all at once)")
    ap.add_argument("--connect-timeout", type=float, default=300,
                    help="how long every host may take to get its stream leased (default 300 s)")
    ap.add_argument("--heartbeat", type=float, default=10,
                    help="each host's heartbeat interval outside the rounds (default 10 s: the agent's, a third of "
                         "the 30 s lease)")
    ap.add_argument("--idle", type=float, default=0, help="seconds the fleet idles (heartbeating) before round 1")
    ap.add_argument("--fleet-nice", type=int, default=10, help="nice value of the simulated fleet (default 10)")
    ap.add_argument("--restart", action="store_true", help="then restart the control plane: the reconnect storm")
    ap.add_argument("--server-config", default="", help="a TOML config file for the control plane (e.g. [server])")
    ns = ap.parse_args()
    if not 1 <= ns.matching <= ns.files:
        ap.error("want 1 <= --matching <= --files")
    try:
        asyncio.run(run(ns))
    except RunFailed as exc:
        sys.exit(f"run failed, no figures: {exc}")
    except grpc.aio.AioRpcError as exc:
        sys.exit(f"run failed, no figures: {exc.code().name}: {exc.details()}")


if __name__ == "__main__":
    main()
