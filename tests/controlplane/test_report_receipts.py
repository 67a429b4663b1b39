"""Reports are ingested apart from the stream's other messages, and each gets a receipt.

The failure this prevents: the control plane read a stream's messages in order, so the heartbeat
an agent sent behind a slow report (a fleet's first contact: 54 s at p99 with 10,000 hosts) was
answered only after it — past the lease TTL, and the agent failed closed. On a real server: a
report of 10,000 unregistered checkpoints (seconds of ingestion) followed by a heartbeat must
get the lease back first; receipts come one per report, in order, also for a report sent just
before the agent closes its side of the stream.
"""

from __future__ import annotations

import hashlib
import queue
import time
from typing import Any

from custos.v1 import custody_pb2
from tests.servers.agentsim import SimHost, enroll
from tests.servers.custos import DevServer


def _inventory(n: int, tag: str) -> custody_pb2.Inventory:
    return custody_pb2.Inventory(full=True, files=[
        custody_pb2.FileRecord(path=f"/scratch/{tag}/ckpt-{i}.pt", size=4096 + i,
                               sha256=hashlib.sha256(f"{tag}{i}".encode()).hexdigest(), form="plaintext")
        for i in range(n)])


def _kinds_until(h: SimHost, kind: str, count: int = 1, timeout: float = 120) -> list[tuple[str, Any]]:
    """Every message until the ``count``-th of ``kind`` (or the stream ends)."""
    out: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    while sum(k == kind for k, _ in out) < count:
        try:
            msg = h.inbox.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {kind} within {timeout} s; got {[k for k, _ in out]}") from None
        if msg is None:
            raise AssertionError(f"stream ended: {h.error}; got {[k for k, _ in out]}")
        k = msg.WhichOneof("msg")
        out.append((k, getattr(msg, k)))
    return out


def test_a_heartbeat_behind_a_slow_report_is_answered_before_it(dev_server: DevServer) -> None:
    h = enroll(dev_server.env, "slow-report-1")
    h.open_stream(dev_server.env["CUSTOS_ADDR"])
    try:
        h.next_of("lease")
        h.send(custody_pb2.AgentMessage(inventory=_inventory(10_000, "a")))
        h.send(custody_pb2.AgentMessage(heartbeat=custody_pb2.Heartbeat(sent_unix_ns=time.time_ns())))
        got = _kinds_until(h, "report")
        kinds = [k for k, _ in got]
        assert "lease" in kinds and kinds.index("lease") < kinds.index("report"), kinds
        receipt = got[kinds.index("report")][1]
        assert receipt.alerts == 10_000 and receipt.ingested_unix_ns >= receipt.received_unix_ns > 0
    finally:
        h.close()


def test_receipts_come_one_per_report_in_order_also_at_the_end(dev_server: DevServer) -> None:
    h = enroll(dev_server.env, "receipts-1")
    h.open_stream(dev_server.env["CUSTOS_ADDR"])
    h.next_of("lease")
    sizes = [3000, 10, 1000, 10]  # the second is the same as the fourth: no work the second time
    for i, n in enumerate(sizes):
        h.send(custody_pb2.AgentMessage(inventory=_inventory(n, "same" if n == 10 else f"r{i}")))
    h.outbox.put(None)  # the agent closes its side at once
    got = [r for k, r in _kinds_until(h, "report", len(sizes)) if k == "report"]
    assert [r.alerts for r in got] == [3000, 10, 1000, 10]
    assert [r.received_unix_ns for r in got] == sorted(r.received_unix_ns for r in got)
    assert h.inbox.get(timeout=30) is None  # then the stream ends cleanly
    assert h.error is None
