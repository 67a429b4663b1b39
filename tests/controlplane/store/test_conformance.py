"""One conformance suite, run on SQLite and on a real etcd."""

from __future__ import annotations

import asyncio

import pytest

from custos.controlplane.store.base import MAX_TXN_OPS, Store, StoreUnavailable, Txn
from custos.errors import InvalidInput


async def test_get_missing_is_none(store: Store) -> None:
    assert await store.get("models/nope") is None


async def test_put_get_and_revisions_increase(store: Store) -> None:
    assert await store.commit(Txn(puts={"a/1": b"one"}))
    e1 = await store.get("a/1")
    assert e1 is not None and e1.value == b"one" and e1.mod_revision > 0
    assert await store.commit(Txn(puts={"a/1": b"uno"}))
    e2 = await store.get("a/1")
    assert e2 is not None and e2.value == b"uno" and e2.mod_revision > e1.mod_revision
    assert await store.revision() >= e2.mod_revision


async def test_multi_key_commit_is_atomic_on_failed_check(store: Store) -> None:
    assert await store.commit(Txn(puts={"k/x": b"1"}))
    # The check on k/x is stale: none of the writes may land.
    ok = await store.commit(Txn(checks={"k/x": 0}, puts={"k/y": b"2", "k/z": b"3"}, deletes=["k/x"]))
    assert ok is False
    assert await store.get("k/y") is None and await store.get("k/z") is None
    assert (await store.get("k/x")) is not None


async def test_absent_check_and_compare_and_swap(store: Store) -> None:
    assert await store.commit(Txn(checks={"c/1": 0}, puts={"c/1": b"a"}))
    assert not await store.commit(Txn(checks={"c/1": 0}, puts={"c/1": b"b"}))
    rev = (await store.get("c/1")).mod_revision  # type: ignore[union-attr]
    assert await store.commit(Txn(checks={"c/1": rev}, puts={"c/1": b"b"}))
    assert not await store.commit(Txn(checks={"c/1": rev}, puts={"c/1": b"c"}))
    assert (await store.get("c/1")).value == b"b"  # type: ignore[union-attr]


async def test_delete(store: Store) -> None:
    await store.commit(Txn(puts={"d/1": b"x", "d/2": b"y"}))
    assert await store.commit(Txn(deletes=["d/1", "d/missing"]))
    assert await store.get("d/1") is None
    assert [e.key for e in await store.range("d/")] == ["d/2"]


async def test_range_prefix_order_paging(store: Store) -> None:
    keys = [f"r/{i:04d}" for i in range(25)]
    await store.commit(Txn(puts={k: k.encode() for k in reversed(keys)}))
    await store.commit(Txn(puts={"r0": b"outside", "s/1": b"outside", "q/9": b"outside"}))
    got = await store.range("r/")
    assert [e.key for e in got] == keys
    page1 = await store.range("r/", limit=10)
    page2 = await store.range("r/", start_after=page1[-1].key, limit=10)
    page3 = await store.range("r/", start_after=page2[-1].key, limit=10)
    assert [e.key for e in page1 + page2 + page3] == keys


async def test_concurrent_cas_exactly_one_wins(store: Store) -> None:
    await store.commit(Txn(puts={"head": b"0"}))
    rev = (await store.get("head")).mod_revision  # type: ignore[union-attr]
    results = await asyncio.gather(
        *[store.commit(Txn(checks={"head": rev}, puts={"head": str(i).encode()})) for i in range(8)]
    )
    assert sum(results) == 1


async def test_binary_values_roundtrip(store: Store) -> None:
    blob = bytes(range(256)) * 64
    await store.commit(Txn(puts={"bin/x": blob}))
    assert (await store.get("bin/x")).value == blob  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["", "a\x00b", "x" * 2000])
async def test_bad_keys_rejected(store: Store, key: str) -> None:
    with pytest.raises(InvalidInput):
        await store.commit(Txn(puts={key: b"v"}))


async def test_oversized_txn_rejected_and_nothing_written(store: Store) -> None:
    puts = {f"big/{i}": b"v" for i in range(MAX_TXN_OPS + 1)}
    with pytest.raises(InvalidInput):
        await store.commit(Txn(puts=puts))
    assert await store.range("big/") == []


async def test_unreachable_etcd_is_store_unavailable() -> None:
    from custos.controlplane.store.etcd import EtcdStore
    from tests.servers.ports import free_port

    s = EtcdStore(f"127.0.0.1:{free_port()}", timeout=1)
    with pytest.raises(StoreUnavailable):
        await s.get("x")
    await s.close()


async def test_watch_reports_writes_under_prefix(store: Store) -> None:
    import contextlib

    seen: list[str] = []

    async def consume() -> None:
        async for key in store.watch("w/"):
            seen.append(key)
            if len(seen) >= 2:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)  # the watch is established
    await store.commit(Txn(puts={"x/1": b"outside"}))
    await store.commit(Txn(puts={"w/a": b"1"}))
    await store.commit(Txn(puts={"w/b": b"2"}))
    await asyncio.wait_for(task, 10)
    assert seen == ["w/a", "w/b"]
    with contextlib.suppress(asyncio.CancelledError):
        task.cancel()


async def test_get_many(store: Store) -> None:
    await store.commit(Txn(puts={f"gm/{i:03d}": str(i).encode() for i in range(105)}))
    keys = [f"gm/{i:03d}" for i in range(0, 105, 2)] + ["gm/missing", "gm/000"]
    got = await store.get_many(keys)
    assert set(got) == {f"gm/{i:03d}" for i in range(0, 105, 2)}
    assert got["gm/004"].value == b"4" and got["gm/004"].mod_revision > 0
    assert await store.get_many([]) == {}
