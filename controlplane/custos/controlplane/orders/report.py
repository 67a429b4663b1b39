"""The completion report of an order, as data (rendered by custos.core.reports):
per enrolled host its ack or why there is none, and every scoped copy's final state."""

from __future__ import annotations

from typing import Any

from custos.controlplane.custody import Custody
from custos.controlplane.orders.acks import acks_prefix
from custos.controlplane.orders.book import OrderBook
from custos.controlplane.orders.fleet import NO_LEASE, copy_states, enrolled_hosts, host_leases
from custos.controlplane.store.base import Store
from custos.core.canonical import decode_canonical
from custos.core.orders import Order

COPY_FIELDS = ("artifact_id", "model", "location_kind", "location", "host", "form", "state", "evidence")


async def order_report(store: Store, custody: Custody, book: OrderBook, order_id: str) -> dict[str, Any]:
    """Everything the completion report needs, as data (see custos.core.reports).

    Raises InvalidInput, NotFound (the order), NoSignerSet.
    """
    record = await book.get(order_id)
    desc = await book.describe(record)
    order: Order = desc["order"]
    acks = {e.key.rsplit("/", 1)[1]: dict(decode_canonical(e.value))
            for e in await store.range(acks_prefix(record["id"]))}
    hosts = await enrolled_hosts(store)
    leases = await host_leases(store)
    host_rows = []
    for h in sorted(x for x in hosts if x):
        ack = acks.get(h)
        row: dict[str, Any] = {"host": h, "acked": ack is not None}
        if ack is not None and record["quorum_at_ns"]:
            row.update(outcome=ack["outcome"], verified=ack["verified"],
                       seconds_to_ack=max(0.0, (ack["recorded_ns"] - record["quorum_at_ns"]) / 1e9),
                       seconds_to_halt=max(0.0, (ack["done_ns"] - record["quorum_at_ns"]) / 1e9),
                       pids_stopped=ack["pids_stopped"], paths_wiped=ack["paths_wiped"],
                       remaining=ack["remaining"], would_stop=ack["would_stop"], reason=ack["reason"])
        else:
            lease = leases.get(h, NO_LEASE)
            row.update(outcome="unreachable" if h not in custody.streams else "pending",
                       lease_state=lease["state"], fail_closed_deadline_ns=lease["expires_ns"])
        host_rows.append(row)
    dry_run = record.get("dry_run") or {"artifacts": [], "models": []}
    copies = await copy_states(store, order.artifacts) + await copy_states(store, dry_run.get("artifacts", []))
    return {
        "order": {**order.to_json(), "id": order.id, "models": list(order.models),
                  "artifacts": list(order.artifacts)},
        "dry_run": dry_run,
        "state": desc["state"],
        "proposed_by": record["proposed_by"], "signed_by": desc["signed_by"],
        "quorum_at_ns": record["quorum_at_ns"], "completed_at_ns": record["completed_at_ns"],
        "hosts": host_rows,
        "copies": [{k: c[k] for k in COPY_FIELDS} for c in copies],
    }
