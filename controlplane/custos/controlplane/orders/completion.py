"""Completion: deciding when an executing order is complete, and completing it.

An order completes when every known copy of a scoped artifact is in a final
state: the host acked (halted and wiped, stopped, or residual with a reason),
ciphertext crypto-shredded or its key suspended, or the host is unreachable past
its fail-closed deadline.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from custos.controlplane.audit import SYSTEM, AuditLog
from custos.controlplane.custody import Custody
from custos.controlplane.orders.acks import ack_key, acks_prefix
from custos.controlplane.orders.fleet import NO_LEASE, copy_states, enrolled_among, leases_of
from custos.controlplane.store.base import Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.orders import Order

FINAL_COPY_STATES = ("wiped", "stopped", "shredded", "key-suspended", "fail-closed", "residual", "gone",
                     "dry-run", "lifted")


class Completion:
    """Checks an order's copies host by host and, once all are final, completes it (audited)."""

    def __init__(self, store: Store, audit: AuditLog, custody: Custody) -> None:
        self.store = store
        self.audit = audit
        self.custody = custody

    async def check(self, oid: str) -> bool:
        """Complete when every host holding a scoped copy acked, or is unreachable past
        its fail-closed deadline (its copies are then marked ``fail-closed``)."""
        entry = await self.store.get(f"orders/{oid}")
        if entry is None:
            return False
        record = dict(decode_canonical(entry.value))
        if record["state"] != "executing":
            return record["state"] == "complete"
        if not record.get("effects_done_ns"):
            return False  # keys, ciphertext and leases first
        order = Order.decode(record["body"].encode())
        done = True
        if order.action != "lift":
            real = set(order.models)
            now = time.time_ns()
            by_host: dict[str, list[dict[str, Any]]] = {}
            for c in await copy_states(self.store, order.artifacts):
                if c["location_kind"] != "object-store" and c["state"] != "gone":
                    by_host.setdefault(c["host"], []).append(c)
            # Only the hosts holding copies are read, not the fleet: this runs every sweep.
            acked = await self.store.get_many([ack_key(oid, h) for h in by_host])
            waiting = [h for h in by_host if ack_key(oid, h) not in acked]
            leases = await leases_of(self.store, waiting)
            enrolled = await enrolled_among(self.store, waiting)
            for host in waiting:
                copies = by_host[host]
                if host not in enrolled:
                    # No custody agent can act there: the copy is residual, for people to deal with.
                    await self._settle(copies, real, "residual",
                                       f"order {oid[:16]}: no custody agent is enrolled on {host}; "
                                       "this copy must be removed by hand")
                    continue
                lease = leases.get(host, NO_LEASE)
                if host not in self.custody.streams and lease["expires_ns"] < now:
                    await self._settle(copies, real, "fail-closed",
                                       f"order {oid[:16]}: host unreachable; its custody lease expired at "
                                       f"{lease['expires_ns']} and its agent halts on its own")
                    continue
                done = False
        if done:
            acks = await self.store.range(acks_prefix(oid))
            digest = hashlib.sha256(b"".join(e.key.encode() + b"\x00" + e.value + b"\x00" for e in acks)).hexdigest()
            record["state"] = "complete"
            record["completed_at_ns"] = time.time_ns()
            record["acks_digest"] = digest
            if await self.store.commit(Txn(checks={f"orders/{oid}": entry.mod_revision},
                                           puts={f"orders/{oid}": encode_canonical(record)})):
                await self.audit.record(SYSTEM, "CompleteOrder", f"order/{oid}",
                                        f"every copy in a final state; {len(acks)} acks, sha256 {digest}")
        return done

    async def _settle(self, copies: list[dict[str, Any]], real: set[str], state: str, evidence: str) -> None:
        """Put the copies of really-ordered models that are not final yet into ``state``."""
        for c in copies:
            if c["model"] in real and c["state"] not in FINAL_COPY_STATES:
                c["state"] = state
                c["evidence"] = evidence
                await self.store.commit(Txn(puts={
                    f"copies/{c['artifact_id']}/{c['id']}": encode_canonical(c)}))
