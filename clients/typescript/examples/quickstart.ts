// Quickstart: report a cut card, follow the case to its end, list the caller's cases, and
// handle errors by reason. Run against a dev gateway (`etjanstekort-gateway serve --dev`):
//   ETK_GATEWAY_URL=https://127.0.0.1:50051 ETK_DEV_DATA=dev-data node dist/examples/quickstart.js
// INTEGRATION.md shows this file's regions; a test runs it against a real gateway.
import { readFileSync } from "node:fs";
import { join } from "node:path";

// #region transport
import {
  DeregistrationService,
  ErrorReason,
  KivRemovalRoute,
  Reason,
  State,
  create,
  createClient,
  createMtlsTransport,
  newRequestId,
  CreateDeregistrationRequestSchema,
  timestampFromDate,
  toGatewayError,
  withRetry,
} from "@vgregion/etjanstekort-client";

const dataDir = process.env.ETK_DEV_DATA ?? "dev-data";
const transport = createMtlsTransport({
  baseUrl: process.env.ETK_GATEWAY_URL ?? "https://127.0.0.1:50051",
  caPem: readFileSync(join(dataDir, "certs/ca.pem")),
  certPem: readFileSync(join(dataDir, "certs/provider-a.pem")),
  keyPem: readFileSync(join(dataDir, "certs/provider-a.key")),
});
const client = createClient(DeregistrationService, transport);
// #endregion transport

// #region create
// One request_id per reported card, chosen once and stored with the report: re-sending the
// same request with it returns the original case instead of creating a second one.
const request = create(CreateDeregistrationRequestSchema, {
  requestId: newRequestId(),
  deregistration: {
    careUnitHsaId: "SE1655999991-S000000000011",
    cardHolder: { personalIdentityNumber: "19121212-1212", fullName: "Tolvan Tolvansson" },
    cardNumber: "9752 2700 0012 3456",
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
// withRetry re-sends the identical request on UNAVAILABLE (or when the gateway sends RetryInfo).
const { deregistration } = await withRetry(() => client.createDeregistration(request));
console.log(`created ${deregistration!.id} in ${State[deregistration!.state]}`);
// #endregion create

// #region watch
// Past events first, then live ones; the stream ends when the case reaches a terminal state.
for await (const { event } of client.watchDeregistration({ id: deregistration!.id })) {
  console.log(`event ${event!.sequence}: ${event!.kind} -> ${State[event!.state]}`);
}
const { deregistrations } = await client.listDeregistrations({ state: State.COMPLETED });
console.log(`completed cases: ${deregistrations.length}`);
// #endregion watch

// #region errors
try {
  // The same request_id with other content is refused.
  const otherCard = { ...request.deregistration!, cardNumber: "9752 2700 0012 9999" };
  await client.createDeregistration({ ...request, deregistration: otherCard });
} catch (thrown) {
  const error = toGatewayError(thrown);
  switch (error.reason) {
    case ErrorReason.VALIDATION_FAILED:
      for (const v of error.fieldViolations) console.log(`invalid ${v.field}: ${v.description}`);
      break;
    case ErrorReason.DUPLICATE_REQUEST_ID:
      console.log("this request_id was used for another report: choose a new one");
      break;
    default:
      // Gateways before ErrorInfo was added: branch on the code alone.
      console.log(`failed: ${error.codeName} ${error.reason ?? ""} ${error.message}`);
  }
}
// #endregion errors
