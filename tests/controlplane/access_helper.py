"""Access grants in process: request and approve through a real AccessService (no shortcuts)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.controlplane.access import AccessService
from custos.controlplane.audit import Caller
from custos.core.access import AccessRequest, Approver
from custos.core.signers import SignerKey

REQUESTER = Caller(principal="t-requester", role="security-team", host="10.0.0.7", request_id="grant")


class Approvers:
    """People who approve in tests: name -> (private key, Caller)."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PrivateKey] = {}

    def caller(self, name: str, role: str = "security-team", principal: str | None = None) -> Caller:
        return Caller(principal=principal or name, role=role, host="10.0.0.8", request_id=f"approve-{name}")

    async def ensure(self, access: AccessService, name: str, principals: Sequence[str] = ()) -> Ed25519PrivateKey:
        if name not in self.keys:
            self.keys[name] = Ed25519PrivateKey.generate()
        approver = Approver(name=name, principals=tuple(principals) or (name,),
                            keys=(SignerKey.from_ed25519(self.keys[name].public_key(), name=name),))
        await access.ensure_approver(approver)  # each plane has its own Store
        return self.keys[name]

    async def approve(self, access: AccessService, rid: str, name: str, *, role: str = "security-team",
                      principal: str | None = None) -> dict:
        key = await self.ensure(access, name)
        rec = await access.get(rid)
        sig = AccessRequest.decode(rec["body"].encode()).sign(key)
        return await access.approve(self.caller(name, role, principal), rid, sig)


APPROVERS = Approvers()


async def grant(access: AccessService, model: str, *, principal: str = "", hosts: Sequence[str] = (),
                duration_s: int = 3600, artifact: str = "", approvers: Sequence[str] = ("t-approver-1",),
                requester: Caller = REQUESTER) -> dict:
    """An active grant on ``model`` for ``principal`` or ``hosts``."""
    rec = await access.request(requester, model=model, artifact=artifact, principal=principal, hosts=hosts,
                               duration_s=duration_s, reason="test access")
    for name in approvers:
        rec = await APPROVERS.approve(access, rec["id"], name)
    return rec
