"""Nobody waits in the dark: orders waiting for signatures go to the executives, and
reminders go out before an order or an access request expires (docs/access.md).

A periodic round (on the replica that leads the rules, like the notifier's dispatcher):

- ``order.proposed``: once per order in state ``proposed``, with the full order (action,
  models, artifact count, reason, expiry, its canonical body), the signatures so far and
  how many are missing;
- ``order.reminder``: once, when a proposed order has less than ``remind_before`` left;
- ``access.reminder``: once, when a pending access request has less than ``remind_before``
  left. (``access.requested`` itself is queued by the AccessService with the request.)

A short-lived order or request is reminded at half its lifetime if that comes later, so
that an order proposed for an hour is not "reminded" the moment it is proposed.

Each notification is queued in the notifier's outbox in one transaction with a create-only
marker, so two replicas, a retried round or a restart never send one twice:

    notify/sent/{kind}/{id}    {"at_ns", "expires_ns"}   (dropped a day after the expiry)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from custos.controlplane.access import REQUESTS, effective_state, view
from custos.controlplane.notify import Notifier
from custos.controlplane.periodic import pause, safe
from custos.controlplane.store.base import MAX_TXN_OPS, Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.orders import Order
from custos.errors import CustosError

log = logging.getLogger("custos.notify")

SENT_PREFIX = "notify/sent/"
NS = 1_000_000_000
KEEP_MARKERS_NS = 86400 * NS  # a marker outlives its subject's expiry by a day, then goes

Describe = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def remind_at(created_ns: int, expires_ns: int, remind_before_s: int) -> int:
    """When to remind: ``remind_before`` ahead of the expiry, but not before half the lifetime."""
    return max(expires_ns - remind_before_s * NS, created_ns + (expires_ns - created_ns) // 2)


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // NS))


class Reminders:
    """The round that queues ``order.proposed``, ``order.reminder`` and ``access.reminder``."""

    def __init__(self, store: Store, notifier: Notifier, *, describe: Describe | None = None,
                 remind_before_s: int | None = None, interval_s: float = 5.0,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.notifier = notifier
        self.describe = describe  # OrdersService.describe: who signed, what is missing
        self.remind_before_s = notifier.config.remind_before_s if remind_before_s is None else remind_before_s
        self.interval_s = interval_s
        self.clock = clock

    async def round(self) -> list[str]:
        """Queue what is due. Returns ``kind/id`` of each notification queued now."""
        if not self.notifier.sinks:
            return []
        now = self.clock()
        markers = await self.store.range(SENT_PREFIX)
        sent = {e.key for e in markers}
        old = [e.key for e in markers if int(decode_canonical(e.value)["expires_ns"]) + KEEP_MARKERS_NS < now]
        for i in range(0, len(old), MAX_TXN_OPS - 10):
            await self.store.commit(Txn(deletes=old[i:i + MAX_TXN_OPS - 10]))
        queued: list[str] = []

        async def send(kind: str, ident: str, expires_ns: int, payload: Mapping[str, Any], severity: str) -> None:
            key = f"{SENT_PREFIX}{kind}/{ident}"
            if key in sent:
                return
            puts = {key: encode_canonical({"at_ns": now, "expires_ns": expires_ns}),
                    **self.notifier.outbox_puts(kind, payload, severity=severity)}
            if await self.store.commit(Txn(checks={key: 0}, puts=puts)):
                queued.append(f"{kind}/{ident}")
                log.info("queued %s for %s", kind, ident[:16])

        for e in await self.store.range("orders/"):
            rec = dict(decode_canonical(e.value))
            if rec["state"] != "proposed":
                continue
            order = Order.decode(rec["body"].encode())
            expires_ns = order.not_after * NS
            if expires_ns <= now:
                continue
            severity = "high" if order.action in ("halt", "destroy") and not order.drill else "medium"
            info = await self._order_info(rec, order)
            await send("order.proposed", rec["id"], expires_ns, {
                "order": info, "summary": f"order {rec['id'][:16]} ({_what(order)}) proposed by "
                                          f"{rec['proposed_by']}: {_signatures(info)}; expires {iso(expires_ns)}"},
                severity)
            if self.remind_before_s and now >= remind_at(rec["proposed_at_ns"], expires_ns, self.remind_before_s):
                left = (expires_ns - now) // NS
                await send("order.reminder", rec["id"], expires_ns, {
                    "order": info, "seconds_left": left,
                    "summary": f"order {rec['id'][:16]} ({_what(order)}) expires in {_left(left)}: "
                               f"{_signatures(info)}"}, severity)

        if self.remind_before_s:
            for e in await self.store.range(REQUESTS):
                rec = dict(decode_canonical(e.value))
                if effective_state(rec, now) != "pending":
                    continue
                if now < remind_at(rec["created_ns"], rec["expires_ns"], self.remind_before_s):
                    continue
                v = view(rec, now)
                left = (rec["expires_ns"] - now) // NS
                await send("access.reminder", rec["id"], rec["expires_ns"], {
                    "request": v, "seconds_left": left,
                    "summary": f"access request {rec['id'][:16]} ({v['summary']}) needs "
                               f"{v['needed'] - len(v['counted'])} more approval(s) from {v['approver_role']} "
                               f"and expires in {_left(left)}"[:500]}, "medium")
        return queued

    async def _order_info(self, rec: dict[str, Any], order: Order) -> dict[str, Any]:
        info: dict[str, Any] = {
            "action": order.action, "artifacts": len(order.artifacts), "body": rec["body"], "drill": order.drill,
            "expires_unix": order.not_after, "id": rec["id"], "issued_unix": order.issued_at,
            "models": list(order.models), "proposed_by": rec["proposed_by"], "reason": order.reason,
            "signer_set_version": order.signer_set_version, "signed_by": [], "threshold": 0, "missing": 0,
        }
        if self.describe is not None:
            try:
                d = await self.describe(rec)
            except CustosError as exc:  # no signer set: say so, send the rest
                info["problems"] = [str(exc)[:200]]
            else:
                info.update(signed_by=list(d.get("signed_by", [])), threshold=int(d.get("threshold", 0)),
                            missing=int(d.get("missing", 0)))
        return info

    async def run(self, stop: asyncio.Event, is_leader: Callable[[], bool] = lambda: True) -> None:
        """A round every ``interval_s`` while this replica leads the rules."""
        while not stop.is_set():
            await pause(self.interval_s, stop)
            if is_leader() and not stop.is_set():
                await safe(self.round(), "reminders")


def _what(order: Order) -> str:
    models = ", ".join(order.models[:5]) + (", ..." if len(order.models) > 5 else "")
    return f"{'drill ' if order.drill and order.action != 'drill' else ''}{order.action} of {models}"


def _signatures(info: Mapping[str, Any]) -> str:
    if not info["threshold"]:
        return f"{len(info['signed_by'])} signature(s) so far"
    return f"{len(info['signed_by'])} of {info['threshold']} signatures, {info['missing']} missing"


def _left(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
