// The client against a real gateway over mutual TLS (the binary in dev mode).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import type { Interceptor } from "@connectrpc/connect";
import {
  Code,
  ConnectError,
  CreateDeregistrationRequestSchema,
  DeregistrationService,
  ERROR_DOMAIN,
  ErrorReason,
  GatewayError,
  KivRemovalRoute,
  Reason,
  State,
  create,
  createClient,
  createMtlsTransport,
  newRequestId,
  timestampFromDate,
  toGatewayError,
  withRetry,
  type CreateDeregistrationRequest,
} from "../src/index.js";
import { startGateway, type Gateway } from "./gateway.js";

// Strict reason checks need a gateway that sends ErrorInfo (CI sets this).
const expectErrorInfo = process.env.ETK_EXPECT_ERROR_INFO === "1";
const UNIT_A = "SE1655999991-S000000000011";
const UNIT_B = "SE1655999991-S000000000021";

let gateway: Gateway;
before(async () => {
  gateway = await startGateway();
});
after(async () => {
  await gateway?.stop();
});

function clientFor(identity: string, interceptors: Interceptor[] = []) {
  const transport = createMtlsTransport({ baseUrl: gateway.baseUrl, ...gateway.pems(identity), interceptors });
  return createClient(DeregistrationService, transport);
}

let cardCounter = 0;
function newRequest(careUnitHsaId = UNIT_A): CreateDeregistrationRequest {
  // A distinct card per case: the gateway allows one active case per card.
  const cardNumber = `97522700${String(Date.now() % 1e6).padStart(6, "0")}${String(++cardCounter).padStart(2, "0")}`;
  return create(CreateDeregistrationRequestSchema, {
    requestId: newRequestId(),
    deregistration: {
      careUnitHsaId,
      cardHolder: { personalIdentityNumber: "19121212-1212", fullName: "Tolvan Tolvansson" },
      cardNumber,
      reason: Reason.EMPLOYMENT_ENDED,
      cardReceivedTime: timestampFromDate(new Date(Date.now() - 60_000)),
      cardCutAcrossChip: true,
      reportedBy: {
        hsaId: "SE1655999991-P000000000099",
        fullName: "Vera Verksamhetschef",
        email: "vera@example.se",
      },
      kivRemovalRoute: KivRemovalRoute.CARE_PROVIDER,
    },
  });
}

async function failure(call: Promise<unknown>): Promise<GatewayError> {
  try {
    await call;
  } catch (thrown) {
    return toGatewayError(thrown);
  }
  assert.fail("the call succeeded but should have failed");
}

function assertReason(error: GatewayError, reason: string) {
  if (expectErrorInfo) {
    assert.equal(error.reason, reason);
    assert.equal(error.domain, ERROR_DOMAIN);
  } else if (error.reason !== undefined) {
    // A gateway that already sends ErrorInfo must send the right one.
    assert.equal(error.reason, reason);
  }
}

test("create, get, list and watch a case to its end", async () => {
  const client = clientFor("provider-a");
  const request = newRequest();
  const created = (await client.createDeregistration(request)).deregistration!;
  assert.ok(created.id);
  assert.equal(created.state, State.ACCEPTED);
  assert.equal(created.careProviderHsaId, "SE1655999991-E000000000001");
  // Responses mask the personnummer for this role.
  assert.equal(created.cardHolder!.personalIdentityNumber, "19121212-****");

  const fetched = (await client.getDeregistration({ id: created.id })).deregistration!;
  assert.equal(fetched.id, created.id);
  assert.equal(fetched.cardNumber, request.deregistration!.cardNumber);

  const states: State[] = [];
  let sequence = 0n;
  for await (const { event } of client.watchDeregistration({ id: created.id }, { timeoutMs: 60_000 })) {
    assert.equal(event!.deregistrationId, created.id);
    assert.equal(event!.sequence, sequence + 1n, "events arrive in order without gaps");
    sequence = event!.sequence;
    states.push(event!.state);
  }
  assert.equal(states[0], State.ACCEPTED);
  assert.equal(states.at(-1), State.COMPLETED, "the stream ends at the terminal state");
  assert.ok(states.includes(State.REVOKED), "revocation precedes completion");

  const listed = await client.listDeregistrations({ state: State.COMPLETED, pageSize: 100 });
  assert.ok(listed.deregistrations.some((d) => d.id === created.id));
});

test("a validation error carries field violations", async () => {
  const request = newRequest();
  request.deregistration!.cardCutAcrossChip = false;
  request.deregistration!.cardNumber = "12";
  const error = await failure(clientFor("provider-a").createDeregistration(request));
  assert.equal(error.code, Code.InvalidArgument);
  const fields = error.fieldViolations.map((v) => v.field).sort();
  assert.deepEqual(fields, ["deregistration.card_cut_across_chip", "deregistration.card_number"]);
  assert.ok(error.fieldViolations.every((v) => v.description.length > 0 && v.reason.length > 0));
  assertReason(error, ErrorReason.VALIDATION_FAILED);
});

test("a retry with the same request_id returns the same case", async () => {
  // The first response is lost after the gateway created the case; withRetry re-sends.
  let attempts = 0;
  const loseFirstResponse: Interceptor = (next) => async (req) => {
    const response = await next(req);
    if (++attempts === 1) throw new ConnectError("connection reset", Code.Unavailable);
    return response;
  };
  const client = clientFor("provider-a", [loseFirstResponse]);
  const request = newRequest();
  const { deregistration } = await withRetry(() => client.createDeregistration(request), { baseDelayMs: 10 });
  assert.equal(attempts, 2);

  const again = (await client.createDeregistration(request)).deregistration!;
  assert.equal(again.id, deregistration!.id);
  const all = await clientFor("provider-a").listDeregistrations({ pageSize: 100 });
  const sameCard = all.deregistrations.filter((d) => d.cardNumber === request.deregistration!.cardNumber);
  assert.equal(sameCard.length, 1, "one case, not two");
});

test("the same request_id with other content is ALREADY_EXISTS", async () => {
  const client = clientFor("provider-a");
  const request = newRequest();
  await client.createDeregistration(request);
  const other = newRequest();
  other.requestId = request.requestId;
  const error = await failure(client.createDeregistration(other));
  assert.equal(error.code, Code.AlreadyExists);
  assertReason(error, ErrorReason.DUPLICATE_REQUEST_ID);
  assert.equal(error.retryable, false);
});

test("another care provider's case is NOT_FOUND", async () => {
  const created = (await clientFor("provider-a").createDeregistration(newRequest())).deregistration!;
  const error = await failure(clientFor("provider-b").getDeregistration({ id: created.id }));
  assert.equal(error.code, Code.NotFound);
  assertReason(error, ErrorReason.CASE_NOT_FOUND);
});

test("a wrong role or an ungranted care unit is PERMISSION_DENIED", async () => {
  const wrongRole = await failure(clientFor("office").listDeregistrations({}));
  assert.equal(wrongRole.code, Code.PermissionDenied);
  assertReason(wrongRole, ErrorReason.ROLE_REQUIRED);

  const otherUnit = await failure(clientFor("provider-a").createDeregistration(newRequest(UNIT_B)));
  assert.equal(otherUnit.code, Code.PermissionDenied);
  assertReason(otherUnit, ErrorReason.UNIT_NOT_GRANTED);
});

test("a client without the gateway's CA is refused before any call", async () => {
  const { certPem, keyPem } = gateway.pems("provider-a");
  const transport = createMtlsTransport({ baseUrl: gateway.baseUrl, caPem: certPem, certPem, keyPem });
  const error = await failure(createClient(DeregistrationService, transport).listDeregistrations({}));
  // Connect reports a TLS handshake failure as INTERNAL, with the reason in the message.
  assert.equal(error.code, Code.Internal);
  assert.match(error.message, /certificate/i);
  assert.equal(error.reason, undefined);
});
