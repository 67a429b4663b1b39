from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IncidentAlert(_message.Message):
    __slots__ = ("id", "rule", "category", "severity", "model", "artifact_id", "host", "principal", "detail", "at_unix_ns", "evidence_seqs")
    ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SEQS_FIELD_NUMBER: _ClassVar[int]
    id: str
    rule: str
    category: str
    severity: str
    model: str
    artifact_id: str
    host: str
    principal: str
    detail: str
    at_unix_ns: int
    evidence_seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[str] = ..., rule: _Optional[str] = ..., category: _Optional[str] = ..., severity: _Optional[str] = ..., model: _Optional[str] = ..., artifact_id: _Optional[str] = ..., host: _Optional[str] = ..., principal: _Optional[str] = ..., detail: _Optional[str] = ..., at_unix_ns: _Optional[int] = ..., evidence_seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class IncidentCopy(_message.Message):
    __slots__ = ("id", "artifact_id", "host", "location", "location_kind", "form", "state", "authorized")
    ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    LOCATION_KIND_FIELD_NUMBER: _ClassVar[int]
    FORM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AUTHORIZED_FIELD_NUMBER: _ClassVar[int]
    id: str
    artifact_id: str
    host: str
    location: str
    location_kind: str
    form: str
    state: str
    authorized: bool
    def __init__(self, id: _Optional[str] = ..., artifact_id: _Optional[str] = ..., host: _Optional[str] = ..., location: _Optional[str] = ..., location_kind: _Optional[str] = ..., form: _Optional[str] = ..., state: _Optional[str] = ..., authorized: _Optional[bool] = ...) -> None: ...

class IncidentAction(_message.Message):
    __slots__ = ("order_id", "action", "state", "models", "drill")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DRILL_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    action: str
    state: str
    models: _containers.RepeatedScalarFieldContainer[str]
    drill: bool
    def __init__(self, order_id: _Optional[str] = ..., action: _Optional[str] = ..., state: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., drill: _Optional[bool] = ...) -> None: ...

class IncidentStatusChange(_message.Message):
    __slots__ = ("status", "from_status", "category", "note", "by", "at_unix_ns")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    status: str
    from_status: str
    category: str
    note: str
    by: str
    at_unix_ns: int
    def __init__(self, status: _Optional[str] = ..., from_status: _Optional[str] = ..., category: _Optional[str] = ..., note: _Optional[str] = ..., by: _Optional[str] = ..., at_unix_ns: _Optional[int] = ...) -> None: ...

class Incident(_message.Message):
    __slots__ = ("id", "model", "covered", "limited_duty_exemption", "category", "category_title", "severity", "status", "discovered_at_unix_ns", "report_deadline_unix_ns", "opened_at_unix_ns", "seconds_left", "under_24h", "overdue", "hosts", "artifact_ids", "alerts", "copies", "actions", "history", "alerts_dropped")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COVERED_FIELD_NUMBER: _ClassVar[int]
    LIMITED_DUTY_EXEMPTION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_TITLE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DISCOVERED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    REPORT_DEADLINE_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    UNDER_24H_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_IDS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ALERTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    covered: bool
    limited_duty_exemption: bool
    category: str
    category_title: str
    severity: str
    status: str
    discovered_at_unix_ns: int
    report_deadline_unix_ns: int
    opened_at_unix_ns: int
    seconds_left: int
    under_24h: bool
    overdue: bool
    hosts: _containers.RepeatedScalarFieldContainer[str]
    artifact_ids: _containers.RepeatedScalarFieldContainer[str]
    alerts: _containers.RepeatedCompositeFieldContainer[IncidentAlert]
    copies: _containers.RepeatedCompositeFieldContainer[IncidentCopy]
    actions: _containers.RepeatedCompositeFieldContainer[IncidentAction]
    history: _containers.RepeatedCompositeFieldContainer[IncidentStatusChange]
    alerts_dropped: int
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., covered: _Optional[bool] = ..., limited_duty_exemption: _Optional[bool] = ..., category: _Optional[str] = ..., category_title: _Optional[str] = ..., severity: _Optional[str] = ..., status: _Optional[str] = ..., discovered_at_unix_ns: _Optional[int] = ..., report_deadline_unix_ns: _Optional[int] = ..., opened_at_unix_ns: _Optional[int] = ..., seconds_left: _Optional[int] = ..., under_24h: _Optional[bool] = ..., overdue: _Optional[bool] = ..., hosts: _Optional[_Iterable[str]] = ..., artifact_ids: _Optional[_Iterable[str]] = ..., alerts: _Optional[_Iterable[_Union[IncidentAlert, _Mapping]]] = ..., copies: _Optional[_Iterable[_Union[IncidentCopy, _Mapping]]] = ..., actions: _Optional[_Iterable[_Union[IncidentAction, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[IncidentStatusChange, _Mapping]]] = ..., alerts_dropped: _Optional[int] = ...) -> None: ...

class ListIncidentsRequest(_message.Message):
    __slots__ = ("status", "model", "all")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    status: _containers.RepeatedScalarFieldContainer[str]
    model: str
    all: bool
    def __init__(self, status: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., all: _Optional[bool] = ...) -> None: ...

class ListIncidentsResponse(_message.Message):
    __slots__ = ("incidents", "now_unix_ns")
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    NOW_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    incidents: _containers.RepeatedCompositeFieldContainer[Incident]
    now_unix_ns: int
    def __init__(self, incidents: _Optional[_Iterable[_Union[Incident, _Mapping]]] = ..., now_unix_ns: _Optional[int] = ...) -> None: ...

class GetIncidentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetIncidentResponse(_message.Message):
    __slots__ = ("incident", "now_unix_ns")
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    NOW_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    now_unix_ns: int
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ..., now_unix_ns: _Optional[int] = ...) -> None: ...

class UpdateIncidentRequest(_message.Message):
    __slots__ = ("id", "status", "note", "category")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    note: str
    category: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., note: _Optional[str] = ..., category: _Optional[str] = ...) -> None: ...

class UpdateIncidentResponse(_message.Message):
    __slots__ = ("incident",)
    INCIDENT_FIELD_NUMBER: _ClassVar[int]
    incident: Incident
    def __init__(self, incident: _Optional[_Union[Incident, _Mapping]] = ...) -> None: ...

class ExportIncidentRequest(_message.Message):
    __slots__ = ("id", "format")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: str
    format: str
    def __init__(self, id: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class ExportIncidentResponse(_message.Message):
    __slots__ = ("content", "incident_id")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    content: str
    incident_id: str
    def __init__(self, content: _Optional[str] = ..., incident_id: _Optional[str] = ...) -> None: ...
