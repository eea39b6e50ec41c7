import datetime

from etjanstekort_client._gen.etjanstekort.v1 import types_pb2 as _types_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Resolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOLUTION_UNSPECIFIED: _ClassVar[Resolution]
    RESOLUTION_COMPLETED: _ClassVar[Resolution]
    RESOLUTION_CANCELLED: _ClassVar[Resolution]

class StepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATUS_UNSPECIFIED: _ClassVar[StepStatus]
    STEP_STATUS_PENDING: _ClassVar[StepStatus]
    STEP_STATUS_DONE: _ClassVar[StepStatus]
    STEP_STATUS_FAILED: _ClassVar[StepStatus]
    STEP_STATUS_CANCELLED: _ClassVar[StepStatus]

class ErrorClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CLASS_UNSPECIFIED: _ClassVar[ErrorClass]
    ERROR_CLASS_RETRYABLE: _ClassVar[ErrorClass]
    ERROR_CLASS_TERMINAL: _ClassVar[ErrorClass]

class AuditChainProblem(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_CHAIN_PROBLEM_UNSPECIFIED: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_HASH_MISMATCH: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_SEQUENCE_GAP: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_UNKNOWN_KEY: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_LEGACY_AFTER_KEYED: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_HEAD_MISMATCH: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_UNANCHORED_LEGACY: _ClassVar[AuditChainProblem]

class ExportPurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_PURPOSE_UNSPECIFIED: _ClassVar[ExportPurpose]
    EXPORT_PURPOSE_PSEUDONYMIZED: _ClassVar[ExportPurpose]
    EXPORT_PURPOSE_RECORD_KEEPER: _ClassVar[ExportPurpose]
RESOLUTION_UNSPECIFIED: Resolution
RESOLUTION_COMPLETED: Resolution
RESOLUTION_CANCELLED: Resolution
STEP_STATUS_UNSPECIFIED: StepStatus
STEP_STATUS_PENDING: StepStatus
STEP_STATUS_DONE: StepStatus
STEP_STATUS_FAILED: StepStatus
STEP_STATUS_CANCELLED: StepStatus
ERROR_CLASS_UNSPECIFIED: ErrorClass
ERROR_CLASS_RETRYABLE: ErrorClass
ERROR_CLASS_TERMINAL: ErrorClass
AUDIT_CHAIN_PROBLEM_UNSPECIFIED: AuditChainProblem
AUDIT_CHAIN_PROBLEM_HASH_MISMATCH: AuditChainProblem
AUDIT_CHAIN_PROBLEM_SEQUENCE_GAP: AuditChainProblem
AUDIT_CHAIN_PROBLEM_UNKNOWN_KEY: AuditChainProblem
AUDIT_CHAIN_PROBLEM_LEGACY_AFTER_KEYED: AuditChainProblem
AUDIT_CHAIN_PROBLEM_HEAD_MISMATCH: AuditChainProblem
AUDIT_CHAIN_PROBLEM_UNANCHORED_LEGACY: AuditChainProblem
EXPORT_PURPOSE_UNSPECIFIED: ExportPurpose
EXPORT_PURPOSE_PSEUDONYMIZED: ExportPurpose
EXPORT_PURPOSE_RECORD_KEEPER: ExportPurpose

class ListAttentionCasesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAttentionCasesResponse(_message.Message):
    __slots__ = ("deregistrations", "next_page_token")
    DEREGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deregistrations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Deregistration]
    next_page_token: str
    def __init__(self, deregistrations: _Optional[_Iterable[_Union[_types_pb2.Deregistration, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RetryDeregistrationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RetryDeregistrationResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...

class ResolveDeregistrationRequest(_message.Message):
    __slots__ = ("id", "resolution", "justification")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    resolution: Resolution
    justification: str
    def __init__(self, id: _Optional[str] = ..., resolution: _Optional[_Union[Resolution, str]] = ..., justification: _Optional[str] = ...) -> None: ...

class ResolveDeregistrationResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...

class AuditChainHead(_message.Message):
    __slots__ = ("sequence", "hash", "key_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    hash: str
    key_id: str
    def __init__(self, sequence: _Optional[int] = ..., hash: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class GetCaseRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetCaseResponse(_message.Message):
    __slots__ = ("deregistration", "chain_head", "card_holder_pseudonym", "needs_attention")
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HEAD_FIELD_NUMBER: _ClassVar[int]
    CARD_HOLDER_PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    NEEDS_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    chain_head: AuditChainHead
    card_holder_pseudonym: str
    needs_attention: bool
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ..., chain_head: _Optional[_Union[AuditChainHead, _Mapping]] = ..., card_holder_pseudonym: _Optional[str] = ..., needs_attention: _Optional[bool] = ...) -> None: ...

class ListCasesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states", "care_provider_hsa_id", "care_unit_hsa_id", "min_age", "max_age", "needs_attention")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    CARE_PROVIDER_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    CARE_UNIT_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_AGE_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    NEEDS_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[_types_pb2.State]
    care_provider_hsa_id: str
    care_unit_hsa_id: str
    min_age: _duration_pb2.Duration
    max_age: _duration_pb2.Duration
    needs_attention: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_types_pb2.State, str]]] = ..., care_provider_hsa_id: _Optional[str] = ..., care_unit_hsa_id: _Optional[str] = ..., min_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., needs_attention: _Optional[bool] = ...) -> None: ...

class ListCasesResponse(_message.Message):
    __slots__ = ("deregistrations", "next_page_token")
    DEREGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deregistrations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Deregistration]
    next_page_token: str
    def __init__(self, deregistrations: _Optional[_Iterable[_Union[_types_pb2.Deregistration, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCaseTimelineRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class OutboxStep(_message.Message):
    __slots__ = ("step", "key", "status", "attempts", "last_error_class", "last_error", "next_due_time", "leased", "create_time", "update_time")
    STEP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_CLASS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_TIME_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    step: str
    key: str
    status: StepStatus
    attempts: int
    last_error_class: ErrorClass
    last_error: str
    next_due_time: _timestamp_pb2.Timestamp
    leased: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, step: _Optional[str] = ..., key: _Optional[str] = ..., status: _Optional[_Union[StepStatus, str]] = ..., attempts: _Optional[int] = ..., last_error_class: _Optional[_Union[ErrorClass, str]] = ..., last_error: _Optional[str] = ..., next_due_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., leased: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetCaseTimelineResponse(_message.Message):
    __slots__ = ("events", "steps", "chain_head")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HEAD_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_types_pb2.DeregistrationEvent]
    steps: _containers.RepeatedCompositeFieldContainer[OutboxStep]
    chain_head: AuditChainHead
    def __init__(self, events: _Optional[_Iterable[_Union[_types_pb2.DeregistrationEvent, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[OutboxStep, _Mapping]]] = ..., chain_head: _Optional[_Union[AuditChainHead, _Mapping]] = ...) -> None: ...

class CancelCaseRequest(_message.Message):
    __slots__ = ("id", "justification")
    ID_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    justification: str
    def __init__(self, id: _Optional[str] = ..., justification: _Optional[str] = ...) -> None: ...

class CancelCaseResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...

class VerifyAuditChainRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class BrokenAuditChain(_message.Message):
    __slots__ = ("deregistration_id", "sequence", "problem", "detail")
    DEREGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    deregistration_id: str
    sequence: int
    problem: AuditChainProblem
    detail: str
    def __init__(self, deregistration_id: _Optional[str] = ..., sequence: _Optional[int] = ..., problem: _Optional[_Union[AuditChainProblem, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class VerifyAuditChainResponse(_message.Message):
    __slots__ = ("cases_checked", "cases_total", "cases_broken", "broken", "done", "events_checked", "legacy_events")
    CASES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CASES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CASES_BROKEN_FIELD_NUMBER: _ClassVar[int]
    BROKEN_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    LEGACY_EVENTS_FIELD_NUMBER: _ClassVar[int]
    cases_checked: int
    cases_total: int
    cases_broken: int
    broken: BrokenAuditChain
    done: bool
    events_checked: int
    legacy_events: int
    def __init__(self, cases_checked: _Optional[int] = ..., cases_total: _Optional[int] = ..., cases_broken: _Optional[int] = ..., broken: _Optional[_Union[BrokenAuditChain, _Mapping]] = ..., done: _Optional[bool] = ..., events_checked: _Optional[int] = ..., legacy_events: _Optional[int] = ...) -> None: ...

class ExportAuditRecordRequest(_message.Message):
    __slots__ = ("id", "purpose", "justification")
    ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    purpose: ExportPurpose
    justification: str
    def __init__(self, id: _Optional[str] = ..., purpose: _Optional[_Union[ExportPurpose, str]] = ..., justification: _Optional[str] = ...) -> None: ...

class ExportAuditRecordResponse(_message.Message):
    __slots__ = ("record_json", "chain_head")
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    CHAIN_HEAD_FIELD_NUMBER: _ClassVar[int]
    record_json: str
    chain_head: AuditChainHead
    def __init__(self, record_json: _Optional[str] = ..., chain_head: _Optional[_Union[AuditChainHead, _Mapping]] = ...) -> None: ...
