from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignerSetInfo(_message.Message):
    __slots__ = ("signer_set", "version", "chain")
    SIGNER_SET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    signer_set: bytes
    version: int
    chain: _containers.RepeatedCompositeFieldContainer[SignedRotation]
    def __init__(self, signer_set: _Optional[bytes] = ..., version: _Optional[int] = ..., chain: _Optional[_Iterable[_Union[SignedRotation, _Mapping]]] = ...) -> None: ...

class SignedRotation(_message.Message):
    __slots__ = ("signer_set", "signatures")
    SIGNER_SET_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    signer_set: bytes
    signatures: bytes
    def __init__(self, signer_set: _Optional[bytes] = ..., signatures: _Optional[bytes] = ...) -> None: ...

class GetSignerSetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateSignerSetRequest(_message.Message):
    __slots__ = ("signer_set", "signatures")
    SIGNER_SET_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    signer_set: bytes
    signatures: bytes
    def __init__(self, signer_set: _Optional[bytes] = ..., signatures: _Optional[bytes] = ...) -> None: ...

class OrderInfo(_message.Message):
    __slots__ = ("id", "body", "action", "models", "artifacts", "reason", "issued_at", "not_after", "sequence", "signer_set_version", "drill", "state", "signed_by", "threshold", "missing", "proposed_by", "quorum_at_unix_ns", "completed_at_unix_ns", "problems")
    ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_BY_FIELD_NUMBER: _ClassVar[int]
    QUORUM_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    id: str
    body: bytes
    action: str
    models: _containers.RepeatedScalarFieldContainer[str]
    artifacts: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    issued_at: int
    not_after: int
    sequence: int
    signer_set_version: int
    drill: bool
    state: str
    signed_by: _containers.RepeatedScalarFieldContainer[str]
    threshold: int
    missing: int
    proposed_by: str
    quorum_at_unix_ns: int
    completed_at_unix_ns: int
    problems: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., body: _Optional[bytes] = ..., action: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., artifacts: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., issued_at: _Optional[int] = ..., not_after: _Optional[int] = ..., sequence: _Optional[int] = ..., signer_set_version: _Optional[int] = ..., drill: _Optional[bool] = ..., state: _Optional[str] = ..., signed_by: _Optional[_Iterable[str]] = ..., threshold: _Optional[int] = ..., missing: _Optional[int] = ..., proposed_by: _Optional[str] = ..., quorum_at_unix_ns: _Optional[int] = ..., completed_at_unix_ns: _Optional[int] = ..., problems: _Optional[_Iterable[str]] = ...) -> None: ...

class ProposeRequest(_message.Message):
    __slots__ = ("action", "models", "reason", "expires_seconds", "drill")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    action: str
    models: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    expires_seconds: int
    drill: bool
    def __init__(self, action: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., expires_seconds: _Optional[int] = ..., drill: _Optional[bool] = ...) -> None: ...

class ProposeResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: OrderInfo
    def __init__(self, order: _Optional[_Union[OrderInfo, _Mapping]] = ...) -> None: ...

class AttachSignatureRequest(_message.Message):
    __slots__ = ("order_id", "signatures")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    signatures: bytes
    def __init__(self, order_id: _Optional[str] = ..., signatures: _Optional[bytes] = ...) -> None: ...

class AttachSignatureResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: OrderInfo
    def __init__(self, order: _Optional[_Union[OrderInfo, _Mapping]] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: OrderInfo
    def __init__(self, order: _Optional[_Union[OrderInfo, _Mapping]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders",)
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[OrderInfo]
    def __init__(self, orders: _Optional[_Iterable[_Union[OrderInfo, _Mapping]]] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("order_id", "format")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    format: str
    def __init__(self, order_id: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("content", "complete")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    content: str
    complete: bool
    def __init__(self, content: _Optional[str] = ..., complete: _Optional[bool] = ...) -> None: ...

class GetReportKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportKeyInfo(_message.Message):
    __slots__ = ("public_key_pem", "key_id", "signer")
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    public_key_pem: bytes
    key_id: str
    signer: str
    def __init__(self, public_key_pem: _Optional[bytes] = ..., key_id: _Optional[str] = ..., signer: _Optional[str] = ...) -> None: ...

class DrillRegisterInfo(_message.Message):
    __slots__ = ("body", "signatures", "version", "signer_set_version", "models", "artifacts", "threshold", "signed_by")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIGNER_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signatures: bytes
    version: int
    signer_set_version: int
    models: _containers.RepeatedScalarFieldContainer[str]
    artifacts: _containers.RepeatedScalarFieldContainer[str]
    threshold: int
    signed_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, body: _Optional[bytes] = ..., signatures: _Optional[bytes] = ..., version: _Optional[int] = ..., signer_set_version: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., artifacts: _Optional[_Iterable[str]] = ..., threshold: _Optional[int] = ..., signed_by: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDrillRegisterRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrepareDrillRegisterRequest(_message.Message):
    __slots__ = ("add_models", "remove_models")
    ADD_MODELS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_MODELS_FIELD_NUMBER: _ClassVar[int]
    add_models: _containers.RepeatedScalarFieldContainer[str]
    remove_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, add_models: _Optional[_Iterable[str]] = ..., remove_models: _Optional[_Iterable[str]] = ...) -> None: ...

class SetDrillRegisterRequest(_message.Message):
    __slots__ = ("body", "signatures")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signatures: bytes
    def __init__(self, body: _Optional[bytes] = ..., signatures: _Optional[bytes] = ...) -> None: ...
