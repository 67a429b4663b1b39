"""The two-person rule against insiders (issue 13; docs/access.md), with real OpenBao.

Each case is an attack or a mistake, tried against the real AccessService and
KeyBroker (SQLite Store, Vault Transit in a real OpenBao): the approval or the
unwrap is refused with a clear error naming why, and nothing is released. The
controls show the same path succeeding, so a refusal is the rule's and not a
broken setup.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from custos.blobs.local import LocalBlobStore
from custos.client.transfer import Pusher, PushState
from custos.controlplane.access import AccessService, NoGrant
from custos.controlplane.audit import AuditLog, Caller
from custos.controlplane.custody import Custody
from custos.controlplane.keys import VaultTransitProvider
from custos.controlplane.keys.broker import KeyBroker
from custos.controlplane.orders import OrdersService
from custos.controlplane.pki import CertificateAuthority
from custos.controlplane.registry import Registry
from custos.controlplane.store.base import Txn
from custos.controlplane.store.sqlite import SQLiteStore
from custos.core.access import AccessError, AccessPolicy, AccessRequest, Approver
from custos.core.hosts import cert_fingerprint
from custos.core.orders import Order
from custos.core.signers import SignerKey, encode_signatures
from custos.errors import CustosError, FailedPrecondition, Unauthorized
from custos.fs.hashing import build_manifest
from tests.core.order_cases import panel
from tests.servers.openbao import OpenBaoDevServer

PANEL = panel("ed25519")
ADMIN = Caller(principal="root-admin", role="admin", host="10.0.0.1", request_id="admin")
EXEC = Caller(principal="exec", role="executive", host="10.0.0.3", request_id="exec")
NS = 1_000_000_000


def person(principal: str, role: str = "security-team") -> Caller:
    return Caller(principal=principal, role=role, host="10.0.0.2", request_id=f"r-{uuid.uuid4().hex[:8]}",
                  cert_sha256=uuid.uuid4().hex * 2)


class Clock:
    """The AccessService's clock, which a test may move forward."""

    def __init__(self) -> None:
        import time

        self.offset = 0
        self._time = time

    def __call__(self) -> int:
        return self._time.time_ns() + self.offset


@dataclass
class Plane:
    tmp: Path
    bao: OpenBaoDevServer
    keys_by_name: dict[str, Ed25519PrivateKey] = field(default_factory=dict)

    async def start(self) -> Plane:
        self.store = SQLiteStore(self.tmp / "custos.db")
        self.signing_key = Ed25519PrivateKey.generate()
        self.audit = AuditLog(self.store, self.signing_key)
        self.registry = Registry(self.store, self.audit)
        self.custody = Custody(self.registry, ca=CertificateAuthority.create(), lease_ttl=3600)
        self.keys = VaultTransitProvider(url=self.bao.address, token=self.bao.root_token)
        self.blobs = LocalBlobStore(self.tmp / "blobs")
        self.clock = Clock()
        self.access = AccessService(self.registry, clock=self.clock)
        self.broker = KeyBroker(self.registry, self.keys, self.blobs, "file:///blobs", custody=self.custody,
                                access=self.access)
        self.orders = OrdersService(self.registry, self.custody, keys=self.keys, blobs=self.blobs)
        await self.orders.install_bootstrap(PANEL.signer_set)
        # People: alice has two certificates (two identities), bob, carol; dave is an executive.
        for name, principals in (("alice", ("alice-laptop", "alice-desktop")), ("bob", ("bob",)),
                                 ("carol", ("carol",)), ("dave", ("dave",))):
            self.keys_by_name[name] = Ed25519PrivateKey.generate()
            await self.access.add_approver(ADMIN, Approver(
                name=name, principals=principals,
                keys=(SignerKey.from_ed25519(self.keys_by_name[name].public_key(), name=name),)))
        return self

    def close(self) -> None:
        for t in self.orders.effects.tasks.values():
            t.cancel()
        self.keys.close()

    async def model(self, *, covered: bool = True, parent: str = "") -> tuple[str, str]:
        """A fresh model (a key of its own in Vault) with one stored artifact: (model, artifact)."""
        name = f"m{uuid.uuid4().hex[:12]}"
        await self.registry.register_model(person("alice-laptop"), name=name, owner="research",
                                           training_flops=3e26 if covered else 1)
        return name, await self.push(name, parent)

    async def push(self, model: str, parent: str = "") -> str:
        root = self.tmp / f"art-{uuid.uuid4().hex[:8]}"
        root.mkdir()
        (root / "model.safetensors").write_bytes(uuid.uuid4().bytes * 64)
        manifest = build_manifest(root)
        out = await self.broker.create_data_key(person("alice-laptop"), model=model,
                                                manifest_bytes=manifest.encode(),
                                                parents=[(parent, "fine-tune")] if parent else [])
        pusher = Pusher(blobs=self.blobs, data_key=out["data_key"], artifact_id=out["artifact_id"],
                        manifest=manifest, root=root, resumed=False,
                        state=PushState(self.tmp / "push-state" / f"{out['artifact_id']}.json"))
        try:
            await asyncio.to_thread(pusher.run)
        finally:
            out["data_key"][:] = bytes(32)
        await self.broker.register_stored(person("alice-laptop"), artifact_id=out["artifact_id"])
        return str(out["artifact_id"])

    async def enroll(self, name: str) -> Caller:
        _, token, _ = await self.custody.add_host(person("alice-laptop"), name=name, labels={})
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .sign(key, hashes.SHA256()))
        cert, _ = await self.custody.enroll(peer="10.0.9.9", name=name, token=token,
                                            csr_pem=csr.public_bytes(serialization.Encoding.PEM))
        await self.custody.renew_lease(name)
        return Caller(principal=name, role="agent", host="10.0.9.9", request_id="agent",
                      cert_sha256=cert_fingerprint(cert))

    async def ask(self, model: str, *, by: str = "alice-laptop", principal: str = "", hosts: tuple[str, ...] = (),
                  artifact: str = "", duration_s: int = 600) -> str:
        if not principal and not hosts:
            principal = by
        rec = await self.access.request(person(by), model=model, artifact=artifact, principal=principal,
                                        hosts=hosts, duration_s=duration_s, reason="evaluation run")
        return str(rec["id"])

    async def approve(self, rid: str, name: str, *, principal: str | None = None, role: str = "security-team",
                      body_of: str | None = None) -> dict[str, Any]:
        """``name`` signs request ``body_of`` (default ``rid``) and submits it on ``rid``."""
        rec = await self.access.get(body_of or rid)
        sig = AccessRequest.decode(rec["body"].encode()).sign(self.keys_by_name[name])
        default = "alice-desktop" if name == "alice" else name
        return await self.access.approve(person(principal or default, role), rid, sig)

    async def unwrap(self, caller: Caller, artifact: str) -> None:
        _, key, _ = await self.broker.unwrap(caller, artifact=artifact, purpose="pull")
        key[:] = bytes(len(key))

    def replica(self) -> OrdersService:
        """The orders of a second control-plane replica on the same Store (its own audit writer)."""
        audit = AuditLog(self.store, self.signing_key)
        registry = Registry(self.store, audit)
        custody = Custody(registry, ca=CertificateAuthority.create(), lease_ttl=3600)
        return OrdersService(registry, custody, keys=self.keys, blobs=self.blobs)

    async def order(self, action: str, model: str, orders: OrdersService | None = None) -> None:
        orders = orders or self.orders
        d = await orders.propose(EXEC, action=action, models=[model], reason="test", expires_seconds=3600,
                                      drill=False)
        order: Order = d["order"]
        await orders.attach(EXEC, order_id=order.id, signatures=encode_signatures(PANEL.sign_order(order)))
        await orders.effects.tasks[order.id]


@pytest.fixture
async def plane(openbao_dev: OpenBaoDevServer, tmp_path: Path) -> AsyncIterator[Plane]:
    p = await Plane(tmp_path, openbao_dev).start()
    yield p
    p.close()


async def refused(coro: Awaitable[Any], kind: type[CustosError], *words: str) -> CustosError:
    with pytest.raises(kind) as info:
        await coro
    text = str(info.value)
    assert all(w in text for w in words), text
    assert "Traceback" not in text and len(text) < 600
    return info.value


# -- the table ---------------------------------------------------------------------------

Case = Callable[[Plane], Awaitable[None]]


async def self_approval(p: Plane) -> None:
    m, _ = await p.model()
    rid = await p.ask(m, by="bob", principal="carol")  # for someone else: still bob's request
    await refused(p.approve(rid, "bob"), AccessError, "nobody approves their own access")


async def same_approver_twice(p: Plane) -> None:
    m, _ = await p.model()
    await p.access.set_policy(ADMIN, m, AccessPolicy(approvals=2))
    rid = await p.ask(m, by="bob")
    await p.approve(rid, "carol")
    await refused(p.approve(rid, "carol"), AccessError, "one person counts once")
    assert (await p.access.get(rid))["state"] == "pending"


async def same_person_two_certificates(p: Plane) -> None:
    m, _ = await p.model()
    await p.access.set_policy(ADMIN, m, AccessPolicy(approvals=2))
    # alice asks from her laptop and approves from her desktop: still alice.
    rid = await p.ask(m, by="alice-laptop")
    await refused(p.approve(rid, "alice", principal="alice-desktop"), AccessError, "requester or the grantee")
    # bob asks; alice approves from both machines: one person.
    rid = await p.ask(m, by="bob")
    await p.approve(rid, "alice", principal="alice-laptop")
    await refused(p.approve(rid, "alice", principal="alice-desktop"), AccessError, "one person counts once")
    assert (await p.access.get(rid))["counted"] == ["alice"]


async def key_under_someone_elses_certificate(p: Plane) -> None:
    m, _ = await p.model()
    rid = await p.ask(m, by="bob")
    # carol's key, submitted by bob's certificate: a stolen key alone is not an approval.
    await refused(p.approve(rid, "carol", principal="bob"), AccessError, "belongs to approver carol")


async def wrong_role(p: Plane) -> None:
    m, _ = await p.model()
    await p.access.set_policy(ADMIN, m, AccessPolicy(approver_role="executive"))
    rid = await p.ask(m, by="bob")
    await refused(p.approve(rid, "carol"), AccessError, "the policy wants executive")
    g = await p.approve(rid, "dave", role="executive")
    assert g["state"] == "active"


async def grantee_approves_own_access(p: Plane) -> None:
    m, _ = await p.model()
    rid = await p.ask(m, by="bob", principal="carol")
    await refused(p.approve(rid, "carol"), AccessError, "requester or the grantee")


async def replayed_signature(p: Plane) -> None:
    m, _ = await p.model()
    first = await p.ask(m, by="bob")
    second = await p.ask(m, by="bob")  # the same fields; another nonce
    await refused(p.approve(second, "carol", body_of=first), AccessError, "does not verify for this request")
    assert (await p.access.get(second))["state"] == "pending"


async def expired_grant(p: Plane) -> None:
    m, aid = await p.model()
    rid = await p.ask(m, by="bob", principal="carol", duration_s=60)
    g = await p.approve(rid, "alice")
    carol = person("carol")
    await p.unwrap(carol, aid)
    p.clock.offset = g["not_after_ns"] - p.clock() - NS // 2  # half a second before the end: still good
    await p.unwrap(carol, aid)
    p.clock.offset = g["not_after_ns"] - (p.clock() - p.clock.offset) + NS  # one second after
    await refused(p.unwrap(carol, aid), NoGrant, "is expired")


async def host_a_grant_used_from_host_b(p: Plane) -> None:
    m, aid = await p.model()
    a, b = await p.enroll(f"gpu-a-{m}"), await p.enroll(f"gpu-b-{m}")
    rid = await p.ask(m, by="bob", hosts=(a.principal,))
    await p.approve(rid, "carol")
    await p.unwrap(a, aid)
    await refused(p.unwrap(b, aid), NoGrant, f"host {b.principal}", "no grant names it")
    # Nor may a person use a host's grant.
    await refused(p.unwrap(person("bob"), aid), NoGrant, "principal bob")


async def artifact_x_used_for_y(p: Plane) -> None:
    m, x = await p.model()
    y = await p.push(m)
    rid = await p.ask(m, by="bob", principal="carol", artifact=x)
    await p.approve(rid, "alice")
    await p.unwrap(person("carol"), x)
    await refused(p.unwrap(person("carol"), y), NoGrant, y[:12])


async def base_grant_for_fine_tune_per_policy(p: Plane) -> None:
    base, b = await p.model()
    tune, t = await p.model(covered=False, parent=b)
    # The fine-tune is uncovered by its own numbers, but derives from a covered base: under the rule.
    await refused(p.unwrap(person("carol"), t), NoGrant, tune)
    await p.access.set_policy(ADMIN, base, AccessPolicy(derivatives=False))
    rid = await p.ask(base, by="bob", principal="carol")
    assert (await p.access.get(rid))["artifacts"] == [b]
    await p.approve(rid, "alice")
    await p.unwrap(person("carol"), b)
    await refused(p.unwrap(person("carol"), t), NoGrant)
    # With derivatives on, a request on the base reaches the fine-tune.
    await p.access.set_policy(ADMIN, base, AccessPolicy(derivatives=True))
    rid = await p.ask(base, by="bob", principal="carol")
    assert sorted((await p.access.get(rid))["artifacts"]) == sorted([b, t])
    await p.approve(rid, "alice")
    await p.unwrap(person("carol"), t)


async def grant_after_halt(p: Plane) -> None:
    m, aid = await p.model()
    pending = await p.ask(m, by="bob", principal="carol")
    active = await p.ask(m, by="bob", principal="carol")
    await p.approve(active, "alice")
    await p.order("halt", m)
    await refused(p.ask(m, by="bob", principal="carol"), FailedPrecondition, "halted")
    await refused(p.approve(pending, "alice"), FailedPrecondition, "halted")
    assert (await p.access.get(active))["state"] == "revoked"
    await p.order("lift", m)
    # A lift brings back neither the grant nor the request made before the halt: both are a
    # decision taken before the shutdown, and are taken again.
    assert (await p.access.get(active))["state"] == "revoked"
    assert (await p.access.get(pending))["state"] == "void"
    await refused(p.approve(pending, "alice"), FailedPrecondition, "void")
    await refused(p.unwrap(person("carol"), aid), NoGrant, "revoked by a halt")
    fresh = await p.ask(m, by="bob", principal="carol")
    await p.approve(fresh, "alice")
    await p.unwrap(person("carol"), aid)


async def revoked_grant(p: Plane) -> None:
    m, aid = await p.model()
    rid = await p.ask(m, by="bob", principal="carol")
    await p.approve(rid, "alice")
    await p.unwrap(person("carol"), aid)
    await p.access.revoke(person("bob"), rid, "done early")
    await refused(p.unwrap(person("carol"), aid), NoGrant, "no grant names it")
    await refused(p.approve(rid, "dave"), FailedPrecondition, "revoked")


async def zero_approval_policy_on_covered_model(p: Plane) -> None:
    m, _aid = await p.model()
    await refused(p.access.set_policy(ADMIN, m, AccessPolicy(required=False, approvals=0)), AccessError,
                  "two-person rule cannot be turned off")
    with pytest.raises(AccessError):
        AccessPolicy(required=True, approvals=0)
    # An uncovered model may opt out, and then needs no grant.
    u, uid = await p.model(covered=False)
    await p.unwrap(person("carol"), uid)
    await p.access.set_policy(ADMIN, u, AccessPolicy())
    await refused(p.unwrap(person("carol"), uid), NoGrant)


async def policy_tightened_after_grant(p: Plane) -> None:
    m, aid = await p.model()
    rid = await p.ask(m, by="bob", principal="carol")
    await p.approve(rid, "alice")
    await p.unwrap(person("carol"), aid)
    await p.access.set_policy(ADMIN, m, AccessPolicy(approvals=2))
    await refused(p.unwrap(person("carol"), aid), NoGrant, "fewer approvals")


async def break_glass_rules(p: Plane) -> None:
    m, aid = await p.model()
    rid = await p.ask(m, by="bob", principal="bob", duration_s=1800)
    body = AccessRequest.decode((await p.access.get(rid))["body"].encode())
    # Only the requester, with their own key under their own certificate.
    await refused(p.access.break_glass(person("carol"), rid, body.sign(p.keys_by_name["carol"])), AccessError,
                  "only the requester")
    await refused(p.access.break_glass(person("bob"), rid, body.sign(p.keys_by_name["carol"])), AccessError,
                  "not a registered key of your certificate identity")
    g = await p.access.break_glass(person("bob"), rid, body.sign(p.keys_by_name["bob"]))
    assert g["state"] == "active" and g["break_glass"]
    await p.unwrap(person("bob"), aid)
    # A policy without break-glass refuses it, and stops honouring one already taken.
    await p.access.set_policy(ADMIN, m, AccessPolicy(break_glass=False))
    await refused(p.unwrap(person("bob"), aid), NoGrant, "break-glass")
    long = await p.ask(m, by="bob", principal="bob", duration_s=7200)
    body = AccessRequest.decode((await p.access.get(long))["body"].encode())
    await refused(p.access.break_glass(person("bob"), long, body.sign(p.keys_by_name["bob"])), AccessError,
                  "at most")


async def agent_extension_of_anothers_grant(p: Plane) -> None:
    m, _aid = await p.model()
    a, b = await p.enroll(f"gpu-a-{m}"), await p.enroll(f"gpu-b-{m}")
    rid = await p.ask(m, by="bob", hosts=(a.principal,))
    await p.approve(rid, "carol")
    await refused(p.access.request(b, model="", duration_s=600, reason="more", extends=rid), Unauthorized,
                  "not this host's")
    await refused(p.access.request(b, model=m, duration_s=600, reason="more", hosts=(b.principal,)),
                  Unauthorized, "only ask to extend")
    ext = await p.access.request(a, model="", duration_s=1200, reason="long job", extends=rid)
    before = (await p.access.get(rid))["not_after_ns"]
    await p.approve(ext["id"], "alice")
    assert (await p.access.get(rid))["not_after_ns"] > before
    assert (await p.access.get(ext["id"]))["state"] == "applied"


async def edited_store(p: Plane) -> None:
    """Someone who can write the Store, but holds no approver's key, marks grants active."""
    import json as _json

    from custos.core.canonical import encode_canonical

    m, aid = await p.model()
    model = _json.loads((await p.store.get(f"models/{m}")).value)  # type: ignore[union-attr]

    async def forge(rid: str, **changes: Any) -> None:
        key = f"access/requests/{rid}"
        rec = {**_json.loads((await p.store.get(key)).value), **changes}  # type: ignore[union-attr]
        await p.store.commit(Txn(puts={key: encode_canonical(rec),
                                       "access/grantee/p:carol/" + rid: encode_canonical({"artifacts": [aid]})}))

    now = p.clock()
    pending = await p.ask(m, by="bob", principal="carol")
    await forge(pending, state="active", activated_at_ns=now, not_after_ns=now + 600 * NS,
                epochs={m: model.get("access_epoch", 0)}, counted=["alice"])
    await refused(p.unwrap(person("carol"), aid), NoGrant, "fewer approvals", "valid signature")
    # A real approval moved onto another request does not prove it either.
    real = await p.ask(m, by="bob", principal="carol")
    approved = await p.approve(real, "alice")
    await p.access.revoke(person("bob"), real, "moved")
    other = await p.ask(m, by="bob", principal="carol")
    await forge(other, state="active", activated_at_ns=now, not_after_ns=now + 600 * NS,
                epochs={m: model.get("access_epoch", 0)}, counted=["alice"], approvals=approved["approvals"])
    await refused(p.unwrap(person("carol"), aid), NoGrant, "fewer approvals", "valid signature")
    for forged in (pending, other):
        await p.access.revoke(person("bob"), forged, "forged")
    # A real grant made to last past what its signed request allows.
    good = await p.ask(m, by="bob", principal="carol", duration_s=600)
    g = await p.approve(good, "alice")
    await p.unwrap(person("carol"), aid)
    await forge(good, not_after_ns=g["not_after_ns"] + 365 * 86400 * NS)
    await refused(p.unwrap(person("carol"), aid), NoGrant, "lasts longer than its signed requests allow")


CASES: dict[str, Case] = {f.__name__: f for f in (
    self_approval, same_approver_twice, same_person_two_certificates, key_under_someone_elses_certificate,
    wrong_role, grantee_approves_own_access, replayed_signature, expired_grant, host_a_grant_used_from_host_b,
    artifact_x_used_for_y, base_grant_for_fine_tune_per_policy, grant_after_halt, revoked_grant,
    zero_approval_policy_on_covered_model, policy_tightened_after_grant, break_glass_rules,
    agent_extension_of_anothers_grant, edited_store)}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_two_person_rule_refuses(plane: Plane, case: str) -> None:
    await CASES[case](plane)
    # Whatever was refused was audited: the chain still verifies.
    await plane.audit.checkpoint()


async def test_a_race_between_approval_and_halt(plane: Plane) -> None:
    """The halt commits (on another replica) after the approval read the model and before it
    committed: the approval's transaction fails on the moved model record, its re-plan sees the
    halt, and no grant is made."""
    p = plane
    other = p.replica()
    await other.refresh_pinned()
    await other.refresh_chain()
    m, aid = await p.model()
    rid = await p.ask(m, by="bob", principal="carol")
    real = p.access._check_active_models
    raced = False

    async def then_halt(models: Any) -> Any:
        nonlocal raced
        out = await real(models)
        if not raced:
            raced = True
            await p.order("halt", m, other)
        return out

    p.access._check_active_models = then_halt  # type: ignore[method-assign]
    await refused(p.approve(rid, "alice"), FailedPrecondition, "halted")
    assert raced
    rec = await p.access.get(rid)
    assert rec["state"] == "void" and rec["approvals"] == []  # the approval left no trace but its audit
    await p.order("lift", m)
    await refused(p.unwrap(person("carol"), aid), NoGrant)
