// GatewayError and withRetry without a gateway: details go through the real gRPC trailer
// encoding (grpc-status-details-bin) and back, as they arrive from the gateway.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "../src/gen/google/rpc/error_details_pb.js";
import { ERROR_DOMAIN, GatewayError, newRequestId, toGatewayError, withRetry } from "../src/index.js";

function overTheWire(error: ConnectError): ConnectError {
  const received = findTrailerError(setTrailerStatus(new Headers(), error));
  assert.ok(received, "the trailer carries the error");
  return received;
}

test("ErrorInfo, BadRequest and RetryInfo decode into a GatewayError", () => {
  const sent = new ConnectError("invalid request", Code.InvalidArgument, undefined, [
    {
      desc: ErrorInfoSchema,
      value: create(ErrorInfoSchema, {
        reason: "VALIDATION_FAILED",
        domain: ERROR_DOMAIN,
        metadata: { fields: "2" },
      }),
    },
    {
      desc: BadRequestSchema,
      value: create(BadRequestSchema, {
        fieldViolations: [
          { field: "deregistration.card_number", description: "must be digits", reason: "LENGTH" },
          { field: "request_id", description: "is required", reason: "REQUIRED" },
        ],
      }),
    },
    {
      desc: RetryInfoSchema,
      value: create(RetryInfoSchema, { retryDelay: { seconds: 2n, nanos: 500_000_000 } }),
    },
  ]);
  const error = toGatewayError(overTheWire(sent));
  assert.ok(error instanceof GatewayError);
  assert.equal(error.code, Code.InvalidArgument);
  assert.equal(error.codeName, "InvalidArgument");
  assert.equal(error.message, "invalid request");
  assert.equal(error.reason, "VALIDATION_FAILED");
  assert.equal(error.domain, ERROR_DOMAIN);
  assert.deepEqual(error.metadata, { fields: "2" });
  assert.deepEqual(error.fieldViolations, [
    { field: "deregistration.card_number", description: "must be digits", reason: "LENGTH" },
    { field: "request_id", description: "is required", reason: "REQUIRED" },
  ]);
  assert.equal(error.retryDelayMs, 2500);
  assert.equal(error.retryable, true);
});

test("an error without details decodes generically", () => {
  const error = toGatewayError(overTheWire(new ConnectError("not found", Code.NotFound)));
  assert.equal(error.code, Code.NotFound);
  assert.equal(error.reason, undefined);
  assert.equal(error.domain, undefined);
  assert.deepEqual(error.fieldViolations, []);
  assert.equal(error.retryDelayMs, undefined);
  assert.equal(error.retryable, false);
});

test("withRetry retries UNAVAILABLE and returns the later success", async () => {
  let calls = 0;
  const result = await withRetry(
    async () => {
      calls++;
      if (calls < 3) throw new ConnectError("store down", Code.Unavailable);
      return "case-1";
    },
    { baseDelayMs: 1 },
  );
  assert.equal(result, "case-1");
  assert.equal(calls, 3);
});

test("withRetry does not retry an error that is not retryable", async () => {
  let calls = 0;
  await assert.rejects(
    withRetry(async () => {
      calls++;
      throw new ConnectError("exists", Code.AlreadyExists);
    }),
    (error: unknown) => error instanceof GatewayError && error.code === Code.AlreadyExists,
  );
  assert.equal(calls, 1);
});

test("withRetry gives up after the attempts and throws the last error", async () => {
  let calls = 0;
  await assert.rejects(
    withRetry(
      async () => {
        calls++;
        throw new ConnectError(`down ${calls}`, Code.Unavailable);
      },
      { attempts: 3, baseDelayMs: 1 },
    ),
    (error: unknown) => error instanceof GatewayError && error.message === "down 3",
  );
  assert.equal(calls, 3);
});

test("withRetry stops when its signal aborts during the backoff", async () => {
  const controller = new AbortController();
  let calls = 0;
  const pending = withRetry(
    async () => {
      calls++;
      setImmediate(() => controller.abort());
      throw new ConnectError("down", Code.Unavailable);
    },
    { baseDelayMs: 60_000, signal: controller.signal },
  );
  await assert.rejects(pending, (error: unknown) => error instanceof GatewayError && error.code === Code.Unavailable);
  assert.equal(calls, 1);
});

test("createMtlsTransport refuses a plain-text URL", async () => {
  const { createMtlsTransport } = await import("../src/index.js");
  assert.throws(
    () => createMtlsTransport({ baseUrl: "http://127.0.0.1:1", caPem: "", certPem: "", keyPem: "" }),
    /https:/,
  );
});

test("newRequestId makes fresh ids without digits, which the gateway never refuses", () => {
  // The gateway refuses an id holding a valid identity number; one without digits never does.
  const ids = Array.from({ length: 2000 }, () => newRequestId());
  assert.equal(new Set(ids).size, ids.length);
  for (const id of ids) {
    assert.match(id, /^[a-p]{8}-[a-p]{4}-[a-p]{4}-[a-p]{4}-[a-p]{12}$/);
  }
});
