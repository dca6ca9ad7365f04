/**
 * How calls to one downstream are protected, at run time: which failures count and which may be
 * retried, the errors a caller sees, and the breaker. Its configuration is policy-config.ts.
 */

import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Metadata, status } from "@grpc/grpc-js";
import {
  BrokenCircuitError,
  BulkheadRejectedError,
  type CircuitBreakerPolicy,
  type CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  handleWhen,
  type IBackoff,
  type IBreaker,
  SamplingBreaker,
  TaskCancelledError,
} from "cockatiel";
import { RpcError } from "./errors.js";
import { Probation } from "./idle-probe.js";
import type { PolicyConfig } from "./policy-config.js";

/** Codes that count as a downstream failure for the breaker (not business outcomes). */
export const FAILURE_CODES: ReadonlySet<status> = new Set([
  status.UNAVAILABLE,
  status.DEADLINE_EXCEEDED,
  status.RESOURCE_EXHAUSTED,
  status.INTERNAL,
  status.UNKNOWN,
]);

/** The caller's own deadline ran out: retrying cannot help. */
export class CallerDeadlineError extends RpcError {
  override name = "CallerDeadlineError";

  /** DEADLINE_EXCEEDED, "caller deadline exceeded". */
  static now(): CallerDeadlineError {
    return new CallerDeadlineError(status.DEADLINE_EXCEEDED, "caller deadline exceeded", new Metadata());
  }
}

/**
 * `err` as the caller's own deadline when that explains it: a DEADLINE_EXCEEDED at or after the
 * deadline the attempt was sent with — the downstream enforcing it (grpc-timeout), or the client's
 * own timer — rather than the call's timer, which it raced (it loses on a busy event loop). Else `err`.
 * Not a failure of the downstream: counted by no breaker, retried by no policy.
 */
export function callersDeadline(err: unknown, deadline: number | undefined, now = Date.now()): unknown {
  const theirs =
    err instanceof RpcError && !(err instanceof CallerDeadlineError) && err.code === status.DEADLINE_EXCEEDED;
  // Deadlines are sent in whole milliseconds, rounded up: a millisecond's grace.
  return theirs && deadline !== undefined && now >= deadline - 1 ? CallerDeadlineError.now() : err;
}

/**
 * An attempt that timed out while this process stood still (stall.ts: frozen, stalled a second or
 * more): its timer fired on resumption, the answer maybe waiting unread. Retried as any timeout, but
 * counted by no breaker — every call in flight fails so at once, and a healthy downstream's circuit
 * opened for its half-open time, failing the retries fast.
 */
export class StalledAttemptError extends RpcError {
  override name = "StalledAttemptError";
}

/**
 * How recently a stall must have ended to explain a timeout, ms: one that ended earlier left the
 * process running long enough to read an answer waiting in the socket before the attempt's timer fired.
 */
export const STALL_EXPLAINS_MS = 1_000;

/**
 * `err` as a {@link StalledAttemptError} when it is a timeout of an attempt sent at `sentAt` that this
 * process stalled through, the stall ending no more than {@link STALL_EXPLAINS_MS} before the timeout.
 */
export function stalledAttempt(
  err: unknown,
  sentAt: number,
  stalledSince: (since: number) => number,
  now = Date.now(),
): unknown {
  const timeout =
    err instanceof RpcError && !(err instanceof CallerDeadlineError) && err.code === status.DEADLINE_EXCEEDED;
  if (!timeout || stalledSince(Math.max(sentAt, now - STALL_EXPLAINS_MS)) === 0) return err;
  return new StalledAttemptError(err.code, err.message, err.metadata, { cause: err });
}

/** What an attempt of an idempotent method is retried on besides UNAVAILABLE (what any method's is). */
const RETRIED_IF_IDEMPOTENT: readonly status[] = [status.DEADLINE_EXCEEDED, status.RESOURCE_EXHAUSTED];

/** True when `method` may be retried after DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED. */
export function isIdempotent(method: DescMethod): boolean {
  return method.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN;
}

/** Whether an attempt that failed with `err` may be retried; `idempotent`: its method is ({@link isIdempotent}). */
export function isRetryable(err: unknown, idempotent: boolean): boolean {
  if (!(err instanceof RpcError) || err instanceof CallerDeadlineError) return false;
  if (err.code === status.UNAVAILABLE) return true;
  // An answer without a status of its own (too large, a reset) says nothing a retry would change.
  if (err.broken) return false;
  return idempotent && RETRIED_IF_IDEMPOTENT.includes(err.code);
}

/**
 * Each unary method of `service` the caller makes (`calls`, by name; every one when undefined) with each
 * code an attempt of it may be retried on ({@link isRetryable}): the label values of its
 * rpc_client_retries_total. A stream is never retried. Throws for a name `service` has no method of.
 */
export function retriedCalls(service: DescService, calls?: readonly string[]): { method: string; code: string }[] {
  const unknown = calls?.filter((name) => !service.methods.some((m) => m.name === name)) ?? [];
  if (unknown.length > 0) throw new Error(`${service.typeName} has no method ${unknown.join(", ")}`);
  return service.methods
    .filter((m) => m.methodKind === "unary" && (calls?.includes(m.name) ?? true))
    .flatMap((m) =>
      [status.UNAVAILABLE, ...(isIdempotent(m) ? RETRIED_IF_IDEMPOTENT : [])].map((c) => ({
        method: m.name,
        code: status[c],
      })),
    );
}

/** Policy rejections become RpcErrors naming the downstream (UNAVAILABLE, RESOURCE_EXHAUSTED); RpcErrors pass through. */
export function toClientError(err: unknown, downstream: string, sent = true): unknown {
  const md = new Metadata();
  const local = { cause: err, notSent: !sent };
  if (err instanceof BrokenCircuitError)
    return new RpcError(status.UNAVAILABLE, `${downstream}: ${err.message}`, md, local);
  if (err instanceof BulkheadRejectedError) {
    return new RpcError(status.RESOURCE_EXHAUSTED, `${downstream}: bulkhead full, call shed`, md, local);
  }
  // instanceof, not cockatiel's isTaskCancelledError(): in 3.2 that helper tests the wrong property.
  if (err instanceof TaskCancelledError) {
    return new RpcError(status.CANCELLED, `${downstream}: call cancelled by the caller`, md, { cause: err });
  }
  return err;
}

/**
 * A breaker's wait before its half-open probe, `ms` on the monotonic clock. cockatiel keeps a breaker
 * open while `Date.now() - openedAt < duration`, and reads `duration` at each check: this one cancels
 * the wall clock out of that. On cockatiel's own wait, a wall clock stepped back an hour (an NTP
 * correction, a restored VM) kept the breaker open for the hour, every call to a healed downstream refused.
 */
function monotonicHalfOpen(ms: number): IBackoff<unknown> {
  const wallAt = Date.now();
  const monoAt = performance.now();
  return {
    get duration() {
      return Date.now() - wallAt + ms - (performance.now() - monoAt);
    },
    next: () => monotonicHalfOpen(ms),
  };
}

/**
 * cockatiel's SamplingBreaker with its windows kept in step with the wall clock it reads: it moves to
 * its next window on `Date.now`, and after a step back of an hour none moved for the hour — every call
 * of it one sample, an outage after good traffic never reached the ratio, and the breaker stayed
 * closed. A step either way (the wall clock against the monotonic one) moves the windows' starts with it.
 */
class SteadySamplingBreaker implements IBreaker {
  private readonly inner: SamplingBreaker;
  private offset = Date.now() - performance.now();

  constructor(options: ConstructorParameters<typeof SamplingBreaker>[0]) {
    this.inner = new SamplingBreaker(options);
  }

  get state(): unknown {
    return this.inner.state;
  }

  set state(value: unknown) {
    this.inner.state = value;
  }

  success(state: CircuitState): void {
    this.follow();
    this.inner.success(state);
  }

  failure(state: CircuitState): boolean {
    this.follow();
    return this.inner.failure(state);
  }

  private follow(): void {
    const offset = Date.now() - performance.now();
    const step = offset - this.offset;
    if (Math.abs(step) < 1_000) return; // not a step: rounding, or a slew NTP spreads out
    this.offset = offset;
    for (const w of (this.inner.state as { windows: { startedAt: number }[] }).windows) {
      if (w.startedAt !== 0) w.startedAt += step;
    }
  }
}

/** One instance's circuit: its breaker, and what probes it when no call comes (idle-probe.ts). */
export interface Circuit {
  readonly breaker: CircuitBreakerPolicy;
  /** Its failure counting, put on probation when a probe closes it. */
  readonly probation: Probation;
  /** Open and offered no call this long (its half-open wait), it is probed, ms. */
  readonly probeAfterMs: number;
  /** The probe's deadline (a call's per-attempt timeout), ms. */
  readonly probeTimeoutMs: number;
}

/** A circuit of this policy (one per downstream instance): consecutive failures, or a failure ratio in a window. */
export function breakerOf(config: PolicyConfig): Circuit {
  const probation = new Probation(
    config.breakerFailureRatio > 0
      ? new SteadySamplingBreaker({
          threshold: config.breakerFailureRatio,
          duration: config.breakerWindowMs,
          minimumRps: 1,
        })
      : new ConsecutiveBreaker(config.breakerConsecutiveFailures),
  );
  const breaker = circuitBreaker(
    handleWhen(
      (e) =>
        e instanceof RpcError &&
        !(e instanceof CallerDeadlineError || e instanceof StalledAttemptError) &&
        (FAILURE_CODES.has(e.code) || e.broken),
    ),
    // A factory: each opening's wait starts when it opens.
    { halfOpenAfter: { next: () => monotonicHalfOpen(config.breakerHalfOpenAfterMs) }, breaker: probation },
  );
  return { breaker, probation, probeAfterMs: config.breakerHalfOpenAfterMs, probeTimeoutMs: config.timeoutMs };
}
