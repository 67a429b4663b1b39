#!/usr/bin/env python3
"""One control-plane replica for bench/shutdown_bench.py: the real `custos server --dev`
(ControlPlane, as `custos server` assembles it), plus a bench-only control socket that no
production server has. On the socket, ``raw ORDER_ID`` writes the order's serialized
ControlMessage — the very bytes the fan-out sent — onto every custody stream open on this
replica, with nothing else Custos does for an order (no verification, no Store, no acks),
and answers ``T0_NS STREAMS``: the stack's own broadcast limit, measured on the same streams.
``streams`` answers how many streams it holds, ``cpu`` its CPU seconds so far, ``rss`` its resident memory; ``profile-on`` and ``profile-off PATH`` run
cProfile on the event loop's thread and write its stats.

    python bench/shutdown_replica.py --data-dir D --listen 127.0.0.1:P [--store URL] [--config F] [--serve keys]

Prints one JSON line (port, enroll_port, pid) on stdout once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from custos import logs
from custos.controlplane.config import load_config
from custos.controlplane.server import ControlPlane, prepare_dev


async def serve(ns: argparse.Namespace) -> None:
    cfg = load_config(Path(ns.config) if ns.config else None)
    cfg.listen, cfg.data_dir, cfg.dev = ns.listen, Path(ns.data_dir), True
    if ns.store:
        cfg.store_url = ns.store
    cfg.serve = ns.serve
    logs.setup(ns.log_level)
    prepare_dev(cfg)
    cp = ControlPlane(cfg)
    port = await cp.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, cp.request_stop)

    lags: list[float] = []  # how late a 5 ms timer fires, on request (``lag-on`` / ``lag-off``)
    lag_on = asyncio.Event()

    async def lag_monitor() -> None:
        while True:
            await lag_on.wait()
            t = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - t - 0.005)

    lag_task = loop.create_task(lag_monitor())
    gc_pauses: list[tuple[int, float]] = []  # (generation, seconds) of each collection while lag-on
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif lag_on.is_set():
            gc_pauses.append((info["generation"], time.perf_counter() - gc_started[0]))

    gc.callbacks.append(on_gc)
    spy: list[subprocess.Popen[bytes] | None] = [None]
    profiler = cProfile.Profile()  # the event loop's thread, on request: --profile of the bench

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            cmd, _, arg = line.decode().strip().partition(" ")
            if cmd == "raw":
                data = cp.orders.fanout.message_bytes(await cp.orders.get(arg))
                queues = list(cp.custody.streams.items())
                t0 = time.time_ns()
                for host, q in queues:
                    cp.custody.send_order(host, q, data)
                writer.write(f"{t0} {len(queues)}\n".encode())
            elif cmd == "profile-on":
                profiler.enable()
                writer.write(b"ok\n")
            elif cmd == "profile-off":
                profiler.disable()
                profiler.dump_stats(arg)
                writer.write(b"ok\n")
            elif cmd == "spy-on":  # py-spy (native frames, every thread) until spy-off
                spy[0] = subprocess.Popen(["py-spy", "record", "--nonblocking", "--threads", "--idle", "--rate", "250",  # noqa: ASYNC220 - started, not waited for
                                           "-f", "speedscope", "-o", arg, "-p", str(os.getpid())],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await asyncio.sleep(1.0)  # attached
                writer.write(b"ok\n")
            elif cmd == "spy-off":
                if spy[0] is not None:
                    spy[0].send_signal(signal.SIGINT)
                    await asyncio.to_thread(spy[0].wait, 60)
                    spy[0] = None
                writer.write(b"ok\n")
            elif cmd == "lag-on":
                lags.clear()
                gc_pauses.clear()
                lag_on.set()
                writer.write(b"ok\n")
            elif cmd == "lag-off":
                lag_on.clear()
                s = sorted(lags) or [0.0]
                writer.write(f"{len(s)} {s[len(s) // 2] * 1e3:.1f} {s[int(len(s) * 0.99)] * 1e3:.1f} "
                             f"{s[-1] * 1e3:.1f} gc {max((p for _, p in gc_pauses), default=0) * 1e3:.1f} "
                             f"{sum(1 for g, _ in gc_pauses if g == 2)}\n".encode())
            elif cmd == "cpu":
                t = os.times()
                writer.write(f"{t.user + t.system:.3f}\n".encode())
            elif cmd == "rss":
                rss = next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                           if line.startswith("VmRSS:"))
                writer.write(f"{int(rss) * 1024}\n".encode())
            elif cmd == "streams":
                writer.write(f"{len(cp.custody.streams)}\n".encode())
            else:
                writer.write(b"? unknown command\n")
            await writer.drain()
        writer.close()

    sock = Path(ns.control)
    server = await asyncio.start_unix_server(control, path=str(sock))
    print(json.dumps({"port": port, "enroll_port": cp.enroll_port, "pid": os.getpid()}), flush=True)
    try:
        await cp.wait()
    finally:
        lag_task.cancel()
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--control", required=True, help="path of the bench's control socket")
    ap.add_argument("--store")
    ap.add_argument("--config")
    ap.add_argument("--serve", default="all", help="all, or keys: a key-broker replica")
    ap.add_argument("--log-level", default="warning")
    ns = ap.parse_args()
    from custos.controlplane.server import run_loop

    run_loop(serve(ns))


if __name__ == "__main__":
    main()
