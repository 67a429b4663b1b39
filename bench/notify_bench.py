#!/usr/bin/env python3
"""Webhook delivery time when one of three sinks is dead (docs/incidents.md, "Notifications").

In process, on the real SQLite store: a ``Notifier`` with three Standard Webhooks sinks,
its per-sink delivery loops running (``Notifier.run``), and local HTTP receivers on
127.0.0.1 that verify every delivery with the standardwebhooks verifier. Two
scenarios, run one after the other in the same process:

- limit: three live sinks;
- dead: two live sinks and a black hole (a socket that completes the TCP handshake
  and never answers; each attempt waits out the sink's ``timeout_s``).

Each scenario queues ``--notifications`` entries in the outbox at once and measures,
per live sink, the time from queueing to the last delivery, and per notification
the time from queueing to its delivery (p50, p100). Prints both and the ratio
dead / limit of the time to the last delivery at the live sinks (goal: about 1 — a
dead sink costs the others nothing). Exits 1, printing no figures, if any delivery
to a live sink failed verification or did not arrive within ``--timeout``.

    python bench/notify_bench.py [--notifications 200] [--dead-timeout 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from custos.controlplane.notify import Notifier, NotifyConfig, WebhookConfig, verify_webhook
from custos.controlplane.store.base import Txn
from custos.controlplane.store.sqlite import SQLiteStore

SECRET = b"bench-webhook-secret-0123456789"


class Receiver:
    """Verifies every delivery; records when each delivery id first arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.bad = 0
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    delivery = verify_webhook(SECRET, body, {k: v for k, v in self.headers.items()})
                    me.arrived.setdefault(delivery, time.monotonic())
                    status = 200
                except Exception:  # noqa: BLE001 - counted, and the run fails
                    me.bad += 1
                    status = 400
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hook"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def scenario(dead: bool, n: int, dead_timeout: float, give_up_s: float) -> dict[str, Any]:
    live = [Receiver() for _ in range(2 if dead else 3)]
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    hooks = [WebhookConfig(name=f"live-{i}", url=r.url, secret=SECRET) for i, r in enumerate(live)]
    if dead:
        hooks.append(WebhookConfig(name="dead", url=f"http://127.0.0.1:{hole.getsockname()[1]}/", secret=SECRET,
                                   timeout_s=dead_timeout, max_attempts=2, backoff_s=0.1))
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "custos.db")
        notifier = Notifier(store, NotifyConfig(log=False, webhooks=tuple(hooks), interval_s=0.02))
        stop = asyncio.Event()
        runner = asyncio.create_task(notifier.run(stop))
        queued: dict[str, float] = {}
        puts: dict[str, bytes] = {}
        for i in range(n):
            p = notifier.outbox_puts("incident.opened", {"summary": f"bench {i}"}, severity="high")
            puts.update(p)
        for key in puts:
            queued[key.rsplit("/", 1)[1]] = time.monotonic()
        items = list(puts.items())
        for i in range(0, len(items), 100):
            await store.commit(Txn(puts=dict(items[i:i + 100])))
        t0 = min(queued.values())
        deadline = time.monotonic() + give_up_s
        while time.monotonic() < deadline and not all(len(r.arrived) == n for r in live):  # noqa: ASYNC110 - threads
            await asyncio.sleep(0.01)
        stop.set()
        runner.cancel()
        try:
            await runner
        except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping
            pass
        await store.close()
    hole.close()
    for r in live:
        r.close()
    ok = all(len(r.arrived) == n and r.bad == 0 for r in live)
    per = sorted(r.arrived[d] - queued[d] for r in live for d in r.arrived)
    last = max(max(r.arrived.values()) for r in live) - t0 if ok else float("nan")
    return {"ok": ok, "last_s": last, "p50_ms": statistics.median(per) * 1e3 if per else float("nan"),
            "p100_ms": per[-1] * 1e3 if per else float("nan"),
            "delivered": [len(r.arrived) for r in live], "bad": sum(r.bad for r in live)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notifications", type=int, default=200)
    ap.add_argument("--dead-timeout", type=float, default=5.0, help="the dead sink's timeout_s per attempt")
    ap.add_argument("--timeout", type=float, default=60.0, help="give up on a scenario after this many seconds")
    ap.add_argument("--json", action="store_true", help="also print one JSON object")
    a = ap.parse_args()
    limit = asyncio.run(scenario(False, a.notifications, a.dead_timeout, a.timeout))
    dead = asyncio.run(scenario(True, a.notifications, a.dead_timeout, a.timeout))
    if not (limit["ok"] and dead["ok"]):
        print(f"FAILED: live sinks delivered {limit['delivered']} / {dead['delivered']} of {a.notifications}, "
              f"{limit['bad'] + dead['bad']} bad signature(s); no figures", file=sys.stderr)
        return 1
    ratio = dead["last_s"] / limit["last_s"]
    print(f"{a.notifications} notifications, Standard Webhooks, per-sink queues")
    print(f"  3 live sinks           : last delivery {limit['last_s'] * 1e3:8.1f} ms; per notification "
          f"p50 {limit['p50_ms']:.1f} ms, p100 {limit['p100_ms']:.1f} ms")
    print(f"  2 live + 1 dead sink   : last delivery {dead['last_s'] * 1e3:8.1f} ms; per notification "
          f"p50 {dead['p50_ms']:.1f} ms, p100 {dead['p100_ms']:.1f} ms "
          f"(dead sink: {a.dead_timeout:g} s per attempt)")
    print(f"  ratio dead / live      : {ratio:.2f}  (goal: about 1)")
    if a.json:
        print(json.dumps({"notifications": a.notifications, "live_last_s": limit["last_s"],
                          "dead_last_s": dead["last_s"], "ratio": ratio, "dead_p50_ms": dead["p50_ms"],
                          "dead_p100_ms": dead["p100_ms"], "live_p50_ms": limit["p50_ms"],
                          "live_p100_ms": limit["p100_ms"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
