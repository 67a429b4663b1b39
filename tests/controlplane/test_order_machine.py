"""A stateful property test of the order path, at the control plane and at an agent.

Hypothesis drives random sequences of register / derive / declare (drill register) /
propose / sign (random signer subsets) / rotate / replay / forge over a real control
plane on a real SQLite Store, and hands every executed order — and forged ones a
compromised control plane could send — to a real agent order handler. After every step:

- no model's state changed unless an order that reached it executed, signed by enough
  distinct executives: the halt threshold for anything not declared in the drill
  register at the time, the drill threshold only for declared drill models;
- destroyed is forever (control plane and agent); no lift reaches a destroyed artifact;
- the executed set only grows, and an order executes at most once anywhere;
- the agent acts only on orders the control plane executed (so never on a forgery, an
  under-quorum order, a drill beyond the register or a replay).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule

from custos.agent.orders import VerifyingOrderHandler
from custos.blobs.local import LocalBlobStore
from custos.controlplane.audit import AuditLog, Caller
from custos.controlplane.custody import Custody
from custos.controlplane.keys.local import LocalKeyProvider
from custos.controlplane.orders import META, OrdersService
from custos.controlplane.registry import Registry
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.canonical import decode_canonical
from custos.core.manifest import FileEntry, Manifest
from custos.core.orders import ExecutedOrders, Order
from custos.core.signers import DEV_THRESHOLDS, decode_signatures, encode_signatures
from custos.errors import CustosError
from custos.v1 import custody_pb2
from tests.agent.test_orders import RecordingAgent, _Cfg, _Identity
from tests.core.order_cases import ED25519_SIGNERS, panel, sign_set

SEC = Caller(principal="sec", role="security-team", host="127.0.0.1", request_id="m")
EXEC = Caller(principal="exec", role="executive", host="127.0.0.1", request_id="m")
NAMES = ("alpha", "beta", "gamma", "drill-a", "drill-b")
ACTIONS = ("drill", "halt", "lift", "destroy")
# Each size 0..5 equally likely, so quorums and near-quorums both happen often.
STEPS = [0, 0]  # steps and runs so far in this process (CUSTOS_PROPERTY_STEPS_FILE reports them)
SIGNER_SUBSETS = st.integers(0, 5).flatmap(lambda k: st.sets(st.integers(0, 4), min_size=k, max_size=k))


class OrderMachine(RuleBasedStateMachine):
    """The control plane and one agent under random orders, signatures and forgeries."""

    orders = Bundle("orders")

    @initialize(declared=st.booleans())
    def start(self, declared: bool) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="order-machine-"))
        self.loop = asyncio.new_event_loop()
        self.now = int(time.time())  # proposals are issued at the real time
        self.store = SQLiteStore(self.tmp / "custos.db")
        audit = AuditLog(self.store, Ed25519PrivateKey.generate())
        self.registry = Registry(self.store, audit)
        self.orders_svc = OrdersService(self.registry, Custody(self.registry, ca=None),
                                        keys=LocalKeyProvider(self.tmp / "keys.json", dev_only=True),
                                        blobs=LocalBlobStore(self.tmp / "blobs"), clock=lambda: self.now)
        self.panel = panel("ed25519")
        self.signer_set = self.panel.signer_set
        self.run(self.orders_svc.install_bootstrap(self.signer_set))
        self.agent = RecordingAgent(cfg=_Cfg(self.tmp / "agent"), identity=_Identity(self.signer_set.encode()))
        (self.tmp / "agent").mkdir()
        self.handler = VerifyingOrderHandler(self.agent, clock=lambda: self.now)
        self.agent_destroyed: set[str] = set()
        self.models: dict[str, bool] = {}  # name -> registered as a drill model
        self.model_artifacts: dict[str, list[str]] = {}
        self.states = {}  # type: dict[str, str]
        self.destroyed: set[str] = set()
        self.destroyed_artifacts: set[str] = set()
        self.executed_ids: frozenset[str] = frozenset()
        self.executed_once: set[str] = set()
        self.agent_acted: set[str] = set()
        self.register: tuple[set[str], set[str]] = (set(), set())  # (models, artifacts) as installed
        self.seq = 0
        # The shape from the start: production models derived from a drill model.
        for name in NAMES:
            self.register_model(name)
        drill_art = self.add_artifact("drill-a", 1, None)
        self.add_artifact("alpha", 2, 0)  # alpha's artifact is a fine-tune of drill-a's
        self.add_artifact("beta", 3, None)
        self.add_artifact("drill-b", 4, 0)  # a drill model derived from the drill model
        assert drill_art
        if declared:
            self.declare({"drill-a"}, {0, 1, 2, 3})

    def teardown(self) -> None:
        STEPS[1] += 1
        if os.environ.get("CUSTOS_PROPERTY_STEPS_FILE"):
            Path(os.environ["CUSTOS_PROPERTY_STEPS_FILE"]).write_text(f"runs {STEPS[1]} steps {STEPS[0]}\n")
        if hasattr(self, "loop"):
            self.run(self.store.close())
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, coro: Any) -> Any:
        result = self.loop.run_until_complete(coro)
        for task in list(self.orders_svc.effects.tasks.values()) if hasattr(self, "orders_svc") else []:
            task.cancel()  # effects (keys, leases, fan-out) are not what this machine checks
        return result

    # -- the registry --------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES))
    def register_model(self, name: str) -> None:
        if name in self.models:
            return
        self.run(self.registry.register_model(SEC, name=name, owner="t", training_flops=3e26,
                                              drill=name.startswith("drill")))
        self.models[name] = name.startswith("drill")
        self.model_artifacts[name] = []
        self.states[name] = "active"

    @rule(name=st.sampled_from(NAMES), seed=st.integers(0, 10**6), parent=st.one_of(st.none(), st.integers(0, 100)))
    def push(self, name: str, seed: int, parent: int | None) -> None:
        self.add_artifact(name, seed, parent)

    def add_artifact(self, name: str, seed: int, parent: int | None) -> str:
        if name not in self.models or self.states[name] != "active":
            return ""
        manifest = Manifest((FileEntry("w.bin", seed + 1, hashlib.sha256(str(seed).encode()).hexdigest()),))
        existing = [a for arts in self.model_artifacts.values() for a in arts]
        parents = [(existing[parent % len(existing)], "fine-tune")] if existing and parent is not None else []
        try:
            rec, _ = self.run(self.registry.register_artifact(SEC, model=name, manifest_bytes=manifest.encode(),
                                                              parents=parents))
        except CustosError:
            return ""
        if rec.id not in self.model_artifacts[name]:
            self.model_artifacts[name].append(rec.id)
        return str(rec.id)

    # -- the drill register ----------------------------------------------------------

    @rule(add=st.sets(st.sampled_from(("drill-a", "drill-b")), min_size=1) | st.sets(st.sampled_from(NAMES),
                                                                                       max_size=3),
          signers=SIGNER_SUBSETS)
    def declare(self, add: set[str], signers: set[int]) -> None:
        try:
            register = self.run(self.orders_svc.book.drills.prepare(add=sorted(add), remove=[]))
        except CustosError:
            assert any(n not in self.models or not self.models[n] for n in add)  # only drill models
            return
        sigs = [ED25519_SIGNERS[i].sign(register.signature_input(), "custos-drill-register") for i in signers]
        try:
            self.run(self.orders_svc.set_drill_register(EXEC, body=register.encode(),
                                                        signatures=encode_signatures(sigs)))
        except CustosError:
            assert len(signers) < self.signer_set.threshold("rotate")
            return
        assert len(signers) >= self.signer_set.threshold("rotate"), "a register below the rotate threshold"
        assert all(self.models[m] for m in register.models), "a production model declared drillable"
        self.register = (set(register.models), set(register.artifacts))

    @rule(signers=SIGNER_SUBSETS)
    def rotate(self, signers: set[int]) -> None:
        """Rotate to the same keys with a new version (it invalidates the register)."""
        new = self.signer_set.successor([s.key for s in ED25519_SIGNERS], thresholds=dict(DEV_THRESHOLDS))
        sigs = sign_set([ED25519_SIGNERS[i] for i in sorted(signers)], new)
        try:
            self.run(self.orders_svc.rotate(EXEC, new_set=new.encode(), signatures=encode_signatures(sigs)))
        except CustosError:
            assert len(signers) < new.threshold("rotate")
            return
        self.run(self.orders_svc.refresh_chain())
        self.signer_set = new
        self.register = (set(), set())  # made for the old version: no longer trusted

    # -- orders ------------------------------------------------------------------------

    @rule(target=orders, action=st.sampled_from(ACTIONS), names=st.sets(st.sampled_from(NAMES), min_size=1,
                                                                      max_size=2))
    def propose_only(self, action: str, names: set[str]) -> str:
        return self.propose(action, names)

    def propose(self, action: str, names: set[str]) -> str:
        try:
            d = self.run(self.orders_svc.propose(EXEC, action=action, models=sorted(names), reason="machine",
                                                 expires_seconds=3600, drill=action == "drill"))
        except CustosError:
            event(f"propose {action}: refused")
            return multiple()  # type: ignore[return-value]
        event(f"propose {action}: proposed")
        order: Order = d["order"]
        if action == "drill":
            # Only what the register declares is in a drill's signed scope.
            assert set(order.models) <= self.register[0] and set(order.artifacts) <= self.register[1], order
        if action == "lift":
            assert not set(order.models) & self.destroyed and not set(order.artifacts) & self.destroyed_artifacts
        return str(order.id)

    @rule(target=orders, action=st.sampled_from(ACTIONS), names=st.sets(st.sampled_from(NAMES), min_size=1,
                                                                      max_size=2), signers=SIGNER_SUBSETS)
    def propose_and_sign(self, action: str, names: set[str], signers: set[int]) -> str:
        oid = self.propose(action, names)
        if isinstance(oid, str):
            self.sign(oid, signers)
            return oid
        return oid  # multiple(): nothing proposed

    @rule(oid=orders, signers=SIGNER_SUBSETS)
    def sign(self, oid: str, signers: set[int]) -> None:
        if not oid:
            return
        rec = self.run(self.orders_svc.get(oid))
        order = Order.decode(rec["body"].encode())
        sigs = [ED25519_SIGNERS[i].sign(order.signature_input(), "custos-order") for i in signers]
        before = {n: self._state(n) for n in self.models}
        try:
            d = self.run(self.orders_svc.attach(EXEC, order_id=oid, signatures=encode_signatures(sigs)))
        except CustosError:
            d = None
        executed = d is not None and d["state"] == "executing" and rec["state"] == "proposed"
        event(f"sign: {'executed ' + order.action if executed else 'not executed'}")
        if executed:
            assert oid not in self.executed_once, "an order executed twice"
            self.executed_once.add(oid)
            distinct = len(set(decode_sigs(d["signatures"])))
            declared = set(order.models) <= self.register[0] and set(order.artifacts) <= self.register[1]
            need = self.signer_set.threshold(order.action)
            if not declared:
                assert order.action != "drill", "a drill beyond the drill register executed"
                need = max(need, self.signer_set.threshold("halt"))
            assert distinct >= need, f"{order.action} executed with {distinct} signers, needs {need}"
            if order.action == "destroy":
                self.destroyed |= set(order.models)
                self.destroyed_artifacts |= set(order.artifacts)
            self.deliver(self.orders_svc.fanout.signed_message(self.run(self.orders_svc.get(oid))).order,
                         expect_action=True)
        for name, was in before.items():
            now = self._state(name)
            if now != was:
                assert executed and name in order.models, f"{name}: {was} -> {now} without an executed order"

    @rule(oid=orders)
    def replay(self, oid: str) -> None:
        """Send an executed order again, as is: the agent never acts twice."""
        if not oid or oid not in self.executed_once:
            return
        msg = self.orders_svc.fanout.signed_message(self.run(self.orders_svc.get(oid))).order
        self.deliver(msg, expect_action=False)

    @rule(names=st.sets(st.sampled_from(NAMES), min_size=1, max_size=2), arts=st.sets(st.sampled_from(
        [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3)]), max_size=2),
          action=st.sampled_from(ACTIONS), signers=SIGNER_SUBSETS)
    def forge(self, names: set[str], arts: set[str], action: str, signers: set[int]) -> None:
        """A compromised control plane signs nothing itself but hands the agent any order
        body with whatever signatures it collected, and the current register."""
        self.seq += 1
        known = {a for arts_ in self.model_artifacts.values() for a in arts_}
        order = Order.create(action=action, models=sorted(names), artifacts=sorted(arts | set(list(known)[:2])),
                             reason="forged", issued_at=self.now, sequence=10_000 + self.seq,
                             signer_set_version=self.signer_set.version)
        sigs = [ED25519_SIGNERS[i].sign(order.signature_input(), "custos-order") for i in signers]
        stored = self.run(self.orders_svc.book.drills.stored())
        msg = custody_pb2.SignedOrder(
            body=order.encode(), drill_register=stored[0], drill_register_signatures=encode_signatures(stored[1]),
            signatures=[custody_pb2.OrderSignature(key_id=s.key_id, signature=s.sig.encode()) for s in sigs],
            signer_chain=[m for m in self.orders_svc.fanout.signed_message(
                {"body": order.encode().decode(), "signatures": "[]"}).order.signer_chain])
        declared = set(order.models) <= self.register[0] and set(order.artifacts) <= self.register[1]
        need = self.signer_set.threshold(action)
        if not declared:
            need = 99 if action == "drill" else max(need, self.signer_set.threshold("halt"))
        if action == "lift" and (set(order.models) & self.destroyed or set(order.artifacts) & self.destroyed_artifacts):
            need = 99
        ack = self.deliver(msg, expect_action=None)
        event(f"forge {action}: {'agent executed' if ack.verified else 'agent refused'}")
        if ack.verified:
            assert len(signers) >= need, f"agent executed a forged {action} with {len(signers)} signers"

    @precondition(lambda self: hasattr(self, "now"))
    @rule(seconds=st.integers(1, 4000))
    def advance(self, seconds: int) -> None:
        self.now += seconds

    # -- the agent ----------------------------------------------------------------------

    def deliver(self, msg: custody_pb2.SignedOrder, *, expect_action: bool | None) -> custody_pb2.OrderAck:
        halts, lifts = len(self.agent.halts), len(self.agent.lifts)
        ack = self.run(self.handler.handle(msg, received_unix_ns=1))
        acted = len(self.agent.halts) + len(self.agent.lifts) > halts + lifts
        if expect_action is False:
            assert not acted and ack.outcome in ("already-executed", "refused"), ack
        if acted:
            assert ack.order_id not in self.agent_acted, "the agent acted on one order twice"
            self.agent_acted.add(ack.order_id)
        for scope in self.agent.lifts[lifts:]:
            assert not scope & self.destroyed_artifacts, "the agent lifted a destroyed artifact"
        return ack

    # -- invariants ---------------------------------------------------------------------

    def _state(self, name: str) -> str:
        entry = self.run(self.store.get(f"models/{name}"))
        return str(decode_canonical(entry.value)["state"]) if entry else "absent"

    @invariant()
    def destroyed_is_forever(self) -> None:
        if not hasattr(self, "store"):
            return
        for name in self.destroyed:
            assert self._state(name) == "destroyed", f"{name} left the destroyed state"
        # The agent's own record of destroyed artifacts only grows, too.
        assert self.agent_destroyed <= self.handler.state.destroyed_artifacts
        self.agent_destroyed = set(self.handler.state.destroyed_artifacts)

    @invariant()
    def executed_only_grows(self) -> None:
        if not hasattr(self, "store"):
            return
        STEPS[0] += 1  # invariants run after every step: this counts them for a long run's figures
        entry = self.run(self.store.get(META))
        ids = ExecutedOrders.decode(decode_canonical(entry.value)["executed"].encode()).executed_ids \
            if entry else frozenset()
        assert self.executed_ids <= ids, "an executed order id disappeared"
        self.executed_ids = ids


def decode_sigs(text: str) -> list[str]:
    return [s.key_id for s in decode_signatures(text.encode())]


# CUSTOS_PROPERTY_EXAMPLES raises the number of runs for a long search (docs/promises.md).
OrderMachine.TestCase.settings = settings(max_examples=int(os.environ.get("CUSTOS_PROPERTY_EXAMPLES", "60")),
                                          stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.filter_too_much])
TestOrderMachine = OrderMachine.TestCase
