"""The incidents wiring: the rules engine, the incident service, the notifier and the
metrics endpoint built from their config sections, with their background loops.

One replica at a time runs the rules, the correlation and the dispatcher: it holds
a lease in the Store (``meta/rules-leader``: owner and expiry), taken or kept
every rules interval. Every replica serves the API and ``/metrics``.
Specified in docs/incidents.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from custos.controlplane.audit import AuditLog
from custos.controlplane.incidents.service import IncidentService
from custos.controlplane.incidents.servicer import IncidentsServicer
from custos.controlplane.metrics import MetricsConfig, MetricsServer, parse_metrics_config
from custos.controlplane.notify import Notifier, NotifyConfig, parse_notify_config
from custos.controlplane.periodic import pause, safe, spaced
from custos.controlplane.rules.config import RulesConfig, parse_rules_config
from custos.controlplane.rules.engine import RulesEngine
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical

LEADER_KEY = "meta/rules-leader"
KICK_SPACING_S = 0.2  # rounds asked for at once (kick) are at least this far apart
# At most this share of the time in rounds that were not asked for: a round reads every alert
# (the rules and the correlation), and after a 10,000-host first contact (150,000 alerts) a
# restarted replica's rounds held 40 % of its event loop, back to back, while 10,000 agents
# waited for the streams' initial metadata. A kicked round still runs at once.
DUTY = 0.25


class IncidentsRuntime:
    """The rules engine, the incident service, the notifier and the metrics endpoint, with
    their background loops. One replica at a time runs the rules, correlation and the
    dispatcher (a lease in the Store); every replica serves the API and ``/metrics``."""

    def __init__(self, *, store: Store, audit: AuditLog, rules: RulesConfig, notify: NotifyConfig,
                 metrics: MetricsConfig, clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.rules = rules
        self.clock = clock
        self.notifier = Notifier(store, notify, clock=clock)
        self.engine = RulesEngine(store=store, audit=audit, config=rules, clock=clock)
        self.service = IncidentService(store=store, audit=audit, config=rules, notifier=self.notifier, clock=clock)
        self.metrics = MetricsServer(store, metrics, clock=clock) if metrics.listen else None
        self.tasks: list[asyncio.Task[None]] = []
        self.owner = uuid.uuid4().hex
        self.leader = False
        self._kicked = asyncio.Event()

    @property
    def servicer(self) -> IncidentsServicer:
        return IncidentsServicer(self.service)

    async def round(self) -> list[dict[str, Any]]:
        """One pass: rules -> alerts -> incidents -> copies, actions, deadlines. Returns new alerts."""
        alerts = await self.engine.tick()
        await self.service.correlate()
        await self.service.refresh()
        return alerts

    async def lead(self) -> bool:
        """Take or keep the lease that lets this replica run the rounds."""
        now = time.time_ns()
        ttl = int(max(10.0, 3 * self.rules.interval_s) * 1e9)
        entry = await self.store.get(LEADER_KEY)
        rec = decode_canonical(entry.value) if entry else None
        if rec is not None and rec["owner"] != self.owner and rec["expires_ns"] > now:
            self.leader = False
            return False
        value = encode_canonical({"expires_ns": now + ttl, "owner": self.owner})
        was = self.leader
        self.leader = await self.store.commit(Txn(checks={LEADER_KEY: entry.mod_revision if entry else 0},
                                                  puts={LEADER_KEY: value}))
        if self.leader and not was:
            # Another replica may have led meanwhile: drop what we cached of its work.
            self.service.forget()
            self.engine.forget()
        return self.leader

    def kick(self) -> None:
        """Run the next round now, not at the end of the interval (an alert that must become an
        incident at once: custos.controlplane.canaries PROMPT_RULES). Rounds still run one at a time."""
        self._kicked.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._kicked.clear()
            t0 = time.monotonic()
            if await safe(self.lead(), "rules lease"):
                await safe(self.round(), "rules round")
            took = time.monotonic() - t0
            if self._kicked.is_set():  # kicked during the round: again soon, but never in a tight loop
                await pause(min(KICK_SPACING_S, self.rules.interval_s), stop)
            else:  # a kick still wakes it at once
                await pause(spaced(self.rules.interval_s, took, DUTY), stop, self._kicked)

    async def start(self, stop: asyncio.Event) -> None:
        """Bind ``/metrics`` (if configured) and start the loops. Raises InvalidInput."""
        if self.metrics is not None:
            await self.metrics.refresh()
            self.metrics.start()
            self.tasks.append(asyncio.create_task(self.metrics.run(stop)))
        self.tasks.append(asyncio.create_task(self.run(stop)))
        self.tasks.append(asyncio.create_task(self.notifier.run(stop, lambda: self.leader)))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.metrics is not None:
            self.metrics.close()


async def attach(*, store: Store, audit: AuditLog, stop: asyncio.Event, rules: Mapping[str, Any] | RulesConfig |
                 None = None, notify: Mapping[str, Any] | NotifyConfig | None = None,
                 metrics: Mapping[str, Any] | MetricsConfig | None = None, custody: Any = None,
                 base_dir: Path | None = None, clock: Callable[[], int] = time.time_ns,
                 start: bool = True) -> IncidentsRuntime:
    """Build the incidents runtime for a control plane and (``start``) its background loops.

    ``rules``, ``notify`` and ``metrics`` are the raw config sections (or parsed);
    ``base_dir`` resolves their relative paths. With ``custody``, its inventory hook
    (``on_inventory``) feeds the tampering rule exact hashes. Raises InvalidInput
    for a bad section, before anything starts.
    """
    rc = rules if isinstance(rules, RulesConfig) else parse_rules_config(rules, base_dir=base_dir)
    nc = notify if isinstance(notify, NotifyConfig) else parse_notify_config(notify, base_dir=base_dir)
    mc = metrics if isinstance(metrics, MetricsConfig) else parse_metrics_config(metrics, base_dir=base_dir)
    rt = IncidentsRuntime(store=store, audit=audit, rules=rc, notify=nc, metrics=mc, clock=clock)
    if custody is not None:
        custody.on_inventory = rt.engine.on_inventory
    if start:
        await rt.start(stop)
    return rt

