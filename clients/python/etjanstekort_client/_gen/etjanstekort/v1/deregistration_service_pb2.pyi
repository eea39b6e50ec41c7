from etjanstekort_client._gen.etjanstekort.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateDeregistrationRequest(_message.Message):
    __slots__ = ("request_id", "deregistration")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deregistration: _types_pb2.Deregistration
    def __init__(self, request_id: _Optional[str] = ..., deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...

class CreateDeregistrationResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...

class GetDeregistrationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetDeregistrationResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...

class ListDeregistrationsRequest(_message.Message):
    __slots__ = ("care_unit_hsa_id", "state", "page_size", "page_token")
    CARE_UNIT_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    care_unit_hsa_id: str
    state: _types_pb2.State
    page_size: int
    page_token: str
    def __init__(self, care_unit_hsa_id: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.State, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeregistrationsResponse(_message.Message):
    __slots__ = ("deregistrations", "next_page_token")
    DEREGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deregistrations: _containers.RepeatedCompositeFieldContainer[_types_pb2.Deregistration]
    next_page_token: str
    def __init__(self, deregistrations: _Optional[_Iterable[_Union[_types_pb2.Deregistration, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchDeregistrationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchDeregistrationResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _types_pb2.DeregistrationEvent
    def __init__(self, event: _Optional[_Union[_types_pb2.DeregistrationEvent, _Mapping]] = ...) -> None: ...

class CancelDeregistrationRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelDeregistrationResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...
