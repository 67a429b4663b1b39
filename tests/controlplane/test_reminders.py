"""Nobody waits in the dark (custos.controlplane.reminders): a proposed order goes to the
executives once with the full order; a reminder goes once before an order or an access
request expires; two replicas, repeated rounds and a restart send nothing twice. Delivered
through the real notifier to a signed webhook receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from custos.client.signerkeys import load_private_key
from custos.controlplane.notify import EVENT_KINDS, parse_notify_config, verify_webhook
from custos.controlplane.reminders import SENT_PREFIX, Reminders, remind_at
from custos.core.orders import Order
from custos.core.signers import encode_signatures
from custos.errors import InvalidInput
from tests.controlplane.access_helper import REQUESTER
from tests.controlplane.incidents.conftest import EXEC, Plane, weights
from tests.controlplane.incidents.test_notify import SECRET, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def plane(tmp_path: Path, receiver: Receiver) -> Iterator[Plane]:
    secret = tmp_path / "hook.secret"
    secret.write_bytes(SECRET)
    p = Plane(tmp_path / "plane", notify={"log": False, "webhook": [
        {"name": "execs", "url": receiver.url, "secret_file": str(secret), "max_attempts": 1}]}).start()
    p.cp.access.outbox = p.rt.notifier.outbox_puts  # the runtime these tests drive
    try:
        yield p
    finally:
        p.stop()


def flat(rounds: list[list[str]]) -> list[str]:
    return sorted(x for r in rounds for x in r)


def delivered(plane: Plane, receiver: Receiver) -> list[tuple[str, dict[str, Any]]]:
    """Dispatch the outbox; (event kind, body) of each delivery received since the last call."""
    plane.run(plane.rt.notifier.dispatch_once())
    out = []
    seen: set[str] = set()
    for headers, body in receiver.requests:
        verify_webhook(SECRET, body, headers, seen=seen)
        out.append((headers["x-custos-event"], json.loads(body)))
    receiver.requests.clear()
    return out


def test_orders_and_requests_are_announced_and_reminded_once(plane: Plane, receiver: Receiver) -> None:
    plane.model("wm")
    plane.push("wm", weights(plane.tmp / "w", 3))
    rec = plane.run(plane.cp.orders.propose(EXEC, action="halt", models=["wm"], reason="model misbehaves",
                                            expires_seconds=3600, drill=False))
    order: Order = rec["order"]
    request = plane.run(plane.cp.access.request(REQUESTER, model="wm", principal="alice", duration_s=600,
                                                reason="evaluate the checkpoint"))
    assert [k for k, _ in delivered(plane, receiver)] == ["access.requested"]  # queued with the request

    # two replicas, each a round, twice
    replicas = [Reminders(plane.store, plane.rt.notifier, describe=plane.cp.orders.describe, clock=plane.clock)
                for _ in range(2)]

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(*(r.round() for r in replicas)))

    first = plane.run(both())
    assert sorted(first[0] + first[1]) == [f"order.proposed/{order.id}"]
    assert plane.run(both()) == [[], []]
    [(kind, body)] = delivered(plane, receiver)
    assert kind == "order.proposed"
    o = body["order"]
    assert (o["id"], o["action"], o["models"], o["artifacts"], o["reason"]) == \
        (order.id, "halt", ["wm"], 1, "model misbehaves")
    assert o["expires_unix"] == order.not_after and o["body"] == order.encode().decode()
    assert (o["signed_by"], o["threshold"], o["missing"]) == ([], 3, 3)
    assert "0 of 3 signatures, 3 missing" in body["summary"]

    # one executive signs; half the hour later the order is reminded, with that signature
    key = sorted((plane.cfg.data_dir / "signers").glob("exec*.key"))[0]  # type: ignore[operator]
    plane.run(plane.cp.orders.attach(EXEC, order_id=order.id,
                                     signatures=encode_signatures([order.sign(load_private_key(key, None))])))
    plane.advance(0.4)
    assert plane.run(both()) == [[], []], "not due before half its lifetime"
    plane.advance(0.2)
    assert flat(plane.run(both())) == [f"order.reminder/{order.id}"]
    [(kind, body)] = delivered(plane, receiver)
    assert kind == "order.reminder" and body["order"]["missing"] == 2 and len(body["order"]["signed_by"]) == 1
    assert 0 < body["seconds_left"] <= 1440

    # the access request (pending 24 h) is reminded in its last hour, once; a restart sends nothing more
    plane.advance(21.8)  # 22.4 h after the request
    assert plane.run(both()) == [[], []]
    plane.advance(1.0)
    assert flat(plane.run(both())) == [f"access.reminder/{request['id']}"]
    restarted = Reminders(plane.store, plane.rt.notifier, describe=plane.cp.orders.describe, clock=plane.clock)
    assert plane.run(restarted.round()) == []
    [(kind, body)] = delivered(plane, receiver)
    assert kind == "access.reminder" and body["request"]["id"] == request["id"]
    assert body["request"]["reason"] == "evaluate the checkpoint" and body["request"]["principal"] == "alice"
    assert "needs 1 more approval(s) from security-team" in body["summary"]
    assert {k for k in ("order.proposed", "order.reminder", "access.reminder", "access.requested")} <= set(EVENT_KINDS)

    # past every expiry: nothing more, and the markers go a day later
    plane.advance(2)
    assert plane.run(restarted.round()) == []
    assert plane.run(plane.store.range(SENT_PREFIX))
    plane.advance(25)
    plane.run(restarted.round())
    assert plane.run(plane.store.range(SENT_PREFIX)) == []


def test_no_reminders_when_remind_before_is_zero(plane: Plane, receiver: Receiver) -> None:
    plane.model("wm")
    plane.push("wm", weights(plane.tmp / "w", 4))
    plane.run(plane.cp.access.request(REQUESTER, model="wm", principal="alice", duration_s=600, reason="look"))
    r = Reminders(plane.store, plane.rt.notifier, remind_before_s=0, clock=plane.clock)
    plane.advance(23.9)
    assert plane.run(r.round()) == []


@pytest.mark.parametrize(("created", "expires", "before", "want"), [
    (0, 24 * 3600, 3600, 23 * 3600),  # an hour ahead
    (0, 3600, 3600, 1800),  # a one-hour order: at half its life, not at once
    (0, 600, 3600, 300),
])
def test_remind_at(created: int, expires: int, before: int, want: int) -> None:
    ns = 1_000_000_000
    assert remind_at(created * ns, expires * ns, before) == want * ns


@pytest.mark.parametrize(("value", "want"), [(3600, 3600), ("30m", 1800), ("2h", 7200), ("0", 0)])
def test_remind_before_config(value: Any, want: int) -> None:
    assert parse_notify_config({"log": True, "remind_before": value}).remind_before_s == want
    assert parse_notify_config({}).remind_before_s == 3600


@pytest.mark.parametrize("value", ["1 hour", -1, True, "40d"])
def test_bad_remind_before(value: Any) -> None:
    with pytest.raises(InvalidInput, match="remind_before"):
        parse_notify_config({"remind_before": value})
