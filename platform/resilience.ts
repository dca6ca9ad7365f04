/**
 * Resilient gRPC clients: every outbound call goes through one cockatiel
 * policy per downstream, configured in one place (the caller's config.ts,
 * via {@link policyEnv}). Layers, outermost first:
 *
 * 1. bulkhead — at most `bulkheadLimit` calls in flight to this downstream
 *    plus `bulkheadQueue` waiting; the rest are shed at once with
 *    RESOURCE_EXHAUSTED (the caller's own capacity is used up: retry later),
 *    so a slow downstream cannot take the caller's capacity for the others;
 * 2. retry — exponential backoff with decorrelated jitter, bounded attempts,
 *    only for codes that are safe to retry: UNAVAILABLE always (the call did
 *    not run, or the method is idempotent); DEADLINE_EXCEEDED and
 *    RESOURCE_EXHAUSTED only for methods whose proto declares an
 *    `idempotency_level` (reads and keyed mutations). Never a business error
 *    (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND...), and never past the
 *    caller's deadline;
 * 3. circuit breaker — opens after `breakerConsecutiveFailures` consecutive
 *    failures (or, when `breakerFailureRatio` > 0, on that failure ratio in a
 *    sliding window); while open, calls fail fast with UNAVAILABLE and never
 *    touch the network; after `breakerHalfOpenAfterMs` one probe call decides
 *    between closed and open again;
 * 4. timeout — each attempt is a gRPC call with deadline
 *    min(now + timeoutMs, caller's deadline): the deadline travels to the
 *    server (grpc-timeout) and cancels the work there too. It is never
 *    extended past the incoming deadline.
 */
import type { DescMessage, DescMethod, DescService, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import type * as grpc from "@grpc/grpc-js";
import { Metadata, status } from "@grpc/grpc-js";
import {
  BrokenCircuitError,
  BulkheadRejectedError,
  bulkhead,
  CircuitState,
  ConsecutiveBreaker,
  circuitBreaker,
  ExponentialBackoff,
  handleWhen,
  type IPolicy,
  retry,
  SamplingBreaker,
  TaskCancelledError,
  wrap,
} from "cockatiel";
import { type EnvReader, int, num } from "./config.js";
import { RpcError } from "./errors.js";
import { type CallOptions, type Client, createClient } from "./grpc.js";
import type { Logger } from "./log.js";
import type { Telemetry } from "./telemetry.js";

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

/** Codes that count as a downstream failure for the breaker (not business outcomes). */
const FAILURE_CODES: ReadonlySet<status> = new Set([
  status.UNAVAILABLE,
  status.DEADLINE_EXCEEDED,
  status.RESOURCE_EXHAUSTED,
  status.INTERNAL,
  status.UNKNOWN,
]);

/** The caller's own deadline ran out: retrying cannot help. */
class CallerDeadlineError extends RpcError {
  override name = "CallerDeadlineError";
}

/** True when `method` may be retried after DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED. */
export function isIdempotent(method: DescMethod): boolean {
  return method.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN;
}

/** Whether a failed attempt of `method` with `err` may be retried. */
export function isRetryable(err: unknown, idempotent: boolean): boolean {
  if (!(err instanceof RpcError) || err instanceof CallerDeadlineError) return false;
  if (err.code === status.UNAVAILABLE) return true;
  return idempotent && (err.code === status.DEADLINE_EXCEEDED || err.code === status.RESOURCE_EXHAUSTED);
}

/** Observable state of one downstream's policy. */
export interface DownstreamState {
  readonly breaker: "closed" | "open" | "half-open" | "isolated";
  readonly inFlight: number;
  readonly queued: number;
}

/** Hooks for metrics (the logs are written regardless). */
export interface PolicyEvents {
  onBreakerStateChange?(downstream: string, state: DownstreamState["breaker"]): void;
  onBulkheadRejected?(downstream: string): void;
  onRetry?(downstream: string, method: string, attempt: number, code: string): void;
}

/** A typed client whose every call goes through the downstream's policy. */
export type ResilientClient<S extends DescService> = Client<S> & {
  /** Breaker and bulkhead state right now. */
  readonly state: () => DownstreamState;
};

const BREAKER_NAMES: Record<CircuitState, DownstreamState["breaker"]> = {
  [CircuitState.Closed]: "closed",
  [CircuitState.Open]: "open",
  [CircuitState.HalfOpen]: "half-open",
  [CircuitState.Isolated]: "isolated",
};

/**
 * Wraps a typed client of `service` on `channel` in the policy `config`.
 * `downstream` names it in logs, metrics and errors. Unary calls get the
 * full policy; server streams get the bulkhead and breaker for their start
 * (a stream that already delivered messages is never silently replayed).
 */
export function createResilientClient<S extends DescService>(
  downstream: string,
  service: S,
  channel: grpc.Client,
  config: PolicyConfig,
  log: Logger,
  opts: { events?: PolicyEvents; telemetry?: Telemetry } = {},
): ResilientClient<S> {
  const { telemetry } = opts;
  const metrics = telemetry?.metrics;
  const events: PolicyEvents = {
    onBreakerStateChange: (d, st) => {
      metrics?.breakerTransitions.inc({ downstream: d, to: st });
      opts.events?.onBreakerStateChange?.(d, st);
    },
    onBulkheadRejected: (d) => {
      metrics?.bulkheadRejected.inc({ downstream: d });
      opts.events?.onBulkheadRejected?.(d);
    },
    onRetry: (d, method, attempt, code) => {
      metrics?.retries.inc({ downstream: d, method, code });
      opts.events?.onRetry?.(d, method, attempt, code);
    },
  };
  const raw = createClient(service, channel, telemetry?.tracer) as Record<
    string,
    (req: unknown, opts?: CallOptions) => unknown
  >;
  const plog = log.child({ downstream });

  const bh = bulkhead(config.bulkheadLimit, config.bulkheadQueue);
  bh.onReject(() => {
    plog.warn({ limit: config.bulkheadLimit, queue: config.bulkheadQueue }, "bulkhead full: call rejected");
    events.onBulkheadRejected?.(downstream);
  });
  const breaker = circuitBreaker(
    handleWhen((e) => e instanceof RpcError && !(e instanceof CallerDeadlineError) && FAILURE_CODES.has(e.code)),
    {
      halfOpenAfter: config.breakerHalfOpenAfterMs,
      breaker:
        config.breakerFailureRatio > 0
          ? new SamplingBreaker({
              threshold: config.breakerFailureRatio,
              duration: config.breakerWindowMs,
              minimumRps: 1,
            })
          : new ConsecutiveBreaker(config.breakerConsecutiveFailures),
    },
  );
  breaker.onStateChange((s) => {
    const name = BREAKER_NAMES[s];
    (s === CircuitState.Closed ? plog.info : plog.warn).call(plog, { breaker: name }, `circuit breaker ${name}`);
    events.onBreakerStateChange?.(downstream, name);
  });

  const state = (): DownstreamState => ({
    breaker: BREAKER_NAMES[breaker.state],
    inFlight: config.bulkheadLimit - bh.executionSlots,
    queued: config.bulkheadQueue - bh.queueSlots,
  });
  metrics?.trackDownstream(downstream, state);
  const client: Record<string, unknown> = { state };

  for (const m of service.methods) {
    const call = raw[m.localName] as (req: unknown, opts?: CallOptions) => unknown;
    const idempotent = isIdempotent(m);
    const retryPolicy = retry(
      handleWhen((e) => isRetryable(e, idempotent)),
      {
        maxAttempts: config.retryMaxAttempts - 1,
        backoff: new ExponentialBackoff({ initialDelay: config.retryInitialDelayMs, maxDelay: config.retryMaxDelayMs }),
      },
    );
    retryPolicy.onRetry((r) => {
      const code = "error" in r && r.error instanceof RpcError ? r.error.codeName : "UNKNOWN";
      plog.debug({ rpc: m.name, attempt: r.attempt, delayMs: Math.round(r.delay), code }, "retrying");
      events.onRetry?.(downstream, m.name, r.attempt, code);
    });
    const unary: IPolicy = wrap(bh, retryPolicy, breaker);
    const start: IPolicy = wrap(bh, breaker);

    if (m.methodKind === "unary") {
      client[m.localName] = (req: MessageInitShape<DescMessage>, opts: CallOptions = {}) => {
        // The caller's budget is fixed once, for the whole call: queueing, retries and backoff included.
        const deadline = callerDeadline(opts);
        if (deadline !== undefined && deadline <= Date.now()) {
          // Never reaches the breaker: a call that cannot be sent says nothing about the downstream.
          return Promise.reject(
            new CallerDeadlineError(status.DEADLINE_EXCEEDED, "caller deadline exceeded", new Metadata()),
          );
        }
        if (breaker.state === CircuitState.HalfOpen) {
          // One probe at a time decides; everyone else fails fast instead of waiting for it.
          return Promise.reject(toClientError(new BrokenCircuitError(), downstream));
        }
        const started = performance.now();
        return withDeadline(deadline, opts.signal, (signal) =>
          unary.execute(({ signal: s }) => call(req, attemptOptions(opts, deadline, config.timeoutMs, s)), signal),
        ).then(
          (res) => {
            metrics?.rpcClient.observe(
              { downstream, method: m.name, code: "OK" },
              (performance.now() - started) / 1000,
            );
            return res;
          },
          (err: unknown) => {
            const e = toClientError(err, downstream);
            const code = e instanceof RpcError ? e.codeName : "UNKNOWN";
            metrics?.rpcClient.observe({ downstream, method: m.name, code }, (performance.now() - started) / 1000);
            throw e;
          },
        );
      };
    } else if (m.methodKind === "server_streaming") {
      client[m.localName] = (req: MessageInitShape<DescMessage>, opts: CallOptions = {}) =>
        streamThrough(start, () => call(req, { ...opts }) as AsyncIterable<MessageShape<DescMessage>>, downstream);
    }
  }
  return client as ResilientClient<S>;
}

/** The caller's absolute deadline: the earlier of `deadline` and now + `timeoutMs`. */
function callerDeadline(opts: CallOptions): number | undefined {
  const rel = opts.timeoutMs === undefined ? undefined : Date.now() + opts.timeoutMs;
  if (opts.deadline === undefined) return rel;
  return rel === undefined ? opts.deadline : Math.min(rel, opts.deadline);
}

/**
 * Runs `fn` with a signal that aborts at `deadline` or with `outer`; at the
 * deadline the call fails DEADLINE_EXCEEDED even if it is still queued in
 * the bulkhead or sleeping between retries.
 */
function withDeadline<T>(
  deadline: number | undefined,
  outer: AbortSignal | undefined,
  fn: (signal: AbortSignal | undefined) => Promise<T>,
): Promise<T> {
  if (deadline === undefined) return fn(outer);
  const ac = new AbortController();
  const signal = outer ? AbortSignal.any([outer, ac.signal]) : ac.signal;
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      ac.abort();
      reject(new CallerDeadlineError(status.DEADLINE_EXCEEDED, "caller deadline exceeded", new Metadata()));
    }, deadline - Date.now());
  });
  return Promise.race([fn(signal), expired]).finally(() => clearTimeout(timer));
}

/** Options of one attempt: the per-attempt timeout capped by the caller's deadline. */
function attemptOptions(
  opts: CallOptions,
  deadline: number | undefined,
  timeoutMs: number,
  policySignal: AbortSignal,
): CallOptions {
  const now = Date.now();
  if (deadline !== undefined && deadline <= now) {
    throw new CallerDeadlineError(status.DEADLINE_EXCEEDED, "caller deadline exceeded", new Metadata());
  }
  const attemptDeadline = deadline === undefined ? now + timeoutMs : Math.min(now + timeoutMs, deadline);
  // cockatiel derives the attempt's signal from the caller's (passed to execute), so it is enough.
  return { metadata: opts.metadata, deadline: attemptDeadline, signal: policySignal };
}

/** Policy rejections become RpcErrors naming the downstream (UNAVAILABLE, RESOURCE_EXHAUSTED); RpcErrors pass through. */
function toClientError(err: unknown, downstream: string): unknown {
  if (err instanceof BrokenCircuitError) {
    return new RpcError(status.UNAVAILABLE, `${downstream}: circuit open, failing fast`, new Metadata(), {
      cause: err,
    });
  }
  if (err instanceof BulkheadRejectedError) {
    return new RpcError(status.RESOURCE_EXHAUSTED, `${downstream}: bulkhead full, call shed`, new Metadata(), {
      cause: err,
    });
  }
  // instanceof, not cockatiel's isTaskCancelledError(): in 3.2 that helper tests the wrong property.
  if (err instanceof TaskCancelledError) {
    return new RpcError(status.CANCELLED, `${downstream}: call cancelled by the caller`, new Metadata(), {
      cause: err,
    });
  }
  return err;
}

/**
 * Runs a server stream under `policy`: the policy sees the stream from start
 * until its first message (or its end), so the breaker learns of streams that
 * cannot start and the bulkhead counts them while they connect.
 */
async function* streamThrough<T>(policy: IPolicy, open: () => AsyncIterable<T>, downstream: string): AsyncIterable<T> {
  let it: AsyncIterator<T> | undefined;
  let first: IteratorResult<T>;
  try {
    first = await policy.execute(() => {
      it = open()[Symbol.asyncIterator]();
      return it.next();
    });
  } catch (err) {
    throw toClientError(err, downstream);
  }
  if (first.done || !it) return;
  yield first.value;
  yield* { [Symbol.asyncIterator]: () => it as AsyncIterator<T> };
}
