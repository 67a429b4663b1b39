"""Prometheus metrics of the control plane on ``/metrics`` (``[metrics] listen``).

The numbers are read from the Store every ``refresh_s`` seconds into a
snapshot that scrapes serve, so every replica exports the same cluster-wide
values and a scrape never waits on the Store:

    custos_copies{form,state}                  known copies
    custos_hosts{lease_state}                  hosts (not removed) by custody lease: live, lapsed, revoked, none
    custos_unwraps_total{result}               UnwrapDataKey attempts by result: ok, denied, or the error kind
    custos_orders{state}                       orders by state (proposed, executing, complete, expired, ...)
    custos_alerts_total{rule}                  alerts raised, by rule
    custos_incidents{status}                   incidents by status
    custos_incidents_open{time_left}           unreported incidents (open, triaged) by time left on the
                                               72-hour clock: overdue, under_24h, 24h_to_48h, 48h_to_72h
    custos_incident_report_deadline_seconds{incident,model,category}   Unix time each unreported one is due
    custos_access_holders{model}               principals, hosts and Vault policies that can reach the
                                               model's weights now (custos access who; counted by the
                                               rules leader every [rules.access_holders_over_cap] interval_s)
    custos_metrics_refresh_timestamp_seconds   when the snapshot was last read (staleness)

deploy/prometheus/custos-alerts.yml alerts on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from custos.controlplane.periodic import pause, safe
from custos.controlplane.rules.engine import CURSOR_KEY, HOLDERS_PREFIX
from custos.controlplane.store.base import Store
from custos.core.canonical import decode_canonical
from custos.core.incidents import incident_view
from custos.core.orders import Order
from custos.errors import InvalidInput

log = logging.getLogger("custos.metrics")

TIME_LEFT_BUCKETS = ("overdue", "under_24h", "24h_to_48h", "48h_to_72h")


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # empty: no metrics endpoint
    refresh_s: float = 5.0
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


def parse_metrics_config(raw: Mapping[str, Any] | None, *, base_dir: Path | None = None) -> MetricsConfig:
    """Parse ``[metrics]``: listen = "HOST:PORT", refresh_s, tls_cert_file/tls_key_file. Raises InvalidInput."""
    raw = dict(raw or {})
    known = {"listen", "refresh_s", "tls_cert_file", "tls_key_file"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidInput(f"[metrics] unknown key(s) {unknown}: want {sorted(known)}")
    listen = raw.get("listen", "")
    if not isinstance(listen, str):
        raise InvalidInput("[metrics] listen must be \"HOST:PORT\"")
    if listen:
        _, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise InvalidInput(f"[metrics] listen must be \"HOST:PORT\", got {listen!r}")
    refresh = raw.get("refresh_s", 5.0)
    if isinstance(refresh, bool) or not isinstance(refresh, int | float) or not 0 < refresh <= 3600:
        raise InvalidInput("[metrics] refresh_s must be a number above 0 and at most 3600")

    def path(key: str) -> Path | None:
        v = raw.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise InvalidInput(f"[metrics] {key} must be a file path")
        return Path(v) if Path(v).is_absolute() else (base_dir or Path.cwd()) / v

    cert, key = path("tls_cert_file"), path("tls_key_file")
    if (cert is None) != (key is None):
        raise InvalidInput("[metrics] tls_cert_file and tls_key_file go together")
    return MetricsConfig(listen=listen, refresh_s=float(refresh), tls_cert_file=cert, tls_key_file=key)


@dataclass
class Snapshot:
    at: float = 0.0
    copies: Counter[tuple[str, str]] = field(default_factory=Counter)
    hosts: Counter[str] = field(default_factory=Counter)
    unwraps: dict[str, int] = field(default_factory=dict)
    orders: Counter[str] = field(default_factory=Counter)
    alerts: Counter[str] = field(default_factory=Counter)
    incidents: Counter[str] = field(default_factory=Counter)
    time_left: Counter[str] = field(default_factory=Counter)
    deadlines: list[tuple[str, str, str, float]] = field(default_factory=list)
    holders: dict[str, int] = field(default_factory=dict)


def time_left_bucket(seconds_left: float) -> str:
    if seconds_left <= 0:
        return "overdue"
    if seconds_left < 24 * 3600:
        return "under_24h"
    if seconds_left < 48 * 3600:
        return "24h_to_48h"
    return "48h_to_72h"


async def read_snapshot(store: Store, *, now_ns: int) -> Snapshot:
    """Everything the metrics say, read from the Store."""

    snap = Snapshot(at=now_ns / 1e9)
    for e in await store.range("copies/"):
        c = decode_canonical(e.value)
        snap.copies[(c["form"], c["state"])] += 1
    leases = {e.key[len("leases/"):]: decode_canonical(e.value) for e in await store.range("leases/")}
    for e in await store.range("hosts/"):
        h = decode_canonical(e.value)
        if h["state"] == "removed":
            continue
        lease = leases.get(h["name"], {"state": "none", "expires_ns": 0})
        state = lease["state"]
        if state == "live" and lease["expires_ns"] < now_ns:
            state = "lapsed"
        snap.hosts[state] += 1
    cursor = await store.get(CURSOR_KEY)
    if cursor is not None:
        snap.unwraps = dict(decode_canonical(cursor.value).get("unwraps", {}))
    for e in await store.range("orders/"):
        rec = decode_canonical(e.value)
        state = rec["state"]
        if state == "proposed" and Order.decode(rec["body"].encode()).not_after <= now_ns // 1_000_000_000:
            state = "expired"
        snap.orders[state] += 1
    for e in await store.range("alerts/"):
        snap.alerts[decode_canonical(e.value)["rule"]] += 1
    for e in await store.range("incidents/"):
        v = incident_view(decode_canonical(e.value))
        snap.incidents[v["status"]] += 1
        if v["status"] in ("open", "triaged"):
            left = (v["report_deadline_ns"] - now_ns) / 1e9
            snap.time_left[time_left_bucket(left)] += 1
            snap.deadlines.append((v["id"], v["model"]["name"], v["category"], v["report_deadline_ns"] / 1e9))
    for e in await store.range(HOLDERS_PREFIX):
        snap.holders[e.key[len(HOLDERS_PREFIX):]] = int(decode_canonical(e.value)["count"])
    return snap


class CustosCollector:
    """A prometheus_client collector over the latest snapshot."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        s = self.snapshot()
        g = GaugeMetricFamily("custos_copies", "Known copies of weights by form and state.", labels=["form", "state"])
        for (form, state), n in sorted(s.copies.items()):
            g.add_metric([form, state], n)
        yield g
        g = GaugeMetricFamily("custos_hosts", "Hosts by custody lease state.", labels=["lease_state"])
        for state in ("live", "lapsed", "revoked", "none"):
            g.add_metric([state], s.hosts.get(state, 0))
        yield g
        c = CounterMetricFamily("custos_unwraps", "Data-key unwrap attempts by result.", labels=["result"])
        for result, n in sorted(s.unwraps.items()):
            c.add_metric([result], n)
        yield c
        g = GaugeMetricFamily("custos_orders", "Orders by state.", labels=["state"])
        for state, n in sorted(s.orders.items()):
            g.add_metric([state], n)
        yield g
        c = CounterMetricFamily("custos_alerts", "Alerts raised, by rule.", labels=["rule"])
        for rule, n in sorted(s.alerts.items()):
            c.add_metric([rule], n)
        yield c
        g = GaugeMetricFamily("custos_incidents", "Incidents by status.", labels=["status"])
        for status in ("open", "triaged", "reported", "closed"):
            g.add_metric([status], s.incidents.get(status, 0))
        yield g
        g = GaugeMetricFamily("custos_incidents_open",
                              "Unreported incidents (open or triaged) by time left on the 72-hour reporting clock.",
                              labels=["time_left"])
        for bucket in TIME_LEFT_BUCKETS:
            g.add_metric([bucket], s.time_left.get(bucket, 0))
        yield g
        g = GaugeMetricFamily("custos_incident_report_deadline_seconds",
                              "Unix time by which an unreported incident must be reported.",
                              labels=["incident", "model", "category"])
        for iid, model, category, deadline in s.deadlines:
            g.add_metric([iid, model, category], deadline)
        yield g
        g = GaugeMetricFamily("custos_access_holders",
                              "Principals, hosts and Vault policies that can obtain a model's weights now.",
                              labels=["model"])
        for model, n in sorted(s.holders.items()):
            g.add_metric([model], n)
        yield g
        g = GaugeMetricFamily("custos_metrics_refresh_timestamp_seconds",
                              "When these metrics were last read from the store.")
        g.add_metric([], s.at)
        yield g


class MetricsServer:
    """Serves ``/metrics``; ``refresh`` re-reads the Store (``run`` does it periodically)."""

    def __init__(self, store: Store, config: MetricsConfig, *, clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.snapshot = Snapshot()
        self.extra: list[Any] = []  # more collectors (e.g. the key provider's health), registered at start
        self.port = 0
        self._httpd: Any = None
        self._thread: Any = None
        self.registry: Any = None

    async def refresh(self) -> Snapshot:
        self.snapshot = await read_snapshot(self.store, now_ns=self.clock())
        return self.snapshot

    def start(self) -> int:
        """Bind the listen address. Raises InvalidInput if it cannot."""

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(CustosCollector(lambda: self.snapshot))
        for collector in self.extra:
            self.registry.register(collector)
        host, port = self.config.host_port()
        try:
            self._httpd, self._thread = start_http_server(
                port, addr=host, registry=self.registry,
                certfile=str(self.config.tls_cert_file) if self.config.tls_cert_file else None,
                keyfile=str(self.config.tls_key_file) if self.config.tls_key_file else None)
        except OSError as exc:
            raise InvalidInput(f"[metrics] cannot listen on {self.config.listen}: {exc.strerror}") from None
        self.port = int(self._httpd.server_port)
        return self.port

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await safe(self.refresh(), "metrics refresh")
            await pause(self.config.refresh_s, stop)

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
