"""Prometheus ``/metrics`` for the agent: lease, inventory, workloads, halts.

Off unless ``[metrics] listen = "HOST:PORT"`` is set in the agent config. Values
are read from ``Agent.status()`` at scrape time, so a scrape never blocks the
daemon's loops and never sees anything secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from custos.errors import InvalidInput

LEASE_STATES = ("live", "expired", "none", "removed")
GUARD_MODES = ("fanotify", "inotify (degraded)", "off")


class AgentCollector:
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        s = self.status()
        lease = GaugeMetricFamily("custos_agent_lease", "Custody lease state of this host (1 = current).",
                                  labels=["host", "state"])
        for state in LEASE_STATES:
            lease.add_metric([s["host"], state], 1.0 if s["lease"]["state"] == state else 0.0)
        yield lease
        yield GaugeMetricFamily("custos_agent_lease_seconds_left", "Seconds before the lease expires.",
                                value=float(s["lease"].get("expires_in_s", 0.0)))
        yield GaugeMetricFamily("custos_agent_failed_closed", "1 while the agent has failed closed.",
                                value=1.0 if s["failed_closed"] else 0.0)
        yield GaugeMetricFamily("custos_agent_connected", "1 while the custody stream is up.",
                                value=1.0 if s["connected"] else 0.0)
        inv = s["inventory"]
        yield GaugeMetricFamily("custos_agent_weight_files", "Weight-like files in the inventory.",
                                value=float(inv["files"]))
        yield GaugeMetricFamily("custos_agent_weight_processes", "Processes holding weight files.",
                                value=float(inv["processes"]))
        yield GaugeMetricFamily("custos_agent_scan_problems", "Scan problems in the last scan.",
                                value=float(len(inv["problems"])))
        yield CounterMetricFamily("custos_agent_full_scans", "Full scans since start.", value=float(inv["full_scans"]))
        yield GaugeMetricFamily("custos_agent_workloads", "Supervised workloads.", value=float(len(s["workloads"])))
        yield CounterMetricFamily("custos_agent_connections", "Custody stream connections since start.",
                                  value=float(s["connections"]))
        halt = s.get("last_halt") or {}
        yield GaugeMetricFamily("custos_agent_last_halt_timestamp_seconds", "When the last local halt finished.",
                                value=float(halt.get("done_unix_ns", 0)) / 1e9)
        if s.get("guard"):
            yield from _guard_metrics(s["guard"])


def _guard_metrics(g: dict[str, Any]) -> Iterator[Any]:
    """Kernel-checked opens (custos.agent.guard): the mode, answers, refusals, response times."""
    mode = GaugeMetricFamily("custos_agent_guard", "How this host checks opens of plaintext weights (1 = current; "
                             "inotify is degraded: no pid, nothing refused).", labels=["mode"])
    for m in GUARD_MODES:
        mode.add_metric([m], 1.0 if g["mode"] == m else 0.0)
    yield mode
    for key, name, doc in (
            ("answered", "answered", "Opens of guarded files answered."),
            ("denied", "denied", "Opens of guarded files refused (EPERM)."),
            ("defaults", "defaults", "Opens answered with their zone's default: no decision within the bound."),
            ("watchdog_takeovers", "watchdog_takeovers", "Times the watchdog found the responder stalled.")):
        yield CounterMetricFamily(f"custos_agent_guard_{name}", doc, value=float(g.get(key, 0)))
    yield CounterMetricFamily("custos_agent_guard_events", "Access events reported (denied, read, canary).",
                              value=float(g.get("events", {}).get("reported", 0)))
    yield GaugeMetricFamily("custos_agent_guard_max_response_seconds", "Longest time to answer an open.",
                            value=float(g.get("max_response_ms", 0.0)) / 1000)
    buckets = g.get("response_buckets")
    if buckets:
        yield HistogramMetricFamily(
            "custos_agent_guard_response_seconds", "Time from a permission event to its answer.",
            buckets=[(b if isinstance(b, str) else repr(float(b)), float(c)) for b, c in buckets],
            sum_value=float(g.get("response_seconds_sum", 0.0)))


def start_metrics(listen: str, status: Callable[[], dict[str, Any]]) -> tuple[Any, int]:
    """Serve /metrics on ``listen`` (HOST:PORT); returns (server, port). Raises InvalidInput."""

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInput(f"[metrics] listen {listen!r}: want HOST:PORT")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(status))
    try:
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    except OSError as exc:
        raise InvalidInput(f"[metrics] cannot listen on {listen}: {exc.strerror}") from None
    return server, int(server.server_address[1])
