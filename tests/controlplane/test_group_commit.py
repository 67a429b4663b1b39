"""Group commit (custos.controlplane.batching): lease renewals, point reads and reports'
writes of many hosts in few Store round trips — and what that must not change.

Lease renewals (promise 4: a revoked lease stays revoked until the host acks its order), on
both Stores.

The attack on a group commit: a batch reads the fleet's leases, an order revokes some of
them (on another replica, between that read and the batch's write), and the batch's write
renews them anyway — the halted host keeps a live lease and never fails closed. Each test
below commits the revocation exactly in that window (a hook on the real Store's ``commit``)
and checks that the revoked hosts get no lease, that the others do, and that a fleet's
renewals cost a handful of transactions instead of one each.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.controlplane.audit import AuditLog
from custos.controlplane.batching import GroupCommit
from custos.controlplane.custody import RENEWALS_PER_TXN, REPORTS_PER_WRITE, Custody, HostNotEnrolled
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import MAX_VALUE_BYTES, Store, Txn
from custos.core.canonical import decode_canonical, encode_canonical
from custos.errors import InvalidInput

FLEET = 150


# -- GroupCommit itself ---------------------------------------------------------------------


async def test_a_lone_request_is_handled_at_once_and_a_crowd_in_a_few_batches() -> None:
    seen: list[list[int]] = []

    async def handler(keys: list[int]) -> dict[int, int | BaseException]:
        seen.append(keys)
        await asyncio.sleep(0.01)
        return {k: k * 2 for k in keys}

    gc: GroupCommit[int, int] = GroupCommit(handler, "test")
    assert await gc.submit(1) == 2
    assert seen == [[1]]
    results = await asyncio.gather(*(gc.submit(k) for k in range(500)))
    assert results == [k * 2 for k in range(500)]
    assert gc.batches <= 3  # the first alone, then the rest that queued behind it
    assert sorted(k for b in seen[1:] for k in b) == list(range(500))


async def test_errors_reach_their_own_waiters() -> None:
    calls = 0

    async def handler(keys: list[str]) -> dict[str, str | BaseException]:
        nonlocal calls
        calls += 1
        if "down" in keys:
            raise ConnectionError("store down")
        return {k: (ValueError(k) if k.startswith("bad") else k.upper()) for k in keys}

    gc: GroupCommit[str, str] = GroupCommit(handler, "test")
    got = await asyncio.gather(gc.submit("a"), gc.submit("bad-1"), gc.submit("b"), return_exceptions=True)
    assert got[0] == "A" and got[2] == "B"
    assert isinstance(got[1], ValueError)
    got = await asyncio.gather(gc.submit("x"), gc.submit("down"), return_exceptions=True)
    assert all(isinstance(g, ConnectionError) for g in got)
    assert await gc.submit("after") == "AFTER"  # the loop outlived the failed batch


async def test_a_cancelled_waiter_leaves_the_batch_to_the_others() -> None:
    release = asyncio.Event()

    async def handler(keys: list[str]) -> dict[str, str | BaseException]:
        await release.wait()
        return {k: k for k in keys}

    gc: GroupCommit[str, str] = GroupCommit(handler, "test")
    first = asyncio.create_task(gc.submit("first"))
    await asyncio.sleep(0)
    gone, kept, twice = (asyncio.create_task(gc.submit(k)) for k in ("gone", "kept", "kept"))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    assert await first == "first"
    assert await kept == "kept" and await twice == "kept"
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_max_batch_caps_what_one_call_takes() -> None:
    sizes: list[int] = []

    async def handler(keys: list[int]) -> dict[int, int | BaseException]:
        sizes.append(len(keys))
        await asyncio.sleep(0)
        return {k: k for k in keys}

    gc: GroupCommit[int, int] = GroupCommit(handler, "test", max_batch=10)
    assert await asyncio.gather(*(gc.submit(k) for k in range(95))) == list(range(95))
    assert max(sizes) == 10 and sum(sizes) == 95


# -- renewals on a real Store ----------------------------------------------------------------


def _custody(store: Store) -> Custody:
    return Custody(Registry(store, AuditLog(store, Ed25519PrivateKey.generate())), ca=None, lease_ttl=60)


async def _fleet(store: Store, n: int) -> list[str]:
    hosts = [f"gpu-{i:04d}" for i in range(n)]
    for i in range(0, n, 100):
        await store.commit(Txn(puts={f"hosts/{h}": encode_canonical({"name": h, "state": "enrolled"})
                                     for h in hosts[i:i + 100]}))
    return hosts


def _count_commits(store: Store, before: Callable[[Txn], Awaitable[None]] | None = None) -> list[Txn]:
    """Record every commit on ``store``; ``before`` runs (once per commit) ahead of it."""
    seen: list[Txn] = []
    real = store.commit

    async def commit(txn: Txn) -> bool:
        seen.append(txn)
        if before is not None:
            await before(txn)
        return await real(txn)

    store.commit = commit  # type: ignore[method-assign]
    return seen


async def _lease(store: Store, host: str) -> dict[str, Any]:
    e = await store.get(f"leases/{host}")
    assert e is not None
    return dict(decode_canonical(e.value))


async def test_a_fleets_renewals_take_a_few_transactions(store: Store) -> None:
    custody = _custody(store)
    hosts = await _fleet(store, FLEET)
    commits = _count_commits(store)
    first = await asyncio.gather(*(custody.renew_lease(h) for h in hosts))  # first leases
    again = await asyncio.gather(*(custody.renew_lease(h) for h in hosts))  # renewals
    assert all(isinstance(x, int) for x in [*first, *again])
    lease_txns = [t for t in commits if any(k.startswith("leases/") for k in t.puts)]
    # Each round: at most the lone first renewal, then full transactions.
    assert len(lease_txns) <= 2 * (1 + math.ceil(FLEET / RENEWALS_PER_TXN)), len(lease_txns)
    for h in hosts:
        rec = await _lease(store, h)
        assert rec["state"] == "live" and rec["expires_ns"] == again[hosts.index(h)]


async def test_a_revocation_between_the_batchs_read_and_write_wins(store: Store) -> None:
    """The window of the attack, forced: the order's revocation commits after the batch read
    the leases and before it writes them. Revoked hosts get None (no lease until they ack),
    except the one that acked already; a removed host's caller alone gets HostNotEnrolled."""
    custody = _custody(store)
    hosts = await _fleet(store, FLEET)
    await asyncio.gather(*(custody.renew_lease(h) for h in hosts))
    victims = hosts[3:FLEET:7]
    acked, removed = victims[0], victims[1]
    fired = False
    window = asyncio.Lock()  # the batch's other transactions wait until the revocation is in

    async def revoke_first(txn: Txn) -> None:
        nonlocal fired
        if len(txn.checks) < 2:
            return  # not a batch of renewals (the revocation's own writes among them)
        async with window:
            if fired:
                return
            fired = True
            await custody.revoke_leases(victims, order_id="order-1")
            await real_commit(Txn(puts={f"orderacks/order-1/{acked}": b"{}",
                                        f"hosts/{removed}": encode_canonical({"name": removed, "state": "removed"})}))

    real_commit = store.commit
    _count_commits(store, revoke_first)
    got = await asyncio.gather(*(custody.renew_lease(h) for h in hosts), return_exceptions=True)
    assert fired
    for h, res in zip(hosts, got, strict=True):
        rec = await _lease(store, h)
        if h == removed:
            assert isinstance(res, HostNotEnrolled), res
            assert rec["state"] == "revoked"
        elif h in victims and h != acked:
            assert res is None, (h, res)
            assert rec == {**rec, "state": "revoked", "order": "order-1"}
        else:
            assert isinstance(res, int), (h, res)
            assert rec["state"] == "live" and rec["expires_ns"] == res
    # Renewed again later, the revoked hosts still get nothing until they ack.
    later = await asyncio.gather(*(custody.renew_lease(h) for h in victims[2:]))
    assert later == [None] * len(victims[2:])


# -- reports' writes ---------------------------------------------------------------------------


async def test_reports_of_many_hosts_share_transactions_and_keep_their_errors(store: Store) -> None:
    custody = _custody(store)
    commits = _count_commits(store)
    hosts = [f"gpu-{i:03d}" for i in range(64)]
    big = b"x" * (MAX_VALUE_BYTES + 1)

    async def write(i: int, h: str) -> None:
        puts = {f"copies/a/{h}-{j}": encode_canonical({"host": h, "j": j}) for j in range(5)}
        if i == 7:
            puts["copies/a/oversized"] = big
        await custody._write_report(puts)

    got = await asyncio.gather(*(write(i, h) for i, h in enumerate(hosts)), return_exceptions=True)
    assert isinstance(got[7], InvalidInput) and "too large" in str(got[7])
    assert all(g is None for i, g in enumerate(got) if i != 7)
    stored = {e.key for e in await store.range("copies/a/")}
    assert stored == {f"copies/a/{h}-{j}" for i, h in enumerate(hosts) if i != 7 for j in range(5)}
    # 63 reports of 5 puts: a lone first one, then groups of REPORTS_PER_WRITE, 110 puts a transaction.
    assert len(commits) <= 1 + math.ceil(63 / REPORTS_PER_WRITE) * math.ceil(REPORTS_PER_WRITE * 5 / 110), commits
