from custos.v1 import registry_pb2 as _registry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateDataKeyRequest(_message.Message):
    __slots__ = ("model", "manifest", "parents")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    manifest: bytes
    parents: _containers.RepeatedCompositeFieldContainer[_registry_pb2.ParentRef]
    def __init__(self, model: _Optional[str] = ..., manifest: _Optional[bytes] = ..., parents: _Optional[_Iterable[_Union[_registry_pb2.ParentRef, _Mapping]]] = ...) -> None: ...

class CreateDataKeyResponse(_message.Message):
    __slots__ = ("artifact_id", "data_key", "object_prefix", "blob_store", "resumed", "already_stored")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    OBJECT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    BLOB_STORE_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    data_key: bytes
    object_prefix: str
    blob_store: str
    resumed: bool
    already_stored: bool
    def __init__(self, artifact_id: _Optional[str] = ..., data_key: _Optional[bytes] = ..., object_prefix: _Optional[str] = ..., blob_store: _Optional[str] = ..., resumed: _Optional[bool] = ..., already_stored: _Optional[bool] = ...) -> None: ...

class UnwrapDataKeyRequest(_message.Message):
    __slots__ = ("artifact_id", "purpose")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    purpose: str
    def __init__(self, artifact_id: _Optional[str] = ..., purpose: _Optional[str] = ...) -> None: ...

class UnwrapDataKeyResponse(_message.Message):
    __slots__ = ("artifact", "data_key", "grant_id", "grant_not_after_unix_ns", "grant_on_expiry")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_NOT_AFTER_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    GRANT_ON_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    artifact: _registry_pb2.Artifact
    data_key: bytes
    grant_id: str
    grant_not_after_unix_ns: int
    grant_on_expiry: str
    def __init__(self, artifact: _Optional[_Union[_registry_pb2.Artifact, _Mapping]] = ..., data_key: _Optional[bytes] = ..., grant_id: _Optional[str] = ..., grant_not_after_unix_ns: _Optional[int] = ..., grant_on_expiry: _Optional[str] = ...) -> None: ...
