"""The approval count as a property (custos.core.access): whatever approvals an attacker
submits — replayed, duplicated, under the wrong certificate or role, by the requester or the
grantee — the count is the set of distinct other people whose own key signed this request
under one of their own identities and the policy's role."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from custos.core.access import (
    AccessError,
    AccessPolicy,
    AccessRequest,
    Approval,
    Approver,
    Grantee,
    check_approver_set,
    count_approvals,
    default_policy,
)
from custos.core.signers import SignerKey

PEOPLE = ("ann", "ben", "cat", "dan", "eve")
KEYS = {n: Ed25519PrivateKey.generate() for n in PEOPLE}
APPROVERS = [Approver(name=n, principals=(n, f"{n}-2"),
                      keys=(SignerKey.from_ed25519(KEYS[n].public_key(), name=n),)) for n in PEOPLE]
A = "a" * 64


def request(requester: str, grantee: str) -> AccessRequest:
    return AccessRequest.create(model="m", artifacts=[A], models=["m"], grantee=Grantee(principal=grantee),
                                duration_s=600, reason="eval", requester=requester, requester_cert="",
                                requested_at=1_700_000_000)


OTHER = request("ann", "ann")  # another request: its signatures are replays here

approval = st.tuples(st.sampled_from(PEOPLE),  # whose key signs
                     st.sampled_from([*PEOPLE, *(f"{n}-2" for n in PEOPLE), "mallory"]),  # which certificate
                     st.sampled_from(["security-team", "executive", "agent"]),
                     st.booleans())  # signs this request (else a replay of OTHER's)


@settings(max_examples=300, deadline=None)
@given(requester=st.sampled_from([*PEOPLE, "ann-2"]), grantee=st.sampled_from([*PEOPLE, "ben-2", "zed"]),
       approvals=st.lists(approval, max_size=8), needed=st.integers(1, 4),
       role=st.sampled_from(["security-team", "executive"]))
def test_the_count_is_distinct_other_people_with_valid_signatures(
        requester: str, grantee: str, approvals: list[tuple[str, str, str, bool]], needed: int, role: str) -> None:
    req = request(requester, grantee)
    policy = AccessPolicy(approvals=needed, approver_role=role)
    subs = [Approval(key_id=(sig := (req if own else OTHER).sign(KEYS[k])).key_id, sig=sig.sig, principal=cert,
                     role=r) for k, cert, r, own in approvals]
    got = count_approvals(req, subs, APPROVERS, policy)
    excluded = {requester.removesuffix("-2"), grantee.removesuffix("-2")}
    want = {k for k, cert, r, own in approvals
            if own and r == role and cert.removesuffix("-2") == k and k not in excluded}
    assert set(got.counted) == want and len(got.counted) == len(want)
    assert got.ok == (len(want) >= needed)
    assert len(got.counted) + len(got.refused) == len(subs)


def test_policy_rules() -> None:
    with pytest.raises(AccessError):
        AccessPolicy(approvals=0)
    with pytest.raises(AccessError, match="cannot be turned off"):
        AccessPolicy(required=False, approvals=0).check_for(covered=True)
    assert default_policy(covered=True).required and not default_policy(covered=False).required
    with pytest.raises(AccessError):
        AccessPolicy(on_expiry="maybe")


def test_one_key_or_identity_belongs_to_one_person() -> None:
    clash = Approver(name="zed", principals=("zed",), keys=APPROVERS[0].keys)
    with pytest.raises(AccessError, match="one key, one person"):
        check_approver_set([*APPROVERS, clash])
    with pytest.raises(AccessError, match="already approver"):
        check_approver_set([*APPROVERS, Approver(name="zed", principals=("ann-2",),
                                                   keys=(SignerKey.from_ed25519(
                                                       Ed25519PrivateKey.generate().public_key(), name="zed"),))])


def test_a_request_body_round_trips_and_refuses_edits() -> None:
    req = request("ann", "ben")
    assert AccessRequest.decode(req.encode()) == req
    edited = req.encode().replace(b'"duration_s":600', b'"duration_s":6000')
    assert AccessRequest.decode(edited).id != req.id  # any edit is another request, unsigned
    with pytest.raises(AccessError):
        AccessRequest.decode(req.encode().replace(b"eval", b"eval\\u202e"))
