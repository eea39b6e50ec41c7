// Retries with exponential backoff for calls that are safe to repeat: every read, and a
// create that re-sends the SAME request (same request_id), which the gateway deduplicates.
import { toGatewayError, type GatewayError } from "./errors.js";

export interface RetryOptions {
  /** Attempts in total, including the first (default 5). */
  attempts?: number;
  /** Delay before the first retry in ms (default 200); doubles per retry, with jitter. */
  baseDelayMs?: number;
  /** Upper bound of one delay in ms (default 5000). */
  maxDelayMs?: number;
  /** Which errors to retry (default: `error.retryable`, i.e. UNAVAILABLE or a RetryInfo). */
  retryIf?: (error: GatewayError) => boolean;
  /** Stops waiting and retrying when aborted. */
  signal?: AbortSignal;
}

/**
 * Runs `call` until it succeeds, fails with an error that is not retryable, or the attempts
 * are used up; then throws the last error as a `GatewayError`. The gateway's `RetryInfo`
 * delay, when given, replaces the computed backoff.
 *
 * `call` must send the same request every time: build the request (and its `requestId`)
 * once, outside the closure.
 */
export async function withRetry<T>(call: () => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attempts = Math.max(1, options.attempts ?? 5);
  const baseDelayMs = options.baseDelayMs ?? 200;
  const maxDelayMs = options.maxDelayMs ?? 5000;
  const retryIf = options.retryIf ?? ((e: GatewayError) => e.retryable);
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (thrown) {
      const error = toGatewayError(thrown);
      if (attempt >= attempts || !retryIf(error) || options.signal?.aborted) {
        throw error;
      }
      // Full jitter keeps many clients that failed together from retrying together.
      const backoff = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1)) * Math.random();
      await sleep(error.retryDelayMs ?? backoff, options.signal);
      if (options.signal?.aborted) throw error;
    }
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}
