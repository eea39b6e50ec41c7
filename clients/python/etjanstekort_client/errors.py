"""Typed errors: every failed call becomes a `GatewayError` subclass with the gateway's
`google.rpc.Status` details (ErrorInfo, BadRequest, RetryInfo) decoded into attributes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import grpc
from google.rpc import error_details_pb2, status_pb2

# The trailer in which gRPC servers send the full google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# The ErrorInfo domain the gateway uses for its reasons.
DOMAIN = "etjanstekort.vgregion.se"


@dataclass(frozen=True)
class FieldViolation:
    """One rejected field: its path (e.g. `deregistration.card_number`), a stable rule code
    (e.g. `REQUIRED`) and the rule in words."""

    field: str
    reason: str
    description: str


class GatewayError(Exception):
    """A non-OK status from the gateway.

    `reason`/`domain`/`metadata` come from `google.rpc.ErrorInfo` (None/None/{} when the
    server sent none); `field_violations` from `google.rpc.BadRequest`; `retry_delay`
    (seconds) from `google.rpc.RetryInfo`. Branch on `reason`, not on `message`.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        domain: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: list[FieldViolation] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[FieldViolation] = list(field_violations or [])
        self.retry_delay = retry_delay


class InvalidArgument(GatewayError):
    """The request broke a validation rule; see `field_violations`."""


class Unauthenticated(GatewayError):
    """No usable client certificate."""


class PermissionDenied(GatewayError):
    """The certificate's principal lacks the role or the care unit."""


class NotFound(GatewayError):
    """No such case for this caller."""


class AlreadyExists(GatewayError):
    """A request_id reused with other content, or an active case for the card."""


class FailedPrecondition(GatewayError):
    """The case's state does not allow the operation."""


class ResourceExhausted(GatewayError):
    """A limit was reached; retry later."""


class Unavailable(GatewayError):
    """Transient: retry, with the same request_id for creates."""


class DeadlineExceeded(GatewayError):
    """The call's deadline passed; the outcome is unknown (retry creates idempotently)."""


class Unimplemented(GatewayError):
    """The operation is not offered by this gateway."""


class Internal(GatewayError):
    """A fault in the gateway; nothing for the client to fix."""


_BY_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: Internal,
}


def _status_details(trailers: Any) -> status_pb2.Status | None:
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # noqa: BLE001 - a garbled trailer must not hide the status
                return None
            return status
    return None


def from_rpc_error(error: grpc.RpcError) -> GatewayError:
    """Decodes a failed call (a `grpc.RpcError` that is also a `grpc.Call`)."""
    code_fn = getattr(error, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or ""
    trailers_fn = getattr(error, "trailing_metadata", None)
    status = _status_details(trailers_fn() if callable(trailers_fn) else None)

    kwargs: dict[str, Any] = {}
    violations: list[FieldViolation] = []
    if status is not None:
        message = status.message or message
        for any_detail in status.details:
            if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_detail.Unpack(info)
                kwargs.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
            elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                any_detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.reason, v.description) for v in bad.field_violations
                )
            elif any_detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                any_detail.Unpack(retry)
                kwargs["retry_delay"] = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_CODE.get(code, GatewayError)
    return cls(code, message, field_violations=violations, **kwargs)
