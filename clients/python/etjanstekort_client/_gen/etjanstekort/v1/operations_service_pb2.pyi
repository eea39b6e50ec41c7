from etjanstekort_client._gen.etjanstekort.v1 import types_pb2 as _types_pb2
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
RESOLUTION_UNSPECIFIED: Resolution
RESOLUTION_COMPLETED: Resolution
RESOLUTION_CANCELLED: Resolution

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
