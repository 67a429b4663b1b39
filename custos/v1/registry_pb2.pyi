from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_ACTIVE: _ClassVar[ModelState]
    MODEL_STATE_HALTED: _ClassVar[ModelState]
    MODEL_STATE_DESTROYED: _ClassVar[ModelState]

class Relation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELATION_UNSPECIFIED: _ClassVar[Relation]
    RELATION_COPY: _ClassVar[Relation]
    RELATION_FINE_TUNE: _ClassVar[Relation]
    RELATION_QUANTIZE: _ClassVar[Relation]
    RELATION_DISTILL: _ClassVar[Relation]
    RELATION_MERGE: _ClassVar[Relation]
    RELATION_ADAPTER: _ClassVar[Relation]
    RELATION_COMBINATION: _ClassVar[Relation]

class LocationKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOCATION_KIND_UNSPECIFIED: _ClassVar[LocationKind]
    LOCATION_KIND_OBJECT_STORE: _ClassVar[LocationKind]
    LOCATION_KIND_HOST_PATH: _ClassVar[LocationKind]
    LOCATION_KIND_PROCESS: _ClassVar[LocationKind]

class CopyForm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COPY_FORM_UNSPECIFIED: _ClassVar[CopyForm]
    COPY_FORM_CIPHERTEXT: _ClassVar[CopyForm]
    COPY_FORM_PLAINTEXT: _ClassVar[CopyForm]
    COPY_FORM_LOADED: _ClassVar[CopyForm]

class LineageDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINEAGE_DIRECTION_BOTH: _ClassVar[LineageDirection]
    LINEAGE_DIRECTION_ANCESTORS: _ClassVar[LineageDirection]
    LINEAGE_DIRECTION_DESCENDANTS: _ClassVar[LineageDirection]
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_ACTIVE: ModelState
MODEL_STATE_HALTED: ModelState
MODEL_STATE_DESTROYED: ModelState
RELATION_UNSPECIFIED: Relation
RELATION_COPY: Relation
RELATION_FINE_TUNE: Relation
RELATION_QUANTIZE: Relation
RELATION_DISTILL: Relation
RELATION_MERGE: Relation
RELATION_ADAPTER: Relation
RELATION_COMBINATION: Relation
LOCATION_KIND_UNSPECIFIED: LocationKind
LOCATION_KIND_OBJECT_STORE: LocationKind
LOCATION_KIND_HOST_PATH: LocationKind
LOCATION_KIND_PROCESS: LocationKind
COPY_FORM_UNSPECIFIED: CopyForm
COPY_FORM_CIPHERTEXT: CopyForm
COPY_FORM_PLAINTEXT: CopyForm
COPY_FORM_LOADED: CopyForm
LINEAGE_DIRECTION_BOTH: LineageDirection
LINEAGE_DIRECTION_ANCESTORS: LineageDirection
LINEAGE_DIRECTION_DESCENDANTS: LineageDirection

class LimitedDutyExemption(_message.Message):
    __slots__ = ("basis", "date", "certifier")
    BASIS_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    CERTIFIER_FIELD_NUMBER: _ClassVar[int]
    basis: str
    date: str
    certifier: str
    def __init__(self, basis: _Optional[str] = ..., date: _Optional[str] = ..., certifier: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "owner", "training_flops", "benchmark_equivalence", "covered", "exemption", "state", "transit_key", "created_at_unix_ns", "created_by", "drill", "artifact_ids", "custody_hosts", "custody_paths")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FLOPS_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_EQUIVALENCE_FIELD_NUMBER: _ClassVar[int]
    COVERED_FIELD_NUMBER: _ClassVar[int]
    EXEMPTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRANSIT_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    CUSTODY_HOSTS_FIELD_NUMBER: _ClassVar[int]
    CUSTODY_PATHS_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    training_flops: float
    benchmark_equivalence: str
    covered: bool
    exemption: LimitedDutyExemption
    state: ModelState
    transit_key: str
    created_at_unix_ns: int
    created_by: str
    drill: bool
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    custody_hosts: _containers.RepeatedScalarFieldContainer[str]
    custody_paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., training_flops: _Optional[float] = ..., benchmark_equivalence: _Optional[str] = ..., covered: _Optional[bool] = ..., exemption: _Optional[_Union[LimitedDutyExemption, _Mapping]] = ..., state: _Optional[_Union[ModelState, str]] = ..., transit_key: _Optional[str] = ..., created_at_unix_ns: _Optional[int] = ..., created_by: _Optional[str] = ..., drill: _Optional[bool] = ..., artifact_ids: _Optional[_Iterable[str]] = ..., custody_hosts: _Optional[_Iterable[str]] = ..., custody_paths: _Optional[_Iterable[str]] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("path", "size", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ParentRef(_message.Message):
    __slots__ = ("artifact_id", "relation")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    relation: Relation
    def __init__(self, artifact_id: _Optional[str] = ..., relation: _Optional[_Union[Relation, str]] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("id", "model", "manifest", "files", "total_size", "created_at_unix_ns", "created_by", "parents", "stored", "objects", "blob_store")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BLOB_STORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    manifest: bytes
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    total_size: int
    created_at_unix_ns: int
    created_by: str
    parents: _containers.RepeatedCompositeFieldContainer[ParentRef]
    stored: bool
    objects: _containers.RepeatedCompositeFieldContainer[StoredObject]
    blob_store: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., manifest: _Optional[bytes] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., total_size: _Optional[int] = ..., created_at_unix_ns: _Optional[int] = ..., created_by: _Optional[str] = ..., parents: _Optional[_Iterable[_Union[ParentRef, _Mapping]]] = ..., stored: _Optional[bool] = ..., objects: _Optional[_Iterable[_Union[StoredObject, _Mapping]]] = ..., blob_store: _Optional[str] = ...) -> None: ...

class StoredObject(_message.Message):
    __slots__ = ("path", "key", "size", "plaintext_size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    key: str
    size: int
    plaintext_size: int
    def __init__(self, path: _Optional[str] = ..., key: _Optional[str] = ..., size: _Optional[int] = ..., plaintext_size: _Optional[int] = ...) -> None: ...

class Copy(_message.Message):
    __slots__ = ("id", "artifact_id", "model", "location_kind", "location", "host", "form", "authorized", "state", "first_seen_unix_ns", "last_seen_unix_ns", "evidence", "files_matched", "files_total")
    ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOCATION_KIND_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    FORM_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    FILES_MATCHED_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    artifact_id: str
    model: str
    location_kind: LocationKind
    location: str
    host: str
    form: CopyForm
    authorized: bool
    state: str
    first_seen_unix_ns: int
    last_seen_unix_ns: int
    evidence: str
    files_matched: int
    files_total: int
    def __init__(self, id: _Optional[str] = ..., artifact_id: _Optional[str] = ..., model: _Optional[str] = ..., location_kind: _Optional[_Union[LocationKind, str]] = ..., location: _Optional[str] = ..., host: _Optional[str] = ..., form: _Optional[_Union[CopyForm, str]] = ..., authorized: _Optional[bool] = ..., state: _Optional[str] = ..., first_seen_unix_ns: _Optional[int] = ..., last_seen_unix_ns: _Optional[int] = ..., evidence: _Optional[str] = ..., files_matched: _Optional[int] = ..., files_total: _Optional[int] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("name", "owner", "training_flops", "benchmark_equivalence", "exemption", "drill")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FLOPS_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_EQUIVALENCE_FIELD_NUMBER: _ClassVar[int]
    EXEMPTION_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    training_flops: float
    benchmark_equivalence: str
    exemption: LimitedDutyExemption
    drill: bool
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ..., training_flops: _Optional[float] = ..., benchmark_equivalence: _Optional[str] = ..., exemption: _Optional[_Union[LimitedDutyExemption, _Mapping]] = ..., drill: _Optional[bool] = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class RegisterArtifactRequest(_message.Message):
    __slots__ = ("model", "manifest", "parents", "source_host", "source_path")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    model: str
    manifest: bytes
    parents: _containers.RepeatedCompositeFieldContainer[ParentRef]
    source_host: str
    source_path: str
    def __init__(self, model: _Optional[str] = ..., manifest: _Optional[bytes] = ..., parents: _Optional[_Iterable[_Union[ParentRef, _Mapping]]] = ..., source_host: _Optional[str] = ..., source_path: _Optional[str] = ...) -> None: ...

class RegisterArtifactResponse(_message.Message):
    __slots__ = ("artifact", "created")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    created: bool
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetArtifactRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetArtifactResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts",)
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    def __init__(self, artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ...) -> None: ...

class RecordDerivationRequest(_message.Message):
    __slots__ = ("child", "parent", "relation")
    CHILD_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    child: str
    parent: str
    relation: Relation
    def __init__(self, child: _Optional[str] = ..., parent: _Optional[str] = ..., relation: _Optional[_Union[Relation, str]] = ...) -> None: ...

class RecordDerivationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLineageRequest(_message.Message):
    __slots__ = ("model", "artifact_id", "direction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    artifact_id: str
    direction: LineageDirection
    def __init__(self, model: _Optional[str] = ..., artifact_id: _Optional[str] = ..., direction: _Optional[_Union[LineageDirection, str]] = ...) -> None: ...

class LineageNode(_message.Message):
    __slots__ = ("artifact_id", "model", "subject")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    model: str
    subject: bool
    def __init__(self, artifact_id: _Optional[str] = ..., model: _Optional[str] = ..., subject: _Optional[bool] = ...) -> None: ...

class LineageEdge(_message.Message):
    __slots__ = ("parent", "child", "relation")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CHILD_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    parent: str
    child: str
    relation: Relation
    def __init__(self, parent: _Optional[str] = ..., child: _Optional[str] = ..., relation: _Optional[_Union[Relation, str]] = ...) -> None: ...

class GetLineageResponse(_message.Message):
    __slots__ = ("nodes", "edges", "models")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[LineageNode]
    edges: _containers.RepeatedCompositeFieldContainer[LineageEdge]
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, nodes: _Optional[_Iterable[_Union[LineageNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[LineageEdge, _Mapping]]] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class ListCopiesRequest(_message.Message):
    __slots__ = ("model", "exclude_derivatives")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_DERIVATIVES_FIELD_NUMBER: _ClassVar[int]
    model: str
    exclude_derivatives: bool
    def __init__(self, model: _Optional[str] = ..., exclude_derivatives: _Optional[bool] = ...) -> None: ...

class ListCopiesResponse(_message.Message):
    __slots__ = ("copies", "models", "artifact_ids")
    COPIES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    copies: _containers.RepeatedCompositeFieldContainer[Copy]
    models: _containers.RepeatedScalarFieldContainer[str]
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, copies: _Optional[_Iterable[_Union[Copy, _Mapping]]] = ..., models: _Optional[_Iterable[str]] = ..., artifact_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RegisterStoredArtifactRequest(_message.Message):
    __slots__ = ("artifact_id", "objects")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    objects: _containers.RepeatedCompositeFieldContainer[StoredObject]
    def __init__(self, artifact_id: _Optional[str] = ..., objects: _Optional[_Iterable[_Union[StoredObject, _Mapping]]] = ...) -> None: ...

class RegisterStoredArtifactResponse(_message.Message):
    __slots__ = ("artifact", "created")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    created: bool
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class RecordCopyRequest(_message.Message):
    __slots__ = ("artifact_id", "host", "path", "form")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORM_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    host: str
    path: str
    form: CopyForm
    def __init__(self, artifact_id: _Optional[str] = ..., host: _Optional[str] = ..., path: _Optional[str] = ..., form: _Optional[_Union[CopyForm, str]] = ...) -> None: ...

class RecordCopyResponse(_message.Message):
    __slots__ = ("copy",)
    COPY_FIELD_NUMBER: _ClassVar[int]
    copy: Copy
    def __init__(self, copy: _Optional[_Union[Copy, _Mapping]] = ...) -> None: ...

class SetCustodyPolicyRequest(_message.Message):
    __slots__ = ("model", "hosts", "paths")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    model: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class SetCustodyPolicyResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...
