"""Custody-stream pieces that need no server: backoff, removal notices, the default order handler."""

from __future__ import annotations

import random

import pytest

from custos.agent.stream import Backoff, RefuseUnverifiedOrders, is_removal
from custos.errors import InvalidInput
from custos.v1 import custody_pb2


def test_backoff_doubles_with_jitter_up_to_its_cap_and_resets() -> None:
    b = Backoff(base=0.5, cap=30.0, rng=random.Random(7))
    delays = [b.next() for _ in range(12)]
    for i, d in enumerate(delays):
        top = min(30.0, 0.5 * 2**i)
        assert top / 2 <= d <= top
    assert max(delays) <= 30.0 and delays[-1] >= 15.0
    b.reset()
    assert b.next() <= 0.5


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_backoff_rejects_nonsense(base: float, cap: float) -> None:
    with pytest.raises(InvalidInput):
        Backoff(base=base, cap=cap)


@pytest.mark.parametrize(("text", "removed"), [
    ("host removed", True),
    ("host 'gpu-1' was removed", True),
    ("host 'gpu-1': certificate not accepted (removed or re-enrolled)", True),
    ("host 'gpu-1' has no live custody lease", False),
    ("store too contended", False),
])
def test_removal_notices(text: str, removed: bool) -> None:
    assert is_removal(text) is removed


async def test_default_order_handler_refuses_and_never_acts() -> None:
    order = custody_pb2.SignedOrder(body=b'{"action":"halt"}')
    ack = await RefuseUnverifiedOrders().handle(order, received_unix_ns=123)
    assert ack.outcome == "refused" and not ack.verified
    assert ack.reason == "order verification not installed"
    assert ack.received_unix_ns == 123 and ack.done_unix_ns >= 123
    assert not ack.pids_stopped and not ack.paths_wiped
