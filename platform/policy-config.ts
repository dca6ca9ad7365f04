/**
 * How calls to one downstream are protected, as configuration: the knobs of the resilient client
 * (resilience.ts), their defaults and their env variables. No runtime loads here: the gateway's
 * configuration, which make token and make load read too, needs only this.
 */

import { type EnvReader, int, num } from "./config.js";

/** How calls to one downstream are protected. Times in ms. */
export interface PolicyConfig {
  /** Per-attempt timeout (the gRPC deadline, capped by the caller's). */
  readonly timeoutMs: number;
  /** Attempts in total, first one included (1 = no retries). */
  readonly retryMaxAttempts: number;
  /** First backoff before jitter. */
  readonly retryInitialDelayMs: number;
  /** Largest backoff. */
  readonly retryMaxDelayMs: number;
  /** Consecutive failures that open the breaker (used when `breakerFailureRatio` is 0). */
  readonly breakerConsecutiveFailures: number;
  /** Failure ratio 0..0.99 over `breakerWindowMs` that opens the breaker; 0 = use consecutive failures. */
  readonly breakerFailureRatio: number;
  /** Sliding window for the ratio breaker. */
  readonly breakerWindowMs: number;
  /** Time open before one half-open probe is let through. */
  readonly breakerHalfOpenAfterMs: number;
  /** Calls in flight at once. */
  readonly bulkheadLimit: number;
  /** Calls that may wait for a slot; beyond that, rejected at once. */
  readonly bulkheadQueue: number;
}

/** Defaults, sized for a local demo on a small machine. */
export const DEFAULT_POLICY: PolicyConfig = Object.freeze({
  timeoutMs: 2_000,
  retryMaxAttempts: 4,
  retryInitialDelayMs: 50,
  retryMaxDelayMs: 1_000,
  breakerConsecutiveFailures: 5,
  breakerFailureRatio: 0,
  breakerWindowMs: 10_000,
  breakerHalfOpenAfterMs: 5_000,
  bulkheadLimit: 32,
  bulkheadQueue: 64,
});

const FIELDS = {
  TIMEOUT_MS: ["timeoutMs", { min: 1, max: 120_000 }],
  RETRY_MAX_ATTEMPTS: ["retryMaxAttempts", { min: 1, max: 20 }],
  RETRY_INITIAL_DELAY_MS: ["retryInitialDelayMs", { min: 1, max: 60_000 }],
  RETRY_MAX_DELAY_MS: ["retryMaxDelayMs", { min: 1, max: 300_000 }],
  BREAKER_CONSECUTIVE_FAILURES: ["breakerConsecutiveFailures", { min: 1, max: 1_000 }],
  // cockatiel's SamplingBreaker needs a ratio below 1.
  BREAKER_FAILURE_RATIO: ["breakerFailureRatio", { min: 0, max: 0.99 }],
  BREAKER_WINDOW_MS: ["breakerWindowMs", { min: 100, max: 600_000 }],
  BREAKER_HALF_OPEN_AFTER_MS: ["breakerHalfOpenAfterMs", { min: 1, max: 600_000 }],
  BULKHEAD_LIMIT: ["bulkheadLimit", { min: 1, max: 10_000 }],
  BULKHEAD_QUEUE: ["bulkheadQueue", { min: 0, max: 100_000 }],
} as const satisfies Record<string, readonly [keyof PolicyConfig, { min: number; max: number }]>;

type FieldName = keyof typeof FIELDS;
/** The env variables of one downstream's policy, e.g. `PAYMENT_TIMEOUT_MS`. */
export type PolicyEnv<P extends string> = { [K in FieldName as `${P}_${K}`]: EnvReader<number> };

/**
 * Env readers for the policy of downstream `prefix` (e.g. "PAYMENT" gives
 * PAYMENT_TIMEOUT_MS, PAYMENT_RETRY_MAX_ATTEMPTS, ...), defaulting to `base`.
 */
export function policyEnv<P extends string>(prefix: P, base: PolicyConfig = DEFAULT_POLICY): PolicyEnv<P> {
  const spec: Record<string, EnvReader<number>> = {};
  for (const [name, [key, range]] of Object.entries(FIELDS)) {
    spec[`${prefix}_${name}`] = key === "breakerFailureRatio" ? num(base[key], range) : int(base[key], range);
  }
  return spec as PolicyEnv<P>;
}

/** The policy of downstream `prefix` from parsed config made with {@link policyEnv}. */
export function policyFrom<P extends string>(
  prefix: P,
  config: { readonly [K in FieldName as `${P}_${K}`]: number },
): PolicyConfig {
  const out: Record<string, number> = {};
  for (const [name, [key]] of Object.entries(FIELDS)) {
    out[key] = (config as Record<string, number>)[`${prefix}_${name}`] as number;
  }
  return Object.freeze(out) as unknown as PolicyConfig;
}

/**
 * The problems of downstream `prefix`'s policy in parsed `config` beyond each variable's range: a
 * largest retry wait below the first (a wait meant in seconds, "5") made every wait that short.
 */
export function policyProblems<P extends string>(
  prefix: P,
  config: { readonly [K in FieldName as `${P}_${K}`]: number },
): string[] {
  return backoffProblems(
    config as Record<string, number>,
    `${prefix}_RETRY_INITIAL_DELAY_MS`,
    `${prefix}_RETRY_MAX_DELAY_MS`,
  );
}

/** A problem when the backoff's largest wait (variable `max`) is below its first (`first`), as that one line. */
export function backoffProblems(c: Readonly<Record<string, unknown>>, first: string, max: string): string[] {
  const [a, b] = [Number(c[first]), Number(c[max])];
  return b < a ? [`${max}=${b} is below ${first}=${a}: every retry would wait ${b} ms (ms, not seconds)`] : [];
}
