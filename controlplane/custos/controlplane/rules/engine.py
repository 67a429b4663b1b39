"""The rules engine: audit events, custody findings, orders and Vault's audit log -> alerts.

Rules are data (custos.core.rules ``RULES``: name, category under the chapter's
definition of an AI safety incident, default severity) with thresholds from the
``[rules]`` section of the control plane's config (custos.controlplane.rules.config).
Each rule is a small pure function (custos.core.rules) over events or store
records that returns ``Finding``s; a finding becomes an alert record under
``alerts/{id}`` — the same place and shape as the alerts custody ingestion
raises (``unauthorized-copy``, ``unregistered-weights``), so ``custos alerts``
lists them all. Alert ids are digests of what makes a finding one finding, so
evaluating the same events twice (after a restart, or by two replicas) writes
each alert once.

``RulesEngine`` is the thin adapter: it tails the audit log from a cursor kept
in the Store (``meta/rules-cursor``, which also holds the unwrap tallies the
metrics endpoint exports), reads orders, verifies the audit chain now and
then, tails Vault's file audit device (custos.controlplane.vault_audit) and
writes the alerts. Correlating alerts into incidents is
custos.controlplane.incidents. Specified in docs/incidents.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from custos.controlplane.access import REQUESTS
from custos.controlplane.registry import copy_id
from custos.controlplane.rules.config import RulesConfig
from custos.controlplane.store.base import MAX_TXN_OPS, Store, Txn
from custos.controlplane.vault_audit import VaultAuditTail
from custos.core.access import AccessRequest
from custos.core.audit_chain import Event, parse_events, verify_log
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.manifest import decode_manifest
from custos.core.orders import Order
from custos.core.rules import (
    ExecutingOrder,
    FileObservation,
    Finding,
    break_glass_uses,
    chain_failure,
    holders_over_cap,
    is_break_glass,
    is_key_handout,
    lease_lapses,
    missing_acks,
    observation_from_alert,
    tamper_candidates,
    tamper_finding,
    unauthorized_unwraps,
    unwrap_rate,
    unwrap_result_label,
)

log = logging.getLogger("custos.rules")


CURSOR_KEY = "meta/rules-cursor"
ALERTS_PREFIX = "alerts/"
EXAMINE_SLICE = 500  # alerts decoded between two returns to the event loop
HOLDERS_PREFIX = "meta/access-holders/"  # written by custos.controlplane.access_who


class RulesEngine:
    """Runs every enabled rule once per ``tick`` and writes new alerts (create-only).

    Only one replica should tick at a time (``IncidentsRuntime`` holds a lease
    for it); a second one would write the same alerts, once each, and race on
    the cursor (compare-and-set: the loser re-reads it).
    """

    def __init__(self, *, store: Store, config: RulesConfig, audit: Any = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.config = config
        self.audit = audit
        self.clock = clock
        self._history: deque[Event] = deque()  # key handouts of the last rate window
        self._warm = False
        self._index_rev = -1
        self._relpaths: dict[str, list[tuple[str, Any]]] = {}
        self._artifact_model: dict[str, str] = {}
        self._examined: set[str] = set()  # alerts already looked at for tampering (of any rule)
        self._chain_due_ns = 0
        self._policies: dict[str, list[str]] = {}
        self.vault = None
        if config.vault_audit is not None and config.enabled("vault-foreign-access"):
            self.vault = VaultAuditTail(store, config.vault_audit)

    def forget(self) -> None:
        """Drop in-memory state (rate window, examined alerts): another replica may have moved on."""
        self._warm = False
        self._examined.clear()

    # -- cursor --------------------------------------------------------------------

    async def cursor(self) -> tuple[Any, dict[str, Any]]:
        entry = await self.store.get(CURSOR_KEY)
        if entry is None:
            return None, {"seq": 0, "unwraps": {}}
        return entry, dict(decode_canonical(entry.value))

    # -- indexes -------------------------------------------------------------------

    async def _index(self) -> None:
        """Artifact -> model and manifest relative path -> files, rebuilt when artifacts change."""

        marker = await self.store.get("meta/artifacts")
        rev = marker.mod_revision if marker else 0
        if rev == self._index_rev:
            return
        relpaths: dict[str, list[tuple[str, Any]]] = {}
        models: dict[str, str] = {}
        for e in await self.store.range("artifacts/"):
            rec = decode_canonical(e.value)
            models[rec["id"]] = rec["model"]
            for entry in decode_manifest(rec["manifest"].encode()).files:
                if entry.size > 0:
                    relpaths.setdefault(entry.path, []).append((rec["id"], entry))
        self._relpaths, self._artifact_model, self._index_rev = relpaths, models, rev

    async def _custody_hosts(self) -> dict[str, list[str]]:
        return {m["name"]: list(m.get("custody_hosts") or [])
                for m in (decode_canonical(e.value) for e in await self.store.range("models/"))}

    # -- one round -----------------------------------------------------------------

    async def tick(self) -> list[dict[str, Any]]:
        """Evaluate every enabled rule on what is new; returns the alerts written now."""
        await self._index()
        self._policies = await self._custody_hosts()  # policies change: read them every round
        entry, cur = await self.cursor()
        findings, new_cur = await self._audit_round(cur)
        findings += await self._tamper_from_alerts()
        findings += await self._orders_round()
        findings += await self._chain_round()
        findings += await self._holders_round()
        vault_pos = None
        if self.vault is not None:
            vault_findings, vault_pos = await self.vault.read()
            findings += vault_findings
        written = await self.write_alerts(findings)
        if new_cur != cur:
            ok = await self.store.commit(Txn(checks={CURSOR_KEY: entry.mod_revision if entry else 0},
                                             puts={CURSOR_KEY: encode_canonical(new_cur)}))
            if not ok:
                log.warning("rules cursor moved under us (another replica?): re-reading it next round")
                self._warm = False
        if vault_pos is not None and self.vault is not None:
            await self.vault.commit(vault_pos)
        return written

    async def _warm_up(self, seq: int) -> None:
        """Rebuild the rate window from the events just before the cursor (after a restart)."""
        self._history.clear()
        self._warm = True
        if seq <= 0:
            return
        window_ns = self.config.unwrap_rate.window_s * 1_000_000_000
        start = max(0, seq - 5000)
        rows = await self.store.range("audit/events/", start_after=f"audit/events/{start:020d}" if start else None,
                                      limit=seq - start)
        evs = [e for e in parse_events(r.value for r in rows) if e.seq <= seq and is_key_handout(e)]
        if evs:
            newest = evs[-1].time_ns
            self._history.extend(e for e in evs if e.time_ns > newest - window_ns)

    async def _audit_round(self, cur: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        seq = int(cur.get("seq", 0))
        if not self._warm:
            await self._warm_up(seq)
        unwraps: dict[str, int] = dict(cur.get("unwraps", {}))
        findings: list[Finding] = []
        for _ in range(50):  # at most 50 pages a round; the rest next round
            rows = await self.store.range("audit/events/", start_after=f"audit/events/{seq:020d}" if seq else None,
                                          limit=2000)
            if not rows:
                break
            events = parse_events(r.value for r in rows)
            seq = int(rows[-1].key[len("audit/events/"):])
            for ev in events:
                label = unwrap_result_label(ev)
                if label is not None:
                    unwraps[label] = unwraps.get(label, 0) + 1
            findings += self._audit_findings(events)
            findings += await self._break_glass(events)
            if len(rows) < 2000:
                break
        new = {"seq": seq, "unwraps": dict(sorted(unwraps.items()))}
        return findings, new if new != cur else cur

    def _audit_findings(self, events: list[Event]) -> list[Finding]:
        out: list[Finding] = []
        cfg = self.config
        if cfg.enabled("unwrap-unauthorized") and any(is_key_handout(e) for e in events):
            out += self._unauthorized(events)
        if cfg.enabled("unwrap-rate"):
            handouts = [e for e in events if is_key_handout(e)]
            if handouts:
                out += unwrap_rate([*self._history, *handouts], config=cfg.unwrap_rate,
                                   artifact_model=self._artifact_model)
                self._history.extend(handouts)
                window_ns = cfg.unwrap_rate.window_s * 1_000_000_000
                newest = self._history[-1].time_ns
                while self._history and self._history[0].time_ns <= newest - window_ns:
                    self._history.popleft()
        if cfg.enabled("lease-lapsed"):
            out += lease_lapses(events)
        return out

    async def _break_glass(self, events: list[Event]) -> list[Finding]:
        """Every successful break-glass activation, with its request's model and grantee."""
        used = [e for e in events if is_break_glass(e)]
        if not used or not self.config.enabled("access-break-glass"):
            return []
        keys = [f"{REQUESTS}{e.object[len('access/'):]}" for e in used]
        requests: dict[str, dict[str, Any]] = {}
        for key, entry in (await self.store.get_many(keys)).items():
            rec = decode_canonical(entry.value)
            req = AccessRequest.decode(rec["body"].encode())
            requests[key.rsplit("/", 1)[1]] = {
                "hosts": list(req.grantee.hosts), "model": req.model, "not_after_ns": rec["not_after_ns"],
                "principal": req.grantee.principal, "reason": req.reason}
        return break_glass_uses(used, requests)

    async def _holders_round(self) -> list[Finding]:
        cap = self.config.access_holders_cap
        if cap <= 0 or not self.config.enabled("access-holders-over-cap"):
            return []
        counts = {e.key[len(HOLDERS_PREFIX):]: decode_canonical(e.value)
                  for e in await self.store.range(HOLDERS_PREFIX)}
        return holders_over_cap(counts, cap=cap)

    def _unauthorized(self, events: list[Event]) -> list[Finding]:
        return unauthorized_unwraps(events, artifact_model=self._artifact_model,
                                    custody_hosts=self._policies, allowed_roles=self.config.allowed_roles)

    async def _tamper_from_alerts(self) -> list[Finding]:
        """Tampering from the ``unregistered-weights`` alerts custody raises: a file at a known
        copy's relative path whose bytes match nothing is a file that no longer matches."""
        if not self.config.enabled("tampered-weights"):
            return []
        observations = []
        # Each alert decoded once, a slice at a time: every alert decoded every tick, at once,
        # held the event loop for over a second once a fleet's first contact had left 150,000.
        unseen = [e for e in await self.store.range(ALERTS_PREFIX) if e.key[len(ALERTS_PREFIX):] not in self._examined]
        for n, e in enumerate(unseen):
            if n % EXAMINE_SLICE == EXAMINE_SLICE - 1:
                await asyncio.sleep(0)
            self._examined.add(e.key[len(ALERTS_PREFIX):])
            a = decode_canonical(e.value)
            if a.get("rule") != "unregistered-weights":
                continue
            obs = observation_from_alert(a)
            if obs is not None:
                observations.append(obs)
        return await self.tamper_findings(*observations)

    async def tamper_findings(self, *observations: FileObservation) -> list[Finding]:
        """Findings for reported files that sit at a registered copy's relative path: every
        candidate copy of every observation looked up in one read (a report of many shards
        that several artifacts share the names of is many candidates)."""
        candidates = [(obs, aid, root, entry, _copy_key(aid, f"{obs.host}:{root}"))
                      for obs in observations for aid, root, entry in tamper_candidates(obs, self._relpaths)]
        if not candidates:
            return []
        known = await self.store.get_many(list(dict.fromkeys(key for *_, key in candidates)))
        # No copy was ever seen at a candidate's root: that file is only unregistered weights.
        return [tamper_finding(obs, aid, root, entry, self._artifact_model.get(aid, ""), at_ns=self.clock())
                for obs, aid, root, entry, key in candidates if key in known]

    async def on_inventory(self, host: str, inv: Any) -> list[dict[str, Any]]:
        """Server hook: called by custody ingestion with an agent's report (full hashes).
        Writes and returns tampering alerts."""
        if not self.config.enabled("tampered-weights"):
            return []
        await self._index()
        findings = await self.tamper_findings(*(
            FileObservation(host=host, path=f.path, size=f.size, sha256=f.sha256)
            for f in getattr(inv, "files", ()) if f.form == "plaintext" and len(f.sha256) == 64))
        return await self.write_alerts(findings)

    async def _orders_round(self) -> list[Finding]:
        if not self.config.enabled("order-ack-missing"):
            return []

        executing: list[ExecutingOrder] = []
        for e in await self.store.range("orders/"):
            rec = decode_canonical(e.value)
            if rec["state"] != "executing":
                continue
            order = Order.decode(rec["body"].encode())
            hosts: dict[str, str] = {}
            for aid in order.artifacts:
                for c in await self.store.range(f"copies/{aid}/"):
                    copy = decode_canonical(c.value)
                    if copy["location_kind"] != "object-store" and copy["state"] != "gone" and copy["host"]:
                        hosts.setdefault(copy["host"], copy["model"])
            acked = frozenset(a.key.rsplit("/", 1)[1] for a in await self.store.range(f"orderacks/{rec['id']}/"))
            executing.append(ExecutingOrder(id=rec["id"], action=order.action, quorum_at_ns=int(rec["quorum_at_ns"]),
                                            hosts=hosts, acked=acked))
        return missing_acks(executing, now_ns=self.clock(), deadline_s=self.config.order_ack_deadline_s)

    async def _chain_round(self) -> list[Finding]:
        if not self.config.enabled("audit-chain-broken") or self.audit is None:
            return []
        now = self.clock()
        if now < self._chain_due_ns:
            return []
        self._chain_due_ns = now + self.config.audit_chain_interval_s * 1_000_000_000
        return await self.check_chain()

    async def check_chain(self) -> list[Finding]:
        """Verify the whole audit log against the checkpoints and the control plane's key."""
        # Checkpoints first: one signed after the events were read would look like a truncation.
        cps = await self.audit.checkpoints()
        stored = await self.audit.stored_events()
        # The writer's own checkpoint policy: a gap longer than it allows is a finding.
        result = await asyncio.to_thread(verify_log, stored, [(b, s) for _, b, s in cps],
                                         self.audit.signing_key.public_key(), policy=self.audit.policy)
        return chain_failure(result, now_ns=self.clock())

    async def write_alerts(self, findings: Iterable[Finding]) -> list[dict[str, Any]]:
        """Write each finding's alert unless it exists. Returns the alerts written."""
        alerts: dict[str, dict[str, Any]] = {}
        for f in findings:
            if self.config.enabled(f.rule) and f.id not in alerts:
                alerts[f.id] = f.alert(self.config.severity(f.rule))
        written = []
        pending = list(alerts.values())
        step = MAX_TXN_OPS // 2 - 1
        for i in range(0, len(pending), step):
            batch = pending[i:i + step]
            existing = await self.store.get_many([ALERTS_PREFIX + a["id"] for a in batch])
            fresh = [a for a in batch if ALERTS_PREFIX + a["id"] not in existing]
            if not fresh:
                continue
            txn = Txn(checks={ALERTS_PREFIX + a["id"]: 0 for a in fresh},
                      puts={ALERTS_PREFIX + a["id"]: encode_canonical(a) for a in fresh})
            if await self.store.commit(txn):
                written += fresh
            else:  # one of them appeared meanwhile: one by one
                for a in fresh:
                    key = ALERTS_PREFIX + a["id"]
                    if await self.store.commit(Txn(checks={key: 0}, puts={key: encode_canonical(a)})):
                        written.append(a)
        for a in written:
            log.warning("alert %s: %s", a["rule"], a["detail"][:300],
                        extra={"fields": {"alert": a["id"], "rule": a["rule"], "host": a["host"],
                                          "model": a["model"], "severity": a["severity"]}})
        return written


def _copy_key(aid: str, location: str) -> str:
    return f"copies/{aid}/{copy_id(aid, 'host-path', location, 'plaintext')}"
