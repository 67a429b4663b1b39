"""The etcd Store on a real 3-member cluster: store URLs with several endpoints,
failover when the member in use, the leader or a follower is killed (-9) or hung
(SIGSTOP), commits whose answer is lost on a cut link (they land once and say so),
watches that resume from the last revision they delivered, TLS, and a whole-cluster
outage. Every fault is real: processes killed, TCP connections cut."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custos.controlplane.store import open_store
from custos.controlplane.store.base import StoreUnavailable, Txn
from custos.controlplane.store.etcd import EtcdStore
from custos.controlplane.store.etcd_cluster import Endpoint, parse_etcd_url
from custos.errors import InvalidInput
from tests.servers.etcd import CuttableLink, EtcdCluster, find_binary
from tests.servers.ports import free_port

pytestmark = [pytest.mark.backend]


def _need_etcd() -> None:
    if find_binary("etcd") is None:
        if os.environ.get("CI"):
            pytest.fail("etcd is required in CI and is missing", pytrace=False)
        pytest.skip("etcd not installed")


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    """A fresh cluster per test: the tests kill its members."""
    _need_etcd()
    with EtcdCluster(3) as c:
        yield c


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[EtcdCluster]:
    """One cluster for the tests that only cut links (they kill no member)."""
    _need_etcd()
    with EtcdCluster(3) as c:
        yield c


# --- store URLs -------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "endpoints", "prefix", "tls"), [
    ("etcd://h1:2379,h2:2379,h3:2379/prod", ["h1:2379", "h2:2379", "h3:2379"], "/prod/", False),
    ("etcd://10.0.0.5:2379", ["10.0.0.5:2379"], "/custos/", False),
    ("etcd://10.0.0.5:2379/", ["10.0.0.5:2379"], "/custos/", False),
    ("etcds://a.internal:2379,b.internal:2379/x/y", ["a.internal:2379", "b.internal:2379"], "/x/y/", True),
    ("etcd://[::1]:2379,127.0.0.1:2380/p", ["[::1]:2379", "127.0.0.1:2380"], "/p/", False),
])
def test_store_url_with_several_endpoints(url: str, endpoints: list[str], prefix: str, tls: bool) -> None:
    parsed = parse_etcd_url(url)
    assert [str(e) for e in parsed.endpoints] == endpoints
    assert (parsed.prefix, parsed.tls) == (prefix, tls)
    store = open_store(url)
    assert isinstance(store, EtcdStore) and store.endpoint == ",".join(endpoints)


@pytest.mark.parametrize(("url", "says"), [
    ("etcd://", "empty etcd endpoint"),
    ("etcd://h1:2379,,h2:2379", "empty etcd endpoint"),
    ("etcd://h1:2379,/p", "empty etcd endpoint"),
    ("etcd://h1", "want HOST:PORT"),
    ("etcd://h1:0", "want HOST:PORT"),
    ("etcd://h1:65536", "want HOST:PORT"),
    ("etcd://h1:23x9", "want HOST:PORT"),
    ("etcd://h1:2379,h1:2379", "listed twice"),
    ("etcd://::1:2379", "[ADDR]:PORT"),
    ("etcd://[nope]:2379", "not an IPv6 address"),
    ("etcd://user@h1:2379", "bad host name"),
    ("etcd://h1:2379/p?ca=/x", "no query"),
    ("etcd://h1:2379, h2:2379", "spaces"),
    ("etcd://h1:2379/a//b", "empty prefix segment"),
    ("etcdx://h1:2379", "unknown store URL"),
    ("etcd:/h1:2379", "unknown store URL"),
])
def test_bad_store_urls_are_a_clear_error(url: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says.replace("[", r"\[").replace("]", r"\]")):
        open_store(url)


def test_tls_options_are_checked() -> None:
    with pytest.raises(InvalidInput, match="go together"):
        open_store("etcd://h1:2379", tls={"cert_file": "/x.pem"})
    with pytest.raises(InvalidInput, match="cannot read the etcd CA file"):
        open_store("etcds://h1:2379", tls={"ca_file": "/nonexistent/ca.pem"})
    with pytest.raises(InvalidInput, match="etcd store only"):
        open_store("sqlite:///tmp/x.db", tls={"ca_file": "/x"})


@given(st.text(max_size=60))
def test_any_etcd_url_opens_or_is_invalid_input(rest: str) -> None:
    """Whatever follows etcd://, the store opens (no connection is made yet) or the
    error is InvalidInput: never another exception, never a half-parsed endpoint."""
    try:
        store = open_store("etcd://" + rest)
    except InvalidInput:
        return
    assert isinstance(store, EtcdStore)
    parsed = parse_etcd_url("etcd://" + rest)
    assert store.endpoint == ",".join(map(str, parsed.endpoints))
    assert all(isinstance(e, Endpoint) and 0 < e.port < 65536 and e.host for e in parsed.endpoints)
    assert parsed.prefix.startswith("/") and parsed.prefix.endswith("/")


# --- failover under concurrent audited-style commits ------------------------------------

HEAD = "chain/head"


async def _writer(store: EtcdStore, name: str, ops: int, acked: list[str], tick: asyncio.Event) -> None:
    """Append ``ops`` events to one hash-chain-like log: check the head, put the next
    event and the new head — the shape of every audited mutation. A False is a conflict:
    read again and retry the *same* op, so an op applied but reported False shows twice."""
    for n in range(ops):
        op = f"{name}-{n}"
        while True:
            head = await store.get(HEAD)
            seq = int(head.value) if head else 0
            ok = await store.commit(Txn(checks={HEAD: head.mod_revision if head else 0},
                                        puts={HEAD: str(seq + 1).encode(), f"chain/ev/{seq + 1:08d}": op.encode()}))
            if ok:
                acked.append(op)
                tick.set()
                break


async def _next_commit(tick: asyncio.Event, writers: list[asyncio.Task[None]]) -> None:
    """Until a writer commits again; a writer's error (StoreUnavailable) fails the test."""
    tick.clear()
    waiter = asyncio.ensure_future(tick.wait())
    await asyncio.wait([waiter, *writers], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    for w in writers:
        if w.done():
            w.result()


async def _check_chain(store: EtcdStore, acked: list[str]) -> None:
    head = await store.get(HEAD)
    assert head is not None
    events = await store.range("chain/ev/")
    assert [e.key for e in events] == [f"chain/ev/{i:08d}" for i in range(1, int(head.value) + 1)]
    ops = [e.value.decode() for e in events]
    assert len(ops) == len(set(ops)), "an op landed twice"
    assert sorted(ops) == sorted(acked), "the log and the acknowledged commits differ"


def _target(cluster: EtcdCluster, which: str) -> tuple[list[int], int]:
    """The endpoint order (the first is the one in use) and the member to fault."""
    lead = cluster.leader()
    follower = next(i for i in range(3) if i != lead)
    other = next(i for i in range(3) if i not in (lead, follower))
    if which == "in-use":  # a follower in use: the cluster keeps its leader
        return [follower, other, lead], follower
    if which == "in-use-leader":
        return [lead, follower, other], lead
    return [follower, other, lead], lead  # the member in use survives; its leader does not


@pytest.mark.slow
@pytest.mark.parametrize(("which", "sig"), [
    ("in-use", signal.SIGKILL), ("in-use-leader", signal.SIGKILL), ("leader", signal.SIGKILL),
    ("in-use", signal.SIGSTOP),
])
async def test_member_fault_mid_commits_loses_nothing(cluster: EtcdCluster, which: str, sig: int) -> None:
    order, victim = _target(cluster, which)
    url = "etcd://" + ",".join(cluster.members[i].endpoint for i in order) + "/fault"
    store = EtcdStore(parse_etcd_url(url).endpoints, prefix="/fault/", timeout=1, retry_for=20)
    acked: list[str] = []
    tick = asyncio.Event()
    writers = [asyncio.create_task(_writer(store, f"w{i}", 30, acked, tick)) for i in range(4)]
    while len(acked) < 20:
        await _next_commit(tick, writers)
    t0 = time.monotonic()
    cluster.kill(victim, sig)
    await _next_commit(tick, writers)
    print(f"\n{which} {signal.Signals(sig).name}: next commit {1000 * (time.monotonic() - t0):.0f} ms after the fault")
    await asyncio.gather(*writers)
    await _check_chain(store, acked)
    assert len(acked) == 120
    if which.startswith("in-use"):
        assert store.cluster.pinned != cluster.members[victim].endpoint
    await store.close()


async def test_whole_cluster_down_is_store_unavailable_then_recovers(cluster: EtcdCluster) -> None:
    store = EtcdStore(cluster.endpoints, prefix="/down/", timeout=1, retry_for=2)
    assert await store.commit(Txn(puts={"d/a": b"1"}))
    for i in range(3):
        cluster.kill(i)
    with pytest.raises(StoreUnavailable, match=r"unavailable for commit after \d+ attempts") as err:
        await store.commit(Txn(puts={"d/b": b"2"}))
    assert all(m.endpoint in str(err.value) for m in cluster.members)
    for i in range(3):
        cluster.restart(i)
    cluster.wait_for_leader()
    assert await store.commit(Txn(checks={"d/b": 0}, puts={"d/b": b"2"}))
    assert [e.key for e in await store.range("d/")] == ["d/a", "d/b"]
    await store.close()


async def test_a_cluster_never_reached_fails_at_once_not_after_the_budget() -> None:
    """Nothing listens on any endpoint (a wrong URL, etcd not started): one round of
    refused connections is the answer, not minutes of retries at start."""
    store = EtcdStore(",".join(f"127.0.0.1:{free_port()}" for _ in range(3)), timeout=5, retry_for=600)
    with pytest.raises(StoreUnavailable, match="no member can be reached for revision"):
        await store.revision()
    await store.close()


# --- a commit whose answer is lost ------------------------------------------------------

SHAPES = {
    # name: (initial state, txn builder from the initial revisions)
    "check-and-put": ({"k/a": b"0"}, lambda rev: Txn(checks={"k/a": rev["k/a"]}, puts={"k/a": b"1", "k/b": b"2"})),
    "create-if-absent": ({}, lambda rev: Txn(checks={"k/new": 0}, puts={"k/new": b"x"})),
    "check-put-delete": ({"k/a": b"0", "k/d": b"gone"},
                         lambda rev: Txn(checks={"k/a": rev["k/a"]}, puts={"k/a": b"1"}, deletes=["k/d"])),
    "check-and-delete": ({"k/d": b"gone"}, lambda rev: Txn(checks={"k/d": rev["k/d"]}, deletes=["k/d"])),
}


async def _prepared(cluster: EtcdCluster, link: CuttableLink, prefix: str,
                    state: dict[str, bytes]) -> tuple[EtcdStore, dict[str, int]]:
    # The link is listed first: it is the member in use.
    endpoints = ",".join([link.endpoint, *(m.endpoint for m in cluster.members)])
    store = EtcdStore(endpoints, prefix=prefix, timeout=2, retry_for=20)
    if state:
        assert await store.commit(Txn(puts=dict(state)))
    revs = {k: (await store.get(k)).mod_revision for k in state}  # type: ignore[union-attr]
    return store, revs


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_commit_on_a_cut_link_lands_once_and_says_so(shared_cluster: EtcdCluster, shape: str,
                                                           when: str) -> None:
    link = CuttableLink(shared_cluster.members[0].port)
    prefix = f"/cut-{shape}-{when}/"
    state, build = SHAPES[shape]
    store, revs = await _prepared(shared_cluster, link, prefix, state)
    txn = build(revs)
    rev0 = await store.revision()
    link.arm(prefix.encode(), when)
    assert await store.commit(txn) is True
    assert link.cuts == 1
    assert await store.revision() == rev0 + 1, "the commit was applied other than exactly once"
    after = {e.key: e.value for e in await store.range("k/")}
    want = {k: v for k, v in state.items() if k not in txn.deletes} | txn.puts
    assert after == want
    await store.close()
    link.close()


async def test_lost_answer_then_a_later_write_still_reports_the_landing(shared_cluster: EtcdCluster) -> None:
    """The commit landed, its answer was lost, and another client rewrote one of its keys
    before the retry: the read-back finds the landing at its revision, not a conflict."""
    link = CuttableLink(shared_cluster.members[0].port)
    store, revs = await _prepared(shared_cluster, link, "/cut-later/", {"k/head": b"0"})
    other = EtcdStore(shared_cluster.members[1].endpoint, prefix="/cut-later/")
    loop = asyncio.get_running_loop()

    async def landed_then_overwrite() -> None:
        # The link holds back the first bytes etcd sends after the request: make sure they
        # answer it (the commit is visible), then write again before the answer is lost.
        for _ in range(500):
            if await other.get("k/ev") is not None:
                break
            await asyncio.sleep(0.01)
        assert await other.commit(Txn(puts={"k/head": b"next"}))

    def overwrite() -> None:  # in the link's thread, while the answer is held back
        asyncio.run_coroutine_threadsafe(landed_then_overwrite(), loop).result(10)

    link.arm(b"/cut-later/k/ev", "after", on_cut=overwrite)
    ok = await store.commit(Txn(checks={"k/head": revs["k/head"]}, puts={"k/head": b"1", "k/ev": b"mine"}))
    assert ok is True and link.cuts == 1
    assert (await store.get("k/ev")).value == b"mine"  # type: ignore[union-attr]
    assert (await store.get("k/head")).value == b"next"  # type: ignore[union-attr]
    await other.close()
    await store.close()
    link.close()


KEYS = ["k/0", "k/1", "k/2", "k/3"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.dictionaries(st.sampled_from(KEYS), st.binary(min_size=1, max_size=4), max_size=4),
       checks=st.dictionaries(st.sampled_from(KEYS), st.booleans(), max_size=3),
       puts=st.dictionaries(st.sampled_from(KEYS), st.binary(min_size=1, max_size=4), max_size=3),
       deletes=st.sets(st.sampled_from(KEYS), max_size=2),
       check_written=st.sampled_from([None, True, False]),
       fault=st.sampled_from(["none", "before", "after", "after"]))
def test_commit_outcome_is_true_under_any_cut(shared_cluster: EtcdCluster, initial: dict[str, bytes],
                                              checks: dict[str, bool], puts: dict[str, bytes],
                                              deletes: set[str], check_written: bool | None, fault: str) -> None:
    """Whatever the txn and wherever the link is cut, ``commit`` returns whether the checks
    held, the state is the model's, and a txn that writes a key it checks lands once.
    ``check_written`` adds a right (True) or stale (False) check on a key the txn writes,
    the shape of an audited change."""
    deletes -= set(puts)  # etcd refuses a key both put and deleted in one txn
    if not puts and not deletes:
        return
    if check_written is not None:
        checks = {**checks, sorted([*puts, *deletes])[0]: check_written}

    async def run() -> None:
        link = CuttableLink(shared_cluster.members[0].port)
        prefix = f"/prop-{time.monotonic_ns()}/"
        store, revs = await _prepared(shared_cluster, link, prefix, initial)
        # A check is right (the key's revision, 0 if absent) or stale (a revision it does not have).
        txn = Txn(checks={k: (revs.get(k, 0) if right else revs.get(k, 0) + 10_000) for k, right in checks.items()},
                  puts=dict(puts), deletes=sorted(deletes))
        holds = all(checks.values())
        rev0 = await store.revision()
        if fault != "none":
            link.arm(prefix.encode(), fault)
        assert await store.commit(txn) is holds
        after = {e.key: e.value for e in await store.range("k/")}
        want = ({k: v for k, v in initial.items() if k not in deletes} | puts) if holds else initial
        assert after == want
        writes_checked = bool(set(txn.checks) & (set(puts) | deletes))
        changes = bool(puts) or bool(deletes & set(initial))
        if writes_checked or fault != "after":
            assert await store.revision() == rev0 + (1 if holds and changes else 0)
        await store.close()
        link.close()

    asyncio.run(run())


# --- watches ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("victim", ["in-use", "leader"])
async def test_watch_resumes_from_its_last_revision_after_a_kill(cluster: EtcdCluster, victim: str) -> None:
    order, dead = _target(cluster, victim)
    watching = EtcdStore(",".join(cluster.members[i].endpoint for i in order), prefix="/w/", timeout=1,
                         retry_for=20)
    writer = EtcdStore(",".join(cluster.members[i].endpoint for i in reversed(order)), prefix="/w/",
                       timeout=1, retry_for=20)
    watch = watching.watch("o/").__aiter__()
    first = asyncio.ensure_future(watch.__anext__())
    await asyncio.sleep(0.3)  # the watch is established
    for i in range(5):
        assert await writer.commit(Txn(puts={f"o/{i:03d}": b"x"}))
    seen = [await first] + [await watch.__anext__() for _ in range(4)]
    # The consumer pauses; the member dies; writes go on meanwhile: the watch is not
    # reading, so when it next reads it finds its stream dead and must resume from history.
    cluster.kill(dead)
    cluster.wait_for_leader()
    for i in range(5, 25):
        assert await writer.commit(Txn(puts={f"o/{i:03d}": b"x", "other/x": b"y"}))
    seen += [await asyncio.wait_for(watch.__anext__(), 30) for _ in range(20)]
    assert seen == [f"o/{i:03d}" for i in range(25)]
    await watch.aclose()  # type: ignore[attr-defined]
    await watching.close()
    await writer.close()


# --- TLS --------------------------------------------------------------------------------

@pytest.mark.slow
async def test_tls_cluster_with_client_certificates_fails_over(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _need_etcd()
    with EtcdCluster(3, tls_dir=tmp_path / "tls") as c:
        tls = {"ca_file": str(c.ca), "cert_file": str(c.client_cert), "key_file": str(c.client_key)}
        store = open_store(f"etcds://{c.endpoints}/tls", tls=tls)
        assert await store.commit(Txn(puts={"t/a": b"1"}))
        c.kill(0)
        assert await store.commit(Txn(puts={"t/b": b"2"}))
        assert [e.key for e in await store.range("t/")] == ["t/a", "t/b"]
        await store.close()
        # No client certificate, or no TLS at all: refused, clearly, and nothing written.
        for bad in (EtcdStore(c.endpoints, prefix="/tls/", ca_file=str(c.ca), timeout=1, retry_for=2),
                    EtcdStore(c.endpoints, prefix="/tls/", timeout=1, retry_for=2)):
            with pytest.raises(StoreUnavailable, match=r"(no member can be reached|unavailable) for commit"):
                await bad.commit(Txn(puts={"t/c": b"3"}))
            await bad.close()
        store = open_store(f"etcds://{c.endpoints}/tls", tls=tls)
        assert await store.get("t/c") is None
        await store.close()
