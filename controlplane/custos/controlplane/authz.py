"""Who may call what: the one table. Anything not in it is denied.

Roles come from the caller's client certificate (custos.controlplane.pki). Adding an RPC to
the API without a row here makes it uncallable; tests/controlplane/
test_authz_matrix.py calls every RPC with every role and checks this table.
"""

from __future__ import annotations

from custos.controlplane.pki import ROLES

SECURITY = "security-team"
AGENT = "agent"
EXECUTIVE = "executive"
AUDITOR = "auditor"
ADMIN = "admin"

_READERS = frozenset({SECURITY, EXECUTIVE, AUDITOR, ADMIN})

POLICY: dict[str, frozenset[str]] = {
    # Registry: the security team writes; executives, auditors and admins read.
    "/custos.v1.Registry/RegisterModel": frozenset({SECURITY}),
    "/custos.v1.Registry/RegisterArtifact": frozenset({SECURITY}),
    "/custos.v1.Registry/RecordDerivation": frozenset({SECURITY}),
    "/custos.v1.Registry/GetModel": _READERS,
    "/custos.v1.Registry/ListModels": _READERS,
    # Agents read artifacts: manifests to recognise copies (checked against the id
    # they hash to) and the newest stored artifact of a model for `custos run`.
    "/custos.v1.Registry/GetArtifact": _READERS | {AGENT},
    "/custos.v1.Registry/ListArtifacts": _READERS | {AGENT},
    "/custos.v1.Registry/GetLineage": _READERS,
    "/custos.v1.Registry/ListCopies": _READERS,
    "/custos.v1.Registry/RegisterStoredArtifact": frozenset({SECURITY}),
    "/custos.v1.Registry/RecordCopy": frozenset({SECURITY, AGENT}),
    # Keys: the security team pushes; agents and the security team pull. Every
    # handout is audited and refused while the model is not active.
    "/custos.v1.Keys/CreateDataKey": frozenset({SECURITY}),
    "/custos.v1.Keys/UnwrapDataKey": frozenset({SECURITY, AGENT}),
    "/custos.v1.Registry/SetCustodyPolicy": frozenset({SECURITY}),
    # Access (the two-person rule): the security team requests, approves (by policy role:
    # security-team or executive) and revokes; admins set policies and register approvers;
    # an agent may ask to extend a grant its host holds and follow it.
    "/custos.v1.Access/GetPolicy": _READERS,
    "/custos.v1.Access/SetPolicy": frozenset({ADMIN}),
    "/custos.v1.Access/Request": frozenset({SECURITY, AGENT}),
    "/custos.v1.Access/Get": _READERS | {AGENT},
    "/custos.v1.Access/List": _READERS,
    "/custos.v1.Access/Approve": frozenset({SECURITY, EXECUTIVE}),
    "/custos.v1.Access/Revoke": frozenset({SECURITY, ADMIN}),
    "/custos.v1.Access/BreakGlass": frozenset({SECURITY}),
    "/custos.v1.Access/AddApprover": frozenset({ADMIN}),
    "/custos.v1.Access/ListApprovers": _READERS,
    "/custos.v1.Access/Who": frozenset({SECURITY, AUDITOR, ADMIN, EXECUTIVE}),
    # Custody: the security team manages hosts; agents hold one stream each.
    "/custos.v1.Custody/AddHost": frozenset({SECURITY}),
    "/custos.v1.Custody/RemoveHost": frozenset({SECURITY}),
    "/custos.v1.Custody/ListHosts": _READERS,
    "/custos.v1.Custody/Stream": frozenset({AGENT}),
    # Certificates: an agent renews its own; the security team (or an admin) revokes any.
    "/custos.v1.Custody/RenewCertificate": frozenset({AGENT}),
    "/custos.v1.Custody/RevokeCertificate": frozenset({SECURITY, ADMIN}),
    "/custos.v1.Custody/ListRevocations": frozenset({SECURITY, AUDITOR, ADMIN}),
    "/custos.v1.Alerts/ListAlerts": frozenset({SECURITY, AUDITOR, ADMIN}),
    # Canaries (decoy weight files on hosts): the security team and admins plant and remove; auditors list.
    "/custos.v1.Canaries/Plant": frozenset({SECURITY, ADMIN}),
    "/custos.v1.Canaries/Remove": frozenset({SECURITY, ADMIN}),
    "/custos.v1.Canaries/List": frozenset({SECURITY, AUDITOR, ADMIN}),
    # Orders: executives propose and sign; everyone who reads the registry may
    # follow an order and its report. Rotation is signed by a threshold anyway.
    "/custos.v1.Orders/GetSignerSet": frozenset({SECURITY, EXECUTIVE, AUDITOR, ADMIN, AGENT}),
    "/custos.v1.Orders/RotateSignerSet": frozenset({EXECUTIVE, ADMIN}),
    "/custos.v1.Orders/Propose": frozenset({EXECUTIVE}),
    "/custos.v1.Orders/AttachSignature": frozenset({EXECUTIVE}),
    "/custos.v1.Orders/GetOrder": _READERS,
    "/custos.v1.Orders/ListOrders": _READERS,
    "/custos.v1.Orders/GetReport": _READERS,
    "/custos.v1.Orders/GetReportKey": _READERS,
    # The drill register: executives sign it (a rotate threshold, like the signer set).
    "/custos.v1.Orders/GetDrillRegister": _READERS,
    "/custos.v1.Orders/PrepareDrillRegister": frozenset({EXECUTIVE, ADMIN}),
    "/custos.v1.Orders/SetDrillRegister": frozenset({EXECUTIVE, ADMIN}),
    # Incidents: the security team triages and reports; auditors and admins read.
    "/custos.v1.Incidents/ListIncidents": frozenset({SECURITY, AUDITOR, ADMIN}),
    "/custos.v1.Incidents/GetIncident": frozenset({SECURITY, AUDITOR, ADMIN}),
    "/custos.v1.Incidents/ExportIncident": frozenset({SECURITY, AUDITOR, ADMIN}),
    "/custos.v1.Incidents/UpdateIncident": frozenset({SECURITY}),
    # Audit: the log is for auditors and the security team (and admins).
    "/custos.v1.Audit/ListEvents": frozenset({AUDITOR, SECURITY, ADMIN}),
    "/custos.v1.Audit/GetCheckpoints": frozenset({AUDITOR, SECURITY, ADMIN}),
    # Infrastructure: any authenticated caller may ask whether the server is up
    # and what it serves.
    "/grpc.health.v1.Health/Check": frozenset(ROLES),
    "/grpc.health.v1.Health/Watch": frozenset(ROLES),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": frozenset(ROLES),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": frozenset(ROLES),
}

assert all(r in ROLES for roles in POLICY.values() for r in roles)


def is_allowed(method: str, role: str) -> bool:
    """True only if ``method`` is in the table and lists ``role``."""
    return role in POLICY.get(method, frozenset())


def is_mutating(method: str) -> bool:
    """Calls that change state; denials of these are audited."""
    name = method.rsplit("/", 1)[-1]
    return not name.startswith(("Get", "List", "Check", "Watch", "ServerReflection"))
