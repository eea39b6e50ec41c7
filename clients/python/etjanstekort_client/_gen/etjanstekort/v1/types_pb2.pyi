import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATE_UNSPECIFIED: _ClassVar[State]
    STATE_ACCEPTED: _ClassVar[State]
    STATE_REVOCATION_REQUESTED: _ClassVar[State]
    STATE_REVOKED: _ClassVar[State]
    STATE_KIV_REMOVAL_PENDING: _ClassVar[State]
    STATE_COMPLETED: _ClassVar[State]
    STATE_REJECTED: _ClassVar[State]
    STATE_CANCELLED: _ClassVar[State]
    STATE_NEEDS_ATTENTION: _ClassVar[State]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_EMPLOYMENT_ENDED: _ClassVar[Reason]
    REASON_AGREEMENT_ENDED: _ClassVar[Reason]

class KivRemovalRoute(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIV_REMOVAL_ROUTE_UNSPECIFIED: _ClassVar[KivRemovalRoute]
    KIV_REMOVAL_ROUTE_CARE_PROVIDER: _ClassVar[KivRemovalRoute]
    KIV_REMOVAL_ROUTE_HEALTH_CARE_OFFICE: _ClassVar[KivRemovalRoute]

class RevocationCheck(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVOCATION_CHECK_UNSPECIFIED: _ClassVar[RevocationCheck]
    REVOCATION_CHECK_OFF: _ClassVar[RevocationCheck]
    REVOCATION_CHECK_PENDING: _ClassVar[RevocationCheck]
    REVOCATION_CHECK_VERIFIED: _ClassVar[RevocationCheck]
STATE_UNSPECIFIED: State
STATE_ACCEPTED: State
STATE_REVOCATION_REQUESTED: State
STATE_REVOKED: State
STATE_KIV_REMOVAL_PENDING: State
STATE_COMPLETED: State
STATE_REJECTED: State
STATE_CANCELLED: State
STATE_NEEDS_ATTENTION: State
REASON_UNSPECIFIED: Reason
REASON_EMPLOYMENT_ENDED: Reason
REASON_AGREEMENT_ENDED: Reason
KIV_REMOVAL_ROUTE_UNSPECIFIED: KivRemovalRoute
KIV_REMOVAL_ROUTE_CARE_PROVIDER: KivRemovalRoute
KIV_REMOVAL_ROUTE_HEALTH_CARE_OFFICE: KivRemovalRoute
REVOCATION_CHECK_UNSPECIFIED: RevocationCheck
REVOCATION_CHECK_OFF: RevocationCheck
REVOCATION_CHECK_PENDING: RevocationCheck
REVOCATION_CHECK_VERIFIED: RevocationCheck

class CardHolder(_message.Message):
    __slots__ = ("personal_identity_number", "full_name", "email")
    PERSONAL_IDENTITY_NUMBER_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    personal_identity_number: str
    full_name: str
    email: str
    def __init__(self, personal_identity_number: _Optional[str] = ..., full_name: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class Reporter(_message.Message):
    __slots__ = ("hsa_id", "full_name", "email")
    HSA_ID_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    hsa_id: str
    full_name: str
    email: str
    def __init__(self, hsa_id: _Optional[str] = ..., full_name: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class Deregistration(_message.Message):
    __slots__ = ("id", "care_unit_hsa_id", "care_provider_hsa_id", "card_holder", "card_number", "reason", "card_received_time", "card_cut_across_chip", "reported_by", "kiv_removal_route", "state", "create_time", "update_time", "revocation_reference", "state_reason", "revocation_check")
    ID_FIELD_NUMBER: _ClassVar[int]
    CARE_UNIT_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    CARE_PROVIDER_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_HOLDER_FIELD_NUMBER: _ClassVar[int]
    CARD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CARD_RECEIVED_TIME_FIELD_NUMBER: _ClassVar[int]
    CARD_CUT_ACROSS_CHIP_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BY_FIELD_NUMBER: _ClassVar[int]
    KIV_REMOVAL_ROUTE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_CHECK_FIELD_NUMBER: _ClassVar[int]
    id: str
    care_unit_hsa_id: str
    care_provider_hsa_id: str
    card_holder: CardHolder
    card_number: str
    reason: Reason
    card_received_time: _timestamp_pb2.Timestamp
    card_cut_across_chip: bool
    reported_by: Reporter
    kiv_removal_route: KivRemovalRoute
    state: State
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    revocation_reference: str
    state_reason: str
    revocation_check: RevocationCheck
    def __init__(self, id: _Optional[str] = ..., care_unit_hsa_id: _Optional[str] = ..., care_provider_hsa_id: _Optional[str] = ..., card_holder: _Optional[_Union[CardHolder, _Mapping]] = ..., card_number: _Optional[str] = ..., reason: _Optional[_Union[Reason, str]] = ..., card_received_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., card_cut_across_chip: _Optional[bool] = ..., reported_by: _Optional[_Union[Reporter, _Mapping]] = ..., kiv_removal_route: _Optional[_Union[KivRemovalRoute, str]] = ..., state: _Optional[_Union[State, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revocation_reference: _Optional[str] = ..., state_reason: _Optional[str] = ..., revocation_check: _Optional[_Union[RevocationCheck, str]] = ...) -> None: ...

class DeregistrationEvent(_message.Message):
    __slots__ = ("sequence", "deregistration_id", "kind", "state", "actor", "event_time", "trace_id", "detail", "hash", "key_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DEREGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    deregistration_id: str
    kind: str
    state: State
    actor: str
    event_time: _timestamp_pb2.Timestamp
    trace_id: str
    detail: str
    hash: str
    key_id: str
    def __init__(self, sequence: _Optional[int] = ..., deregistration_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ..., actor: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ..., detail: _Optional[str] = ..., hash: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...
