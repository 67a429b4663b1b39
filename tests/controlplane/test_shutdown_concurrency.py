"""The shutdown path under its concurrency: acks recorded in batches, a paced fan-out, refusals
audited after their reply — each checked for what it must never do.

- every ack is recorded once: however acks fall into batches, and when two replicas record
  overlapping acks at once, each host has exactly one ack, and (on one replica) it is the
  host's first (a Hypothesis property over random ack sequences and batch splits);
- no order is lost by the paced fan-out: streams that attach, re-attach or detach while an
  order is being broadcast end up with it exactly once on their current stream;
- no unwrap is answered after the quorum commit: against a real server, unwraps race the
  signature that reaches quorum; every key handed out has its audit event before the quorum's,
  and every unwrap sent after it returned is refused;
- refusals audited after the reply keep the audit chain whole and its checkpoints within the
  policy's spacing, and a failing store only delays them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.blobs.local import LocalBlobStore
from custos.controlplane.audit import AuditLog, Caller
from custos.controlplane.custody import Custody
from custos.controlplane.keys.local import LocalKeyProvider
from custos.controlplane.orders import OrdersService
from custos.controlplane.orders.acks import Acks, ack_key
from custos.controlplane.registry import Registry
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.audit_chain import CheckpointPolicy, parse_stored, verify_log
from custos.core.canonical import decode_canonical
from custos.core.orders import Order
from custos.core.signers import encode_signatures
from custos.v1 import custody_pb2, keys_pb2, keys_pb2_grpc
from tests.core.order_cases import panel
from tests.servers.custos import DevServer

SEC = Caller(principal="sec", role="security-team", host="127.0.0.1", request_id="t")
EXEC = Caller(principal="exec", role="executive", host="127.0.0.1", request_id="t")
ROUNDS = itertools.count()  # examples share one Store: each takes hosts of its own
OUTCOMES = ("halted", "refused", "already-executed", "failed")


class World:
    """A control plane's order parts on a real SQLite Store, with one halt at quorum."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="custos-shutdown-"))
        self.loop = asyncio.new_event_loop()
        self.store = SQLiteStore(self.tmp / "custos.db")
        self.audit = AuditLog(self.store, Ed25519PrivateKey.generate())
        self.registry = Registry(self.store, self.audit)
        self.custody = Custody(self.registry, ca=None)
        self.orders = OrdersService(self.registry, self.custody,
                                    keys=LocalKeyProvider(self.tmp / "keys.json", dev_only=True),
                                    blobs=LocalBlobStore(self.tmp / "blobs"))
        self.panel = panel("ed25519")
        self.run(self.orders.install_bootstrap(self.panel.signer_set))
        self.run(self.orders.refresh_chain())
        self.run(self.registry.register_model(SEC, name="m", owner="t", training_flops=3e26))
        d = self.run(self.orders.propose(EXEC, action="halt", models=["m"], reason="t", expires_seconds=0,
                                         drill=False))
        order = Order.decode(d["body"].encode())
        rec = self.run(self.orders.book.attach(EXEC, order_id=order.id,
                                               signatures=encode_signatures(list(self.panel.sign_order(order)))))
        assert rec["state"] == "executing"
        self.oid = order.id
        self.record = rec

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def acks(self) -> Acks:
        """Another replica's ack recorder on the same Store."""
        return Acks(self.store, self.custody, self.orders.book)

    def stored(self) -> dict[str, dict[str, Any]]:
        prefix = f"orderacks/{self.oid}/"
        return {e.key[len(prefix):]: decode_canonical(e.value) for e in self.run(self.store.range(prefix))}

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):  # the revocation watch the streams started
            task.cancel()
        self.run(asyncio.sleep(0))
        self.run(self.store.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def world() -> Any:
    w = World()
    yield w
    w.close()


def _ack(oid: str, outcome: str, n: int) -> custody_pb2.OrderAck:
    return custody_pb2.OrderAck(order_id=oid, verified=outcome != "refused", outcome=outcome,
                                reason=f"ack {n}", received_unix_ns=n + 1, done_unix_ns=n + 1)


ACK_SEQUENCES = st.lists(st.tuples(st.integers(0, 11), st.sampled_from(OUTCOMES)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ACK_SEQUENCES, cuts=st.lists(st.integers(1, 40), max_size=6))
def test_one_replica_records_each_hosts_first_ack_once_whatever_the_batches(
        world: World, seq: list[tuple[int, str]], cuts: list[int]) -> None:
    round_no = next(ROUNDS)
    hosts = [f"h{round_no}-{i}" for i in range(12)]  # fresh hosts per example: the Store is shared
    items = [(hosts[h], _ack(world.oid, outcome, n), 1000 + n) for n, (h, outcome) in enumerate(seq)]
    bounds = sorted({c for c in cuts if c < len(items)} | {0, len(items)})
    acks = world.acks()
    for a, b in itertools.pairwise(bounds):
        world.run(acks.record_many(items[a:b]))
    stored = world.stored()
    first: dict[str, str] = {}
    for host, ack, _ in items:
        first.setdefault(host, ack.reason)
    mine = {h: v for h, v in stored.items() if h in first}
    assert set(mine) == set(first)  # every host that acked, once (one key per host)
    assert {h: v["reason"] for h, v in mine.items()} == first  # and its first ack stands


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ACK_SEQUENCES)
def test_two_replicas_recording_at_once_store_one_ack_per_host(world: World, seq: list[tuple[int, str]]) -> None:
    round_no = next(ROUNDS)
    hosts = [f"r{round_no}-{i}" for i in range(12)]
    items = [(hosts[h], _ack(world.oid, outcome, n), 1000 + n) for n, (h, outcome) in enumerate(seq)]
    a, b = world.acks(), world.acks()
    committed: list[list[str]] = []

    async def both() -> None:
        # The same acks reach two replicas (a host that reconnected elsewhere resends), in
        # opposite orders, at once: each commit is conditioned on no ack of its hosts existing.
        orig = [a._commit_new, b._commit_new]

        def spy(fn: Any) -> Any:
            async def wrapped(oid: str, values: dict[str, Any]) -> list[str]:
                out: list[str] = await fn(oid, values)
                committed.append(out)
                return out
            return wrapped

        a._commit_new, b._commit_new = spy(orig[0]), spy(orig[1])  # type: ignore[method-assign]
        await asyncio.gather(a.record_many(items), b.record_many(list(reversed(items))))

    world.run(both())
    stored = {h: v for h, v in world.stored().items() if h in set(hosts)}
    assert set(stored) == {h for h, _, _ in items}
    flat = [h for batch in committed for h in batch]
    assert len(flat) == len(set(flat)) == len(stored)  # no host's ack was written twice
    reasons = {h: {ack.reason for hh, ack, _ in items if hh == h} for h in stored}
    assert all(v["reason"] in reasons[h] for h, v in stored.items())


def test_an_ack_for_an_unknown_order_changes_nothing(world: World) -> None:
    before = world.stored()
    world.run(world.acks().record_many([("hx", _ack("ab" * 32, "halted", 1), 5),
                                        ("hy", _ack("not-an-id", "halted", 2), 6)]))
    assert world.stored() == before
    assert world.run(world.store.get(ack_key("ab" * 32, "hx"))) is None


def test_the_paced_fanout_leaves_every_current_stream_with_the_order_once(world: World) -> None:
    custody, fanout = world.custody, world.orders.fanout
    hosts = [f"s{i:04d}" for i in range(700)]

    async def scenario() -> dict[str, asyncio.Queue[Any]]:
        queues = {h: custody.attach(h) for h in hosts}
        await asyncio.gather(*fanout.catching_up)  # the attach catch-ups (the order exists already)
        for q in queues.values():
            while not q.empty():
                q.get_nowait()
        fanout._sent.pop(world.oid, None)  # as if the order had just reached quorum
        push = asyncio.ensure_future(fanout.push(world.record))
        # While it is being paced out: new hosts attach, some reconnect, some leave.
        for i in range(0, 700, 7):
            await asyncio.sleep(0)
            queues[hosts[i]] = custody.attach(hosts[i])  # a reconnect: the newest stream wins
            if i % 3 == 0:
                new = f"n{i:04d}"
                queues[new] = custody.attach(new)
            if i % 5 == 1:
                custody.detach(hosts[i + 1], queues.pop(hosts[i + 1]))
        await push
        await asyncio.gather(*fanout.catching_up)  # of the streams that attached meanwhile
        return queues

    try:
        queues = world.run(scenario())
        data = fanout.message_bytes(world.record)
        for host, q in queues.items():
            got = []
            while not q.empty():
                got.append(q.get_nowait())
            assert got.count(data) == 1, f"{host}: {len(got)} messages, {got.count(data)} orders"
    finally:
        for h in list(custody.streams):
            custody.detach(h, custody.streams[h])


def test_refusals_recorded_after_the_reply_keep_the_chain_whole_and_checkpointed(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    store = SQLiteStore(tmp_path / "custos.db")
    key = Ed25519PrivateKey.generate()
    policy = CheckpointPolicy(max_events=5, max_age_s=3600)
    audit = AuditLog(store, key, policy=policy)

    async def burst() -> None:
        for i in range(37):
            audit.record_soon(SEC, "UnwrapDataKey", f"artifact/{i}", "error: ModelNotActive: halted")
            if i % 9 == 0:
                await audit.record(SEC, "Other", f"x/{i}", "ok")  # awaited appends interleave
        await audit.flush()
        await audit.checkpoint()

    try:
        loop.run_until_complete(burst())
        events = loop.run_until_complete(audit.stored_events())
        cps = loop.run_until_complete(audit.checkpoints())
        assert len(events) == 37 + 5
        objects = [parse_stored(e)[0]["object"] for e in events]
        assert [o for o in objects if o.startswith("artifact/")] == [f"artifact/{i}" for i in range(37)]
        v = verify_log(events, [(b, s) for _, b, s in cps], key.public_key(), policy=policy)
        assert v, v.problems
        assert v.checkpoints_checked >= 42 // 5 - 1  # batches never stretched the spacing
    finally:
        loop.run_until_complete(store.close())
        loop.close()


@pytest.mark.slow
def test_no_unwrap_is_answered_after_the_quorum_commit(tmp_path: Path) -> None:
    srv = DevServer(tmp_path / "cp").start()
    try:
        srv.cli("model", "register", "m", "--training-flops", "3e26", check=True)
        w = tmp_path / "w"
        w.mkdir()
        (w / "x.safetensors").write_bytes(b"\x05" * 65536)
        aid = srv.cli("push", "m", str(w), "-o", "id", check=True).stdout.strip()
        srv.grant("m", principal="dev-security-team")
        oid = srv.propose("halt", "m")
        srv.sign(oid, 1, 2)
        d = Path(srv.env["CUSTOS_CERT_DIR"])
        creds = grpc.ssl_channel_credentials(Path(srv.env["CUSTOS_CA"]).read_bytes(),
                                             (d / "security-team.key").read_bytes(),
                                             (d / "security-team.pem").read_bytes())
        results: list[tuple[int, str]] = []  # (sent ns, status)
        stop = threading.Event()

        def hammer() -> None:
            ch = grpc.secure_channel(srv.env["CUSTOS_ADDR"], creds)
            stub = keys_pb2_grpc.KeysStub(ch)
            while not stop.is_set():
                sent = time.time_ns()
                try:
                    stub.UnwrapDataKey(keys_pb2.UnwrapDataKeyRequest(artifact_id=aid, purpose="race"), timeout=30)
                    results.append((sent, "OK"))
                except grpc.RpcError as exc:
                    results.append((sent, exc.code().name))  # type: ignore[attr-defined]
            ch.close()

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        srv.sign(oid, 3)
        returned = time.time_ns()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        events = json.loads(srv.cli("audit", "list", "-o", "json", role="auditor", check=True).stdout)
        assert any(code == "OK" for _, code in results)  # the race was real: keys before the quorum
        after = [code for sent, code in results if sent > returned]
        assert after and set(after) == {"FAILED_PRECONDITION"}
        quorum = [e["seq"] for e in events if e["action"] == "AttachSignature" and "quorum" in e["result"]]
        released = [e["seq"] for e in events if e["action"] == "UnwrapDataKey" and e["result"].startswith("ok")]
        assert len(quorum) == 1 and released
        assert max(released) < quorum[0]  # no key left after the commit
        # Every refusal is in the chain too (those recorded after their reply included).
        refused = [e for e in events if e["action"] == "UnwrapDataKey" and e["result"].startswith("error")]
        assert len(refused) == sum(1 for _, c in results if c == "FAILED_PRECONDITION")
    finally:
        srv.stop()
