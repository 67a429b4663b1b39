"""The incident service: alerts correlated into AI safety incidents on the 72-hour reporting clock.

An alert (custos.controlplane.rules, or custody ingestion) joins the open
incident of the same model — or, without a model, of the same host — within
the correlation window, or opens a new one. An incident carries its category
under the chapter's definition of an artificial intelligence safety incident
(``c1``..``c4`` for 22602(c)(1)..(4)), ``discovered_at`` (its earliest alert)
and ``report_deadline`` = discovered + 72 hours (22603(g)); its status moves
``open -> triaged -> reported -> closed``.

Every change to an incident is one ``AuditLog.mutate``: the new record and an
audit event whose result is ``ok: `` + the canonical JSON of the change, so the
record is the fold of its events (custos.core.incidents ``apply_change``) and an
incident report can be rebuilt from the audit log alone (``rebuild_report``) and
compared with the server's (``IncidentService.export``). The service also
records, as such changes, the copies of the incident's artifacts on its hosts
and the orders touching its model (the actions taken), as they change.

Store keys:
    incidents/{id}          the incident record
    alertlinks/{alert-id}   {"incident": id}: which incident an alert joined
    incidentdrops/{id}      {"count": n}: alerts counted past the incident's cap (MAX_ALERTS), kept
                            apart so that counting them never rewrites the incident record; the
                            record read through the service is the two together
Specified in docs/incidents.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from custos.controlplane.audit import SYSTEM, AuditLog, Caller, Plan
from custos.controlplane.notify import Notifier
from custos.controlplane.rules.config import RulesConfig
from custos.controlplane.store.base import Store, Txn
from custos.core.audit_chain import Event, parse_events
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.incidents import (
    HOUR_NS,
    MAX_ACTIONS,
    MAX_ALERTS,
    MAX_COPIES,
    REPORT_WITHIN_NS,
    STATUSES,
    TRANSITIONS,
    apply_change,
    build_report,
    copy_summary,
    fit,
    incident_id_for,
    incident_view,
    iso,
    match_incident,
    payload_result,
    with_clock,
)
from custos.core.orders import Order
from custos.core.rules import CATEGORIES, DEFAULT_CATEGORY, RULES
from custos.errors import Conflict, FailedPrecondition, InvalidInput, NotFound

log = logging.getLogger("custos.incidents")
DROPS_PER_CHANGE = 50  # alerts past an incident's cap counted in one change (a link each)
DROPS_PREFIX = "incidentdrops/"
SLICE = 200  # alerts a correlation round handles between two returns to the event loop


def alert_summary(alert: Mapping[str, Any], config: RulesConfig) -> dict[str, Any]:
    """What an incident keeps of an alert (bounded: it travels in one audit event)."""
    rule = str(alert["rule"])
    spec = RULES.get(rule)
    return {
        "artifact_id": str(alert.get("artifact_id", ""))[:64], "at_ns": int(alert["at_ns"]),
        "category": spec.category if spec else DEFAULT_CATEGORY, "detail": str(alert.get("detail", ""))[:200],
        "evidence": [int(x) for x in alert.get("evidence", [])][:5], "host": str(alert.get("host", ""))[:128],
        "id": str(alert["id"]), "model": str(alert.get("model", "")),
        "principal": str(alert.get("principal", ""))[:128],
        "rule": rule, "severity": config.severity(rule, str(alert.get("severity", ""))),
    }


# -- the service: store adapter -------------------------------------------------------------------


class IncidentService:
    """Correlation, the incident records, status updates and reports."""

    def __init__(self, *, store: Store, audit: AuditLog, config: RulesConfig, notifier: Notifier | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.audit = audit
        self.config = config
        self.notifier = notifier
        self.clock = clock
        self._linked: set[str] | None = None
        self._ignored: set[str] = set()

    def forget(self) -> None:
        """Drop cached knowledge of which alerts are linked (another replica may have linked more)."""
        self._linked = None

    # -- reading ---------------------------------------------------------------------

    async def _states(self) -> list[dict[str, Any]]:
        drops = {e.key[len(DROPS_PREFIX):]: e for e in await self.store.range(DROPS_PREFIX)}
        return [_with_drops(decode_canonical(e.value), drops.get(e.key[len("incidents/"):]))
                for e in await self.store.range("incidents/")]

    async def resolve(self, ref: str) -> str:
        """Full id from an id or a unique prefix of 6+ hex digits. Raises InvalidInput, NotFound."""
        entry = await self.store.find_by_id("incident", "incidents/", ref, min_hex=6, max_hex=16)
        return entry.key[len("incidents/"):]

    async def state(self, ref: str) -> dict[str, Any]:
        iid = await self.resolve(ref)
        got = await self.store.get_many([f"incidents/{iid}", f"{DROPS_PREFIX}{iid}"])
        entry = got.get(f"incidents/{iid}")
        if entry is None:
            raise NotFound(f"incident {iid} not found")
        return _with_drops(decode_canonical(entry.value), got.get(f"{DROPS_PREFIX}{iid}"))

    async def get(self, ref: str) -> dict[str, Any]:
        return with_clock(incident_view(await self.state(ref)), self.clock())

    async def list_incidents(self, *, statuses: Sequence[str] = (), model: str = "",
                             include_closed: bool = False) -> list[dict[str, Any]]:
        """Incidents, most urgent first (unreported by deadline, then the rest). Raises InvalidInput."""
        bad = [s for s in statuses if s not in STATUSES]
        if bad:
            raise InvalidInput(f"unknown status {bad}: want {', '.join(STATUSES)}")
        now = self.clock()
        out = []
        for s in await self._states():
            v = with_clock(incident_view(s), now)
            if statuses and v["status"] not in statuses:
                continue
            if not statuses and not include_closed and v["status"] == "closed":
                continue
            if model and v["model"]["name"] != model:
                continue
            out.append(v)
        return sorted(out, key=lambda v: (v["status"] not in ("open", "triaged"), v["report_deadline_ns"], v["id"]))

    async def events(self) -> list[Event]:
        """Every event of the audit log."""
        return parse_events(await self.audit.stored_events())

    async def export(self, ref: str) -> dict[str, Any]:
        """The incident report (``build_report``) from the record and the audit log."""
        return build_report(await self.state(ref), await self.events())

    # -- changing ----------------------------------------------------------------------

    async def _change(self, caller: Caller, iid: str, action: str,
                      make: Callable[[dict[str, Any] | None], dict[str, Any]],
                      *, notify: Callable[[dict[str, Any], dict[str, Any]], tuple[str, dict[str, Any]] | None]
                      | None = None, extra: Mapping[str, bytes] | None = None,
                      checks: Mapping[str, int] | None = None) -> dict[str, Any]:
        key = f"incidents/{iid}"

        async def plan() -> tuple[Plan, dict[str, Any]]:
            created = [k for k, want in (checks or {}).items() if want == 0]
            if created and (taken := await self.store.get_many(created)):
                raise Conflict(f"{min(taken)} already exists")  # a create-only key: someone was first
            entry = await self.store.get(key)
            state = dict(decode_canonical(entry.value)) if entry else None
            payload = fit(make(state))
            new = apply_change(state, action, payload, caller.principal)
            txn = Txn(checks={key: entry.mod_revision if entry else 0, **(checks or {})},
                      puts={key: encode_canonical(new), **(extra or {})})
            if notify is not None and self.notifier is not None:
                msg = notify(new, payload)
                if msg is not None:
                    view = incident_view(new)
                    txn.puts.update(self.notifier.outbox_puts(msg[0], msg[1], severity=view["severity"]))
            return Plan(txn, payload_result(payload)), new

        return await self.audit.mutate(caller, action, f"incident/{iid}", plan)

    async def _model_snapshot(self, name: str) -> dict[str, Any]:
        snap = {"covered": False, "exemption": False, "name": name, "owner": "", "training_flops": ""}
        if name:
            entry = await self.store.get(f"models/{name}")
            if entry is not None:
                m = decode_canonical(entry.value)
                snap.update(covered=bool(m["covered"]), exemption=m.get("exemption") is not None,
                            owner=str(m["owner"])[:64], training_flops=str(m["training_flops"]))
        return snap

    async def _open(self, alert: dict[str, Any]) -> str:
        iid = incident_id_for(alert["id"])
        if await self.store.get(f"incidents/{iid}") is not None:
            return iid  # opened before a restart interrupted adding its first alert
        spec = RULES.get(alert["rule"])
        model = await self._model_snapshot(alert["model"])
        now = self.clock()

        def make(state: dict[str, Any] | None) -> dict[str, Any]:
            if state is not None:
                raise Conflict(f"incident {iid} already open")
            return {"category": alert["category"], "discovered_at_ns": alert["at_ns"], "id": iid,
                    "lookback_ns": self.config.attribution_lookback_s * 1_000_000_000, "model": model,
                    "note": f"opened by rule {alert['rule']}" + (f": {spec.summary}" if spec else ""),
                    "opened_at_ns": now, "report_deadline_ns": alert["at_ns"] + REPORT_WITHIN_NS}

        try:
            await self._change(SYSTEM, iid, "OpenIncident", make)
        except Conflict:
            pass
        log.warning("incident %s opened (%s, model %s): report due %s", iid, alert["category"],
                    alert["model"] or "-", iso(alert["at_ns"] + REPORT_WITHIN_NS),
                    extra={"fields": {"incident": iid, "category": alert["category"], "model": alert["model"]}})
        return iid

    async def _add_alert(self, iid: str, alert: dict[str, Any]) -> dict[str, Any]:
        """Add an alert to an incident below its cap; returns the record as committed."""
        link = f"alertlinks/{alert['id']}"

        def notify(new: dict[str, Any], payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            v = incident_view(new)
            first = len(new["alerts"]) == 1
            kind = "incident.opened" if first else "incident.alert"
            what = "opened" if first else "has a new alert"
            return kind, {"incident": notice(v), "alert": payload["alert"],
                          "summary": f"incident {iid} {what}: {alert['rule']} on {alert['host'] or '-'} "
                                     f"(model {alert['model'] or '-'}); report due {iso(v['report_deadline_ns'])}"}

        return await self._change(SYSTEM, iid, "AddIncidentAlert", _const({"alert": alert}), notify=notify,
                                  extra={link: encode_canonical({"incident": iid})}, checks={link: 0})

    async def _drop_alerts(self, iid: str, alerts: list[dict[str, Any]]) -> None:
        """Alerts joining an incident that already lists MAX_ALERTS: counted, linked, in one change
        (one a storm's alert, each rewriting the whole record and sending a notification, held the
        event loop for minutes) that writes the incident's drop count, not its record (a ~250 KB
        record rewritten for every 50 of a fleet's 150,000 alerts held it for minutes again).
        If another replica linked one meanwhile, each goes alone."""
        links = {f"alertlinks/{a['id']}": encode_canonical({"incident": iid}) for a in alerts}
        key = f"{DROPS_PREFIX}{iid}"
        payload = {"count": len(alerts)}

        async def plan() -> tuple[Plan, None]:
            if taken := await self.store.get_many(list(links)):
                raise Conflict(f"{min(taken)} already exists")
            entry = await self.store.get(key)
            count = int(decode_canonical(entry.value)["count"]) if entry else 0
            txn = Txn(checks={key: entry.mod_revision if entry else 0, **dict.fromkeys(links, 0)},
                      puts={key: encode_canonical({"count": count + len(alerts)}), **links})
            return Plan(txn, payload_result(payload)), None

        try:
            await self.audit.mutate(SYSTEM, "DropIncidentAlerts", f"incident/{iid}", plan)
        except Conflict:
            if len(alerts) > 1:
                for a in alerts:
                    await self._drop_alerts(iid, [a])
                return
            # linked by another replica
        if self._linked is not None:
            self._linked.update(a["id"] for a in alerts)  # only once linked in the Store

    async def correlate(self) -> list[str]:
        """Every alert not yet in an incident joins one (or opens one). Returns the incidents touched."""
        if self._linked is None:
            self._linked = {e.key[len("alertlinks/"):] for e in await self.store.range("alertlinks/")}
        unseen = [e for e in await self.store.range("alerts/")
                  if e.key[len("alerts/"):] not in self._linked and e.key[len("alerts/"):] not in self._ignored]
        fresh = []
        # A slice at a time, each back to the event loop (a fleet's first contact leaves
        # 150,000 alerts: decoded and checked at once, they held it for seconds).
        for i in range(0, len(unseen), SLICE):
            candidates = []
            for e in unseen[i:i + SLICE]:
                aid = e.key[len("alerts/"):]
                a = decode_canonical(e.value)
                setting = self.config.setting(str(a.get("rule", "")))
                if not setting.enabled or not setting.incident:
                    self._ignored.add(aid)
                    continue
                candidates.append((aid, a))
            linked = await self.store.get_many([f"alertlinks/{aid}" for aid, _ in candidates])
            for aid, a in candidates:
                if f"alertlinks/{aid}" in linked:
                    self._linked.add(aid)  # linked by another replica since we last looked
                    continue
                fresh.append(alert_summary(a, self.config))
            await asyncio.sleep(0)
        # Alerts naming a model first, so that a model-less alert on the same host finds their incident.
        fresh.sort(key=lambda a: (a["model"] == "", a["at_ns"], a["id"]))
        touched: list[str] = []
        window_ns = self.config.correlation_window_s * 1_000_000_000
        states = {s["id"]: s for s in await self._states()} if fresh else {}
        # Each incident's view once a round, and again only when an alert joined it: with
        # thousands of fresh alerts and open incidents, one view of every incident per alert
        # held the event loop for minutes (streams, unwraps and all).
        views = {iid: incident_view(s) for iid, s in states.items()}
        dropping: dict[str, list[dict[str, Any]]] = {}  # incident at its cap -> alerts to count
        for n, alert in enumerate(fresh):
            if n % SLICE == SLICE - 1:
                await asyncio.sleep(0)
            iid = match_incident(alert, views.values(), window_ns)
            if iid is None:
                iid = await self._open(alert)
            elif len(states[iid]["alerts"]) >= MAX_ALERTS:
                dropping.setdefault(iid, []).append(alert)
                if len(dropping[iid]) >= DROPS_PER_CHANGE:
                    await self._drop_alerts(iid, dropping.pop(iid))
                touched.append(iid)
                continue
            try:
                states[iid] = await self._add_alert(iid, alert)  # (its count past the cap: not read here)
            except Conflict:
                states[iid] = await self.state(iid)  # linked meanwhile (another replica)
            self._linked.add(alert["id"])
            views[iid] = incident_view(states[iid])
            touched.append(iid)
        for iid, alerts in dropping.items():
            await self._drop_alerts(iid, alerts)
        return list(dict.fromkeys(touched))

    async def refresh(self) -> None:
        """Record changes of the affected copies and of the orders touching each open
        incident's model; warn once under 24 h and once overdue."""

        now = self.clock()
        orders = []
        for e in await self.store.range("orders/"):
            rec = decode_canonical(e.value)
            orders.append((rec, Order.decode(rec["body"].encode())))
        for state in await self._states():
            v = incident_view(state)
            if v["status"] == "closed":
                continue
            want: dict[str, dict[str, Any]] = {}
            for aid in v["artifacts"]:
                for c in await self.store.range(f"copies/{aid}/"):
                    copy_rec = decode_canonical(c.value)
                    if copy_rec["host"] in v["hosts"]:
                        want[copy_rec["id"]] = fit({"copy": copy_summary(copy_rec)})["copy"]
            have = {c["id"]: c for c in v["copies"]}
            for cid, summary in sorted(want.items()):
                if have.get(cid) != summary and (cid in have or len(have) < MAX_COPIES):
                    await self._change(SYSTEM, v["id"], "RecordIncidentCopy", _const({"copy": summary}))
            acts = {o["id"]: o for o in v["actions"]}
            for rec, order in orders:
                if not v["model"]["name"] or v["model"]["name"] not in order.models:
                    continue
                if rec["proposed_at_ns"] < v["discovered_at_ns"] - v["lookback_ns"]:
                    continue  # long before the incident (the attribution lookback): not about it
                st = rec["state"]
                if st == "proposed" and order.not_after <= now // 1_000_000_000:
                    st = "expired"
                summary = {"action": order.action, "drill": bool(order.drill), "id": rec["id"],
                           "models": list(order.models)[:8], "state": st}
                if acts.get(rec["id"]) != summary and (rec["id"] in acts or len(acts) < MAX_ACTIONS):
                    await self._change(SYSTEM, v["id"], "RecordIncidentAction", _const({"order": summary}))
            if v["status"] in ("open", "triaged"):
                left = v["report_deadline_ns"] - now
                warning = "overdue" if left <= 0 else "under-24h" if left < 24 * HOUR_NS else None
                if warning and warning not in v["warnings"]:
                    def deadline_notice(new: dict[str, Any], payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
                        nv = incident_view(new)
                        text = "is OVERDUE" if payload["warning"] == "overdue" else "is due in under 24 hours"
                        return "incident.deadline", {
                            "incident": notice(nv), "warning": payload["warning"],
                            "summary": f"incident {nv['id']} report {text}: deadline {iso(nv['report_deadline_ns'])}"}

                    change = {"seconds_left": int(left // 1_000_000_000), "warning": warning}
                    await self._change(SYSTEM, v["id"], "IncidentDeadlineWarning", _const(change),
                                       notify=deadline_notice)

    async def update(self, caller: Caller, *, ref: str, status: str = "", note: str = "",
                     category: str = "") -> dict[str, Any]:
        """Move an incident along ``open -> triaged -> reported -> closed``, change its category,
        or add a note. Audited, refused or not. Raises InvalidInput, NotFound, FailedPrecondition."""
        iid = await self.resolve(ref)
        note = (note or "").strip()
        now = self.clock()

        def make(state: dict[str, Any] | None) -> dict[str, Any]:
            if state is None:
                raise NotFound(f"incident {iid} not found")
            cur = state["status"]
            new = status or cur
            if new not in STATUSES:
                raise InvalidInput(f"unknown status {status!r}: want {', '.join(STATUSES)}")
            if category and category not in CATEGORIES:
                raise InvalidInput(f"unknown category {category!r}: want c1, c2, c3 or c4 (22602(c)(1)-(4))")
            if len(note) > 300 or any(ord(ch) < 0x20 for ch in note):
                raise InvalidInput("note: at most 300 printable characters")
            if new != cur and new not in TRANSITIONS[cur]:
                allowed = ", ".join(TRANSITIONS[cur]) or "nothing (closed)"
                raise FailedPrecondition(f"incident {iid} is {cur}: it can move to {allowed}")
            if new == cur and not category and not note:
                raise InvalidInput("nothing to change: give a new status, a category or a note")
            if cur == "closed":
                raise FailedPrecondition(f"incident {iid} is closed")
            if new == "closed" and cur in ("open", "triaged") and not note:
                raise InvalidInput("closing an unreported incident needs a note saying why it is not reportable")
            if category and category != state["category"] and not note:
                raise InvalidInput("changing the category needs a note saying why")
            return {"at_ns": now, "category": category if category != state["category"] else "",
                    "from": cur, "note": note, "status": new}

        def notify(new: dict[str, Any], payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            v = incident_view(new)
            return "incident.updated", {
                "incident": notice(v), "change": payload,
                "summary": f"incident {iid} {payload['from']} -> {payload['status']} by {caller.principal}"}

        state = await self._change(caller, iid, "UpdateIncident", make, notify=notify)
        return with_clock(incident_view(state), self.clock())


def _with_drops(record: Mapping[str, Any], drops: Any) -> dict[str, Any]:
    """An incident as its audit events fold it: the record with the alerts counted past its cap."""
    state = dict(record)
    if drops is not None:
        state["alerts_dropped"] = int(state["alerts_dropped"]) + int(decode_canonical(drops.value)["count"])
    return state


def _const(payload: dict[str, Any]) -> Callable[[dict[str, Any] | None], dict[str, Any]]:
    def make(state: dict[str, Any] | None) -> dict[str, Any]:
        return payload

    return make


def notice(v: Mapping[str, Any]) -> dict[str, Any]:
    """What a notification says about an incident."""
    return {"alerts": len(v["alerts"]), "category": v["category"], "category_title": v["category_title"],
            "discovered_at": iso(v["discovered_at_ns"]), "hosts": v["hosts"], "id": v["id"],
            "model": v["model"]["name"], "report_deadline": iso(v["report_deadline_ns"]),
            "severity": v["severity"], "status": v["status"]}
