"""The agent's own verification of signed orders, then the local halt.

A control plane cannot make an agent act on an order without a valid quorum:
the agent checks every order with the same pure verifier the control plane
uses (custos.core.orders.verify_order), against the signer set it pinned at
enrollment — advanced only through a valid chain of signed rotations — and
against its own record of executed orders (replay and stale-sequence
protection survive restarts in STATE_DIR/orders.json).

What an order does on this host, once verified:

- halt / destroy / drill: stop and wipe every copy of the signed scope
  (``Agent.halt_local``); a drill's unsigned dry-run scope is only reported on;
- lift: stop refusing the scope (stopped workloads are not restarted).

Two promises the agent keeps from signed data alone, whatever the control plane says:

- thresholds cannot be borrowed: a drill acts only on what the signed drill register
  declares (custos.core.drills; verified against the trusted signer set's rotate
  threshold, kept in STATE_DIR/drill-register.json, never rolled back); any other order
  reaching beyond it needs the halt threshold;
- destroy is final: the models and artifacts of every destroy are kept apart from the
  replay state (``destroyed``, ``destroyed_artifacts``); no later lift reaches them.

Every order, verified or not, gets an ack with the evidence, signed by the host key
(custos.agent.evidence; refusals and already-executed replays too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from custos.agent.evidence import AckSigner
from custos.core.drills import DrillRegister, verify_register
from custos.core.manifest import decode_manifest
from custos.core.names import HEX64
from custos.core.orderfile import follow_chain
from custos.core.orders import (
    ExecutedOrders,
    Order,
    OrderReason,
    OrderVerification,
    apply_executed,
    order_id_of,
    verify_order,
)
from custos.core.signers import Signature, TrustedSignerSets, decode_signatures, encode_signatures
from custos.errors import CustosError
from custos.fs.private import write_private
from custos.v1 import custody_pb2

log = logging.getLogger("custos.agent.orders")

MANIFEST_BUDGET_S = 5.0  # all manifest fetches of one order, after what is known is stopped
MAX_DRY_RUN = 1000  # artifact ids of a drill's unsigned dry-run list that are reported on


class AgentOrderState:
    """What this agent executed, and the models it saw destroyed. No secrets."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.executed = ExecutedOrders()
        self.destroyed: set[str] = set()
        self.destroyed_artifacts: set[str] = set()
        self.acks: dict[str, dict[str, Any]] = {}
        try:
            raw = json.loads(path.read_text())
            self.executed = ExecutedOrders.decode(raw["executed"].encode())
            self.destroyed = set(raw["destroyed"])
            self.destroyed_artifacts = set(raw.get("destroyed_artifacts", []))
            self.acks = dict(raw.get("acks", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, CustosError) as exc:
            # Fail closed: an unreadable record must not let an old order replay.
            raise CustosError(f"cannot read the executed-orders record {path}: {exc}") from None

    def save(self) -> None:
        data = {"acks": dict(list(self.acks.items())[-200:]), "destroyed": sorted(self.destroyed),
                "destroyed_artifacts": sorted(self.destroyed_artifacts),
                "executed": self.executed.encode().decode()}
        write_private(self.path, json.dumps(data).encode())


class VerifyingOrderHandler:
    """The real OrderHandler (see custos.agent.stream.OrderHandler)."""

    def __init__(self, agent: Any, *, clock: Any = time.time) -> None:
        self.clock = clock  # seconds; injectable so tests can pin "now"
        self.agent = agent
        state_dir = Path(agent.cfg.state_dir)
        self.state = AgentOrderState(state_dir / "orders.json")
        self.trusted_path = state_dir / "trusted-signer-set.bin"
        self.register_path = state_dir / "drill-register.json"
        self.signer = AckSigner.for_agent(agent)
        self._lock = asyncio.Lock()

    def _trusted(self) -> TrustedSignerSets | None:
        data = self.trusted_path.read_bytes() if self.trusted_path.exists() else b""
        if not data:
            data = bytes(getattr(self.agent.identity, "signer_set", b"") or b"")
        if not data:
            return None
        return TrustedSignerSets.from_pinned_bytes(data)

    def _advance(self, trusted: TrustedSignerSets, chain: list[bytes]) -> TrustedSignerSets:
        """Follow signed rotations past the pinned version. Raises RotationRejected."""

        if follow_chain(trusted, chain):
            write_private(self.trusted_path, trusted.current.encode())
            log.warning("signer set advanced", extra={"fields": {"version": trusted.version}})
        return trusted

    def _register(self, trusted: TrustedSignerSets, body: bytes, signatures: bytes) -> DrillRegister | None:
        """The newest drill register that verifies under the trusted set: the one kept
        here, or the one delivered if it is newer (then kept). A delivered register that
        does not verify, or is older, changes nothing."""
        kept: DrillRegister | None = None
        try:
            raw = json.loads(self.register_path.read_text())
            kept = verify_register(raw["body"].encode(), decode_signatures(raw["signatures"].encode()),
                                   trusted.current)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError, CustosError) as exc:
            # Not fatal: without a register every drill is refused (fail closed).
            log.warning("kept drill register unusable: %s", exc)
        if not body:
            return kept
        try:
            sigs = decode_signatures(signatures)
            delivered = verify_register(body, sigs, trusted.current,
                                        trusted_version=kept.version if kept else 0)
        except CustosError as exc:
            log.warning("delivered drill register refused: %s", exc)
            return kept
        if kept is None or delivered.version > kept.version:
            write_private(self.register_path, json.dumps(
                {"body": body.decode(), "signatures": encode_signatures(sigs).decode()}).encode())
            log.warning("drill register advanced", extra={"fields": {"version": delivered.version}})
        return delivered

    async def handle(self, order: custody_pb2.SignedOrder, *, received_unix_ns: int) -> custody_pb2.OrderAck:
        async with self._lock:
            return self.signer.sign(await self._handle(order, received_unix_ns))

    async def _handle(self, order: custody_pb2.SignedOrder, received: int) -> custody_pb2.OrderAck:
        body = bytes(order.body)
        try:
            oid = order_id_of(body)
        except CustosError:
            oid = ""

        def refuse(reason: str) -> custody_pb2.OrderAck:
            log.error("order refused", extra={"fields": {"order_id": oid, "reason": reason}})
            return custody_pb2.OrderAck(order_id=oid, verified=False, outcome="refused", reason=reason[:2000],
                                        received_unix_ns=received, done_unix_ns=time.time_ns())

        if oid in self.state.executed.executed_ids:
            prev = self.state.acks.get(oid)
            if prev is None:
                return refuse("replayed: this order id was already executed")
            # The same order again (a resend after a reconnect): repeat the evidence, act on nothing.
            return custody_pb2.OrderAck(
                order_id=oid, verified=True, outcome="already-executed", reason=prev.get("reason", ""),
                pids_stopped=prev.get("pids_stopped", []), paths_wiped=prev.get("paths_wiped", []),
                remaining=prev.get("remaining", []), received_unix_ns=received, done_unix_ns=time.time_ns())
        try:
            trusted = self._trusted()
        except CustosError as exc:
            return refuse(f"pinned signer set unreadable: {exc}")
        if trusted is None:
            return refuse("no signer set pinned at enrollment: cannot verify orders")
        try:
            trusted = self._advance(trusted, list(order.signer_chain))
        except CustosError as exc:
            return refuse(f"signer-set rotation chain rejected: {exc}")
        try:
            sigs = [Signature(key_id=s.key_id, sig=bytes(s.signature).decode()) for s in order.signatures]
        except (CustosError, UnicodeDecodeError) as exc:
            return refuse(f"malformed signatures: {exc}")
        register = self._register(trusted, bytes(order.drill_register), bytes(order.drill_register_signatures))
        v = verify_order(body, sigs, trusted.current, now=int(self.clock()), state=self.state.executed,
                         destroyed_models=frozenset(self.state.destroyed),
                         destroyed_artifacts=frozenset(self.state.destroyed_artifacts), drill_register=register)
        late = _late_destroy(v)
        if not v and late is None:
            return refuse("; ".join(f"{f.code}: {f.detail}" for f in v.failures))
        verified: Order = late if late is not None else v.raise_if_invalid()
        # Record first: an order is executed at most once, even if the halt below crashes.
        if late is not None:
            # A destroy a quorum signed, inside its validity window, is final even when a
            # newer order overtook it on the way here: it only ever restricts, so it is
            # recorded and carried out once; the sequence does not move back.
            log.warning("late destroy honoured", extra={"fields": {"order_id": late.id, "reasons": v.reasons}})
            self.state.executed = ExecutedOrders(highest_sequence=self.state.executed.highest_sequence,
                                                 executed_ids=self.state.executed.executed_ids | {late.id})
        else:
            self.state.executed = apply_executed(self.state.executed, verified)
        if verified.action == "destroy":
            self.state.destroyed |= set(verified.models)
            self.state.destroyed_artifacts |= set(verified.artifacts)
        self.state.save()
        scope = set(verified.artifacts)
        reason = f"order {verified.id[:16]} ({verified.action}): {verified.reason}"[:2000]
        if verified.action == "lift":
            live = scope - self.state.destroyed_artifacts
            if live:
                await self.agent.lift_local(live)
            ack = custody_pb2.OrderAck(order_id=verified.id, verified=True, outcome="lifted", reason=reason,
                                       received_unix_ns=received, done_unix_ns=time.time_ns())
        else:
            ack = await self._halt(verified, scope, reason, received, order)
        self.state.acks[verified.id] = {
            "outcome": ack.outcome, "paths_wiped": list(ack.paths_wiped)[:1000],
            "pids_stopped": list(ack.pids_stopped)[:1000], "reason": ack.reason,
            "remaining": list(ack.remaining)[:200]}
        self.state.save()
        log.warning("order executed", extra={"fields": {
            "order_id": verified.id, "action": verified.action, "outcome": ack.outcome,
            "pids_stopped": list(ack.pids_stopped), "paths_wiped": len(ack.paths_wiped),
            "remaining": list(ack.remaining)[:20]}})
        return ack

    async def _halt(self, verified: Order, scope: set[str], reason: str, received: int,
                    order: custody_pb2.SignedOrder) -> custody_pb2.OrderAck:
        """Stop what is known at once; then learn the scope's missing manifests (one overall
        time limit: a stalling control plane delays nothing already stopped) and, if it
        learned any, go over the scope again for the copies they reveal."""
        drill = verified.action == "drill"
        ev = await self.agent.halt_local(scope, reason=reason, dry_run=False, drill=drill)
        deadline = time.monotonic() + MANIFEST_BUDGET_S
        if await self._fetch_manifests(scope, deadline):
            again = await self.agent.halt_local(scope, reason=reason, dry_run=False, drill=drill)
            ev = replace(again, pids_stopped=tuple(sorted({*ev.pids_stopped, *again.pids_stopped})),
                         paths_wiped=tuple(sorted({*ev.paths_wiped, *again.paths_wiped})),
                         started_unix_ns=ev.started_unix_ns)
        outcome = "destroyed" if verified.action == "destroy" else "halted"
        ack = ev.to_ack(order_id=verified.id, verified=True, outcome=outcome, received_unix_ns=received)
        # A drill's dry-run list is unsigned: only artifact ids, a bounded number, reported on only.
        dry = {a for a in list(order.dry_run_artifacts)[:MAX_DRY_RUN] if HEX64.match(a)} - scope if drill else set()
        if dry:
            await self._fetch_manifests(dry, deadline)
            try:
                dev = await self.agent.halt_local(dry, reason=f"drill {verified.id[:16]}: dry run", dry_run=True)
                ack.would_stop.extend(dev.would_stop)
            except CustosError as exc:
                ack.remaining.append(f"dry run not reported: {exc}"[:500])
        return ack

    async def _fetch_manifests(self, artifacts: set[str], deadline: float) -> bool:
        """Best effort, until ``deadline`` (monotonic seconds): learn the manifests of
        ``artifacts`` this agent lacks, all at once, so copies it does not manage are
        recognised too. A manifest must hash to its id: the control plane cannot make the
        agent attribute files to the wrong artifact. True if any was learned."""
        cache = getattr(self.agent, "manifests", None)
        calls = getattr(self.agent, "calls", None)
        if cache is None or calls is None:
            return False
        missing = sorted(a for a in artifacts if cache.get(a) is None)
        if not missing or time.monotonic() >= deadline:
            return False

        async def one(aid: str) -> bool:
            try:
                art = await calls.get_artifact(aid)
                cache.put(aid, decode_manifest(bytes(art.manifest)))
                return True
            except (CustosError, AttributeError) as exc:
                log.info("manifest of %s unavailable: %s", aid[:12], exc)
                return False

        tasks = [asyncio.ensure_future(one(a)) for a in missing]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        for t in pending:
            t.cancel()
        if pending:
            log.info("manifests not learned in time", extra={"fields": {"missing": len(pending)}})
        return any(t.result() for t in done if not t.cancelled() and t.exception() is None)


def _late_destroy(v: OrderVerification) -> Order | None:
    """The order if it is a destroy whose only fault is a stale sequence (overtaken by a newer
    order) — inside its validity window, never executed here, its
    signatures meeting the threshold of the trusted set — so its finality is honoured."""
    late_ok = {OrderReason.STALE_SEQUENCE}
    if v.order is None or v.order.action != "destroy" or not v.failures:
        return None
    if not set(v.reasons) <= late_ok:
        return None
    return v.order
