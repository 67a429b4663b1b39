from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Host(_message.Message):
    __slots__ = ("name", "state", "labels", "lease_expires_unix_ns", "lease_state", "last_report_unix_ns", "enrolled_at_unix_ns", "cert_fingerprint", "files", "processes", "guard")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    LEASE_STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    CERT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    labels: _containers.ScalarMap[str, str]
    lease_expires_unix_ns: int
    lease_state: str
    last_report_unix_ns: int
    enrolled_at_unix_ns: int
    cert_fingerprint: str
    files: int
    processes: int
    guard: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., lease_expires_unix_ns: _Optional[int] = ..., lease_state: _Optional[str] = ..., last_report_unix_ns: _Optional[int] = ..., enrolled_at_unix_ns: _Optional[int] = ..., cert_fingerprint: _Optional[str] = ..., files: _Optional[int] = ..., processes: _Optional[int] = ..., guard: _Optional[str] = ...) -> None: ...

class AddHostRequest(_message.Message):
    __slots__ = ("name", "labels", "token_ttl_seconds")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    token_ttl_seconds: int
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., token_ttl_seconds: _Optional[int] = ...) -> None: ...

class AddHostResponse(_message.Message):
    __slots__ = ("host", "enrollment_token", "token_expires_unix_ns")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    host: Host
    enrollment_token: str
    token_expires_unix_ns: int
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ..., enrollment_token: _Optional[str] = ..., token_expires_unix_ns: _Optional[int] = ...) -> None: ...

class RemoveHostRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveHostResponse(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: Host
    def __init__(self, host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts",)
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem", "not_after_unix_ns")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_pem: bytes
    not_after_unix_ns: int
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., not_after_unix_ns: _Optional[int] = ...) -> None: ...

class RevokeCertificateRequest(_message.Message):
    __slots__ = ("host", "fingerprint", "certificate_pem", "reason")
    HOST_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    host: str
    fingerprint: str
    certificate_pem: bytes
    reason: str
    def __init__(self, host: _Optional[str] = ..., fingerprint: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., reason: _Optional[str] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("fingerprint", "principal", "role", "reason", "revoked_at_unix_ns", "revoked_by", "not_after_unix_ns")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    principal: str
    role: str
    reason: str
    revoked_at_unix_ns: int
    revoked_by: str
    not_after_unix_ns: int
    def __init__(self, fingerprint: _Optional[str] = ..., principal: _Optional[str] = ..., role: _Optional[str] = ..., reason: _Optional[str] = ..., revoked_at_unix_ns: _Optional[int] = ..., revoked_by: _Optional[str] = ..., not_after_unix_ns: _Optional[int] = ...) -> None: ...

class RevokeCertificateResponse(_message.Message):
    __slots__ = ("revoked", "host")
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    revoked: _containers.RepeatedCompositeFieldContainer[Revocation]
    host: Host
    def __init__(self, revoked: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ..., host: _Optional[_Union[Host, _Mapping]] = ...) -> None: ...

class ListRevocationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRevocationsResponse(_message.Message):
    __slots__ = ("revocations",)
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("name", "token", "csr_pem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    token: str
    csr_pem: bytes
    def __init__(self, name: _Optional[str] = ..., token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem", "signer_set", "lease_ttl_seconds")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    SIGNER_SET_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_pem: bytes
    signer_set: bytes
    lease_ttl_seconds: int
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ..., signer_set: _Optional[bytes] = ..., lease_ttl_seconds: _Optional[int] = ...) -> None: ...

class FileRecord(_message.Message):
    __slots__ = ("path", "size", "sha256", "form")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORM_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    form: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., form: _Optional[str] = ...) -> None: ...

class ProcessRecord(_message.Message):
    __slots__ = ("pid", "user", "cmdline", "start_time_unix_ns", "cgroup", "container_id", "paths", "how", "workload_id")
    PID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    HOW_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    user: str
    cmdline: str
    start_time_unix_ns: int
    cgroup: str
    container_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    how: str
    workload_id: str
    def __init__(self, pid: _Optional[int] = ..., user: _Optional[str] = ..., cmdline: _Optional[str] = ..., start_time_unix_ns: _Optional[int] = ..., cgroup: _Optional[str] = ..., container_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ..., how: _Optional[str] = ..., workload_id: _Optional[str] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("full", "files", "removed_paths", "processes", "problems", "managed_roots", "guard", "canary_paths")
    FULL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_PATHS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    MANAGED_ROOTS_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    CANARY_PATHS_FIELD_NUMBER: _ClassVar[int]
    full: bool
    files: _containers.RepeatedCompositeFieldContainer[FileRecord]
    removed_paths: _containers.RepeatedScalarFieldContainer[str]
    processes: _containers.RepeatedCompositeFieldContainer[ProcessRecord]
    problems: _containers.RepeatedScalarFieldContainer[str]
    managed_roots: _containers.RepeatedScalarFieldContainer[str]
    guard: str
    canary_paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, full: _Optional[bool] = ..., files: _Optional[_Iterable[_Union[FileRecord, _Mapping]]] = ..., removed_paths: _Optional[_Iterable[str]] = ..., processes: _Optional[_Iterable[_Union[ProcessRecord, _Mapping]]] = ..., problems: _Optional[_Iterable[str]] = ..., managed_roots: _Optional[_Iterable[str]] = ..., guard: _Optional[str] = ..., canary_paths: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_unix_ns",)
    SENT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    sent_unix_ns: int
    def __init__(self, sent_unix_ns: _Optional[int] = ...) -> None: ...

class OrderAck(_message.Message):
    __slots__ = ("order_id", "verified", "outcome", "reason", "pids_stopped", "paths_wiped", "remaining", "received_unix_ns", "done_unix_ns", "would_stop", "evidence", "evidence_signature", "host_certificate")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PIDS_STOPPED_FIELD_NUMBER: _ClassVar[int]
    PATHS_WIPED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    DONE_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    WOULD_STOP_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    HOST_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    verified: bool
    outcome: str
    reason: str
    pids_stopped: _containers.RepeatedScalarFieldContainer[int]
    paths_wiped: _containers.RepeatedScalarFieldContainer[str]
    remaining: _containers.RepeatedScalarFieldContainer[str]
    received_unix_ns: int
    done_unix_ns: int
    would_stop: _containers.RepeatedScalarFieldContainer[str]
    evidence: bytes
    evidence_signature: bytes
    host_certificate: bytes
    def __init__(self, order_id: _Optional[str] = ..., verified: _Optional[bool] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., pids_stopped: _Optional[_Iterable[int]] = ..., paths_wiped: _Optional[_Iterable[str]] = ..., remaining: _Optional[_Iterable[str]] = ..., received_unix_ns: _Optional[int] = ..., done_unix_ns: _Optional[int] = ..., would_stop: _Optional[_Iterable[str]] = ..., evidence: _Optional[bytes] = ..., evidence_signature: _Optional[bytes] = ..., host_certificate: _Optional[bytes] = ...) -> None: ...

class AccessEvent(_message.Message):
    __slots__ = ("kind", "mode", "pid", "exe", "exe_sha256", "user", "cgroup", "container_id", "cmdline", "path", "sha256", "artifact_id", "canary_id", "at_unix_ns", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    EXE_SHA256_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    CMDLINE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    CANARY_ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    mode: str
    pid: int
    exe: str
    exe_sha256: str
    user: str
    cgroup: str
    container_id: str
    cmdline: str
    path: str
    sha256: str
    artifact_id: str
    canary_id: str
    at_unix_ns: int
    detail: str
    def __init__(self, kind: _Optional[str] = ..., mode: _Optional[str] = ..., pid: _Optional[int] = ..., exe: _Optional[str] = ..., exe_sha256: _Optional[str] = ..., user: _Optional[str] = ..., cgroup: _Optional[str] = ..., container_id: _Optional[str] = ..., cmdline: _Optional[str] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., artifact_id: _Optional[str] = ..., canary_id: _Optional[str] = ..., at_unix_ns: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class CanaryFile(_message.Message):
    __slots__ = ("path", "size", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class CanaryPlanted(_message.Message):
    __slots__ = ("canary_id", "dir", "files", "error")
    CANARY_ID_FIELD_NUMBER: _ClassVar[int]
    DIR_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    canary_id: str
    dir: str
    files: _containers.RepeatedCompositeFieldContainer[CanaryFile]
    error: str
    def __init__(self, canary_id: _Optional[str] = ..., dir: _Optional[str] = ..., files: _Optional[_Iterable[_Union[CanaryFile, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class PlantCanary(_message.Message):
    __slots__ = ("canary_id", "path", "model")
    CANARY_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    canary_id: str
    path: str
    model: str
    def __init__(self, canary_id: _Optional[str] = ..., path: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("inventory", "heartbeat", "ack", "access", "canary")
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    inventory: Inventory
    heartbeat: Heartbeat
    ack: OrderAck
    access: AccessEvent
    canary: CanaryPlanted
    def __init__(self, inventory: _Optional[_Union[Inventory, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., ack: _Optional[_Union[OrderAck, _Mapping]] = ..., access: _Optional[_Union[AccessEvent, _Mapping]] = ..., canary: _Optional[_Union[CanaryPlanted, _Mapping]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("expires_unix_ns", "ttl_seconds")
    EXPIRES_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    expires_unix_ns: int
    ttl_seconds: int
    def __init__(self, expires_unix_ns: _Optional[int] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class ReportReceipt(_message.Message):
    __slots__ = ("received_unix_ns", "ingested_unix_ns", "copies", "alerts")
    RECEIVED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    INGESTED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    received_unix_ns: int
    ingested_unix_ns: int
    copies: int
    alerts: int
    def __init__(self, received_unix_ns: _Optional[int] = ..., ingested_unix_ns: _Optional[int] = ..., copies: _Optional[int] = ..., alerts: _Optional[int] = ...) -> None: ...

class SignedOrder(_message.Message):
    __slots__ = ("body", "signatures", "signer_set", "signer_chain", "dry_run_models", "dry_run_artifacts", "drill_register", "drill_register_signatures")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    SIGNER_SET_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CHAIN_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_MODELS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    DRILL_REGISTER_FIELD_NUMBER: _ClassVar[int]
    DRILL_REGISTER_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[OrderSignature]
    signer_set: bytes
    signer_chain: _containers.RepeatedScalarFieldContainer[bytes]
    dry_run_models: _containers.RepeatedScalarFieldContainer[str]
    dry_run_artifacts: _containers.RepeatedScalarFieldContainer[str]
    drill_register: bytes
    drill_register_signatures: bytes
    def __init__(self, body: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[OrderSignature, _Mapping]]] = ..., signer_set: _Optional[bytes] = ..., signer_chain: _Optional[_Iterable[bytes]] = ..., dry_run_models: _Optional[_Iterable[str]] = ..., dry_run_artifacts: _Optional[_Iterable[str]] = ..., drill_register: _Optional[bytes] = ..., drill_register_signatures: _Optional[bytes] = ...) -> None: ...

class OrderSignature(_message.Message):
    __slots__ = ("key_id", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    signature: bytes
    def __init__(self, key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("lease", "order", "notice", "plant_canary", "report")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    PLANT_CANARY_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    order: SignedOrder
    notice: str
    plant_canary: PlantCanary
    report: ReportReceipt
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., order: _Optional[_Union[SignedOrder, _Mapping]] = ..., notice: _Optional[str] = ..., plant_canary: _Optional[_Union[PlantCanary, _Mapping]] = ..., report: _Optional[_Union[ReportReceipt, _Mapping]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "rule", "severity", "model", "artifact_id", "host", "detail", "at_unix_ns", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    rule: str
    severity: str
    model: str
    artifact_id: str
    host: str
    detail: str
    at_unix_ns: int
    state: str
    def __init__(self, id: _Optional[str] = ..., rule: _Optional[str] = ..., severity: _Optional[str] = ..., model: _Optional[str] = ..., artifact_id: _Optional[str] = ..., host: _Optional[str] = ..., detail: _Optional[str] = ..., at_unix_ns: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("host", "model")
    HOST_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    host: str
    model: str
    def __init__(self, host: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...
