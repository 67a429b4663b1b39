#!/usr/bin/env python3
"""The added latency of the access-grant check on an unwrap (docs/access.md).

In process, on the real SQLite store and the local dev key provider: a Registry,
AuditLog, AccessService and KeyBroker as ``ControlPlane.start`` assembles them.
Two models, each with one stored artifact pushed through the real path
(``create_data_key``, the encrypted objects written, ``register_stored``): a covered
one (the two-person rule on, its default) and an uncovered one whose policy is set
to ``required = false``. The measured principal's grant is made through the real
``request`` + ``approve`` path; the other grants are written straight into the
Store in batches (<= 120 puts a transaction), shaped as ``AccessService.approve``
writes them, and checked: the shape equals the real one, ``AccessService.get``
says "active", and an unwrap under one of them is released with that grant.

Each unwrap is ``KeyBroker.unwrap`` end to end (the checks, the provider's
unwrap, the audited release). The cases run interleaved, one call each in turn,
so drift (the audit log grows with every call) falls on all alike:

- baseline, no check: the covered artifact through a broker with ``access = None``
  (the limit: everything an unwrap does but the grant check);
- baseline, policy off: the uncovered model's artifact (the check reads the policy
  and stops);
- grant: the covered artifact by a principal holding one active grant, first
  with that one grant in the Store, then with 10,000 active grants (spread over
  10,000 principals and hosts) and a worst case: one principal holding 100
  active grants on the artifact, every one read and judged.

Prints median and p99 of each, and the added median latency (grant - no-check
baseline) against the goal, 2 ms at the median with 10,000 active grants, as a
ratio (goal <= 1). Exits 1, printing no figures, if any unwrap or check failed.

    python bench/access_bench.py [--unwraps 300] [--grants 10000] [--heavy 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.blobs.local import LocalBlobStore
from custos.client.transfer import Pusher, PushState
from custos.controlplane.access import GRANTEES, NS, REQUESTS, AccessService, NoGrant, strictest
from custos.controlplane.audit import AuditLog, Caller
from custos.controlplane.keys.broker import KeyBroker
from custos.controlplane.keys.local import LocalKeyProvider
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import MAX_TXN_OPS, Txn
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.access import AccessPolicy, AccessRequest, Approval, Approver, Grantee
from custos.core.canonical import decode_canonical, encode_canonical
from custos.core.reports import percentile
from custos.core.signers import SignerKey
from custos.errors import CustosError
from custos.fs.hashing import build_manifest

GOAL_MS = 2.0  # added median latency with 10,000 active grants
COVERED, UNCOVERED = "frontier", "small"
ADMIN = Caller(principal="bench-admin", role="admin", host="10.0.0.1", request_id="setup")
SEC = Caller(principal="bench-sec", role="security-team", host="10.0.0.2", request_id="setup")
REQUESTER = Caller(principal="bench-requester", role="security-team", host="10.0.0.3", request_id="setup")
APPROVER = "bench-approver"
ALICE = Caller(principal="alice", role="security-team", host="10.0.0.4", request_id="bench")
HEAVY = Caller(principal="heavy", role="security-team", host="10.0.0.5", request_id="bench")
WARMUP = 20


class BenchFailed(Exception):
    """A check of the setup or of an unwrap's result failed: no figures."""


def need(cond: bool, what: str) -> None:
    if not cond:
        raise BenchFailed(what)


class Plane:
    """The control plane's pieces in process, as ControlPlane.start builds them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = SQLiteStore(tmp / "custos.db")
        self.audit = AuditLog(self.store, Ed25519PrivateKey.generate())
        self.registry = Registry(self.store, self.audit)
        self.keys = LocalKeyProvider(tmp / "keys" / "dev-keys.json", dev_only=True)
        self.blobs = LocalBlobStore(tmp / "blobs")
        self.access = AccessService(self.registry)
        self.broker = KeyBroker(self.registry, self.keys, self.blobs, "file:///blobs", access=self.access)
        self.bare = KeyBroker(self.registry, self.keys, self.blobs, "file:///blobs", access=None)
        self.approver_key = Ed25519PrivateKey.generate()

    async def push(self, model: str, content: bytes) -> str:
        """One stored artifact of ``model``, through the real push path."""
        root = self.tmp / f"art-{model}"
        root.mkdir()
        (root / "model.safetensors").write_bytes(content)
        manifest = build_manifest(root)
        out = await self.broker.create_data_key(SEC, model=model, manifest_bytes=manifest.encode(), parents=[])
        pusher = Pusher(blobs=self.blobs, data_key=out["data_key"], artifact_id=out["artifact_id"],
                        manifest=manifest, root=root, resumed=False,
                        state=PushState(self.tmp / "push-state" / f"{out['artifact_id']}.json"))
        try:
            await asyncio.to_thread(pusher.run)
        finally:
            out["data_key"][:] = bytes(32)
        await self.broker.register_stored(SEC, artifact_id=out["artifact_id"])
        return str(out["artifact_id"])

    async def setup(self) -> tuple[str, str]:
        await self.registry.register_model(SEC, name=COVERED, owner="research", training_flops=3e26)
        await self.registry.register_model(SEC, name=UNCOVERED, owner="research", training_flops=1e20)
        await self.access.set_policy(ADMIN, UNCOVERED, AccessPolicy(required=False, approvals=0))
        await self.access.ensure_approver(Approver(
            name=APPROVER, principals=(APPROVER,),
            keys=(SignerKey.from_ed25519(self.approver_key.public_key(), name=APPROVER),)))
        return await self.push(COVERED, os.urandom(1 << 16)), await self.push(UNCOVERED, os.urandom(1 << 16))

    async def real_grant(self, principal: str) -> str:
        """An active grant on the covered model, through request + approve."""
        rec = await self.access.request(REQUESTER, model=COVERED, principal=principal, duration_s=3600,
                                        reason="access bench")
        sig = AccessRequest.decode(rec["body"].encode()).sign(self.approver_key)
        approver = Caller(principal=APPROVER, role="security-team", host="10.0.0.6", request_id="approve")
        out = await self.access.approve(approver, rec["id"], sig)
        need(out["state"] == "active", f"the real grant is {out['state']}, not active")
        return str(rec["id"])

    async def bulk_grants(self, aid: str, grantees: list[Grantee]) -> list[str]:
        """Active grants on the covered model's artifact, one per grantee, written straight
        into the Store as ``AccessService.approve`` writes an activation."""
        policy, _, _ = await self.access.policy(COVERED)
        policy_json = strictest([policy]).to_json()
        model = await self.store.get(f"models/{COVERED}")
        assert model is not None
        epoch = int(decode_canonical(model.value).get("access_epoch", 0))
        index_value = encode_canonical({"artifacts": [aid]})
        ids: list[str] = []
        puts: dict[str, bytes] = {}

        async def flush() -> None:
            if puts:
                need(await self.store.commit(Txn(puts=dict(puts))), "a bulk grant transaction failed")
                puts.clear()

        for g in grantees:
            now = time.time_ns()
            req = AccessRequest.create(model=COVERED, artifacts=[aid], models=[COVERED], grantee=g, duration_s=3600,
                                       reason="access bench", requester=REQUESTER.principal, requester_cert="",
                                       requested_at=now // NS)
            sig = req.sign(self.approver_key)
            approval = Approval(key_id=sig.key_id, sig=sig.sig, principal=APPROVER, role="security-team",
                                cert_sha256="", at_ns=now)
            rec = {"approvals": [approval.to_json()], "body": req.encode().decode(), "break_glass": False,
                   "counted": [APPROVER], "created_ns": now, "epochs": {COVERED: epoch},
                   "request_epochs": {COVERED: epoch},
                   "expires_ns": req.expires_at * NS, "id": req.id, "model": req.model,
                   "not_after_ns": now + req.duration_s * NS, "activated_at_ns": now, "policy": policy_json,
                   "revoked": None, "state": "active"}
            batch = {f"{REQUESTS}{req.id}": encode_canonical(rec),
                     **{f"{GRANTEES}{k}/{req.id}": index_value for k in g.keys()}}
            if len(puts) + len(batch) > MAX_TXN_OPS:
                await flush()
            puts.update(batch)
            ids.append(req.id)
        await flush()
        return ids

    def close(self) -> None:
        self.keys.close()


Case = Callable[[], Awaitable[None]]


def unwrap_case(broker: KeyBroker, caller: Caller, aid: str, grant_ids: set[str] | None) -> Case:
    """One unwrap; checks the grant it was released under (None: none needed)."""

    async def run() -> None:
        rec, key, grant = await broker.unwrap(caller, artifact=aid, purpose="bench")
        key[:] = bytes(len(key))
        need(rec.id == aid, "unwrap returned another artifact")
        if grant_ids is None:
            need(grant is None, f"unwrap of {aid[:12]} used grant {grant.id[:16] if grant else ''}; none expected")
        else:
            need(grant is not None and grant.id in grant_ids, "unwrap was not released under the expected grant")
    return run


async def measure(cases: dict[str, Case], n: int) -> dict[str, list[float]]:
    """Run every case ``n`` times, interleaved; seconds per call."""
    for _ in range(WARMUP):
        for fn in cases.values():
            await fn()
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(n):
        for name, fn in cases.items():
            t = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - t)
    return times


def stats(xs: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(xs) * 1e3, "p99_ms": percentile(xs, 99) * 1e3, "n": len(xs)}


async def run(ns: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    p = Plane(tmp)
    try:
        t0 = time.perf_counter()
        covered, uncovered = await p.setup()
        alice_grant = await p.real_grant(ALICE.principal)
        # The check actually runs: without a grant the covered artifact is refused.
        try:
            await p.broker.unwrap(Caller(principal="nobody", role="security-team", host="10.0.0.9",
                                         request_id="probe"), artifact=covered, purpose="bench")
            raise BenchFailed("an unwrap without a grant was released")
        except NoGrant:
            pass
        base = {
            "baseline, no check (access=None)": unwrap_case(p.bare, ALICE, covered, None),
            "baseline, policy off (uncovered)": unwrap_case(p.broker, ALICE, uncovered, None),
        }
        phase1 = await measure({**base, "grant, 1 active grant in store": unwrap_case(
            p.broker, ALICE, covered, {alice_grant})}, ns.unwraps)

        t1 = time.perf_counter()
        spread = [Grantee(principal=f"user-{i:05d}") if i % 2 == 0 else Grantee(hosts=(f"gpu-{i:05d}",))
                  for i in range(ns.grants - 1)]  # alice's real grant is the last of the 10,000
        spread_ids = await p.bulk_grants(covered, spread)
        heavy_ids = await p.bulk_grants(covered, [Grantee(principal=HEAVY.principal)] * ns.heavy)
        load_s = time.perf_counter() - t1

        # The bulk records are what approve writes, and the service and the broker take them.
        real = decode_canonical((await p.store.get(f"{REQUESTS}{alice_grant}")).value)  # type: ignore[union-attr]
        bulk = decode_canonical((await p.store.get(f"{REQUESTS}{spread_ids[0]}")).value)  # type: ignore[union-attr]
        need(set(real) == set(bulk), f"bulk record fields differ: {sorted(set(real) ^ set(bulk))}")
        need(all(type(real[k]) is type(bulk[k]) for k in real), "bulk record field types differ")
        need(real["policy"] == bulk["policy"] and real["epochs"] == bulk["epochs"], "bulk policy/epochs differ")
        real_index = await p.store.range(f"{GRANTEES}p:{ALICE.principal}/")
        bulk_index = await p.store.get(f"{GRANTEES}p:user-00000/{spread_ids[0]}")
        need(len(real_index) == 1 and bulk_index is not None
             and decode_canonical(real_index[0].value) == decode_canonical(bulk_index.value), "bulk index differs")
        for gid in (spread_ids[0], spread_ids[-1], heavy_ids[0]):
            v = await p.access.get(gid)
            need(v["state"] == "active", f"bulk grant {gid[:16]} is {v['state']}, not active")
        await unwrap_case(p.broker, Caller(principal="user-00000", role="security-team", host="10.0.0.8",
                                           request_id="probe"), covered, {spread_ids[0]})()
        active = sum(1 for e in await p.store.range(REQUESTS)
                     if decode_canonical(e.value)["state"] == "active")
        need(active == ns.grants + ns.heavy, f"{active} active grants in the store, want {ns.grants + ns.heavy}")
        index = len(await p.store.range(GRANTEES))
        need(index == ns.grants + ns.heavy, f"{index} grantee index entries, want {ns.grants + ns.heavy}")

        phase2 = await measure({
            **base,
            f"grant, {ns.grants} active grants": unwrap_case(p.broker, ALICE, covered, {alice_grant}),
            f"worst, {ns.heavy} grants same principal": unwrap_case(p.broker, HEAVY, covered, set(heavy_ids)),
        }, ns.unwraps)
        return {"phase1": {k: stats(v) for k, v in phase1.items()},
                "phase2": {k: stats(v) for k, v in phase2.items()},
                "active_grants": active, "grant_load_s": load_s, "total_s": time.perf_counter() - t0}
    finally:
        p.close()
        await p.store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unwraps", type=int, default=300, help="timed unwraps per case (default 300)")
    ap.add_argument("--grants", type=int, default=10_000, help="active grants, one per principal or host")
    ap.add_argument("--heavy", type=int, default=100, help="grants held by one principal (the worst case)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ns = ap.parse_args()
    if ns.unwraps < 1 or ns.grants < 2 or ns.heavy < 1:
        ap.error("want --unwraps >= 1, --grants >= 2, --heavy >= 1")
    try:
        with tempfile.TemporaryDirectory(prefix="custos-access-bench-") as tmp:
            r = asyncio.run(run(ns, Path(tmp)))
    except (BenchFailed, CustosError) as exc:  # no figure from a run that partly failed (others raise: exit 1)
        traceback.print_exc()
        print(f"access bench FAILED, no figures: {exc}", file=sys.stderr)
        return 1
    p1, p2 = r["phase1"], r["phase2"]
    limit = p2["baseline, no check (access=None)"]["median_ms"]
    off = p2["baseline, policy off (uncovered)"]["median_ms"]
    grant = p2[f"grant, {ns.grants} active grants"]["median_ms"]
    worst = p2[f"worst, {ns.heavy} grants same principal"]["median_ms"]
    r["added_median_ms"] = {"grant": grant - limit, "worst": worst - limit, "policy_off": off - limit,
                            "grant_1": p1["grant, 1 active grant in store"]["median_ms"]
                            - p1["baseline, no check (access=None)"]["median_ms"]}
    r["goal_ms"] = GOAL_MS
    r["ratio"] = {"grant": (grant - limit) / GOAL_MS, "worst": (worst - limit) / GOAL_MS}
    r["unwraps"] = ns.unwraps
    if ns.json:
        print(json.dumps(r, indent=2, sort_keys=True))
        return 0
    print(f"KeyBroker.unwrap in process, SQLite store, dev key provider; {ns.unwraps} unwraps a case, "
          f"interleaved; {os.cpu_count()} cores")
    for title, phase in (("with 1 active grant in the store", p1),
                         (f"with {r['active_grants']} active grants in the store "
                          f"(written in {r['grant_load_s']:.1f} s)", p2)):
        print(f"  {title}:")
        for name, s in phase.items():
            print(f"    {name:38}: median {s['median_ms']:6.3f} ms   p99 {s['p99_ms']:6.3f} ms")
    a = r["added_median_ms"]
    rows = [("added median, 1 grant in store", a["grant_1"], ""),
            ("added median, policy off", a["policy_off"], ""),
            (f"added median, {ns.grants} grants", a["grant"],
             f"  ratio vs goal {r['ratio']['grant']:.2f} (goal {GOAL_MS:g} ms: ratio <= 1)"),
            (f"added median, worst ({ns.heavy} same principal)", a["worst"],
             f"  ratio vs goal {r['ratio']['worst']:.2f}")]
    for label, ms, tail in rows:
        print(f"  {label:40}: {ms:6.3f} ms{tail}")
    print(f"  (total {r['total_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
