import datetime

from etjanstekort_client._gen.etjanstekort.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PendingRevocation(_message.Message):
    __slots__ = ("deregistration_id", "card_number", "card_holder", "care_unit_hsa_id", "request_time")
    DEREGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CARD_HOLDER_FIELD_NUMBER: _ClassVar[int]
    CARE_UNIT_HSA_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    deregistration_id: str
    card_number: str
    card_holder: _types_pb2.CardHolder
    care_unit_hsa_id: str
    request_time: _timestamp_pb2.Timestamp
    def __init__(self, deregistration_id: _Optional[str] = ..., card_number: _Optional[str] = ..., card_holder: _Optional[_Union[_types_pb2.CardHolder, _Mapping]] = ..., care_unit_hsa_id: _Optional[str] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListPendingRevocationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPendingRevocationsResponse(_message.Message):
    __slots__ = ("revocations", "next_page_token")
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[PendingRevocation]
    next_page_token: str
    def __init__(self, revocations: _Optional[_Iterable[_Union[PendingRevocation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ConfirmRevocationRequest(_message.Message):
    __slots__ = ("deregistration_id", "revocation_reference", "revoke_time", "revoked_certificates")
    DEREGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKED_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    deregistration_id: str
    revocation_reference: str
    revoke_time: _timestamp_pb2.Timestamp
    revoked_certificates: _containers.RepeatedCompositeFieldContainer[RevokedCertificate]
    def __init__(self, deregistration_id: _Optional[str] = ..., revocation_reference: _Optional[str] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_certificates: _Optional[_Iterable[_Union[RevokedCertificate, _Mapping]]] = ...) -> None: ...

class RevokedCertificate(_message.Message):
    __slots__ = ("serial_number", "issuer", "certificate_der")
    SERIAL_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    serial_number: str
    issuer: str
    certificate_der: bytes
    def __init__(self, serial_number: _Optional[str] = ..., issuer: _Optional[str] = ..., certificate_der: _Optional[bytes] = ...) -> None: ...

class ConfirmRevocationResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...

class RejectRevocationRequest(_message.Message):
    __slots__ = ("deregistration_id", "reason")
    DEREGISTRATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    deregistration_id: str
    reason: str
    def __init__(self, deregistration_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RejectRevocationResponse(_message.Message):
    __slots__ = ("deregistration",)
    DEREGISTRATION_FIELD_NUMBER: _ClassVar[int]
    deregistration: _types_pb2.Deregistration
    def __init__(self, deregistration: _Optional[_Union[_types_pb2.Deregistration, _Mapping]] = ...) -> None: ...
