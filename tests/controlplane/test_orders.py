"""The control plane's order path against the shared adversarial table.

Every case of tests/orders/cases.py is planted in a real Store (as an order an
attacker or a buggy proposer could have put there) and signatures are attached
through ``OrdersService.attach``: the control plane must never execute it —
no executed-state change, no model halted — and must name why. The valid
cases must execute, so the harness itself can fail.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.blobs.local import LocalBlobStore
from custos.controlplane.audit import AuditLog, Caller
from custos.controlplane.custody import Custody
from custos.controlplane.keys.local import LocalKeyProvider
from custos.controlplane.orders import META, OrdersService
from custos.controlplane.orders.book import DESTROYED
from custos.controlplane.orders.drills import KEY as DRILL_REGISTER
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Store, Txn
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.canonical import encode_canonical
from custos.core.orders import order_id_of
from custos.core.signers import encode_signatures
from custos.errors import CustosError
from tests.core.order_cases import MODELS, adversarial_cases, valid_cases

EXEC = Caller(principal="exec", role="executive", host="127.0.0.1", request_id="t")
CASES = adversarial_cases()
VALID = valid_cases()


async def plant(store: Store, tmp: Path, inputs: Any) -> tuple[OrdersService, str]:
    audit = AuditLog(store, Ed25519PrivateKey.generate())
    registry = Registry(store, audit)
    custody = Custody(registry, ca=None)
    keys = LocalKeyProvider(tmp / "keys.json", dev_only=True)
    orders = OrdersService(registry, custody, keys=keys, blobs=LocalBlobStore(tmp / "blobs"),
                           clock=lambda: inputs.now)
    puts = {
        "signers/000001": encode_canonical({"set": inputs.signer_set.encode().decode(), "signatures": "[]"}),
        META: encode_canonical({"executed": inputs.state.encode().decode(), "next_sequence": 1}),
    }
    for name in MODELS:
        puts[f"models/{name}"] = encode_canonical({
            "benchmark_equivalence": "", "covered": True, "created_at_ns": 1, "created_by": "t", "drill": False,
            "exemption": None, "name": name, "owner": "t",
            "state": "destroyed" if name in inputs.destroyed_models else "active",
            "training_flops": "3e+26", "transit_key": f"custos-{name}"})
    if inputs.register_bytes:
        puts[DRILL_REGISTER] = encode_canonical({"body": inputs.register_bytes.decode(),
                                                 "signatures": encode_signatures(inputs.register_signatures).decode()})
    if inputs.destroyed_artifacts:
        puts[DESTROYED] = encode_canonical({"artifacts": sorted(inputs.destroyed_artifacts),
                                            "models": sorted(inputs.destroyed_models)})
    oid = order_id_of(inputs.order_bytes)
    puts[f"orders/{oid}"] = encode_canonical({
        "body": inputs.order_bytes.decode(), "completed_at_ns": 0, "id": oid, "problems": [],
        "proposed_at_ns": 1, "proposed_by": "t", "quorum_at_ns": 0, "signatures": "[]", "state": "proposed"})
    assert await store.commit(Txn(puts=puts))
    return orders, oid


async def run_case(tmp: Path, inputs: Any) -> tuple[str, list[str], bytes, bytes]:
    store = SQLiteStore(tmp / "custos.db")
    try:
        orders, oid = await plant(store, tmp, inputs)
        before = (await store.get(META)).value  # type: ignore[union-attr]
        problems: list[str] = []
        try:
            d = await orders.attach(EXEC, order_id=oid, signatures=encode_signatures(inputs.signatures))
            state, problems = d["state"], d["problems"]
        except CustosError as exc:
            state, problems = "refused", [str(exc)]
        for t in list(orders.effects.tasks.values()):
            t.cancel()
        after = (await store.get(META)).value  # type: ignore[union-attr]
        return state, problems, before, after
    finally:
        await store.close()


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("case", [c for c in CASES if _utf8(c.build().order_bytes)], ids=lambda c: c.name)
def test_control_plane_refuses(case: Any, tmp_path: Path) -> None:
    inputs = case.build()
    state, problems, before, after = asyncio.run(run_case(tmp_path, inputs))
    assert state != "executing", f"{case.name}: executed an order that must be refused"
    assert before == after, "the executed-orders state moved"
    if state == "proposed":
        text = " ".join(problems)
        assert case.reason in text or case.reason == "threshold_not_met", (case.reason, problems)


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.name)
def test_control_plane_executes_valid_orders(case: Any, tmp_path: Path) -> None:
    state, _, before, after = asyncio.run(run_case(tmp_path, case.build()))
    assert state == "executing" and before != after
