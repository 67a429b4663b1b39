"""The agent's order handling against the shared adversarial table.

The same cases the pure verifier and the control plane refuse are handed to the
agent's VerifyingOrderHandler as signed orders arriving on its stream — as a
compromised control plane could send them. The agent must refuse every one and
never start a halt; valid orders must halt exactly the signed scope, once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from custos.agent.halt import HaltEvidence
from custos.agent.orders import AgentOrderState, VerifyingOrderHandler
from custos.v1 import custody_pb2
from tests.core.order_cases import adversarial_cases, valid_cases

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

    async def halt_local(self, scope: set[str], *, reason: str, dry_run: bool = False) -> HaltEvidence:
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
    state.save()
    return VerifyingOrderHandler(agent, clock=lambda: inputs.now), agent


def signed(inputs: Any) -> custody_pb2.SignedOrder:
    return custody_pb2.SignedOrder(body=inputs.order_bytes, signatures=[
        custody_pb2.OrderSignature(key_id=s.key_id, signature=s.sig.encode()) for s in inputs.signatures])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_agent_refuses(case: Any, tmp_path: Path) -> None:
    inputs = case.build()
    handler, agent = handler_for(tmp_path, inputs)
    ack = asyncio.run(handler.handle(signed(inputs), received_unix_ns=1))
    assert ack.outcome == "refused" and not ack.verified, (case.name, ack)
    assert agent.halts == [] and agent.lifts == []
    assert case.reason.replace("_", "") in ack.reason.replace("_", "").replace("-", "") or \
        case.reason == "threshold_not_met", (case.reason, ack.reason)


@pytest.mark.parametrize("case", VALID[:12], ids=lambda c: c.name)
def test_agent_executes_valid_orders_once(case: Any, tmp_path: Path) -> None:
    inputs = case.build()
    handler, agent = handler_for(tmp_path, inputs)
    ack = asyncio.run(handler.handle(signed(inputs), received_unix_ns=1))
    assert ack.verified and ack.outcome in ("halted", "lifted", "destroyed"), ack
    from custos.core.orders import Order

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
