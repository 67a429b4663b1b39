"""The agent's order handling against the shared adversarial table.

The same cases the pure verifier and the control plane refuse are handed to the
agent's VerifyingOrderHandler as signed orders arriving on its stream — as a
compromised control plane could send them. The agent must refuse every one and
never start a halt; valid orders must halt exactly the signed scope, once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from custos.agent.halt import HaltEvidence
from custos.agent.orders import AgentOrderState, VerifyingOrderHandler
from custos.core.canonical import encode_canonical
from custos.core.orders import Order, order_id_of
from custos.core.signers import encode_signatures
from custos.v1 import custody_pb2
from tests.core.order_cases import ARTIFACTS, MODELS, adversarial_cases, make_order, make_register, panel, valid_cases
from tests.core.order_cases import inputs as make_inputs

CASES = adversarial_cases()
VALID = valid_cases()


@dataclass
class _Identity:
    signer_set: bytes


@dataclass
class _Cfg:
    state_dir: Path


@dataclass
class RecordingAgent:
    """The agent surface the handler drives; it records instead of stopping processes."""

    cfg: _Cfg
    identity: _Identity
    halts: list[tuple[set[str], bool]] = field(default_factory=list)
    lifts: list[set[str]] = field(default_factory=list)

    async def halt_local(self, scope: set[str], *, reason: str, dry_run: bool = False,
                         drill: bool = False) -> HaltEvidence:
        self.halts.append((set(scope), dry_run))
        return HaltEvidence(scope=tuple(sorted(scope)), reason=reason, dry_run=dry_run, pids_stopped=(4242,),
                            done_unix_ns=1)

    async def lift_local(self, scope: set[str]) -> None:
        self.lifts.append(set(scope))


def handler_for(tmp: Path, inputs: Any) -> tuple[VerifyingOrderHandler, RecordingAgent]:
    agent = RecordingAgent(cfg=_Cfg(tmp), identity=_Identity(inputs.signer_set.encode()))
    state = AgentOrderState(tmp / "orders.json")
    state.executed = inputs.state
    state.destroyed = set(inputs.destroyed_models)
    state.destroyed_artifacts = set(inputs.destroyed_artifacts)
    state.save()
    return VerifyingOrderHandler(agent, clock=lambda: inputs.now), agent


def signed(inputs: Any) -> custody_pb2.SignedOrder:
    return custody_pb2.SignedOrder(
        body=inputs.order_bytes,
        signatures=[custody_pb2.OrderSignature(key_id=s.key_id, signature=s.sig.encode()) for s in inputs.signatures],
        drill_register=inputs.register_bytes, drill_register_signatures=encode_signatures(inputs.register_signatures))


def _late_destroy(case: Any) -> bool:
    """A destroy refused only for a stale sequence: the agent honours it (destroy is final)."""
    return case.name.endswith("/destroy") and case.reason == "stale_sequence" and set(case.also) <= {"stale_sequence"}


@pytest.mark.parametrize("case", [c for c in CASES if not _late_destroy(c)], ids=lambda c: c.name)
def test_agent_refuses(case: Any, tmp_path: Path) -> None:
    inputs = case.build()
    handler, agent = handler_for(tmp_path, inputs)
    ack = asyncio.run(handler.handle(signed(inputs), received_unix_ns=1))
    assert ack.outcome == "refused" and not ack.verified, (case.name, ack)
    assert agent.halts == [] and agent.lifts == []
    assert case.reason.replace("_", "") in ack.reason.replace("_", "").replace("-", "") or \
        case.reason == "threshold_not_met", (case.reason, ack.reason)


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_agent_executes_valid_orders_once(case: Any, tmp_path: Path) -> None:
    inputs = case.build()
    handler, agent = handler_for(tmp_path, inputs)
    ack = asyncio.run(handler.handle(signed(inputs), received_unix_ns=1))
    assert ack.verified and ack.outcome in ("halted", "lifted", "destroyed"), ack

    order = Order.decode(inputs.order_bytes)
    if order.action == "lift":
        assert agent.lifts == [set(order.artifacts)]
    else:
        assert agent.halts == [(set(order.artifacts), False)] and list(ack.pids_stopped) == [4242]
    # The same order again (a replay, or a resend after a reconnect) does nothing new.
    again = asyncio.run(handler.handle(signed(inputs), received_unix_ns=2))
    assert again.outcome == "already-executed"
    assert len(agent.halts) + len(agent.lifts) == 1
    # The executed state survives a restart of the agent.
    fresh, agent2 = handler_for_restart(tmp_path, inputs)
    assert asyncio.run(fresh.handle(signed(inputs), received_unix_ns=3)).outcome == "already-executed"
    assert agent2.halts == [] and agent2.lifts == []


def handler_for_restart(tmp: Path, inputs: Any) -> tuple[VerifyingOrderHandler, RecordingAgent]:
    agent = RecordingAgent(cfg=_Cfg(tmp), identity=_Identity(inputs.signer_set.encode()))
    return VerifyingOrderHandler(agent, clock=lambda: inputs.now), agent


def test_no_pinned_set_refuses_everything(tmp_path: Path) -> None:
    inputs = VALID[0].build()
    agent = RecordingAgent(cfg=_Cfg(tmp_path), identity=_Identity(b""))
    ack = asyncio.run(VerifyingOrderHandler(agent, clock=lambda: inputs.now).handle(signed(inputs),
                                                                                    received_unix_ns=1))
    assert ack.outcome == "refused" and "no signer set pinned" in ack.reason and agent.halts == []


def test_unreadable_executed_record_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "orders.json").write_text("{not json")
    inputs = VALID[0].build()
    agent = RecordingAgent(cfg=_Cfg(tmp_path), identity=_Identity(inputs.signer_set.encode()))
    with pytest.raises(Exception, match="executed-orders record"):
        VerifyingOrderHandler(agent, clock=lambda: inputs.now)


def test_rotation_chain_entry_without_a_set_is_refused_with_the_order_id(tmp_path: Path) -> None:
    """A compromised control plane sends a chain entry missing a field: a clear refusal, no KeyError."""
    inputs = VALID[0].build()
    handler, agent = handler_for(tmp_path, inputs)

    for entry in ({"signatures": "[]"}, {"set": 1, "signatures": "[]"}, {"set": "x", "signatures": "[]", "more": 1},
                  [1, 2], "text"):
        msg = signed(inputs)
        msg.signer_chain.append(encode_canonical(entry))
        ack = asyncio.run(handler.handle(msg, received_unix_ns=1))
        assert ack.outcome == "refused" and ack.order_id == order_id_of(inputs.order_bytes), (entry, ack)
        assert "rotation chain rejected" in ack.reason
    assert agent.halts == [] and agent.lifts == []


def test_an_older_drill_register_cannot_roll_back_the_kept_one(tmp_path: Path) -> None:
    """The agent keeps the newest register it verified; the control plane cannot hand it an
    older, validly signed one that still declared a (since removed) artifact drillable."""


    p = panel("ed25519")
    old = make_register(p, version=1)  # declared the whole test scope
    new = make_register(p, version=2, artifacts=ARTIFACTS[1:])  # one artifact no longer drillable
    drill = make_order("drill")
    first = replace(drill, nonce="1" * 32, sequence=drill.sequence, artifacts=ARTIFACTS[1:])
    i1 = make_inputs(first.encode(), p.sign_order(first), p, register=new)
    handler, agent = handler_for(tmp_path, i1)
    assert asyncio.run(handler.handle(signed(i1), received_unix_ns=1)).verified  # v2 now kept
    second = replace(drill, sequence=drill.sequence + 1)
    i2 = make_inputs(second.encode(), p.sign_order(second), p, register=old)
    ack = asyncio.run(handler.handle(signed(i2), received_unix_ns=2))
    assert ack.outcome == "refused" and "not_drill" in ack.reason, ack
    assert agent.halts == [(set(ARTIFACTS[1:]), False)]
    # With no register delivered at all, the kept v2 still decides.
    i3 = make_inputs(second.encode(), p.sign_order(second), p, register=(b"", ()))
    assert asyncio.run(handler.handle(signed(i3), received_unix_ns=3)).outcome == "refused"
    assert set(MODELS)  # the scope's models stayed declared throughout


def test_destroy_is_final_at_the_agent(tmp_path: Path) -> None:
    """destroy, then a halt, then lifts of the model and of a scope holding its artifacts:
    the lifts are refused and nothing destroyed is ever lifted, across a restart."""


    p = panel("ed25519")
    destroy = make_order("destroy")
    i = make_inputs(destroy.encode(), p.sign_order(destroy), p)
    handler, agent = handler_for(tmp_path, i)
    assert asyncio.run(handler.handle(signed(i), received_unix_ns=1)).outcome == "destroyed"
    halt = replace(make_order("halt"), sequence=destroy.sequence + 1)
    assert asyncio.run(handler.handle(signed(make_inputs(halt.encode(), p.sign_order(halt), p)),
                                      received_unix_ns=2)).outcome == "halted"
    handler, agent = handler_for_restart(tmp_path, i)
    for n, (models, artifacts) in enumerate([(MODELS, ARTIFACTS), (("other-model",), ARTIFACTS[:1])]):
        lift = replace(make_order("lift"), models=models, artifacts=artifacts, sequence=destroy.sequence + 2 + n)
        ack = asyncio.run(handler.handle(signed(make_inputs(lift.encode(), p.sign_order(lift, 5), p)),
                                         received_unix_ns=3))
        assert ack.outcome == "refused" and "destroyed" in ack.reason, ack
    assert agent.lifts == []


@pytest.mark.parametrize("case", [c for c in CASES if _late_destroy(c)], ids=lambda c: c.name)
def test_a_destroy_overtaken_by_a_newer_order_is_still_final(case: Any, tmp_path: Path) -> None:
    """A quorum-signed destroy that arrives after a newer order (stale sequence, inside its
    validity window) is carried out and recorded: no later lift reaches its scope."""
    inputs = case.build()
    handler, agent = handler_for(tmp_path, inputs)
    ack = asyncio.run(handler.handle(signed(inputs), received_unix_ns=1))
    order = Order.decode(inputs.order_bytes)
    assert ack.verified and ack.outcome == "destroyed", ack
    assert agent.halts == [(set(order.artifacts), False)]
    assert set(order.artifacts) <= handler.state.destroyed_artifacts
    assert handler.state.executed.highest_sequence == inputs.state.highest_sequence  # never moves back
    again = asyncio.run(handler.handle(signed(inputs), received_unix_ns=2))
    assert again.outcome == "already-executed" and len(agent.halts) == 1
