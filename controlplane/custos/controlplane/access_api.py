"""The Access servicer: RPCs of custos.v1.Access turned into calls on the AccessService."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from custos.controlplane.access import AccessService, view
from custos.controlplane.audit import current_caller
from custos.core.access import AccessError, AccessPolicy, Approver
from custos.core.signers import Signature, SignerKey
from custos.errors import InvalidInput, NotFound
from custos.v1 import access_pb2, access_pb2_grpc

# `who` is answered by a callable (custos.controlplane.access_who) so the servicer does not
# reach into custody and key providers itself.
WhoFn = Any


def policy_pb(p: AccessPolicy) -> access_pb2.AccessPolicy:
    return access_pb2.AccessPolicy(required=p.required, approvals=p.approvals, approver_role=p.approver_role,
                                   max_lifetime_seconds=p.max_lifetime_s, derivatives=p.derivatives,
                                   on_expiry=p.on_expiry, break_glass=p.break_glass)


def policy_from_pb(p: access_pb2.AccessPolicy) -> AccessPolicy:
    return AccessPolicy(required=p.required, approvals=p.approvals, approver_role=p.approver_role,
                        max_lifetime_s=p.max_lifetime_seconds, derivatives=p.derivatives,
                        on_expiry=p.on_expiry, break_glass=p.break_glass)


def grant_pb(v: Mapping[str, Any], now_ns: int = 0) -> access_pb2.AccessGrant:
    revoked = v.get("revoked") or {}
    return access_pb2.AccessGrant(
        id=v["id"], state=v["state"], model=v["model"], models=v["models"], artifact_ids=v["artifacts"],
        principal=v["principal"], hosts=v["hosts"], duration_seconds=v["duration_s"], reason=v["reason"],
        requester=v["requester"], created_unix_ns=v["created_ns"], expires_unix_ns=v["expires_ns"],
        activated_unix_ns=v["activated_at_ns"], not_after_unix_ns=v["not_after_ns"], needed=v["needed"],
        counted=v["counted"], extends=v["extends"], break_glass=v["break_glass"], on_expiry=v["on_expiry"],
        approver_role=v["approver_role"], revoked_by=revoked.get("by", ""), revoked_reason=revoked.get("reason", ""),
        body=v["body"].encode(), now_unix_ns=now_ns,
        approvals=[access_pb2.ApprovalInfo(key_id=a["key_id"], principal=a["principal"], role=a["role"],
                                           at_unix_ns=a["at_ns"], sig=a["sig"]) for a in v["approvals"]])


def approver_pb(a: Approver) -> access_pb2.Approver:
    return access_pb2.Approver(name=a.name, principals=a.principals, public_keys=[k.to_openssh() for k in a.keys],
                               key_ids=[k.key_id for k in a.keys])


def approver_from_pb(a: access_pb2.Approver) -> Approver:
    keys = []
    for line in a.public_keys:
        text = line.strip()
        keys.append(SignerKey.from_hex(text, name=a.name) if len(text) == 64 and " " not in text
                    else SignerKey.from_openssh(text, name=a.name))
    return Approver(name=a.name, principals=tuple(a.principals), keys=tuple(keys))


def _signature(key_id: str, sig: str) -> Signature:
    if not key_id or not sig:
        raise AccessError("an approval needs key_id and sig (custos access approve --key ...)")
    return Signature(key_id=key_id, sig=sig)


class AccessServicer(access_pb2_grpc.AccessServicer):
    def __init__(self, access: AccessService, who: WhoFn = None) -> None:
        self.a = access
        self.who = who

    def _grant(self, v: Mapping[str, Any]) -> access_pb2.AccessGrantResponse:
        return access_pb2.AccessGrantResponse(grant=grant_pb(v, self.a.clock()))

    async def GetPolicy(self, req: access_pb2.GetAccessPolicyRequest,
                        ctx: grpc.aio.ServicerContext) -> access_pb2.GetAccessPolicyResponse:
        policy, entry, covered = await self.a.policy(req.model)
        return access_pb2.GetAccessPolicyResponse(policy=policy_pb(policy), is_default=entry is None, covered=covered)

    async def SetPolicy(self, req: access_pb2.SetAccessPolicyRequest,
                        ctx: grpc.aio.ServicerContext) -> access_pb2.SetAccessPolicyResponse:
        if not req.HasField("policy"):
            raise InvalidInput("no policy given")
        policy = await self.a.set_policy(current_caller.get(), req.model, policy_from_pb(req.policy))
        return access_pb2.SetAccessPolicyResponse(policy=policy_pb(policy))

    async def Request(self, req: access_pb2.RequestAccessRequest,
                      ctx: grpc.aio.ServicerContext) -> access_pb2.AccessGrantResponse:
        rec = await self.a.request(current_caller.get(), model=req.model, artifact=req.artifact_id,
                                   principal=req.principal, hosts=list(req.hosts),
                                   duration_s=req.duration_seconds, reason=req.reason,
                                   pending_s=req.pending_seconds or 24 * 3600, extends=req.extends.lower())
        return self._grant(view(rec, self.a.clock()))

    async def Get(self, req: access_pb2.GetAccessRequest,
                  ctx: grpc.aio.ServicerContext) -> access_pb2.AccessGrantResponse:
        v = await self.a.get(req.id)
        caller = current_caller.get()
        if caller.role == "agent" and caller.principal not in v["hosts"]:
            # An agent follows the grants of its own host only.
            raise NotFound(f"access request {req.id[:16]} not found")
        return self._grant(v)

    async def List(self, req: access_pb2.ListAccessRequest,
                   ctx: grpc.aio.ServicerContext) -> access_pb2.ListAccessResponse:
        now = self.a.clock()
        return access_pb2.ListAccessResponse(
            grants=[grant_pb(v, now) for v in await self.a.list_requests(states=list(req.states), model=req.model)])

    async def Approve(self, req: access_pb2.ApproveAccessRequest,
                      ctx: grpc.aio.ServicerContext) -> access_pb2.AccessGrantResponse:
        return self._grant(await self.a.approve(current_caller.get(), req.id, _signature(req.key_id, req.sig)))

    async def Revoke(self, req: access_pb2.RevokeAccessRequest,
                     ctx: grpc.aio.ServicerContext) -> access_pb2.AccessGrantResponse:
        return self._grant(await self.a.revoke(current_caller.get(), req.id, req.reason))

    async def BreakGlass(self, req: access_pb2.BreakGlassRequest,
                         ctx: grpc.aio.ServicerContext) -> access_pb2.AccessGrantResponse:
        return self._grant(await self.a.break_glass(current_caller.get(), req.id, _signature(req.key_id, req.sig)))

    async def AddApprover(self, req: access_pb2.AddApproverRequest,
                          ctx: grpc.aio.ServicerContext) -> access_pb2.AddApproverResponse:
        a = await self.a.add_approver(current_caller.get(), approver_from_pb(req.approver), replace=req.replace)
        return access_pb2.AddApproverResponse(approver=approver_pb(a))

    async def ListApprovers(self, req: access_pb2.ListApproversRequest,
                            ctx: grpc.aio.ServicerContext) -> access_pb2.ListApproversResponse:
        return access_pb2.ListApproversResponse(approvers=[approver_pb(a) for a in await self.a.approvers()])

    async def Who(self, req: access_pb2.WhoRequest, ctx: grpc.aio.ServicerContext) -> access_pb2.WhoResponse:
        if self.who is None:
            raise InvalidInput("who is not available on this server")
        return await self.who(req.model)
