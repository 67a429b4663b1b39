#!/usr/bin/env python3
"""Full-shutdown latency with many simulated agents, against a real control plane.

Starts `custos server --dev` (its own process), enrolls N hosts through the real
enrollment listener, opens one real custody stream per host (mTLS with each
host's own certificate), then has a 3-of-5 quorum sign a halt. Each simulated
agent verifies the order itself with the pure verifier against the signer set
it pinned at enrollment (as the real agent does) and acks. Prints:

- time from quorum to the last ack (goal: <= 1 s for 1,000 agents, <= 5 s for 10,000),
  with p50 / p99;
- time from quorum to the first refused unwrap (goal <= 100 ms).

    python bench/shutdown_bench.py --agents 1000 [--agents 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from custos.client.signerkeys import load_private_key  # noqa: E402
from custos.core.orders import ExecutedOrders, verify_order  # noqa: E402
from custos.core.reports import percentile  # noqa: E402
from custos.core.signers import Signature, SignerSet  # noqa: E402
from custos.v1 import custody_pb2, custody_pb2_grpc, keys_pb2, keys_pb2_grpc, orders_pb2, orders_pb2_grpc  # noqa: E402
from tests.servers.custos import DevServer  # noqa: E402


def creds(env: dict[str, str], role: str) -> grpc.ChannelCredentials:
    d = Path(env["CUSTOS_CERT_DIR"])
    return grpc.ssl_channel_credentials(Path(env["CUSTOS_CA"]).read_bytes(), (d / f"{role}.key").read_bytes(),
                                        (d / f"{role}.pem").read_bytes())


async def enroll_all(env: dict[str, str], n: int) -> list[tuple[str, bytes, bytes, bytes]]:
    ca = Path(env["CUSTOS_CA"]).read_bytes()
    key = ec.generate_private_key(ec.SECP256R1())  # one key pair for all simulated hosts: certs differ
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    admin = grpc.aio.secure_channel(env["CUSTOS_ADDR"], creds(env, "security-team"))
    enr = grpc.aio.secure_channel(env["CUSTOS_ENROLL_ADDR"], grpc.ssl_channel_credentials(ca))
    custody = custody_pb2_grpc.CustodyStub(admin)
    enrollment = custody_pb2_grpc.EnrollmentStub(enr)
    sem = asyncio.Semaphore(64)
    out: list[tuple[str, bytes, bytes, bytes]] = []

    async def one(i: int) -> None:
        name = f"sim-{i:05d}"
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .sign(key, hashes.SHA256()))
        async with sem:
            tok = await custody.AddHost(custody_pb2.AddHostRequest(name=name), timeout=120)
            resp = await enrollment.Enroll(custody_pb2.EnrollRequest(
                name=name, token=tok.enrollment_token, csr_pem=csr.public_bytes(serialization.Encoding.PEM)),
                timeout=120)
        out.append((name, resp.certificate_pem, key_pem, resp.signer_set))

    await asyncio.gather(*[one(i) for i in range(n)])
    await admin.close()
    await enr.close()
    return out


async def run(n: int, workdir: Path) -> dict[str, float]:
    cfg = workdir / "cp.toml"
    cfg.write_text("[custody]\nlease_ttl = 600\nsweep_interval = 0.2\n")
    srv = DevServer(workdir / "cp", extra=["--config", str(cfg), "--log-level", "warning"]).start(timeout=60)
    try:
        env = srv.env
        srv.cli("model", "register", "frontier", "--training-flops", "3e26", check=True)
        w = workdir / "w"
        w.mkdir(exist_ok=True)
        (w / "model.safetensors").write_bytes(os.urandom(1 << 16))
        art = json.loads(srv.cli("push", "frontier", str(w), "-o", "json", check=True).stdout)
        t0 = time.perf_counter()
        hosts = await enroll_all(env, n)
        t_enroll = time.perf_counter() - t0
        ca = Path(env["CUSTOS_CA"]).read_bytes()
        pinned = SignerSet.decode(hosts[0][3])
        connected = 0
        acked: list[float] = []
        all_connected = asyncio.Event()
        done = asyncio.Event()
        channels = []

        async def agent(name: str, cert: bytes, key: bytes) -> None:
            nonlocal connected
            ch = grpc.aio.secure_channel(env["CUSTOS_ADDR"], grpc.ssl_channel_credentials(ca, key, cert),
                                         options=[("grpc.enable_retries", 1)])
            channels.append(ch)
            outq: asyncio.Queue[custody_pb2.AgentMessage | None] = asyncio.Queue()

            async def requests():  # type: ignore[no-untyped-def]
                while True:
                    item = await outq.get()
                    if item is None:
                        return
                    yield item

            call = custody_pb2_grpc.CustodyStub(ch).Stream(requests())
            first = True
            async for msg in call:
                kind = msg.WhichOneof("msg")
                if kind == "lease" and first:
                    first = False
                    connected += 1
                    if connected == n:
                        all_connected.set()
                elif kind == "order":
                    received = time.time_ns()
                    v = verify_order(msg.order.body, [Signature(key_id=s.key_id, sig=s.signature.decode())
                                                      for s in msg.order.signatures],
                                     pinned, now=int(time.time()), state=ExecutedOrders())
                    outq.put_nowait(custody_pb2.AgentMessage(ack=custody_pb2.OrderAck(
                        order_id=v.order_id or "", verified=bool(v), outcome="halted" if v else "refused",
                        received_unix_ns=received, done_unix_ns=time.time_ns())))
                    acked.append(time.time())
                    if len(acked) == n:
                        done.set()
                    outq.put_nowait(None)

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(agent(h, c, k)) for h, c, k, _ in hosts]
        await asyncio.wait_for(all_connected.wait(), timeout=300)
        t_connect = time.perf_counter() - t0

        ex = grpc.aio.secure_channel(env["CUSTOS_ADDR"], creds(env, "executive"))
        sec = grpc.aio.secure_channel(env["CUSTOS_ADDR"], creds(env, "security-team"))
        orders = orders_pb2_grpc.OrdersStub(ex)
        prop = (await orders.Propose(orders_pb2.ProposeRequest(action="halt", models=["frontier"],
                                                               reason="shutdown bench"))).order
        from custos.core.orders import Order
        from custos.core.signers import encode_signatures

        order = Order.decode(prop.body)
        keys = [load_private_key(srv.data_dir / "signers" / f"exec{i}.key", None) for i in (1, 2, 3)]
        for k in keys[:2]:
            await orders.AttachSignature(orders_pb2.AttachSignatureRequest(
                order_id=order.id, signatures=encode_signatures([order.sign(k)])))
        # The refused-unwrap probe runs on its own thread and channel, so the simulated
        # agents busy on this event loop do not delay it.
        import threading

        go = threading.Event()
        probe: dict[str, int] = {}

        def unwrap_probe() -> None:
            ch = grpc.secure_channel(env["CUSTOS_ADDR"], creds(env, "security-team"))
            stub = keys_pb2_grpc.KeysStub(ch)
            go.wait(60)
            while True:
                try:
                    stub.UnwrapDataKey(keys_pb2.UnwrapDataKeyRequest(artifact_id=art["id"], purpose="bench"),
                                       timeout=30)
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                        probe["refused_ns"] = time.time_ns()
                        break
                    raise
                time.sleep(0.01)  # a client retrying every 10 ms, not a flood
            ch.close()

        th = threading.Thread(target=unwrap_probe)
        th.start()
        third = encode_signatures([order.sign(keys[2])])
        go.set()
        resp = await orders.AttachSignature(orders_pb2.AttachSignatureRequest(order_id=order.id, signatures=third))
        await asyncio.to_thread(th.join, 60)
        refused_at = probe.get("refused_ns")
        quorum_ns = resp.order.quorum_at_unix_ns
        await asyncio.wait_for(done.wait(), timeout=600)
        # Wait until the server has recorded every ack, then read the report.
        deadline = time.monotonic() + 120
        report: dict = {}  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            r = await orders.GetReport(orders_pb2.GetReportRequest(order_id=order.id))
            report = json.loads(r.content)
            if sum(1 for h in report["hosts"] if h["acked"]) >= n:
                break
            await asyncio.sleep(0.2)
        ack_s = [h["seconds_to_ack"] for h in report["hosts"] if h["acked"]]
        for t in tasks:
            t.cancel()
        for ch in channels:
            await ch.close()
        await ex.close()
        await sec.close()
        return {
            "agents": n, "enroll_s": t_enroll, "connect_s": t_connect, "acked": len(ack_s),
            "last_ack_s": max(ack_s) if ack_s else float("nan"),
            "p50_s": percentile(ack_s, 50), "p99_s": percentile(ack_s, 99),
            "first_refused_unwrap_ms": (refused_at - quorum_ns) / 1e6 if refused_at else float("nan"),
        }
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, action="append")
    ns = ap.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for n in ns.agents or [1000]:
        with tempfile.TemporaryDirectory(prefix="custos-shutdown-bench-") as tmp:
            r = asyncio.run(run(n, Path(tmp)))
        goal = 1.0 if n <= 1000 else 5.0
        print(f"{n} agents: enrolled in {r['enroll_s']:.1f}s, streams open in {r['connect_s']:.1f}s")
        print(f"  quorum -> last ack   : {r['last_ack_s']:.3f} s (goal <= {goal:g} s); "
              f"p50 {r['p50_s']:.3f} s, p99 {r['p99_s']:.3f} s, {r['acked']} acks")
        print(f"  quorum -> first refused unwrap: {r['first_refused_unwrap_ms']:.1f} ms (goal <= 100 ms)")


if __name__ == "__main__":
    main()
