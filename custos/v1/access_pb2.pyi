from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccessPolicy(_message.Message):
    __slots__ = ("required", "approvals", "approver_role", "max_lifetime_seconds", "derivatives", "on_expiry", "break_glass")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    APPROVER_ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_LIFETIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DERIVATIVES_FIELD_NUMBER: _ClassVar[int]
    ON_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_FIELD_NUMBER: _ClassVar[int]
    required: bool
    approvals: int
    approver_role: str
    max_lifetime_seconds: int
    derivatives: bool
    on_expiry: str
    break_glass: bool
    def __init__(self, required: _Optional[bool] = ..., approvals: _Optional[int] = ..., approver_role: _Optional[str] = ..., max_lifetime_seconds: _Optional[int] = ..., derivatives: _Optional[bool] = ..., on_expiry: _Optional[str] = ..., break_glass: _Optional[bool] = ...) -> None: ...

class GetAccessPolicyRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetAccessPolicyResponse(_message.Message):
    __slots__ = ("policy", "is_default", "covered")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    COVERED_FIELD_NUMBER: _ClassVar[int]
    policy: AccessPolicy
    is_default: bool
    covered: bool
    def __init__(self, policy: _Optional[_Union[AccessPolicy, _Mapping]] = ..., is_default: _Optional[bool] = ..., covered: _Optional[bool] = ...) -> None: ...

class SetAccessPolicyRequest(_message.Message):
    __slots__ = ("model", "policy")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy: AccessPolicy
    def __init__(self, model: _Optional[str] = ..., policy: _Optional[_Union[AccessPolicy, _Mapping]] = ...) -> None: ...

class SetAccessPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: AccessPolicy
    def __init__(self, policy: _Optional[_Union[AccessPolicy, _Mapping]] = ...) -> None: ...

class ApprovalInfo(_message.Message):
    __slots__ = ("key_id", "principal", "role", "at_unix_ns", "sig")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    principal: str
    role: str
    at_unix_ns: int
    sig: str
    def __init__(self, key_id: _Optional[str] = ..., principal: _Optional[str] = ..., role: _Optional[str] = ..., at_unix_ns: _Optional[int] = ..., sig: _Optional[str] = ...) -> None: ...

class AccessGrant(_message.Message):
    __slots__ = ("id", "state", "model", "models", "artifact_ids", "principal", "hosts", "duration_seconds", "reason", "requester", "created_unix_ns", "expires_unix_ns", "activated_unix_ns", "not_after_unix_ns", "needed", "counted", "approvals", "extends", "break_glass", "on_expiry", "approver_role", "revoked_by", "revoked_reason", "body", "now_unix_ns")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    NEEDED_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    EXTENDS_FIELD_NUMBER: _ClassVar[int]
    BREAK_GLASS_FIELD_NUMBER: _ClassVar[int]
    ON_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    APPROVER_ROLE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_REASON_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    NOW_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    model: str
    models: _containers.RepeatedScalarFieldContainer[str]
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    principal: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    duration_seconds: int
    reason: str
    requester: str
    created_unix_ns: int
    expires_unix_ns: int
    activated_unix_ns: int
    not_after_unix_ns: int
    needed: int
    counted: _containers.RepeatedScalarFieldContainer[str]
    approvals: _containers.RepeatedCompositeFieldContainer[ApprovalInfo]
    extends: str
    break_glass: bool
    on_expiry: str
    approver_role: str
    revoked_by: str
    revoked_reason: str
    body: bytes
    now_unix_ns: int
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., model: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., artifact_ids: _Optional[_Iterable[str]] = ..., principal: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ..., duration_seconds: _Optional[int] = ..., reason: _Optional[str] = ..., requester: _Optional[str] = ..., created_unix_ns: _Optional[int] = ..., expires_unix_ns: _Optional[int] = ..., activated_unix_ns: _Optional[int] = ..., not_after_unix_ns: _Optional[int] = ..., needed: _Optional[int] = ..., counted: _Optional[_Iterable[str]] = ..., approvals: _Optional[_Iterable[_Union[ApprovalInfo, _Mapping]]] = ..., extends: _Optional[str] = ..., break_glass: _Optional[bool] = ..., on_expiry: _Optional[str] = ..., approver_role: _Optional[str] = ..., revoked_by: _Optional[str] = ..., revoked_reason: _Optional[str] = ..., body: _Optional[bytes] = ..., now_unix_ns: _Optional[int] = ...) -> None: ...

class RequestAccessRequest(_message.Message):
    __slots__ = ("model", "artifact_id", "principal", "hosts", "duration_seconds", "reason", "pending_seconds", "extends")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PENDING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXTENDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    artifact_id: str
    principal: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    duration_seconds: int
    reason: str
    pending_seconds: int
    extends: str
    def __init__(self, model: _Optional[str] = ..., artifact_id: _Optional[str] = ..., principal: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ..., duration_seconds: _Optional[int] = ..., reason: _Optional[str] = ..., pending_seconds: _Optional[int] = ..., extends: _Optional[str] = ...) -> None: ...

class AccessGrantResponse(_message.Message):
    __slots__ = ("grant",)
    GRANT_FIELD_NUMBER: _ClassVar[int]
    grant: AccessGrant
    def __init__(self, grant: _Optional[_Union[AccessGrant, _Mapping]] = ...) -> None: ...

class GetAccessRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListAccessRequest(_message.Message):
    __slots__ = ("states", "model")
    STATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[str]
    model: str
    def __init__(self, states: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ...) -> None: ...

class ListAccessResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[AccessGrant]
    def __init__(self, grants: _Optional[_Iterable[_Union[AccessGrant, _Mapping]]] = ...) -> None: ...

class ApproveAccessRequest(_message.Message):
    __slots__ = ("id", "key_id", "sig")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    id: str
    key_id: str
    sig: str
    def __init__(self, id: _Optional[str] = ..., key_id: _Optional[str] = ..., sig: _Optional[str] = ...) -> None: ...

class RevokeAccessRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class BreakGlassRequest(_message.Message):
    __slots__ = ("id", "key_id", "sig")
    ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    id: str
    key_id: str
    sig: str
    def __init__(self, id: _Optional[str] = ..., key_id: _Optional[str] = ..., sig: _Optional[str] = ...) -> None: ...

class Approver(_message.Message):
    __slots__ = ("name", "principals", "public_keys", "key_ids")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    principals: _containers.RepeatedScalarFieldContainer[str]
    public_keys: _containers.RepeatedScalarFieldContainer[str]
    key_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., principals: _Optional[_Iterable[str]] = ..., public_keys: _Optional[_Iterable[str]] = ..., key_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AddApproverRequest(_message.Message):
    __slots__ = ("approver", "replace")
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    approver: Approver
    replace: bool
    def __init__(self, approver: _Optional[_Union[Approver, _Mapping]] = ..., replace: _Optional[bool] = ...) -> None: ...

class AddApproverResponse(_message.Message):
    __slots__ = ("approver",)
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    approver: Approver
    def __init__(self, approver: _Optional[_Union[Approver, _Mapping]] = ...) -> None: ...

class ListApproversRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListApproversResponse(_message.Message):
    __slots__ = ("approvers",)
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    approvers: _containers.RepeatedCompositeFieldContainer[Approver]
    def __init__(self, approvers: _Optional[_Iterable[_Union[Approver, _Mapping]]] = ...) -> None: ...

class AccessHolder(_message.Message):
    __slots__ = ("kind", "principal", "host", "detail", "grant_id", "until_unix_ns")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    UNTIL_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    principal: str
    host: str
    detail: str
    grant_id: str
    until_unix_ns: int
    def __init__(self, kind: _Optional[str] = ..., principal: _Optional[str] = ..., host: _Optional[str] = ..., detail: _Optional[str] = ..., grant_id: _Optional[str] = ..., until_unix_ns: _Optional[int] = ...) -> None: ...

class WhoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class WhoResponse(_message.Message):
    __slots__ = ("model", "holders", "principals", "cap", "problems")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HOLDERS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    model: str
    holders: _containers.RepeatedCompositeFieldContainer[AccessHolder]
    principals: int
    cap: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., holders: _Optional[_Iterable[_Union[AccessHolder, _Mapping]]] = ..., principals: _Optional[int] = ..., cap: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...
