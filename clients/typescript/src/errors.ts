// Typed errors: a failed call as a `GatewayError` with the gateway's machine-readable details
// (`google.rpc.ErrorInfo`, `BadRequest`, `RetryInfo`) decoded from the status trailer.
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** The `ErrorInfo.domain` of every error the gateway itself raises. */
export const ERROR_DOMAIN = "etjanstekort.vgregion.se";

/** The gateway's `ErrorInfo.reason` values (see docs/api.md). New ones may be added in v1. */
export const ErrorReason = {
  VALIDATION_FAILED: "VALIDATION_FAILED",
  DUPLICATE_REQUEST_ID: "DUPLICATE_REQUEST_ID",
  CARD_HAS_ACTIVE_CASE: "CARD_HAS_ACTIVE_CASE",
  CASE_NOT_FOUND: "CASE_NOT_FOUND",
  REVOCATION_NOT_CONFIRMED: "REVOCATION_NOT_CONFIRMED",
  ROLE_REQUIRED: "ROLE_REQUIRED",
  UNIT_NOT_GRANTED: "UNIT_NOT_GRANTED",
  UNKNOWN_PRINCIPAL: "UNKNOWN_PRINCIPAL",
  STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
  CONCURRENT_REQUEST: "CONCURRENT_REQUEST",
} as const;
export type ErrorReason = (typeof ErrorReason)[keyof typeof ErrorReason];

/** One invalid request field, from `google.rpc.BadRequest`. */
export interface FieldViolation {
  /** Path of the field, e.g. `deregistration.card_number`. */
  field: string;
  /** Human-readable rule that failed. */
  description: string;
  /** Machine-readable rule code, when the gateway sends one. */
  reason: string;
}

/** A failed gateway call with its decoded details. */
export class GatewayError extends Error {
  override readonly name = "GatewayError";
  /** The gRPC status code. */
  readonly code: Code;
  /** `ErrorInfo.reason`; `undefined` when the status carried no ErrorInfo. */
  readonly reason: string | undefined;
  /** `ErrorInfo.domain`; `undefined` when the status carried no ErrorInfo. */
  readonly domain: string | undefined;
  /** `ErrorInfo.metadata` (empty when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Every field violation of every `BadRequest` detail. */
  readonly fieldViolations: readonly FieldViolation[];
  /** `RetryInfo.retry_delay` in milliseconds; `undefined` when the gateway gave none. */
  readonly retryDelayMs: number | undefined;

  constructor(cause: ConnectError) {
    super(cause.rawMessage, { cause });
    this.code = cause.code;
    const info = cause.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason;
    this.domain = info?.domain;
    this.metadata = { ...(info?.metadata ?? {}) };
    this.fieldViolations = cause.findDetails(BadRequestSchema).flatMap((badRequest) =>
      badRequest.fieldViolations.map((v) => ({
        field: v.field,
        description: v.description,
        reason: v.reason,
      })),
    );
    const delay = cause.findDetails(RetryInfoSchema)[0]?.retryDelay;
    this.retryDelayMs =
      delay === undefined ? undefined : Number(delay.seconds) * 1000 + Math.floor(delay.nanos / 1e6);
  }

  /** The gRPC code's name, e.g. `InvalidArgument`. */
  get codeName(): string {
    return Code[this.code];
  }

  /** Whether retrying the same request (same `request_id`) may succeed. */
  get retryable(): boolean {
    return this.code === Code.Unavailable || this.retryDelayMs !== undefined;
  }
}

/**
 * Converts anything a client call threw into a `GatewayError` (through `ConnectError.from`,
 * so network and abort errors become `Unavailable`/`Canceled` ones without details).
 */
export function toGatewayError(error: unknown): GatewayError {
  return error instanceof GatewayError ? error : new GatewayError(ConnectError.from(error));
}
