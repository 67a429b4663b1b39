from custos.v1 import custody_pb2 as _custody_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Canary(_message.Message):
    __slots__ = ("id", "host", "path", "model", "state", "origin", "files", "error", "created_at_unix_ns", "created_by", "planted_at_unix_ns", "removed_at_unix_ns", "removed_by")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    PLANTED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BY_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: str
    path: str
    model: str
    state: str
    origin: str
    files: _containers.RepeatedCompositeFieldContainer[_custody_pb2.CanaryFile]
    error: str
    created_at_unix_ns: int
    created_by: str
    planted_at_unix_ns: int
    removed_at_unix_ns: int
    removed_by: str
    def __init__(self, id: _Optional[str] = ..., host: _Optional[str] = ..., path: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[str] = ..., origin: _Optional[str] = ..., files: _Optional[_Iterable[_Union[_custody_pb2.CanaryFile, _Mapping]]] = ..., error: _Optional[str] = ..., created_at_unix_ns: _Optional[int] = ..., created_by: _Optional[str] = ..., planted_at_unix_ns: _Optional[int] = ..., removed_at_unix_ns: _Optional[int] = ..., removed_by: _Optional[str] = ...) -> None: ...

class PlantCanaryRequest(_message.Message):
    __slots__ = ("host", "path", "model")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    host: str
    path: str
    model: str
    def __init__(self, host: _Optional[str] = ..., path: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class PlantCanaryResponse(_message.Message):
    __slots__ = ("canary", "delivered")
    CANARY_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    canary: Canary
    delivered: bool
    def __init__(self, canary: _Optional[_Union[Canary, _Mapping]] = ..., delivered: _Optional[bool] = ...) -> None: ...

class ListCanariesRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: str
    def __init__(self, host: _Optional[str] = ...) -> None: ...

class ListCanariesResponse(_message.Message):
    __slots__ = ("canaries",)
    CANARIES_FIELD_NUMBER: _ClassVar[int]
    canaries: _containers.RepeatedCompositeFieldContainer[Canary]
    def __init__(self, canaries: _Optional[_Iterable[_Union[Canary, _Mapping]]] = ...) -> None: ...

class RemoveCanaryRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RemoveCanaryResponse(_message.Message):
    __slots__ = ("canary",)
    CANARY_FIELD_NUMBER: _ClassVar[int]
    canary: Canary
    def __init__(self, canary: _Optional[_Union[Canary, _Mapping]] = ...) -> None: ...
