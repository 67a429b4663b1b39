"""The completion report of an order, as data (rendered by custos.core.reports):
per enrolled host its ack or why there is none, and every scoped copy's final state.

:func:`signed_report` makes the signed form (custos.core.evidence): the order with its
signatures and signer-set chain, every ack with its evidence, signature and certificate,
the per-host result, counts and verdict, signed by the control plane's report key — what
``custos order verify-report`` checks offline.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from custos.controlplane.custody import Custody
from custos.controlplane.orders.acks import acks_prefix
from custos.controlplane.orders.book import EXECUTED_STATES, OrderBook
from custos.controlplane.orders.chain import SignerChain
from custos.controlplane.orders.fleet import NO_LEASE, copy_states, enrolled_hosts, host_leases
from custos.controlplane.orders.report_signer import ReportSigner
from custos.controlplane.store.base import Store
from custos.core.canonical import decode_canonical
from custos.core.evidence import ChainEntry, HostAck, report_body, report_signature_input, seal_report
from custos.core.orders import Order
from custos.errors import FailedPrecondition

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
                       evidence_verified=bool(ack.get("evidence_verified", False)),
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


def _bytes(text: str, decode: Any) -> bytes:
    try:
        return bytes(decode(text))
    except (ValueError, binascii.Error):
        return b""  # not what was stored by this control plane: shown as unverifiable


async def signed_report(store: Store, custody: Custody, book: OrderBook, chain: SignerChain,
                        signer: ReportSigner | None, order_id: str) -> bytes:
    """The signed report file of an executing or complete order (custos.core.evidence).

    Raises InvalidInput, NotFound (the order), FailedPrecondition (no report key, an order
    without its quorum, a signer-set version not installed), BackendUnavailable (Transit).
    """
    if signer is None:
        raise FailedPrecondition("no report key is configured on this control plane ([keys] report_key): "
                                 "signed reports are refused")
    record = await book.get(order_id)
    if record["state"] not in EXECUTED_STATES:
        raise FailedPrecondition(f"order {record['id'][:16]} is {record['state']}: only an order that reached "
                                 "its quorum has a signed report")
    order = Order.decode(record["body"].encode())
    versions = await chain.load()
    if len(versions) < order.signer_set_version:
        raise FailedPrecondition(f"signer-set version {order.signer_set_version} is not installed here")
    acks = {e.key.rsplit("/", 1)[1]: dict(decode_canonical(e.value))
            for e in await store.range(acks_prefix(record["id"]))}
    leases = await host_leases(store)
    cutoff = record.get("completed_at_ns") or time.time_ns()
    hosts = set(acks)
    for e in await store.range("hosts/"):
        h = decode_canonical(e.value)
        if h["state"] == "enrolled" and int(h.get("enrolled_at_ns", 0)) <= cutoff:
            hosts.add(h["name"])
    rows = []
    for h in sorted(hosts):
        ack = acks.get(h)
        if ack is None:
            lease = leases.get(h, NO_LEASE)
            why = "pending" if h in custody.streams else f"unreachable (lease {lease['state']})"
            rows.append(HostAck(host=h, problem=why))
            continue
        rows.append(HostAck(
            host=h, acked=True, evidence=str(ack.get("evidence", "")).encode(),
            signature=_bytes(str(ack.get("evidence_signature", "")), bytes.fromhex),
            certificate=_bytes(str(ack.get("host_certificate", "")), lambda t: base64.b64decode(t, validate=True)),
            recorded_ns=int(ack.get("recorded_ns", 0)), verified=bool(ack.get("evidence_verified", False)),
            problem="" if ack.get("evidence_verified") else str(ack.get("evidence_problem") or "unsigned ack")))
    dry_run = record.get("dry_run") or {"artifacts": [], "models": []}
    copies = await copy_states(store, order.artifacts) + await copy_states(store, dry_run.get("artifacts", []))
    register = record.get("drill_register") or {"body": "", "signatures": ""}
    body = report_body(
        order_body=record["body"].encode(), order_signatures=record["signatures"].encode(),
        signer_chain=[ChainEntry(set=s, signatures=g) for s, g in versions[:order.signer_set_version]],
        drill_register=(register["body"].encode(), register["signatures"].encode()), dry_run=dry_run,
        state=record["state"], quorum_at_ns=record["quorum_at_ns"], completed_at_ns=record["completed_at_ns"],
        made_at_ns=time.time_ns(), rows=rows, copies=copies, signer=signer.label)
    signature = await signer.sign(report_signature_input(body))
    return seal_report(body, signature=signature, public_key=signer.public_key())
