"""Python client for the etjanstekort-gateway (`etjanstekort.v1`): an mTLS channel factory,
typed errors decoded from `google.rpc` details, and `DeregistrationClient`.

The generated messages and stubs are re-exported as `types_pb2` and the `*_service_pb2(_grpc)`
modules for the services this layer does not wrap (health-care office, revocation, operations).
"""

from etjanstekort_client._gen.etjanstekort.v1 import (
    deregistration_service_pb2,
    deregistration_service_pb2_grpc,
    health_care_office_service_pb2,
    health_care_office_service_pb2_grpc,
    operations_service_pb2,
    operations_service_pb2_grpc,
    revocation_service_pb2,
    revocation_service_pb2_grpc,
    types_pb2,
)
from etjanstekort_client.channel import connect
from etjanstekort_client.client import TERMINAL_STATES, DeregistrationClient, new_request_id
from etjanstekort_client.errors import (
    DOMAIN,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_rpc_error,
)

__all__ = [
    "DOMAIN",
    "TERMINAL_STATES",
    "AlreadyExists",
    "DeadlineExceeded",
    "DeregistrationClient",
    "FailedPrecondition",
    "FieldViolation",
    "GatewayError",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "connect",
    "deregistration_service_pb2",
    "deregistration_service_pb2_grpc",
    "from_rpc_error",
    "health_care_office_service_pb2",
    "health_care_office_service_pb2_grpc",
    "new_request_id",
    "operations_service_pb2",
    "operations_service_pb2_grpc",
    "revocation_service_pb2",
    "revocation_service_pb2_grpc",
    "types_pb2",
]
