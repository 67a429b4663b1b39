"""Quorum-signed orders: proposal, signatures, execution at quorum, acks, reports.

The control plane runs the same pure verifier as the agents (custos.core.orders)
against the signer set in the Store, and executes an order only when it
verifies. Execution, in this order:

1. one transaction (with its audit event): the executed-orders state moves
   (replay protection), the order becomes ``executing``, the scoped models
   become ``halted`` (lift: ``active``; destroy: ``destroyed``) — from this
   moment every unwrap for them is refused;
2. side effects, idempotent and resumed after a restart: Transit keys suspended
   (halt, drill of the drill model), resumed (lift) or deleted with the
   ciphertext objects (destroy); leases of hosts holding scoped copies revoked;
3. the signed order goes down every agent stream (and to agents that connect
   later), where each agent verifies it again before acting.

An order completes when every known copy of a scoped artifact is in a final
state: the host acked (halted and wiped, stopped, or residual with a reason),
ciphertext crypto-shredded or its key suspended, or the host is unreachable past
its fail-closed deadline.

Store keys:
    signers/{version:06d}       {"set": canonical set, "signatures": rotation signatures}
    orders/{id}                 order record
    orderacks/{id}/{host}       an agent's ack with evidence
    meta/orders                 {"next_sequence", "executed": ExecutedOrders}
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from custos.client.signerkeys import load_private_key, save_private_key
from custos.controlplane.audit import SYSTEM, Caller, Plan
from custos.controlplane.custody import Custody
from custos.controlplane.periodic import every
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.orders import ExecutedOrders, Order, apply_executed, verify_order
from custos.core.signers import (
    DEV_SIGNER_NAMES,
    DEV_THRESHOLDS,
    SignerKey,
    SignerSet,
    decode_signatures,
    encode_signatures,
    generate_ed25519,
    verify_rotation,
)
from custos.errors import Conflict, CustosError, FailedPrecondition, InvalidInput, NotFound
from custos.fs.private import private_dir
from custos.v1 import custody_pb2

log = logging.getLogger("custos.orders")

META = "meta/orders"
FINAL_COPY_STATES = ("wiped", "stopped", "shredded", "key-suspended", "fail-closed", "residual", "gone",
                     "dry-run", "lifted")


class NoSignerSet(FailedPrecondition):
    """No signer set is installed: orders are impossible until one is bootstrapped."""


def bootstrap_dev_signers(directory: Path) -> SignerSet:
    """Create exec1..exec5 (no passphrase, development only) and signer set v1."""
    private_dir(directory)
    keys = []
    for name in DEV_SIGNER_NAMES:
        path = directory / f"{name}.key"
        if path.exists():

            priv = load_private_key(path, None)
        else:
            priv = generate_ed25519()
            save_private_key(path, priv, None)
        keys.append(SignerKey.from_ed25519(priv.public_key(), name=name))
    return SignerSet.bootstrap(keys, thresholds=DEV_THRESHOLDS)


class OrdersService:
    def __init__(self, registry: Registry, custody: Custody, *, keys: Any, blobs: Any,
                 clock: Any = time.time) -> None:
        self.clock = clock  # seconds; injectable so tests can pin "now"
        self.registry = registry
        self.store = registry.store
        self.audit = registry.audit
        self.custody = custody
        self.keys = keys
        self.blobs = blobs
        self._effects: dict[str, asyncio.Task[None]] = {}
        custody.on_ack = self.enqueue_ack
        self._acks: asyncio.Queue[tuple[str, Any, int]] = asyncio.Queue()
        custody.on_attach = self._on_attach
        custody.signer_set = self._pinned_bytes_cached
        self._pinned_cache = b""
        self._chain_cache: list[tuple[bytes, bytes]] = []
        self._sent: dict[str, set[str]] = {}  # order id -> hosts whose current stream has it

    # -- signer sets ----------------------------------------------------------------

    async def install_bootstrap(self, signer_set: SignerSet) -> None:
        """Install version 1 if no set is installed yet (idempotent, audited)."""
        if signer_set.version != 1:
            raise InvalidInput("only a version-1 signer set can be bootstrapped")
        if await self.store.get("signers/000001") is not None:
            await self._refresh_pinned()
            return

        async def plan() -> tuple[Plan, None]:
            value = encode_canonical({"set": signer_set.encode().decode(), "signatures": "[]"})
            return Plan(Txn(checks={"signers/000001": 0}, puts={"signers/000001": value})), None

        try:
            await self.audit.mutate(SYSTEM, "BootstrapSignerSet", f"signer-set/{signer_set.id[:16]}", plan)
        except Conflict:
            pass
        await self._refresh_pinned()

    async def _refresh_pinned(self) -> None:
        entry = await self.store.get("signers/000001")
        self._pinned_cache = decode_canonical(entry.value)["set"].encode() if entry else b""

    def _pinned_bytes_cached(self) -> bytes:
        """Version 1: what a newly enrolled agent pins (it follows rotations from there)."""
        return self._pinned_cache

    async def chain(self) -> list[tuple[bytes, bytes]]:
        """Every installed version, oldest first: (canonical set bytes, rotation signatures)."""
        out = []
        for e in await self.store.range("signers/"):
            rec = decode_canonical(e.value)
            out.append((rec["set"].encode(), rec["signatures"].encode()))
        return out

    async def current_set(self) -> SignerSet:
        chain = await self.chain()
        if not chain:
            raise NoSignerSet("no signer set installed: orders cannot be verified")
        return SignerSet.decode(chain[-1][0])

    async def rotate(self, caller: Caller, *, new_set: bytes, signatures: bytes) -> SignerSet:
        """Install version n+1 if signed by a rotate threshold of n and of its own keys.

        Raises RotationRejected (IntegrityError), InvalidInput, NoSignerSet.
        """
        async def plan() -> tuple[Plan, SignerSet]:
            current = await self.current_set()
            sigs = decode_signatures(signatures)
            accepted = verify_rotation(current, new_set, sigs).raise_if_invalid()
            key = f"signers/{accepted.version:06d}"
            value = encode_canonical({"set": new_set.decode(), "signatures": encode_signatures(sigs).decode()})
            return Plan(Txn(checks={key: 0}, puts={key: value})), accepted

        return await self.audit.mutate(caller, "RotateSignerSet", "signer-set", plan)

    # -- proposal and signatures ------------------------------------------------------

    async def _meta(self) -> tuple[Any, dict[str, Any]]:
        entry = await self.store.get(META)
        if entry is None:
            return None, {"executed": ExecutedOrders().encode().decode(), "next_sequence": 1}
        return entry, dict(decode_canonical(entry.value))

    async def propose(self, caller: Caller, *, action: str, models: list[str], reason: str,
                      expires_seconds: int, drill: bool) -> dict[str, Any]:
        """Create an order over ``models`` and all their derivatives. Raises InvalidInput, NotFound."""
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
        current = await self.current_set()

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

        record = await self.audit.mutate(caller, "ProposeOrder", f"order/{action}", plan)
        return await self.describe(record)

    async def get(self, order_id: str) -> dict[str, Any]:
        oid = (order_id or "").strip().lower()
        if len(oid) < 8 or any(c not in "0123456789abcdef" for c in oid):
            raise InvalidInput(f"bad order id {order_id!r}: want at least 8 hex digits")
        found = await self.store.range(f"orders/{oid}", limit=2)
        if not found:
            raise NotFound(f"order {oid} not found")
        if len(found) > 1 and len(oid) < 64:
            raise InvalidInput(f"order id prefix {oid} is ambiguous")
        return dict(decode_canonical(found[0].value))

    async def list_orders(self) -> list[dict[str, Any]]:
        return [await self.describe(dict(decode_canonical(e.value))) for e in await self.store.range("orders/")]

    async def verify(self, record: dict[str, Any]) -> Any:
        _, meta = await self._meta()
        executed = ExecutedOrders.decode(meta["executed"].encode())
        destroyed = {m["name"] for m in await self.registry.list_models() if m["state"] == "destroyed"}
        return verify_order(record["body"].encode(), decode_signatures(record["signatures"].encode()),
                            await self.current_set(), now=int(self.clock()), state=executed,
                            destroyed_models=destroyed)

    async def describe(self, record: dict[str, Any]) -> dict[str, Any]:
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
        """Add signatures; at quorum, execute. Raises InvalidInput, NotFound, FailedPrecondition."""
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
                meta_entry, meta = await self._meta()
                executed = ExecutedOrders.decode(meta["executed"].encode())
                order = v.raise_if_invalid()
                meta["executed"] = apply_executed(executed, order).encode().decode()
                txn.checks[META] = meta_entry.mod_revision if meta_entry else 0
                txn.puts[META] = encode_canonical(meta)
                record["state"] = "executing"
                record["quorum_at_ns"] = time.time_ns()
                for name, state in self._model_states(order).items():
                    key = f"models/{name}"
                    m_entry = await self.store.get(key)
                    if m_entry is None:
                        continue
                    m = dict(decode_canonical(m_entry.value))
                    m["state"] = state
                    txn.checks[key] = m_entry.mod_revision
                    txn.puts[key] = encode_canonical(m)
                result = f"quorum: executing {order.action} ({len(v.valid)}/{v.threshold} signatures)"
            else:
                bad = [f.code for f in v.failures if f.code != "threshold-not-met"]
                if bad:
                    result = "signatures recorded; not executable: " + ", ".join(bad)
            txn.puts[f"orders/{oid}"] = encode_canonical(record)
            return Plan(txn, result), record

        record = await self.audit.mutate(caller, "AttachSignature", f"order/{oid}", plan)
        if record["state"] == "executing":
            self.start_effects(oid)
        return await self.describe(record)

    @staticmethod
    def _model_states(order: Order) -> dict[str, str]:
        """What executing the order does to each model in its signed scope. (A drill's
        signed scope holds only drill models and their derivatives: they really halt.)"""
        if order.action == "lift":
            return dict.fromkeys(order.models, "active")
        if order.action == "destroy":
            return dict.fromkeys(order.models, "destroyed")
        return dict.fromkeys(order.models, "halted")

    # -- execution side effects ------------------------------------------------------

    def start_effects(self, oid: str) -> None:
        if oid not in self._effects or self._effects[oid].done():
            self._effects[oid] = asyncio.create_task(self._run_effects(oid))

    async def resume_pending(self) -> None:
        """After a restart: finish the side effects of orders that were executing."""
        for e in await self.store.range("orders/"):
            rec = decode_canonical(e.value)
            if rec["state"] == "executing":
                self.start_effects(rec["id"])

    async def _run_effects(self, oid: str) -> None:
        try:
            record = await self.get(oid)
            order = Order.decode(record["body"].encode())
            # Agents first: each verifies the order itself, so nothing below needs to
            # happen before they can start stopping processes.
            await self.refresh_chain()
            self.broadcast(record)
            real = set(order.models)  # every model in the signed scope really changes state
            for model in order.models:
                if model not in real:
                    continue
                try:
                    if order.action == "lift":
                        await asyncio.to_thread(self.keys.resume, model)
                    elif order.action == "destroy":
                        await asyncio.to_thread(self.keys.destroy, model)
                    else:
                        await asyncio.to_thread(self.keys.suspend, model)
                except CustosError as exc:
                    # A model never pushed has no key: nothing to suspend is not a failure.
                    log.info("order %s: key of %s: %s", oid[:16], model, exc)
            if order.action == "destroy":
                await self._shred(order)
            hosts = await self._hosts_with_copies(order.artifacts) & await self._enrolled_hosts()
            if order.action != "lift":
                await self.custody.revoke_leases(sorted(hosts), oid)
            await self._mark_object_copies(order, real)
            await self.audit.record(SYSTEM, "ExecuteOrder", f"order/{oid}",
                                    f"{order.action}: keys and leases done; sent to {len(self.custody.streams)} agents")
            await self._mark_effects_done(oid)
            await self.check_complete(oid)
        except Exception:
            log.exception("order %s: execution failed; will resume", oid[:16])

    async def _mark_effects_done(self, oid: str) -> None:
        for _ in range(10):
            entry = await self.store.get(f"orders/{oid}")
            if entry is None:
                return
            rec = dict(decode_canonical(entry.value))
            rec["effects_done_ns"] = time.time_ns()
            if await self.store.commit(Txn(checks={entry.key: entry.mod_revision},
                                           puts={entry.key: encode_canonical(rec)})):
                return

    async def _enrolled_hosts(self) -> set[str]:
        return {decode_canonical(e.value)["name"] for e in await self.store.range("hosts/")
                if decode_canonical(e.value)["state"] == "enrolled"}

    async def _shred(self, order: Order) -> None:
        for aid in order.artifacts:
            try:
                art = await self.registry.get_artifact(aid)
            except CustosError:
                continue
            for obj in (art.storage or {}).get("objects", []):
                await asyncio.to_thread(self.blobs.delete, obj["key"])

    async def _hosts_with_copies(self, artifacts: tuple[str, ...] | list[str]) -> set[str]:
        hosts: set[str] = set()
        for aid in artifacts:
            for e in await self.store.range(f"copies/{aid}/"):
                c = decode_canonical(e.value)
                if c["location_kind"] != "object-store":
                    hosts.add(c["host"])
        return hosts

    async def _mark_object_copies(self, order: Order, real: set[str]) -> None:
        for aid in order.artifacts:
            for e in await self.store.range(f"copies/{aid}/"):
                c = dict(decode_canonical(e.value))
                if c["location_kind"] != "object-store":
                    continue
                if c["model"] not in real:
                    c["state"] = "present"
                    continue
                c["state"] = {"destroy": "shredded", "lift": "present"}.get(order.action, "key-suspended")
                c["evidence"] = f"order {order.id[:16]}: " + {
                    "destroy": "Transit key deleted and ciphertext objects deleted",
                    "lift": "Transit key resumed"}.get(order.action, "Transit key suspended: no unwrap possible")
                await self.store.commit(Txn(puts={e.key: encode_canonical(c)}))

    def broadcast(self, record: dict[str, Any]) -> None:
        """Send a signed order to every agent connected to this replica, once per stream."""
        msg = self._signed_message(record)
        sent = self._sent.setdefault(record["id"], set())
        for host, q in list(self.custody.streams.items()):
            if host not in sent:
                sent.add(host)
                q.put_nowait(msg)

    async def run_fanout(self, stop: asyncio.Event) -> None:
        """Replicas learn of orders executed elsewhere through the Store's watch
        (etcd watch) and push them to their own agents."""
        while not stop.is_set():
            try:
                async for key in self.store.watch("orders/"):
                    entry = await self.store.get(key)
                    if entry is None:
                        continue
                    rec = dict(decode_canonical(entry.value))
                    if rec["state"] in ("executing", "complete"):
                        await self.refresh_chain()
                        self.broadcast(rec)
            except CustosError as exc:
                log.warning("order watch failed, retrying: %s", exc)
                await asyncio.sleep(1.0)

    def _signed_message(self, record: dict[str, Any]) -> Any:
        sigs = decode_signatures(record["signatures"].encode())
        chain = self._chain_cache
        dry = record.get("dry_run") or {"artifacts": [], "models": []}
        return custody_pb2.ControlMessage(order=custody_pb2.SignedOrder(
            dry_run_models=dry["models"], dry_run_artifacts=dry["artifacts"],
            body=record["body"].encode(),
            signatures=[custody_pb2.OrderSignature(key_id=s.key_id, signature=s.sig.encode()) for s in sigs],
            signer_set=chain[-1][0] if chain else b"",
            signer_chain=[encode_canonical({"set": s.decode(), "signatures": g.decode()}) for s, g in chain[1:]],
        ))


    async def refresh_chain(self) -> None:
        self._chain_cache = await self.chain()

    async def _on_attach_async(self, host: str) -> None:
        """A host (re)connected: send it every executed order it has not acked, oldest first."""
        await self.refresh_chain()
        records = [dict(decode_canonical(e.value)) for e in await self.store.range("orders/")]
        pending = []
        for rec in records:
            if rec["state"] not in ("executing", "complete"):
                continue
            if await self.store.get(f"orderacks/{rec['id']}/{host}") is not None:
                continue
            pending.append((Order.decode(rec["body"].encode()).sequence, rec))
        q = self.custody.streams.get(host)
        for _, rec in sorted(pending, key=lambda p: p[0]):
            if q is not None:
                self._sent.setdefault(rec["id"], set()).add(host)
                q.put_nowait(self._signed_message(rec))

    def _on_attach(self, host: str) -> None:
        for hosts in self._sent.values():
            hosts.discard(host)  # a new stream: what the old one had may be lost
        asyncio.get_running_loop().create_task(self._on_attach_async(host))

    # -- acks, completion, reports ---------------------------------------------------

    async def enqueue_ack(self, host: str, ack: Any, received_ns: int) -> None:
        """Called from stream readers: acks are recorded by one worker, so a flood
        of 10,000 acks never starves the RPCs (like refused unwraps) behind it."""
        self._acks.put_nowait((host, ack, received_ns))

    async def run_ack_worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            host, ack, received = await self._acks.get()
            try:
                await self.record_ack(host, ack, received)
            except Exception:
                log.exception("recording the ack of %s failed", host)

    async def record_ack(self, host: str, ack: Any, received_ns: int = 0) -> None:
        """Store an agent's ack and apply its evidence to that host's copies.

        Acks are evidence, not commands: they are stored per host (the
        completion event in the audit chain commits to all of them by digest)
        rather than each appending to the serialized audit chain, so 10,000
        agents can ack within seconds.
        """

        try:
            record = await self.get(ack.order_id)
        except CustosError:
            log.warning("ack from %s for unknown order %s", host, ack.order_id[:16])
            return
        now = received_ns or time.time_ns()  # when the ack reached the control plane
        value = {
            "done_ns": ack.done_unix_ns or now, "host": host, "outcome": ack.outcome[:32],
            "paths_wiped": list(ack.paths_wiped)[:10_000], "pids_stopped": list(ack.pids_stopped)[:10_000],
            "reason": ack.reason[:2000], "received_ns": ack.received_unix_ns, "recorded_ns": now,
            "remaining": list(ack.remaining)[:1000], "verified": bool(ack.verified),
            "would_stop": list(ack.would_stop)[:1000],
        }
        key = f"orderacks/{record['id']}/{host}"
        if await self.store.get(key) is not None:
            return  # the first ack of a host stands; a resent order is re-acked
        await self.store.commit(Txn(checks={key: 0}, puts={key: encode_canonical(value)}))
        async with self.custody.host_lock(host):
            await self._apply_ack_to_copies(record, host, value)

    async def _apply_ack_to_copies(self, record: dict[str, Any], host: str, ack: dict[str, Any]) -> None:
        order = Order.decode(record["body"].encode())
        if ack["outcome"] in ("dry-run", "lifted"):
            return  # nothing was stopped: copies keep their state; the report shows would_stop
        real = set(order.models)
        scoped = set(order.artifacts)
        wiped = set(ack["paths_wiped"])
        pids = {str(p) for p in ack["pids_stopped"]}
        puts: dict[str, bytes] = {}
        keys = [k for k in await self.custody.host_copy_keys(host) if k.split("/", 2)[1] in scoped]
        for key, entry in (await self.store.get_many(keys)).items():
            c = dict(decode_canonical(entry.value))
            if c["location_kind"] == "object-store" or c["model"] not in real:
                continue
            if c["state"] in ("wiped", "stopped"):
                continue
            where = c["location"].split(":", 1)[1]
            stopped = c["location_kind"] == "process" and where in pids
            was_wiped = c["location_kind"] == "host-path" and (
                where in wiped or any(w.startswith(where + "/") for w in wiped))
            if c["state"] == "gone" and not (stopped or was_wiped):
                continue  # vanished before the ack, and the ack does not claim it
            if stopped:
                c["state"], ev = "stopped", f"pid {where} stopped"
            elif was_wiped:
                c["state"], ev = "wiped", f"plaintext at {where} wiped"
            elif ack["outcome"] in ("halted", "destroyed", "already-executed"):
                why = "; ".join(ack["remaining"])[:500] or "no reason given"
                c["state"], ev = "residual", f"not stopped or wiped by the agent: {why}"
            else:
                c["state"], ev = "residual", f"agent outcome {ack['outcome']}: {ack['reason'][:300]}"
            c["evidence"] = f"order {order.id[:16]}: {ev}"
            c["final_at_ns"] = time.time_ns()
            puts[key] = encode_canonical(c)
        await self.custody.write_batches(puts)

    async def _copy_states(self, order: Order) -> list[dict[str, Any]]:
        out = []
        for aid in order.artifacts:
            out += [dict(decode_canonical(e.value)) for e in await self.store.range(f"copies/{aid}/")]
        return out

    async def check_complete(self, oid: str) -> bool:
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
            leases = {e.key[len("leases/"):]: decode_canonical(e.value) for e in await self.store.range("leases/")}
            now = time.time_ns()
            by_host: dict[str, list[dict[str, Any]]] = {}
            for c in await self._copy_states(order):
                if c["location_kind"] != "object-store" and c["state"] != "gone":
                    by_host.setdefault(c["host"], []).append(c)
            enrolled = await self._enrolled_hosts()
            for host, copies in by_host.items():
                if await self.store.get(f"orderacks/{oid}/{host}") is not None:
                    continue
                if host not in enrolled:
                    # No custody agent can act there: the copy is residual, for people to deal with.
                    for c in copies:
                        if c["model"] in real and c["state"] not in FINAL_COPY_STATES:
                            c["state"] = "residual"
                            c["evidence"] = (f"order {oid[:16]}: no custody agent is enrolled on {host}; "
                                             "this copy must be removed by hand")
                            await self.store.commit(Txn(puts={
                                f"copies/{c['artifact_id']}/{c['id']}": encode_canonical(c)}))
                    continue
                lease = leases.get(host, {"expires_ns": 0, "state": "none"})
                if host not in self.custody.streams and lease["expires_ns"] < now:
                    for c in copies:
                        if c["model"] in real and c["state"] not in FINAL_COPY_STATES:
                            c["state"] = "fail-closed"
                            c["evidence"] = (f"order {oid[:16]}: host unreachable; its custody lease expired at "
                                             f"{lease['expires_ns']} and its agent halts on its own")
                            await self.store.commit(Txn(puts={
                                f"copies/{c['artifact_id']}/{c['id']}": encode_canonical(c)}))
                    continue
                done = False
        if done:

            acks = await self.store.range(f"orderacks/{oid}/")
            digest = hashlib.sha256(b"".join(e.key.encode() + b"\x00" + e.value + b"\x00" for e in acks)).hexdigest()
            record["state"] = "complete"
            record["completed_at_ns"] = time.time_ns()
            record["acks_digest"] = digest
            if await self.store.commit(Txn(checks={f"orders/{oid}": entry.mod_revision},
                                           puts={f"orders/{oid}": encode_canonical(record)})):
                await self.audit.record(SYSTEM, "CompleteOrder", f"order/{oid}",
                                        f"every copy in a final state; {len(acks)} acks, sha256 {digest}")
        return done

    async def run_completion(self, interval: float, stop: asyncio.Event) -> None:
        await every(interval, stop, self.completion_round, "order completion check")

    async def completion_round(self) -> None:
        for e in await self.store.range("orders/"):
            rec = decode_canonical(e.value)
            if rec["state"] != "executing":
                continue
            # Any replica finishes the side effects (idempotent) of an order whose
            # executing replica died before it could.
            if not rec.get("effects_done_ns") and time.time_ns() - rec["quorum_at_ns"] > 10_000_000_000:
                self.start_effects(rec["id"])
            await self.check_complete(rec["id"])

    async def report(self, order_id: str) -> dict[str, Any]:
        """Everything the completion report needs, as data (see custos.core.reports)."""
        record = await self.get(order_id)
        desc = await self.describe(record)
        order: Order = desc["order"]
        acks = {e.key.rsplit("/", 1)[1]: dict(decode_canonical(e.value))
                for e in await self.store.range(f"orderacks/{record['id']}/")}
        hosts = await self._enrolled_hosts()
        leases = {e.key[len("leases/"):]: decode_canonical(e.value) for e in await self.store.range("leases/")}
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
                lease = leases.get(h, {"expires_ns": 0, "state": "none"})
                row.update(outcome="unreachable" if h not in self.custody.streams else "pending",
                           lease_state=lease["state"], fail_closed_deadline_ns=lease["expires_ns"])
            host_rows.append(row)
        copies = await self._copy_states(order)
        for aid in (record.get("dry_run") or {}).get("artifacts", []):
            copies += [dict(decode_canonical(e.value)) for e in await self.store.range(f"copies/{aid}/")]
        return {
            "order": {**order.to_json(), "id": order.id, "models": list(order.models),
                      "artifacts": list(order.artifacts)},
            "dry_run": record.get("dry_run") or {"artifacts": [], "models": []},
            "state": desc["state"],
            "proposed_by": record["proposed_by"], "signed_by": desc["signed_by"],
            "quorum_at_ns": record["quorum_at_ns"], "completed_at_ns": record["completed_at_ns"],
            "hosts": host_rows,
            "copies": [{k: c[k] for k in ("artifact_id", "model", "location_kind", "location", "host", "form",
                                          "state", "evidence")} for c in copies],
        }
