"""The order book: proposals, signatures, quorum detection, and the transaction that
executes an order at quorum (replay protection and the scoped models' new state).

Store keys:
    orders/{id}                 order record
    meta/orders                 {"next_sequence", "executed": ExecutedOrders}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from custos.controlplane.audit import AuditLog, Caller, Plan
from custos.controlplane.orders.chain import SignerChain
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Entry, Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.orders import ExecutedOrders, Order, OrderVerification, apply_executed, verify_order
from custos.core.signers import decode_signatures, encode_signatures
from custos.errors import FailedPrecondition, InvalidInput

META = "meta/orders"
EXECUTED_STATES = ("executing", "complete")  # states in which agents must have the order


def model_states(order: Order) -> dict[str, str]:
    """What executing the order does to each model in its signed scope. (A drill's
    signed scope holds only drill models and their derivatives: they really halt.)"""
    if order.action == "lift":
        return dict.fromkeys(order.models, "active")
    if order.action == "destroy":
        return dict.fromkeys(order.models, "destroyed")
    return dict.fromkeys(order.models, "halted")


async def all_records(store: Store) -> list[dict[str, Any]]:
    """Every order record in the Store."""
    return [dict(decode_canonical(e.value)) for e in await store.range("orders/")]


class OrderBook:
    """Orders from proposal to quorum. Executing is one audited transaction; what
    follows it (keys, leases, agents) is the effects' job."""

    def __init__(self, store: Store, registry: Registry, audit: AuditLog, signers: SignerChain, *,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.registry = registry
        self.audit = audit
        self.signers = signers
        self.clock = clock  # seconds; injectable so tests can pin "now"

    async def _meta(self) -> tuple[Entry | None, dict[str, Any]]:
        entry = await self.store.get(META)
        if entry is None:
            return None, {"executed": ExecutedOrders().encode().decode(), "next_sequence": 1}
        return entry, dict(decode_canonical(entry.value))

    async def propose(self, caller: Caller, *, action: str, models: list[str], reason: str,
                      expires_seconds: int, drill: bool) -> dict[str, Any]:
        """Create an order over ``models`` and all their derivatives; return its record.

        Raises InvalidInput, NotFound, FailedPrecondition, NoSignerSet.
        """
        if not models:
            raise InvalidInput("an order needs at least one model")
        if drill and action == "halt":
            action = "drill"  # a halt marked as a drill is a drill
        if drill and action == "destroy":
            raise InvalidInput("a destroy cannot be a drill")
        is_drill = action == "drill" or bool(drill)
        real_names: list[str] = list(models)
        dry_names: list[str] = []
        if is_drill:
            # A drill really halts only models registered as drill models (and what
            # derives from them); the rest of its scope runs in dry-run, unsigned.
            real_names, dry_names = [], []
            for name in models:
                (real_names if (await self.registry.get_model(name)).get("drill") else dry_names).append(name)
            if not real_names:
                raise InvalidInput("a drill needs at least one model registered with --drill")

        async def resolve(names: list[str]) -> tuple[list[str], list[str]]:
            out_models: list[str] = []
            out_artifacts: list[str] = []
            for name in names:
                m = await self.registry.get_model(name)
                if action == "lift" and m["state"] == "destroyed":
                    raise FailedPrecondition(f"model {name!r} was destroyed: a destroy cannot be lifted")
                ms, arts = await self.registry.derivative_scope(name)
                out_models += [x for x in ms if x not in out_models]
                out_artifacts += [a for a in arts if a not in out_artifacts]
            return out_models, out_artifacts

        scope_models, scope_artifacts = await resolve(real_names)
        dry_models, dry_artifacts = await resolve(dry_names)
        dry_models = [m for m in dry_models if m not in scope_models]
        dry_artifacts = [a for a in dry_artifacts if a not in scope_artifacts]
        current = await self.signers.current_set()

        async def plan() -> tuple[Plan, dict[str, Any]]:
            entry, meta = await self._meta()
            executed = ExecutedOrders.decode(meta["executed"].encode())
            seq = max(int(meta["next_sequence"]), executed.highest_sequence + 1)
            order = Order.create(
                action=action, models=scope_models, artifacts=scope_artifacts, reason=reason,
                issued_at=int(time.time()), sequence=seq, signer_set_version=current.version,
                lifetime=expires_seconds or 3600, drill=is_drill)
            record = {
                "body": order.encode().decode(), "completed_at_ns": 0, "id": order.id,
                "dry_run": {"artifacts": dry_artifacts, "models": dry_models},
                "problems": [], "proposed_at_ns": time.time_ns(), "proposed_by": caller.principal,
                "quorum_at_ns": 0, "signatures": "[]", "state": "proposed",
            }
            meta["next_sequence"] = seq + 1
            txn = Txn(checks={META: entry.mod_revision if entry else 0, f"orders/{order.id}": 0},
                      puts={META: encode_canonical(meta), f"orders/{order.id}": encode_canonical(record)})
            return Plan(txn), record

        return await self.audit.mutate(caller, "ProposeOrder", f"order/{action}", plan)

    async def get(self, order_id: str) -> dict[str, Any]:
        """The record of the order whose id starts with ``order_id``. Raises InvalidInput, NotFound."""
        entry = await self.store.find_by_id("order", "orders/", order_id, min_hex=8)
        return dict(decode_canonical(entry.value))

    async def verify(self, record: dict[str, Any]) -> OrderVerification:
        """Run the agents' verifier on a record against the Store. Raises NoSignerSet."""
        _, meta = await self._meta()
        executed = ExecutedOrders.decode(meta["executed"].encode())
        destroyed = {m["name"] for m in await self.registry.list_models() if m["state"] == "destroyed"}
        return verify_order(record["body"].encode(), decode_signatures(record["signatures"].encode()),
                            await self.signers.current_set(), now=int(self.clock()), state=executed,
                            destroyed_models=destroyed)

    async def describe(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its decoded order, who signed, and what is missing. Raises NoSignerSet."""
        order = Order.decode(record["body"].encode())
        out = {**record, "order": order}
        if record["state"] == "proposed":
            v = await self.verify(record)
            out["signed_by"], out["threshold"], out["missing"] = list(v.valid), v.threshold, v.missing
            problems = [f"{f.code}: {f.detail}" for f in v.failures if f.code != "threshold-not-met"]
            out["problems"] = problems
            if order.not_after <= int(self.clock()):
                out["state"] = "expired"
        else:
            sigs = decode_signatures(record["signatures"].encode())
            out["signed_by"] = sorted({s.key_id for s in sigs})
            out["threshold"], out["missing"] = len(out["signed_by"]), 0
        return out

    async def attach(self, caller: Caller, *, order_id: str, signatures: bytes) -> dict[str, Any]:
        """Add signatures and return the record; at quorum it is ``executing`` (its effects
        are the caller's to start). Raises InvalidInput, NotFound, FailedPrecondition."""
        new_sigs = decode_signatures(signatures)
        if not new_sigs:
            raise InvalidInput("no signatures given")
        rec0 = await self.get(order_id)
        oid = rec0["id"]

        async def plan() -> tuple[Plan, dict[str, Any]]:
            entry = await self.store.get(f"orders/{oid}")
            assert entry is not None
            record = dict(decode_canonical(entry.value))
            if record["state"] != "proposed":
                raise FailedPrecondition(f"order {oid[:16]} is {record['state']}: no more signatures needed")
            have = decode_signatures(record["signatures"].encode())
            seen = {(s.key_id, s.sig) for s in have}
            merged = have + [s for s in new_sigs if (s.key_id, s.sig) not in seen]
            record["signatures"] = encode_signatures(merged).decode()
            v = await self.verify(record)
            txn = Txn(checks={f"orders/{oid}": entry.mod_revision})
            result = f"signatures {len(v.valid)}/{v.threshold}"
            if v:
                order = v.raise_if_invalid()
                await self._execute(txn, record, order)
                result = f"quorum: executing {order.action} ({len(v.valid)}/{v.threshold} signatures)"
            else:
                bad = [f.code for f in v.failures if f.code != "threshold-not-met"]
                if bad:
                    result = "signatures recorded; not executable: " + ", ".join(bad)
            txn.puts[f"orders/{oid}"] = encode_canonical(record)
            return Plan(txn, result), record

        return await self.audit.mutate(caller, "AttachSignature", f"order/{oid}", plan)

    async def _execute(self, txn: Txn, record: dict[str, Any], order: Order) -> None:
        """Add to ``txn`` what quorum changes: the executed-orders state moves (replay
        protection), the order becomes ``executing``, the scoped models change state."""
        meta_entry, meta = await self._meta()
        executed = ExecutedOrders.decode(meta["executed"].encode())
        meta["executed"] = apply_executed(executed, order).encode().decode()
        txn.checks[META] = meta_entry.mod_revision if meta_entry else 0
        txn.puts[META] = encode_canonical(meta)
        record["state"] = "executing"
        record["quorum_at_ns"] = time.time_ns()
        for name, state in model_states(order).items():
            key = f"models/{name}"
            m_entry = await self.store.get(key)
            if m_entry is None:
                continue
            m = dict(decode_canonical(m_entry.value))
            m["state"] = state
            txn.checks[key] = m_entry.mod_revision
            txn.puts[key] = encode_canonical(m)
