"""Access grants, client side: request, fetch and verify, approve (sign), revoke, list, who.

An approver signs what the canonical request body says, never what the server
summarizes: :func:`fetch_request` refuses a body that does not hash to the id the
server gives, and the grant fields shown come from the body itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custos.client.session import Client
from custos.core.access import AccessPolicy, AccessRequest
from custos.errors import IntegrityError
from custos.v1 import access_pb2


def request(client: Client, *, model: str, duration_s: int, reason: str, artifact: str = "",
            principal: str = "", hosts: Sequence[str] = (), pending_s: int = 0,
            extends: str = "") -> access_pb2.AccessGrant:
    req = access_pb2.RequestAccessRequest(model=model, artifact_id=artifact, principal=principal, hosts=list(hosts),
                                          duration_seconds=duration_s, reason=reason, pending_seconds=pending_s,
                                          extends=extends)
    return client.call(client.access.Request, req, access_pb2.AccessGrantResponse).grant


def get(client: Client, ref: str) -> access_pb2.AccessGrant:
    return client.call(client.access.Get, access_pb2.GetAccessRequest(id=ref), access_pb2.AccessGrantResponse).grant


def fetch_request(client: Client, ref: str) -> tuple[access_pb2.AccessGrant, AccessRequest]:
    """The grant record and its decoded body. Raises IntegrityError if the body does not hash to its id."""
    info = get(client, ref)
    body = AccessRequest.decode(info.body)
    if body.id != info.id:
        raise IntegrityError("the access request body does not hash to its id: refusing to sign")
    return info, body


def list_requests(client: Client, *, states: Sequence[str] = (), model: str = "") -> list[access_pb2.AccessGrant]:
    return list(client.call(client.access.List, access_pb2.ListAccessRequest(states=list(states), model=model),
                            access_pb2.ListAccessResponse).grants)


def approve(client: Client, ref: str, key: Ed25519PrivateKey, *, ssh: bool = False) -> access_pb2.AccessGrant:
    """Sign the request's own bytes with ``key`` and submit the approval."""
    info, body = fetch_request(client, ref)
    sig = body.sign_ssh(key) if ssh else body.sign(key)
    return submit_approval(client, info.id, sig.key_id, sig.sig)


def submit_approval(client: Client, ref: str, key_id: str, sig: str) -> access_pb2.AccessGrant:
    req = access_pb2.ApproveAccessRequest(id=ref, key_id=key_id, sig=sig)
    return client.call(client.access.Approve, req, access_pb2.AccessGrantResponse).grant


def revoke(client: Client, ref: str, reason: str) -> access_pb2.AccessGrant:
    return client.call(client.access.Revoke, access_pb2.RevokeAccessRequest(id=ref, reason=reason),
                       access_pb2.AccessGrantResponse).grant


def break_glass(client: Client, ref: str, key: Ed25519PrivateKey) -> access_pb2.AccessGrant:
    info, body = fetch_request(client, ref)
    sig = body.sign(key)
    req = access_pb2.BreakGlassRequest(id=info.id, key_id=sig.key_id, sig=sig.sig)
    return client.call(client.access.BreakGlass, req, access_pb2.AccessGrantResponse).grant


def get_policy(client: Client, model: str) -> access_pb2.GetAccessPolicyResponse:
    return client.call(client.access.GetPolicy, access_pb2.GetAccessPolicyRequest(model=model),
                       access_pb2.GetAccessPolicyResponse)


def set_policy(client: Client, model: str, policy: AccessPolicy) -> access_pb2.AccessPolicy:
    pb = access_pb2.AccessPolicy(required=policy.required, approvals=policy.approvals,
                                 approver_role=policy.approver_role, max_lifetime_seconds=policy.max_lifetime_s,
                                 derivatives=policy.derivatives, on_expiry=policy.on_expiry,
                                 break_glass=policy.break_glass)
    return client.call(client.access.SetPolicy, access_pb2.SetAccessPolicyRequest(model=model, policy=pb),
                       access_pb2.SetAccessPolicyResponse).policy


def add_approver(client: Client, *, name: str, principals: Sequence[str], public_keys: Sequence[str],
                 replace: bool = False) -> access_pb2.Approver:
    a = access_pb2.Approver(name=name, principals=list(principals), public_keys=list(public_keys))
    return client.call(client.access.AddApprover, access_pb2.AddApproverRequest(approver=a, replace=replace),
                       access_pb2.AddApproverResponse).approver


def list_approvers(client: Client) -> list[access_pb2.Approver]:
    return list(client.call(client.access.ListApprovers, access_pb2.ListApproversRequest(),
                            access_pb2.ListApproversResponse).approvers)


def who(client: Client, model: str) -> access_pb2.WhoResponse:
    return client.call(client.access.Who, access_pb2.WhoRequest(model=model), access_pb2.WhoResponse)
