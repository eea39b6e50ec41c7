import { randomUUID } from "node:crypto";

/**
 * A fresh idempotency key: a random UUID (122 random bits) with its hex digits 0-9 written as
 * g-p. The gateway refuses a `requestId` that holds a valid personnummer, which random digits
 * form now and then; an id without digits can never be refused.
 */
export function newRequestId(): string {
  return randomUUID().replace(/[0-9]/g, (d) => "ghijklmnop"[Number(d)]);
}
