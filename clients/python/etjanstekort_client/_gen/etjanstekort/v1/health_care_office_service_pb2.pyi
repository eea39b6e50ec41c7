import datetime

from etjanstekort_client._gen.etjanstekort.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KivRemovalTask(_message.Message):
    __slots__ = ("deregistration_id", "care_unit_hsa_id", "care_provider_hsa_id", "card_holder", "revocation_reference", "revoke_time")
    DEREGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CARE_UNIT_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    CARE_PROVIDER_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_HOLDER_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    deregistration_id: str
    care_unit_hsa_id: str
    care_provider_hsa_id: str
    card_holder: _types_pb2.CardHolder
    revocation_reference: str
    revoke_time: _timestamp_pb2.Timestamp
    def __init__(self, deregistration_id: _Optional[str] = ..., care_unit_hsa_id: _Optional[str] = ..., care_provider_hsa_id: _Optional[str] = ..., card_holder: _Optional[_Union[_types_pb2.CardHolder, _Mapping]] = ..., revocation_reference: _Optional[str] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListKivRemovalTasksRequest(_message.Message):
    __slots__ = ("care_unit_hsa_id", "page_size", "page_token")
    CARE_UNIT_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    care_unit_hsa_id: str
    page_size: int
    page_token: str
    def __init__(self, care_unit_hsa_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKivRemovalTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[KivRemovalTask]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[KivRemovalTask, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CompleteKivRemovalTaskRequest(_message.Message):
    __slots__ = ("deregistration_id", "comment")
    DEREGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    deregistration_id: str
    comment: str
    def __init__(self, deregistration_id: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class CompleteKivRemovalTaskResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...
