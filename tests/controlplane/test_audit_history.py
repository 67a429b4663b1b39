"""The audit log's history cannot shrink, on both Store backends (SQLite and real etcd).

Each test plays an attacker with write access to the Store (and, where said, the checkpoint
key) against the control plane's checkpoint writer and the verifier with its trusted state."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.controlplane.audit import (
    CHECKPOINT_HEAD_KEY,
    CHECKPOINTS_PREFIX,
    EVENTS_PREFIX,
    HEAD_KEY,
    AuditLog,
    Caller,
    checkpoint_key,
    event_key,
)
from custos.controlplane.config import load_config
from custos.controlplane.store.base import Store, Txn
from custos.core.audit_chain import (
    CHECKPOINT_DOMAIN,
    GENESIS_HASH,
    Checkpoint,
    CheckpointPolicy,
    LogVerification,
    TrustedState,
    checkpoint_digest,
    event_hash,
    key_id,
    parse_stored,
    verify_log,
)
from custos.core.canonical import encode_canonical
from custos.errors import IntegrityError, InvalidInput

ALICE = Caller(principal="alice", role="security-team", host="10.1.1.1", request_id="req-1")
POLICY = CheckpointPolicy(max_events=5, max_age_s=60)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def audit(store: Store, key: Ed25519PrivateKey) -> AuditLog:
    return AuditLog(store, key, policy=POLICY)


async def grow(audit: AuditLog, n: int) -> None:
    for i in range(n):
        await audit.record(ALICE, "RegisterModel", f"model/m{i}", "ok")


async def verify(audit: AuditLog, key: Ed25519PrivateKey, trusted: TrustedState | None = None,
                 now_ns: int | None = None) -> LogVerification:
    cps = [(b, s) for _, b, s in await audit.checkpoints()]  # first, as the verifiers do
    return verify_log(await audit.stored_events(), cps, key.public_key(), policy=POLICY, now_ns=now_ns,
                      trusted=trusted)


async def seen(audit: AuditLog, key: Ed25519PrivateKey) -> TrustedState:
    r = await verify(audit, key)
    assert r and r.trusted_next is not None, r.problems
    return r.trusted_next


async def checkpoint_seqs(store: Store) -> list[int]:
    return [int(e.key[len(CHECKPOINTS_PREFIX):]) for e in await store.range(CHECKPOINTS_PREFIX)]


async def rewrite_events(store: Store, records: list[dict]) -> None:  # type: ignore[type-arg]
    """Store ``records`` (renumbered, rechained) as the whole log, and the head to match."""
    old = [e.key for e in await store.range(EVENTS_PREFIX)]
    puts, prev = {}, GENESIS_HASH
    for seq, rec in enumerate(records, start=1):
        rec = {**rec, "seq": seq, "prev": prev}
        prev = event_hash(rec)
        puts[event_key(seq)] = encode_canonical({"event": rec, "hash": prev})
    puts[HEAD_KEY] = encode_canonical({"hash": prev, "seq": len(records)})
    await store.commit(Txn(puts=puts, deletes=[k for k in old if k not in puts]))


async def records(store: Store) -> list[dict]:  # type: ignore[type-arg]
    return [parse_stored(e.value)[0] for e in await store.range(EVENTS_PREFIX)]


async def delete_checkpoints(store: Store, above: int = 0) -> None:
    """Delete every checkpoint after event ``above``, and point the checkpoint head at the one left."""
    gone = [checkpoint_key(s) for s in await checkpoint_seqs(store) if s > above]
    await store.commit(Txn(deletes=[*gone, CHECKPOINT_HEAD_KEY]))


async def test_appends_write_a_checkpoint_every_n_events(audit: AuditLog, key: Ed25519PrivateKey,
                                                          store: Store) -> None:
    await grow(audit, 23)  # no background loop here: the appends alone keep the gap
    assert await checkpoint_seqs(store) == [5, 10, 15, 20]
    chain = [Checkpoint.decode(b) for _, b, _ in await audit.checkpoints()]
    assert [c.prev_seq for c in chain] == [0, 5, 10, 15]
    assert [c.prev for c in chain[1:]] == [c.digest for c in chain[:-1]]
    r = await verify(audit, key)
    assert r and r.events_after_last_checkpoint == 3
    assert await audit.checkpoint() == 23 and await audit.checkpoint() is None


async def test_two_replicas_keep_one_checkpoint_chain(store: Store, key: Ed25519PrivateKey) -> None:
    a, b = AuditLog(store, key, policy=POLICY), AuditLog(store, key, policy=POLICY)

    async def checkpoints() -> None:
        for _ in range(10):
            await asyncio.gather(a.checkpoint(), b.checkpoint())
            await asyncio.sleep(0)

    await asyncio.gather(grow(a, 20), grow(b, 20), checkpoints())
    await a.checkpoint()
    r = await verify(a, key)
    assert r and r.head_seq == 40 and r.events_after_last_checkpoint == 0, r.problems


async def test_edit_rechain_and_delete_every_checkpoint(audit: AuditLog, key: Ed25519PrivateKey,
                                                         store: Store) -> None:
    await grow(audit, 12)
    trusted = await seen(audit, key)
    recs = await records(store)
    recs[2]["principal"] = "mallory"
    await rewrite_events(store, recs)
    await delete_checkpoints(store)
    r = await verify(audit, key)
    assert not r and r.problems[0].startswith("gap: 12 events from event 1 after the newest checkpoint")
    r = await verify(audit, key, trusted)
    assert any(p.startswith("rollback: trusted checkpoint 10 missing") for p in r.problems), r.problems
    # The control plane that wrote checkpoint 10 will not sign over this, but keeps recording.
    with pytest.raises(IntegrityError, match="went back"):
        await audit.checkpoint()
    await grow(audit, 1)
    assert await checkpoint_seqs(store) == []
    # Restarted, it no longer remembers, and signs: the verifiers still see the gap and the rollback.
    restarted = AuditLog(store, key, policy=POLICY)
    assert await restarted.checkpoint() == 13
    assert (await verify(restarted, key)).problems[0].startswith("gap: 13 events from event 1 before the checkpoint")
    assert not await verify(restarted, key, trusted)


async def test_delete_the_tail_with_the_checkpoints_above_it(audit: AuditLog, key: Ed25519PrivateKey,
                                                              store: Store) -> None:
    await grow(audit, 12)
    trusted = await seen(audit, key)
    await rewrite_events(store, (await records(store))[:7])
    await delete_checkpoints(store, above=5)
    # A consistent shorter log: only a verifier that saw the longer one can tell.
    assert await verify(audit, key)
    r = await verify(audit, key, trusted)
    assert not r and r.problems == [
        "rollback: trusted checkpoint 10 missing: the newest checkpoint is at event 5",
        "truncated: the log ends at event 7, but 12 events were verified before: 5 deleted"]
    with pytest.raises(IntegrityError, match="saw checkpoint 10"):
        await audit.checkpoint()


async def test_delete_one_checkpoint_in_the_middle(audit: AuditLog, key: Ed25519PrivateKey, store: Store) -> None:
    await grow(audit, 16)
    await store.commit(Txn(deletes=[checkpoint_key(10)]))
    r = await verify(audit, key)
    assert not r and r.first_bad_seq == 10
    assert r.problems == ["checkpoint at event 10 is missing (the checkpoint at event 15 follows it): deleted",
                          "gap: 10 events from event 6 before the checkpoint at event 15 (at most 5 allowed): "
                          "checkpoints were deleted or are not being written"]


async def test_reorder_rechain_and_let_a_restarted_control_plane_re_sign(
        audit: AuditLog, key: Ed25519PrivateKey, store: Store) -> None:
    await grow(audit, 12)
    trusted = await seen(audit, key)
    recs = await records(store)
    recs[2], recs[3] = recs[3], recs[2]
    await rewrite_events(store, recs)
    await delete_checkpoints(store)
    restarted = AuditLog(store, key, policy=POLICY)
    await grow(restarted, 2)
    await restarted.checkpoint()
    r = await verify(restarted, key)
    assert not r and r.problems[0].startswith("gap: 12 events from event 1 before the checkpoint at event 12")
    assert not await verify(restarted, key, trusted)


async def test_replace_the_checkpoint_key_and_re_sign(audit: AuditLog, key: Ed25519PrivateKey,
                                                      store: Store) -> None:
    await grow(audit, 12)
    trusted = await seen(audit, key)
    recs = await records(store)
    recs[4]["result"] = "denied"
    await rewrite_events(store, recs)
    await delete_checkpoints(store)
    other = Ed25519PrivateKey.generate()
    forger = AuditLog(store, other, policy=CheckpointPolicy(max_events=1000, max_age_s=60))
    for at in (5, 10, 12):  # re-sign checkpoints where the real ones were, so the gaps look right
        await rewrite_events(store, recs[:at])
        assert await forger.checkpoint() == at
    assert verify_log(await audit.stored_events(), [(b, s) for _, b, s in await audit.checkpoints()],
                      other.public_key(), policy=POLICY), "consistent under the new key"
    r = await verify(audit, key, trusted)
    assert not r and "bad signature" in r.problems[0]
    r = verify_log(await audit.stored_events(), [(b, s) for _, b, s in await audit.checkpoints()],
                   other.public_key(), policy=POLICY, trusted=trusted)
    assert not r and r.problems[0].startswith("key changed")


async def test_rollback_to_an_older_copy_of_the_store(audit: AuditLog, key: Ed25519PrivateKey, store: Store) -> None:
    await grow(audit, 7)
    backup = {e.key: e.value for e in await store.range("audit/")}
    await grow(audit, 7)
    trusted = await seen(audit, key)
    assert trusted.checkpoint_seq == 10 and trusted.events == 14
    current = [e.key for e in await store.range("audit/")]
    await store.commit(Txn(deletes=current))
    await store.commit(Txn(puts=backup))
    assert await verify(audit, key), "the older copy is consistent on its own"
    r = await verify(audit, key, trusted)
    assert not r and r.problems[0] == "rollback: trusted checkpoint 10 missing: the newest checkpoint is at event 5"
    with pytest.raises(IntegrityError, match="went back"):
        await audit.checkpoint()
    # A restarted control plane grows the old copy past the trusted point: still not the history seen.
    restarted = AuditLog(store, key, policy=POLICY)
    await grow(restarted, 9)
    await restarted.checkpoint()
    r = await verify(restarted, key, trusted)
    assert not r and r.problems[0] == "rewritten: checkpoint 10 is not the one verified before: the log was re-signed"


async def test_a_gap_longer_than_n_events(audit: AuditLog, key: Ed25519PrivateKey, store: Store) -> None:
    await grow(audit, 12)
    await store.commit(Txn(deletes=[checkpoint_key(10), CHECKPOINT_HEAD_KEY]))
    r = await verify(audit, key)
    assert not r and r.problems == [
        "gap: 7 events from event 6 after the newest checkpoint (at most 5 allowed): checkpoints were deleted "
        "or are not being written"]
    # Events kept waiting past T fail as well, at the verifier's clock.
    events = await records(store)
    late = events[5]["time_ns"] + 61 * 1_000_000_000
    assert any("waited 61 s" in p for p in (await verify(audit, key, now_ns=late)).problems)


async def test_a_log_from_before_chaining_is_continued(store: Store, key: Ed25519PrivateKey) -> None:
    audit = AuditLog(store, key)
    await grow(audit, 7)
    hashes = [parse_stored(s)[1] for s in await audit.stored_events()]
    for seq in (3, 6):  # as the control plane wrote them before checkpoints named their predecessor
        body = encode_canonical({"hash": hashes[seq - 1], "key_id": key_id(key.public_key()), "seq": seq,
                                 "time_ns": 1})
        value = encode_canonical({"body": body.hex(), "signature": key.sign(CHECKPOINT_DOMAIN + body).hex()})
        await store.commit(Txn(puts={checkpoint_key(seq): value}))
    assert await audit.checkpoint() == 7
    newest = Checkpoint.decode((await audit.checkpoints())[-1][1])
    assert newest.prev_seq == 6 and newest.prev == checkpoint_digest((await audit.checkpoints())[1][1])
    assert await verify(audit, key)


async def test_a_malformed_stored_checkpoint_is_named_not_a_crash(audit: AuditLog, key: Ed25519PrivateKey,
                                                                   store: Store) -> None:
    await grow(audit, 7)
    await store.commit(Txn(puts={checkpoint_key(3): b"\xffnot a checkpoint"}))
    r = await verify(audit, key)
    assert not r and "checkpoint: unreadable" in r.problems
    assert await audit.checkpoint() == 7  # the writer follows its pointer, not the garbage


@pytest.mark.parametrize(("audit_toml", "want"), [
    ("checkpoint_max_events = 50\ncheckpoint_max_age = 60", (50, 60.0)),
    ("", (1000, 300.0)),
    ("checkpoint_max_events = 0", None),
    ("checkpoint_max_events = 1.5", None),
    ("checkpoint_max_events = true", None),
    ("checkpoint_max_age = 20", None),  # below 3 x checkpoint_interval (10 s)
    ("checkpoint_max_age = inf", None),
    ("checkpoint_max_age = \"300\"", None),
])
def test_checkpoint_limits_in_the_config(tmp_path: Path, audit_toml: str, want: tuple[int, float] | None) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f"[audit]\n{audit_toml}\n")
    if want is None:
        with pytest.raises(InvalidInput, match="checkpoint_max"):
            load_config(cfg_file)
        return
    cfg = load_config(cfg_file)
    assert (cfg.checkpoint_max_events, cfg.checkpoint_max_age) == want
