"""The order book: proposals, signatures, quorum detection, and the transaction that
executes an order at quorum (replay protection and the scoped models' new state).

Two promises are kept here, not by the registry's current state:

- thresholds cannot be borrowed: a drill's signed scope holds only what the signed drill
  register declares (orders.drills); the rest of what it reaches runs in dry-run;
- destroy is final: a destroy's models and artifacts go into ``meta/destroyed``, which no
  later order rewrites; every later execution leaves them destroyed.

Store keys:
    orders/{id}                 order record
    meta/orders                 {"next_sequence", "executed": ExecutedOrders}
    meta/destroyed              {"artifacts": [...], "models": [...]} — only ever grows
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from custos.controlplane.audit import AuditLog, Caller, Plan
from custos.controlplane.orders.chain import SignerChain
from custos.controlplane.orders.drills import DrillRegistry, register_scope
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Entry, Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.orders import ExecutedOrders, Order, OrderReason, OrderVerification, apply_executed, verify_order
from custos.core.signers import decode_signatures, encode_signatures
from custos.errors import FailedPrecondition, InvalidInput

META = "meta/orders"
DESTROYED = "meta/destroyed"
EXECUTED_STATES = ("executing", "complete")  # states in which agents must have the order


def model_states(order: Order, destroyed: Collection[str] = ()) -> dict[str, str]:
    """What executing the order does to each model in its signed scope. (A drill's
    signed scope holds only declared drill models: they really halt.) A model in
    ``destroyed`` stays destroyed whatever the order."""
    state = {"lift": "active", "destroy": "destroyed"}.get(order.action, "halted")
    return {m: "destroyed" if m in destroyed else state for m in order.models}


async def destroyed_sets(store: Store) -> tuple[Entry | None, set[str], set[str]]:
    """(entry, destroyed models, destroyed artifacts) as the destroys recorded them."""
    entry = await store.get(DESTROYED)
    if entry is None:
        return None, set(), set()
    rec = decode_canonical(entry.value)
    return entry, set(rec["models"]), set(rec["artifacts"])


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
        self.drills = DrillRegistry(store, registry, audit, signers)
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
        _, gone_models, gone_artifacts = await destroyed_sets(self.store)
        scope_models: list[str] = []
        scope_artifacts: list[str] = []
        for name in models:
            m = await self.registry.get_model(name)
            if action == "lift" and (m["state"] == "destroyed" or name in gone_models):
                raise FailedPrecondition(f"model {name!r} was destroyed: a destroy cannot be lifted")
            ms, arts = await self.registry.derivative_scope(name)
            scope_models += [x for x in ms if x not in scope_models]
            scope_artifacts += [a for a in arts if a not in scope_artifacts]
        if action == "lift":
            # A lift of a model reaches its live derivatives only: what was destroyed stays so.
            scope_models = [x for x in scope_models if x not in gone_models]
            scope_artifacts = [a for a in scope_artifacts if a not in gone_artifacts]
        dry_models: list[str] = []
        dry_artifacts: list[str] = []
        if is_drill:
            # Thresholds cannot be borrowed: a drill really halts only what the signed
            # drill register declares; whatever else it reaches (a production model
            # derived from the drill model, a production model named with it) runs in
            # dry-run, unsigned: agents report what they would stop and stop nothing.
            register = await self.drills.trusted()
            scope_models, scope_artifacts, dry_models, dry_artifacts = register_scope(
                register, scope_models, scope_artifacts)
            if not scope_models:
                raise InvalidInput(
                    "a drill needs at least one model declared in the signed drill register "
                    "(custos model register --drill, then custos drill declare)")
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
        """Run the agents' verifier on a record against the Store: its replay state, what
        destroys recorded, the signed drill register. Raises NoSignerSet."""
        _, meta = await self._meta()
        executed = ExecutedOrders.decode(meta["executed"].encode())
        _, gone_models, gone_artifacts = await destroyed_sets(self.store)
        gone_models |= {m["name"] for m in await self.registry.list_models() if m["state"] == "destroyed"}
        return verify_order(record["body"].encode(), decode_signatures(record["signatures"].encode()),
                            await self.signers.current_set(), now=int(self.clock()), state=executed,
                            destroyed_models=gone_models, destroyed_artifacts=gone_artifacts,
                            drill_register=await self.drills.trusted())

    async def describe(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its decoded order, who signed, and what is missing. Raises NoSignerSet."""
        order = Order.decode(record["body"].encode())
        out = {**record, "order": order}
        if record["state"] == "proposed":
            v = await self.verify(record)
            out["signed_by"], out["threshold"], out["missing"] = list(v.valid), v.threshold, v.missing
            problems = [f"{f.code}: {f.detail}" for f in v.failures if f.code != OrderReason.THRESHOLD_NOT_MET]
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
                bad = [f.code for f in v.failures if f.code != OrderReason.THRESHOLD_NOT_MET]
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
        # The register the order was checked against goes to the agents with it.
        reg_body, reg_sigs, _ = await self.drills.stored()
        record["drill_register"] = {"body": reg_body.decode(), "signatures": encode_signatures(reg_sigs).decode()}
        gone_entry, gone_models, gone_artifacts = await destroyed_sets(self.store)
        if order.action == "destroy":
            # Kept apart from the models' current state, so no later order can erase it.
            gone_models |= set(order.models)
            gone_artifacts |= set(order.artifacts)
            txn.checks[DESTROYED] = gone_entry.mod_revision if gone_entry else 0
            txn.puts[DESTROYED] = encode_canonical({"artifacts": sorted(gone_artifacts),
                                                    "models": sorted(gone_models)})
        for name, state in model_states(order, gone_models).items():
            key = f"models/{name}"
            m_entry = await self.store.get(key)
            if m_entry is None:
                continue
            m = dict(decode_canonical(m_entry.value))
            m["state"] = state
            if order.action in ("halt", "destroy"):
                # Every access grant on the model ends here, in the order's own transaction
                # (custos.controlplane.access); a later lift does not bring one back.
                m["access_epoch"] = int(m.get("access_epoch", 0)) + 1
            txn.checks[key] = m_entry.mod_revision
            txn.puts[key] = encode_canonical(m)
