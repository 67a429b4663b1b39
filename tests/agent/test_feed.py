"""Orders over any path at the agent (custos.agent.feed): the feed, the drop directory, held acks.

Every case is a signed-order file placed in a real feed (a blob store directory, the
same interface the S3 backend serves) and in the agent's drop directory, handed to
the agent's real order handler (VerifyingOrderHandler, the stream's). A forged,
under-quorum, replayed, stale, expired, malformed, oversized or wrong-version file
changes nothing — no halt, no ack to the control plane, a refusal logged once — and
a valid one halts exactly once even when it sits in the feed and the drop directory
and arrives on the stream too. Acks made off the stream survive a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from custos.agent.feed import MAX_PER_POLL, OrderIntake, apply_through_drop_dir
from custos.agent.heldacks import HeldAcks
from custos.agent.orders import VerifyingOrderHandler
from custos.agent.stream import CustodyStream
from custos.blobs.local import LocalBlobStore
from custos.client.orderfeed import FEED_PREFIX, order_file_of, publish, signed_order_of
from custos.core.canonical import encode_canonical
from custos.core.orderfile import MAX_ORDER_FILE_BYTES, OrderFile
from custos.core.orders import ExecutedOrders, Order
from custos.core.signers import Signature, encode_signatures
from custos.errors import BackendUnavailable, FailedPrecondition
from custos.v1 import custody_pb2
from tests.agent.test_orders import handler_for
from tests.core.order_cases import (
    ISSUED,
    NOW,
    OUTSIDER,
    SEQUENCE,
    Inputs,
    default_state,
    inputs,
    make_order,
    panel,
)

P = panel("ed25519")


def _file(i: Inputs) -> OrderFile:
    return OrderFile(order=i.order_bytes, signatures=i.signatures, signer_set=i.signer_set.encode(),
                     drill_register=i.register_bytes,
                     drill_register_signatures=encode_signatures(i.register_signatures))


def _signed(order: Order, count: int | None = None, **kw: Any) -> Inputs:
    return inputs(order.encode(), P.sign_order(order, count), P, **kw)


def _forged(order: Order) -> Inputs:
    sigs = [Signature(key_id=s.key_id, sig=("0" if s.sig[0] != "0" else "1") + s.sig[1:])
            for s in P.sign_order(order)]
    return inputs(order.encode(), sigs, P)


HALT = make_order("halt")
EXECUTED = ExecutedOrders(highest_sequence=SEQUENCE, executed_ids=frozenset({HALT.id}))


@dataclass(frozen=True)
class Case:
    name: str
    data: Callable[[], bytes]
    state: Callable[[], Inputs]  # the handler's starting state (and trust) for this case
    verified: bool = False
    halts: int = 0


def _bytes(i: Inputs) -> Callable[[], bytes]:
    return lambda: _file(i).encode()


_VALID = _signed(HALT)
CASES = [
    Case("valid", _bytes(_VALID), lambda: _VALID, verified=True, halts=1),
    Case("forged-signatures", _bytes(_forged(HALT)), lambda: _VALID),
    Case("outsiders", _bytes(inputs(HALT.encode(), [OUTSIDER.sign(b"x", "custos-order")] * 3, P)), lambda: _VALID),
    Case("under-quorum", _bytes(_signed(HALT, P.threshold("halt") - 1)), lambda: _VALID),
    # Executed before (its ack kept): repeated evidence, nothing done again, nothing sent up.
    Case("replayed", _bytes(_VALID), lambda: _VALID, verified=True),
    Case("stale-sequence", _bytes(_signed(make_order("halt", sequence=SEQUENCE - 3))), lambda: _VALID),
    Case("expired", _bytes(_signed(make_order("halt", issued_at=ISSUED - 10**5, not_after=ISSUED - 10**4))),
         lambda: _VALID),
    Case("malformed-bytes", lambda: b"\x00\xff not an order file", lambda: _VALID),
    Case("truncated", lambda: _file(_VALID).encode()[:-7], lambda: _VALID),
    Case("oversized", lambda: b"{" + b" " * MAX_ORDER_FILE_BYTES + b"}", lambda: _VALID),
    Case("wrong-format-version", lambda: encode_canonical({**json.loads(_file(_VALID).encode()), "version": 2}),
         lambda: _VALID),
    Case("a-bare-signed-order", lambda: signed_order_of(_file(_VALID)).SerializeToString(), lambda: _VALID),
]


@dataclass
class World:
    tmp: Path
    feed: LocalBlobStore
    intake: OrderIntake
    handler: VerifyingOrderHandler
    agent: Any
    sent: list[custody_pb2.OrderAck] = field(default_factory=list)

    @property
    def drop(self) -> Path:
        return self.intake.drop_dir


def _world(tmp: Path, start: Inputs, *, executed: bool = False) -> World:
    (tmp / "state").mkdir(mode=0o700)
    handler, agent = handler_for(tmp / "state", start)
    if executed:  # the valid halt ran here before: its ack is kept
        asyncio.run(handler.handle(signed_order_of(_file(start)), received_unix_ns=1))
        agent.halts.clear()
    feed = LocalBlobStore(tmp / "feed")
    w = World(tmp, feed, None, handler, agent)  # type: ignore[arg-type]
    w.intake = OrderIntake(handler=handler, deliver=w.sent.append, drop_dir=tmp / "state" / "orders-drop",
                           open_feed=lambda: feed, feed_prefix=FEED_PREFIX, feed_interval=1.0)
    return w


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(start: Inputs, **kw: Any) -> World:
        (tmp_path / str(len(made))).mkdir()
        w = _world(tmp_path / str(len(made)), start, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.feed.close()


def _put_feed(w: World, name: str, data: bytes) -> None:
    w.feed.put(FEED_PREFIX + name, data)


def _drop(w: World, name: str, data: bytes) -> Path:
    w.drop.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = w.drop / f".{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, w.drop / name)
    return w.drop / name


@pytest.mark.parametrize("path", ["feed", "drop-dir"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_path_applies_valid_orders_and_nothing_else(case: Case, path: str, make_world: Any) -> None:
    w = make_world(case.state(), executed=case.name == "replayed")
    before = w.handler.state.executed
    data = case.data()
    if path == "feed":
        _put_feed(w, "00000000000000000001-x.order", data)
        asyncio.run(w.intake.poll_feed())
    else:
        _drop(w, "order-1.order", data)
        asyncio.run(w.intake.scan_drop_dir())
        where = "done" if case.verified else "refused"
        assert (w.drop / where / "order-1.order").exists() and not (w.drop / "order-1.order").exists()
        ack = json.loads((w.drop / where / "order-1.order.ack.json").read_text())["ack"]
        assert ack["verified"] is case.verified, ack
        assert (w.drop.stat().st_mode & 0o777) == 0o700
    assert len(w.agent.halts) == case.halts and w.agent.lifts == []
    if case.halts:
        assert [a.outcome for a in w.sent] == ["halted"]  # sent to the control plane, once
        assert HALT.id in w.handler.state.executed.executed_ids
    else:
        assert w.sent == []  # refusals and repeats stay here: a forged copy cannot spoil the real ack
        if case.name != "replayed":
            assert w.handler.state.executed == before
    counts = w.intake.status()["applied" if case.verified else "refused"]
    assert counts[path] == 1, w.intake.status()


def test_a_valid_order_in_the_feed_the_drop_dir_and_on_the_stream_halts_once(make_world: Any) -> None:
    w = make_world(_VALID)
    data = _file(_VALID).encode()
    _put_feed(w, "00000000000000000001-a.order", data)
    _put_feed(w, "00000000000000000002-b.order", data)  # republished under another name
    _drop(w, "copy.order", data)

    async def all_at_once() -> list[custody_pb2.OrderAck]:
        stream = w.handler.handle(signed_order_of(_file(_VALID)), received_unix_ns=1)
        acks = await asyncio.gather(stream, w.intake.poll_feed(), w.intake.scan_drop_dir())
        return [acks[0]]

    (stream_ack,) = asyncio.run(all_at_once())
    assert len(w.agent.halts) == 1
    outcomes = sorted([stream_ack.outcome, *(a.outcome for a in w.sent)])
    assert outcomes.count("halted") == 1 and set(outcomes) <= {"halted", "already-executed"}
    assert len(w.sent) <= 1  # only a first execution off the stream is sent up
    assert (w.drop / "done" / "copy.order").exists()


def test_a_refused_feed_object_is_logged_once_and_not_reverified_each_poll(make_world: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    w = make_world(_VALID)
    _put_feed(w, "00000000000000000001-f.order", _file(_forged(HALT)).encode())
    calls = []
    real = w.handler

    class Counting:
        async def handle(self, order: custody_pb2.SignedOrder, *, received_unix_ns: int) -> custody_pb2.OrderAck:
            calls.append(1)
            return await real.handle(order, received_unix_ns=received_unix_ns)

    w.intake.handler = Counting()
    with caplog.at_level(logging.ERROR, logger="custos.agent.feed"):
        for _ in range(3):
            asyncio.run(w.intake.poll_feed())
    assert len(calls) == 1
    assert [r.getMessage() for r in caplog.records].count("order in the feed refused") == 1
    # Replaced under the same key (a new ETag): read and judged again.
    _put_feed(w, "00000000000000000001-f.order", _file(_VALID).encode())
    asyncio.run(w.intake.poll_feed())
    assert len(calls) == 2 and len(w.agent.halts) == 1


def test_the_feed_is_applied_oldest_first_and_bounded_per_poll(make_world: Any) -> None:
    w = make_world(_VALID)
    halt = _file(_VALID).encode()
    lift_order = make_order("lift", sequence=SEQUENCE + 1)
    lift = _file(_signed(lift_order)).encode()
    _put_feed(w, "00000000000000000002-lift.order", lift)
    _put_feed(w, "00000000000000000001-halt.order", halt)
    asyncio.run(w.intake.poll_feed())
    # Oldest first: the halt, then the newer lift (a lift first would make the halt stale).
    assert len(w.agent.halts) == 1 and len(w.agent.lifts) == 1
    assert [a.outcome for a in w.sent] == ["halted", "lifted"]
    for i in range(MAX_PER_POLL + 5):
        _put_feed(w, f"junk-{i:04d}", b"junk")
    assert asyncio.run(w.intake.poll_feed()) == MAX_PER_POLL
    assert asyncio.run(w.intake.poll_feed()) == 5
    assert asyncio.run(w.intake.poll_feed()) == 0


def test_an_unreachable_feed_is_reported_and_retried(make_world: Any, tmp_path: Path) -> None:
    w = make_world(_VALID)
    attempts = []

    def down() -> LocalBlobStore:
        attempts.append(1)
        if len(attempts) < 3:
            raise BackendUnavailable("feed down")
        return w.feed

    w.intake.open_feed = down
    _put_feed(w, "00000000000000000001-a.order", _file(_VALID).encode())
    asyncio.run(w.intake.poll_feed())
    assert w.intake.status()["feed_error"] == "feed down" and w.agent.halts == []
    asyncio.run(w.intake.poll_feed())
    asyncio.run(w.intake.poll_feed())
    assert w.intake.status()["feed_error"] is None and len(w.agent.halts) == 1


def test_the_drop_dir_ignores_temporary_names_and_never_follows_links(make_world: Any, tmp_path: Path) -> None:
    w = make_world(_VALID)
    secret = tmp_path / "outside.order"
    secret.write_bytes(_file(_VALID).encode())
    w.drop.mkdir(parents=True, mode=0o700)
    os.symlink(secret, w.drop / "link.order")
    (w.drop / ".being-written.order").write_bytes(_file(_VALID).encode())
    (w.drop / "a-dir").mkdir()
    asyncio.run(w.intake.scan_drop_dir())
    assert w.agent.halts == []  # the link is not followed, the temporary name not touched
    assert (w.drop / "refused" / "link.order").is_symlink() and secret.exists()
    assert (w.drop / ".being-written.order").exists() and (w.drop / "refused" / "a-dir").is_dir()
    reason = json.loads((w.drop / "refused" / "link.order.ack.json").read_text())["ack"]["reason"]
    assert "link" in reason


def test_a_drop_dir_owned_by_someone_else_is_not_used(make_world: Any) -> None:
    w = make_world(_VALID)
    _drop(w, "x.order", _file(_VALID).encode())
    os.chown(w.drop, 65534, 65534)  # CI runs as root: another user's directory
    asyncio.run(w.intake.scan_drop_dir())
    assert w.agent.halts == [] and w.intake.status()["drop_dir_error"], w.intake.status()
    os.chown(w.drop, os.getuid(), os.getgid())
    asyncio.run(w.intake.scan_drop_dir())
    assert len(w.agent.halts) == 1 and w.intake.status()["drop_dir_error"] is None


def test_apply_order_through_the_drop_dir_waits_for_the_ack(make_world: Any) -> None:
    w = make_world(_VALID)

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.create_task(w.intake.run(stop))
        try:
            return await asyncio.to_thread(apply_through_drop_dir, w.drop, _file(_VALID).encode(), wait=30)
        finally:
            stop.set()
            await loop

    w.intake.drop_poll = 0.05
    w.drop.mkdir(parents=True, mode=0o700)
    ack = asyncio.run(run())
    assert ack["verified"] and ack["outcome"] == "halted" and len(w.agent.halts) == 1
    with pytest.raises(FailedPrecondition, match="no drop directory"):
        apply_through_drop_dir(w.tmp / "nowhere", b"x", wait=1)
    with pytest.raises(BackendUnavailable, match="no ack"):
        apply_through_drop_dir(w.drop, b"x", wait=0.3)  # no agent running: the file waits for it


def test_apply_fd_refuses_what_is_not_a_regular_file(make_world: Any) -> None:
    w = make_world(_VALID)
    r, wr = os.pipe()
    try:
        with pytest.raises(Exception, match="not a regular file"):
            asyncio.run(w.intake.apply_fd(r))
    finally:
        os.close(r)
        os.close(wr)
    path = w.tmp / "o.order"
    path.write_bytes(_file(_VALID).encode())
    fd = os.open(path, os.O_RDONLY)
    try:
        ack = asyncio.run(w.intake.apply_fd(fd))
    finally:
        os.close(fd)
    assert ack["outcome"] == "halted" and [a.outcome for a in w.sent] == ["halted"]


def test_the_control_plane_feed_object_is_what_the_stream_carries(tmp_path: Path) -> None:
    """Publish (as the control plane does) and read back: the agent gets the very SignedOrder."""
    msg = signed_order_of(_file(_VALID))
    store = LocalBlobStore(tmp_path / "b")
    try:
        key = publish(store, order_file_of(msg), created_ns=123)
        again = publish(store, order_file_of(msg), created_ns=123)  # a retry, another replica: same object
        assert key == again == f"{FEED_PREFIX}00000000000000000123-{HALT.id}.order"
        got = signed_order_of(OrderFile.decode(store.read_range(key, 0, store.head(key).size)))  # type: ignore[union-attr]
        assert got == msg
    finally:
        store.close()


# -- held acks --------------------------------------------------------------------------------


def _ack(oid: str) -> custody_pb2.AgentMessage:
    return custody_pb2.AgentMessage(ack=custody_pb2.OrderAck(order_id=oid, verified=True, outcome="halted",
                                                             pids_stopped=[42], paths_wiped=["/x"]))


def test_held_acks_survive_a_restart_until_written(tmp_path: Path) -> None:
    path = tmp_path / "held-acks.json"
    held = HeldAcks(path)
    a, b = _ack("a" * 64), _ack("b" * 64)
    held.add(a)
    held.add(b)
    held.add(a)  # once
    assert (path.stat().st_mode & 0o777) == 0o600
    again = HeldAcks(path).load()
    assert [m.ack for m in again] == [a.ack, b.ack]
    held.written(a)
    assert [m.ack.order_id for m in HeldAcks(path).load()] == ["b" * 64]
    path.write_text("{not json")
    assert HeldAcks(path).load() == []  # set aside, never a crash


def test_the_stream_keeps_acks_made_off_the_stream_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "held-acks.json"

    def stream() -> CustodyStream:
        async def nothing() -> list[custody_pb2.AgentMessage]:
            return []

        async def removed(reason: str) -> None:
            return None

        return CustodyStream(addr="127.0.0.1:1", credentials=lambda: None,  # type: ignore[arg-type,return-value]
                             initial_messages=nothing, on_lease=lambda g: None, on_removed=removed,
                             held_acks=path)

    s = stream()
    s.deliver_ack(_ack("c" * 64).ack)  # no stream up: held
    restarted = stream()
    assert [m.ack.order_id for m in restarted._held] == ["c" * 64]


def test_default_state_is_what_the_table_assumes() -> None:
    assert default_state().highest_sequence == SEQUENCE - 1 and NOW > ISSUED
