#!/usr/bin/env python3
"""Control-plane ingestion of inventory reports from a simulated fleet of host agents.

Starts a real `custos server --dev` (SQLite store, or --store URL), registers
artifacts, enrolls N hosts through the API (AddHost + Enroll, a fresh key and
CSR each), opens N custody streams (one mTLS channel each, as real agents do),
then runs rounds in which every host at once sends a full inventory (FILES
records, MATCHING of them forming a complete copy of a registered artifact, the
rest unregistered weight files, one process holding a matched file) followed
by a heartbeat. The control plane handles a stream's messages in order, so the
lease answering that heartbeat marks the report as ingested.

Prints, per round: reports/s (N / time from the first send to the last
answer) against the goal of 2,000 reports/s, and the time-to-ingest of one
report (p50 / p99 / max). Round 1 is first contact (every copy and alert is
new); later rounds are the steady state (the same reports again).

    python bench/ingest_bench.py [--hosts 1000] [--files 20] [--matching 5] [--rounds 3] [--store URL | --etcd]

Client and server share this machine's cores: on a small machine the
simulated fleet's own CPU time is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from custos.core.manifest import FileEntry, Manifest
from custos.v1 import custody_pb2, custody_pb2_grpc, registry_pb2, registry_pb2_grpc
from tests.servers.agentsim import enroll_fleet
from tests.servers.custos import DevServer
from tests.servers.etcd import EtcdServer

GOAL = 2000.0
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


class Host:
    def __init__(self, i: int, addr: str, ca: bytes, key: bytes, cert: bytes) -> None:
        self.i = i
        self.channel = grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(ca, key, cert))
        self.call = custody_pb2_grpc.CustodyStub(self.channel).Stream()

    async def open(self) -> None:
        first = await self.call.read()
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "lease":
            raise RuntimeError(f"host {self.i}: no lease on opening the stream")

    async def round(self, inv: custody_pb2.Inventory, start: asyncio.Event) -> tuple[float, float]:
        await start.wait()
        t0 = time.perf_counter()
        await self.call.write(custody_pb2.AgentMessage(inventory=inv))
        await self.call.write(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat(sent_unix_ns=time.time_ns())))
        while True:
            msg = await self.call.read()
            if msg is grpc.aio.EOF:
                raise RuntimeError(f"host {self.i}: stream ended: {await self.call.details()}")
            if msg.WhichOneof("msg") == "lease":
                return t0, time.perf_counter()

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


async def run(ns: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * ns.hosts + 1024)), hard))
    data = Path(ns.dir) if ns.dir else Path(tempfile.mkdtemp(prefix="custos-ingest-bench-"))
    etcd = None
    if ns.etcd:
        (data / "etcd").mkdir(parents=True, exist_ok=True)
        etcd = EtcdServer(str(data / "etcd"))
        etcd.start()
        ns.store = f"etcd://{etcd.endpoint}/bench"
    server = DevServer(data / "cp", store=ns.store).start()
    try:
        print(f"{ns.hosts} simulated agents, {ns.files} files per report ({ns.matching} of a registered "
              f"artifact), store {ns.store or 'sqlite (dev)'}, {os.cpu_count()} cores")
        manifests = await register_artifacts(server, ns.matching)
        t = time.perf_counter()
        ids = await enroll_fleet(server.env, ns.hosts, prefix="bench")
        print(f"  enrolled {ns.hosts} hosts through the API    : {time.perf_counter() - t:6.2f} s "
              f"({ns.hosts / (time.perf_counter() - t):.0f} hosts/s)")
        ca = Path(server.env["CUSTOS_CA"]).read_bytes()
        hosts = [Host(i, server.env["CUSTOS_ADDR"], ca, k, c) for i, (k, c) in enumerate(ids)]
        t = time.perf_counter()
        await asyncio.gather(*[h.open() for h in hosts])
        print(f"  opened {ns.hosts} custody streams            : {time.perf_counter() - t:6.2f} s")
        reports = [report(h.i, manifests, ns.files, ns.matching) for h in hosts]
        for r in range(1, ns.rounds + 1):
            start = asyncio.Event()
            tasks = [asyncio.create_task(h.round(reports[h.i], start)) for h in hosts]
            await asyncio.sleep(0)
            start.set()
            spans = await asyncio.gather(*tasks)
            first = min(s for s, _ in spans)
            last = max(e for _, e in spans)
            lat = [e - s for s, e in spans]
            rate = ns.hosts / (last - first)
            label = "first contact" if r == 1 else "steady state"
            print(f"  round {r} ({label:13}): {rate:8.0f} reports/s  ratio {rate / GOAL:.2f} "
                  f"(goal >= {GOAL:.0f}/s); fleet ingested in {last - first:5.2f} s; one report "
                  f"p50 {statistics.median(lat) * 1e3:.0f} ms, p99 {pct(lat, 0.99) * 1e3:.0f} ms, "
                  f"max {max(lat) * 1e3:.0f} ms")
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
    ap.add_argument("--store", help="store URL for the control plane (default: the dev SQLite file)")
    ap.add_argument("--etcd", action="store_true", help="start a real etcd and use it as the store")
    ap.add_argument("--dir", help="keep the control plane's data here")
    ns = ap.parse_args()
    if not 1 <= ns.matching <= ns.files:
        ap.error("want 1 <= --matching <= --files")
    asyncio.run(run(ns))


if __name__ == "__main__":
    main()
