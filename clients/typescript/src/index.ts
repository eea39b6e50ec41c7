// @vgregion/etjanstekort-client: the generated etjanstekort.v1 messages and services
// (Connect for Node), an mTLS transport factory, typed errors and idempotent retries.
export { createClient, Code, ConnectError, type Client, type Transport } from "@connectrpc/connect";
export { create, toJson, fromJson } from "@bufbuild/protobuf";
export { timestampFromDate, timestampDate } from "@bufbuild/protobuf/wkt";

export { createMtlsTransport, type MtlsTransportOptions } from "./transport.js";
export {
  ERROR_DOMAIN,
  ErrorReason,
  GatewayError,
  toGatewayError,
  type FieldViolation,
} from "./errors.js";
export { withRetry, type RetryOptions } from "./retry.js";
export { newRequestId } from "./requestId.js";

export * from "./gen/etjanstekort/v1/types_pb.js";
export * from "./gen/etjanstekort/v1/deregistration_service_pb.js";
export * from "./gen/etjanstekort/v1/health_care_office_service_pb.js";
export * from "./gen/etjanstekort/v1/revocation_service_pb.js";
export * from "./gen/etjanstekort/v1/operations_service_pb.js";
// The error-detail messages, for callers that inspect ConnectError details themselves.
export * as rpc from "./gen/google/rpc/error_details_pb.js";
