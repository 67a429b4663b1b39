"""Registry and audit log on both Store backends (SQLite and real etcd)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.controlplane.audit import EVENTS_PREFIX, AuditLog, Caller
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Store, Txn
from custos.core.audit_chain import verify_log
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.lineage import CycleError
from custos.core.manifest import FileEntry, Manifest, ManifestError
from custos.errors import Conflict, InvalidInput, NotFound

ALICE = Caller(principal="alice", role="security-team", host="10.1.1.1", request_id="req-1")


def manifest(tag: str, n: int = 2) -> bytes:
    return Manifest.from_entries(
        FileEntry(f"model-{i}.safetensors", 10 + i, hashlib.sha256(f"{tag}{i}".encode()).hexdigest())
        for i in range(n)).encode()


@pytest.fixture
async def reg(store: Store) -> Registry:
    key = Ed25519PrivateKey.generate()
    return Registry(store, AuditLog(store, key))


async def events(reg: Registry) -> list[dict]:  # type: ignore[type-arg]
    return [decode_canonical(s)["event"] for _, s in await reg.audit.list_events(0, 10_000)]


async def verify(reg: Registry) -> bool:
    evs = [s for _, s in await reg.audit.list_events(0, 10_000)]
    cps = [(b, s) for _, b, s in await reg.audit.checkpoints()]
    return bool(verify_log(evs, cps, reg.audit.signing_key.public_key()))


async def test_register_model_covered_rules_and_audit(reg: Registry) -> None:
    m = await reg.register_model(ALICE, name="big", owner="lab", training_flops=3e26)
    assert m["covered"] and m["state"] == "active" and m["transit_key"] == "custos-big"
    small = await reg.register_model(ALICE, name="small", owner="lab", training_flops=1e25)
    assert not small["covered"]
    equiv = await reg.register_model(ALICE, name="eq", owner="lab", training_flops=0,
                                     benchmark_equivalence="MMLU parity with a 1e26 model")
    assert equiv["covered"]
    ev = await events(reg)
    assert [(e["action"], e["object"], e["principal"], e["host"], e["result"]) for e in ev] == [
        ("RegisterModel", "model/big", "alice", "10.1.1.1", "ok"),
        ("RegisterModel", "model/small", "alice", "10.1.1.1", "ok"),
        ("RegisterModel", "model/eq", "alice", "10.1.1.1", "ok"),
    ]
    assert await verify(reg)


async def test_exemption_record(reg: Registry) -> None:
    m = await reg.register_model(ALICE, name="ex", owner="lab", training_flops=2e26,
                                 exemption={"basis": "lower on all benchmarks", "date": "2026-01-02",
                                            "certifier": "cso"})
    assert m["exemption"] == {"basis": "lower on all benchmarks", "date": "2026-01-02",
                              "certifier": "cso"}
    with pytest.raises(InvalidInput, match="date"):
        await reg.register_model(ALICE, name="ex2", owner="lab", training_flops=2e26,
                                 exemption={"basis": "b", "date": "yesterday", "certifier": "c"})


@pytest.mark.parametrize("name", ["", "Big", "-x", "a/b", "x" * 64, "a b", "../m"])
async def test_bad_model_names_change_nothing(reg: Registry, name: str) -> None:
    with pytest.raises(InvalidInput):
        await reg.register_model(ALICE, name=name, owner="lab", training_flops=1)
    assert await reg.list_models() == []
    # The failure is attributed in the log, and nothing else was written.
    ev = await events(reg)
    assert len(ev) == 1 and ev[0]["result"].startswith("error: InvalidInput")


async def test_bad_flops_rejected(reg: Registry) -> None:
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(InvalidInput):
            await reg.register_model(ALICE, name="m", owner="lab", training_flops=bad)


async def test_duplicate_model_conflict(reg: Registry) -> None:
    await reg.register_model(ALICE, name="m", owner="lab", training_flops=1)
    with pytest.raises(Conflict):
        await reg.register_model(ALICE, name="m", owner="other", training_flops=1)
    assert (await reg.get_model("m"))["owner"] == "lab"


async def test_artifact_idempotent_registration(reg: Registry) -> None:
    await reg.register_model(ALICE, name="m", owner="lab", training_flops=3e26)
    mb = manifest("base")
    a1, created1 = await reg.register_artifact(ALICE, model="m", manifest_bytes=mb, parents=[],
                                               source_host="gpu1", source_path="/w/base")
    a2, created2 = await reg.register_artifact(ALICE, model="m", manifest_bytes=mb, parents=[],
                                               source_host="gpu1", source_path="/w/base")
    assert created1 and not created2 and a1.id == a2.id
    assert await reg.model_artifact_ids("m") == [a1.id]
    _, _, copies = await reg.list_copies("m")
    assert len(copies) == 1 and copies[0]["location"] == "gpu1:/w/base"
    assert [e["result"] for e in await events(reg)][-1] == "already-exists"


async def test_artifact_for_other_model_conflicts(reg: Registry) -> None:
    await reg.register_model(ALICE, name="m1", owner="lab", training_flops=1)
    await reg.register_model(ALICE, name="m2", owner="lab", training_flops=1)
    mb = manifest("x")
    await reg.register_artifact(ALICE, model="m1", manifest_bytes=mb, parents=[])
    with pytest.raises(Conflict):
        await reg.register_artifact(ALICE, model="m2", manifest_bytes=mb, parents=[])
    assert await reg.model_artifact_ids("m2") == []


async def test_unknown_model_and_parent_rejected(reg: Registry) -> None:
    with pytest.raises(NotFound):
        await reg.register_artifact(ALICE, model="ghost", manifest_bytes=manifest("a"), parents=[])
    await reg.register_model(ALICE, name="m", owner="lab", training_flops=1)
    with pytest.raises(InvalidInput, match="unknown parent"):
        await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("a"),
                                    parents=[("f" * 64, "fine-tune")])
    with pytest.raises(InvalidInput, match="relation"):
        await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("a"),
                                    parents=[("f" * 64, "finetune")])
    assert await reg.model_artifact_ids("m") == []
    assert await reg.store.range("artifacts/") == []


async def test_malformed_manifest_rejected_before_anything(reg: Registry) -> None:
    await reg.register_model(ALICE, name="m", owner="lab", training_flops=1)
    bad = encode_canonical({"digest": "sha256", "version": 1,
                            "files": [{"path": "../x", "size": 1, "sha256": "0" * 64}]})
    with pytest.raises(ManifestError):
        await reg.register_artifact(ALICE, model="m", manifest_bytes=bad, parents=[])
    assert await reg.store.range("artifacts/") == []


async def test_lineage_across_models_merge_and_copies_scope(reg: Registry) -> None:
    for name in ("base", "chat", "quant", "merged", "other"):
        await reg.register_model(ALICE, name=name, owner="lab", training_flops=3e26)
    base, _ = await reg.register_artifact(ALICE, model="base", manifest_bytes=manifest("base"),
                                          parents=[], source_host="h", source_path="/base")
    chat, _ = await reg.register_artifact(ALICE, model="chat", manifest_bytes=manifest("chat"),
                                          parents=[(base.id, "fine-tune")], source_host="h",
                                          source_path="/chat")
    quant, _ = await reg.register_artifact(ALICE, model="quant", manifest_bytes=manifest("q"),
                                           parents=[(chat.id, "quantize")])
    other, _ = await reg.register_artifact(ALICE, model="other", manifest_bytes=manifest("o"),
                                           parents=[])
    merged, _ = await reg.register_artifact(
        ALICE, model="merged", manifest_bytes=manifest("mg"),
        parents=[(quant.id, "merge"), (other.id, "merge")])

    down = await reg.lineage(model="base", artifact=None, ancestors=False, descendants=True)
    assert {n["artifact_id"] for n in down["nodes"]} == {base.id, chat.id, quant.id, merged.id}
    assert set(down["models"]) == {"base", "chat", "quant", "merged"}
    up = await reg.lineage(model=None, artifact=merged.id, ancestors=True, descendants=False)
    assert {n["artifact_id"] for n in up["nodes"]} == {merged.id, quant.id, chat.id, base.id, other.id}
    assert {(e["parent"], e["child"], e["relation"]) for e in up["edges"]} >= {
        (base.id, chat.id, "fine-tune"), (quant.id, merged.id, "merge"), (other.id, merged.id, "merge")}

    models, artifacts, copies = await reg.list_copies("base")
    assert set(models) == {"base", "chat", "quant", "merged"} and other.id not in artifacts
    assert {c["location"] for c in copies} == {"h:/base", "h:/chat"}
    models, _, _ = await reg.list_copies("base", include_derivatives=False)
    assert models == ["base"]
    # "other" is an ancestor of merged, not a derivative of base; merged is a derivative of other.
    assert "merged" in (await reg.list_copies("other"))[0]
    assert await verify(reg)


async def test_cycles_rejected(reg: Registry) -> None:
    await reg.register_model(ALICE, name="m", owner="lab", training_flops=1)
    a, _ = await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("a"), parents=[])
    b, _ = await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("b"),
                                       parents=[(a.id, "fine-tune")])
    c, _ = await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("c"),
                                       parents=[(b.id, "quantize")])
    with pytest.raises(CycleError):
        await reg.record_derivation(ALICE, child=a.id, parent=c.id, relation="merge")
    with pytest.raises(CycleError):
        await reg.record_derivation(ALICE, child=a.id, parent=a.id, relation="copy")
    with pytest.raises(CycleError):  # re-registration adding a parent that closes a loop
        await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("a"),
                                    parents=[(c.id, "distill")])
    assert (await reg.get_artifact(a.id)).parents == {}
    assert await reg.store.range(f"lineage/parents/{a.id}/") == []


async def test_concurrent_cycle_attempts_admit_at_most_one(reg: Registry) -> None:
    await reg.register_model(ALICE, name="m", owner="lab", training_flops=1)
    a, _ = await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("a"), parents=[])
    b, _ = await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("b"), parents=[])
    results = await asyncio.gather(
        reg.record_derivation(ALICE, child=b.id, parent=a.id, relation="fine-tune"),
        reg.record_derivation(ALICE, child=a.id, parent=b.id, relation="fine-tune"),
        return_exceptions=True)
    assert sum(isinstance(r, CycleError) for r in results) == 1
    assert await verify(reg)


async def test_record_derivation_and_short_ids(reg: Registry) -> None:
    await reg.register_model(ALICE, name="m", owner="lab", training_flops=1)
    a, _ = await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("a"), parents=[])
    b, _ = await reg.register_artifact(ALICE, model="m", manifest_bytes=manifest("b"), parents=[])
    await reg.record_derivation(ALICE, child=b.id[:10], parent=a.id[:10], relation="adapter")
    assert (await reg.get_artifact(b.id)).parents == {a.id: "adapter"}
    with pytest.raises(Conflict):
        await reg.record_derivation(ALICE, child=b.id, parent=a.id, relation="merge")
    with pytest.raises(InvalidInput):
        await reg.get_artifact("abc")
    with pytest.raises(NotFound):
        await reg.get_artifact("0" * 64)


async def test_concurrent_writers_keep_one_chain(reg: Registry) -> None:
    await asyncio.gather(*[
        reg.register_model(ALICE, name=f"m{i}", owner="lab", training_flops=1) for i in range(20)])
    ev = await events(reg)
    assert [e["seq"] for e in ev] == list(range(1, 21))
    await reg.audit.checkpoint()
    assert await verify(reg)


async def test_change_fails_if_audit_event_cannot_be_written(reg: Registry) -> None:
    # Another writer moves the head between plan and commit on every attempt:
    # the change must never land without its event.
    store = reg.store
    real_commit = store.commit
    calls = {"n": 0}

    async def racing_commit(txn: Txn) -> bool:
        calls["n"] += 1
        if "audit/head" in txn.checks:
            txn.checks["audit/head"] = -1  # can never match: the event cannot be appended
        return await real_commit(txn)

    store.commit = racing_commit  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception, match="contended"):
            await reg.register_model(ALICE, name="m", owner="lab", training_flops=1)
    finally:
        store.commit = real_commit  # type: ignore[method-assign]
    assert await store.get("models/m") is None and calls["n"] >= 2


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "reorder"])
async def test_tampering_in_the_store_is_detected(reg: Registry, tamper: str) -> None:
    for i in range(6):
        await reg.register_model(ALICE, name=f"m{i}", owner="lab", training_flops=1)
    await reg.audit.checkpoint()
    store = reg.store
    key = lambda s: f"{EVENTS_PREFIX}{s:020d}"  # noqa: E731
    e3 = (await store.get(key(3))).value  # type: ignore[union-attr]
    e4 = (await store.get(key(4))).value  # type: ignore[union-attr]
    if tamper == "edit":
        obj = decode_canonical(e3)
        obj["event"]["principal"] = "mallory"
        await store.commit(Txn(puts={key(3): encode_canonical(obj)}))
    elif tamper == "delete":
        await store.commit(Txn(deletes=[key(3)]))
    elif tamper == "insert":
        obj = decode_canonical(e3)
        obj["event"]["object"] = "model/forged"
        await store.commit(Txn(puts={key(3): encode_canonical(obj), key(4): e3,
                                     key(5): e4, key(6): (await store.get(key(5))).value}))  # type: ignore[union-attr]
    else:
        await store.commit(Txn(puts={key(3): e4, key(4): e3}))
    evs = [s for _, s in await reg.audit.list_events(0, 100)]
    cps = [(b, s) for _, b, s in await reg.audit.checkpoints()]
    result = verify_log(evs, cps, reg.audit.signing_key.public_key())
    assert not result and result.first_bad_seq == 3, result.problems
