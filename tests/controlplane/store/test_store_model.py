"""Both Stores against a model (a dict): random sequences of commits (checks that hold or
not, puts, deletes), put_many of up to several statements' worth of rows, and reads (get,
get_many, range with start_after and limit). Values are any bytes (empty, not UTF-8); keys
share prefixes (``a``, ``a/b``, ``a0``) so range ends are tested.

The SQLite store writes many rows a statement and a put_many in one transaction; this is
what would catch a row lost at a statement boundary, a value mangled, a check that holds
when it should not, or a revision out of order."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.controlplane.store.base import Store, Txn
from custos.controlplane.store.etcd import EtcdStore
from custos.controlplane.store.sqlite import ROWS_PER_STATEMENT, SQLiteStore

BIG = 1003  # more rows than three statements put, and a range past 1,000
NAMES = ["a", "a/b", "a/b/c", "a0", "b", "b/a", "c"]
KEYS = st.sampled_from(NAMES) | st.builds(lambda n: f"n/{n:04d}", st.integers(0, 1200))
VALUES = st.binary(max_size=40) | st.sampled_from([b"", b"\x00\xff", "é".encode(), b"{}"])

COMMIT = st.tuples(st.just("commit"), st.dictionaries(KEYS, VALUES, max_size=8), st.lists(KEYS, max_size=3),
                   st.lists(st.tuples(KEYS, st.booleans()), max_size=2))
PUT_MANY = st.tuples(st.just("put_many"), st.integers(0, ROWS_PER_STATEMENT * 2 + 5) | st.just(BIG + 3), VALUES)
RANGE = st.tuples(st.just("range"), st.sampled_from(["", "a", "a/", "a/b", "n/", "n/00", "b"]),
                  st.none() | KEYS, st.sampled_from([0, 1, 2, 7, BIG, BIG + 1]))
GET_MANY = st.tuples(st.just("get_many"), st.lists(KEYS, max_size=12))
OPS = st.lists(st.one_of(COMMIT, PUT_MANY, RANGE, GET_MANY), min_size=1, max_size=12)

_runs = itertools.count()


async def play(store: Store, root: str, ops: list[tuple[Any, ...]]) -> None:
    model: dict[str, tuple[bytes, int]] = {}  # key -> (value, write sequence)
    seq = 0
    atomic: set[int] = set()  # the writes that were one commit (put_many may be several)
    for op in ops:
        kind = op[0]
        if kind == "commit":
            _, puts, deletes, checks = op
            want: dict[str, int] = {}
            rights: dict[str, bool] = {}
            for key, right in checks:  # a key checked twice: the last check counts
                e = await store.get(root + key)
                rev = e.mod_revision if e is not None else 0
                want[root + key] = rev if right else rev + 1
                rights[key] = right
            holds = all(rights.values())
            deletes = [d for d in deletes if d not in puts]
            ok = await store.commit(Txn(checks=want, puts={root + k: v for k, v in puts.items()},
                                        deletes=[root + d for d in deletes]))
            assert ok == holds
            if ok and (puts or deletes):
                seq += 1
                atomic.add(seq)
                for d in deletes:
                    model.pop(d, None)
                for k, v in puts.items():
                    model[k] = (v, seq)
        elif kind == "put_many":
            _, n, value = op
            puts = {f"n/{i:04d}": value + i.to_bytes(2, "big") for i in range(n)}
            await store.put_many({root + k: v for k, v in puts.items()})
            if puts:
                seq += 1
                for k, v in puts.items():
                    model[k] = (v, seq)
        elif kind == "range":
            _, prefix, after, limit = op
            got = await store.range(root + prefix, start_after=None if after is None else root + after,
                                    limit=limit)
            keys = sorted(k for k in model if k.startswith(prefix) and (after is None or k > after))
            if limit:
                keys = keys[:limit]
            assert [e.key[len(root):] for e in got] == keys
            assert [e.value for e in got] == [model[k][0] for k in keys]
        else:
            _, keys = op
            many = await store.get_many([root + k for k in keys])
            assert {k[len(root):]: e.value for k, e in many.items()} == {k: model[k][0] for k in keys if k in model}
    # Revisions in the order written; a commit's keys share one.
    entries = {e.key[len(root):]: e for e in await store.range(root)}
    assert set(entries) == set(model)
    by_seq: dict[int, set[int]] = {}
    for k, e in entries.items():
        assert e.value == model[k][0]
        by_seq.setdefault(model[k][1], set()).add(e.mod_revision)
    assert all(len(by_seq[s]) == 1 for s in by_seq if s in atomic), by_seq
    spans = [(min(by_seq[s]), max(by_seq[s])) for s in sorted(by_seq)]
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)), spans


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_the_store_is_its_model(backend: str, ops: list[tuple[Any, ...]], tmp_path: Path,
                                request: pytest.FixtureRequest) -> None:
    run = next(_runs)

    async def main() -> None:
        if backend == "sqlite":
            store: Store = SQLiteStore(tmp_path / f"model-{run}.db")
            root = "m/"
        else:
            server = request.getfixturevalue("etcd_server")
            store = EtcdStore(server.endpoint, prefix=f"/model{os.getpid()}-{run}/")
            root = "m/"
        try:
            await play(store, root, ops)
        finally:
            await store.close()

    asyncio.run(main())
