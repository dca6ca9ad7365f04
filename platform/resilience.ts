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
import type * as grpc from "@grpc/grpc-js";
import { Metadata, status } from "@grpc/grpc-js";
import {
  BrokenCircuitError,
  BulkheadRejectedError,
  bulkhead,
  type CircuitBreakerPolicy,
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
import { earliestDeadline } from "./deadline.js";
import { RpcError } from "./errors.js";
import { type CallOptions, type Client, createClient } from "./grpc-client.js";
import type { Logger } from "./log.js";
import { CallerDeadlineError, FAILURE_CODES, isIdempotent, isRetryable, type PolicyConfig } from "./policy.js";
import type { Telemetry } from "./telemetry.js";

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

/** The hooks, with the metrics counted first. */
function observedEvents(metrics: Telemetry["metrics"] | undefined, hooks: PolicyEvents = {}): Required<PolicyEvents> {
  return {
    onBreakerStateChange: (d, st) => {
      metrics?.breakerTransitions.inc({ downstream: d, to: st });
      hooks.onBreakerStateChange?.(d, st);
    },
    onBulkheadRejected: (d) => {
      metrics?.bulkheadRejected.inc({ downstream: d });
      hooks.onBulkheadRejected?.(d);
    },
    onRetry: (d, method, attempt, code) => {
      metrics?.retries.inc({ downstream: d, method, code });
      hooks.onRetry?.(d, method, attempt, code);
    },
  };
}

/** The breaker of one downstream: consecutive failures, or a failure ratio in a window. */
function breakerOf(config: PolicyConfig): CircuitBreakerPolicy {
  return circuitBreaker(
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
}

/** What every method's wrapper of one downstream shares. */
interface Guard {
  readonly downstream: string;
  readonly config: PolicyConfig;
  readonly bulkhead: IPolicy;
  readonly breaker: CircuitBreakerPolicy;
  readonly log: Logger;
  readonly events: Required<PolicyEvents>;
  readonly metrics: Telemetry["metrics"] | undefined;
}

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
  const metrics = opts.telemetry?.metrics;
  const events = observedEvents(metrics, opts.events);
  const plog = log.child({ downstream });
  const bh = bulkhead(config.bulkheadLimit, config.bulkheadQueue);
  bh.onReject(() => {
    plog.warn({ limit: config.bulkheadLimit, queue: config.bulkheadQueue }, "bulkhead full: call rejected");
    events.onBulkheadRejected(downstream);
  });
  const breaker = breakerOf(config);
  breaker.onStateChange((s) => {
    const name = BREAKER_NAMES[s];
    (s === CircuitState.Closed ? plog.info : plog.warn).call(plog, { breaker: name }, `circuit breaker ${name}`);
    events.onBreakerStateChange(downstream, name);
  });
  const state = (): DownstreamState => ({
    breaker: BREAKER_NAMES[breaker.state],
    inFlight: config.bulkheadLimit - bh.executionSlots,
    queued: config.bulkheadQueue - bh.queueSlots,
  });
  metrics?.trackDownstream(downstream, state);
  const guard: Guard = { downstream, config, bulkhead: bh, breaker, log: plog, events, metrics };
  const raw = createClient(service, channel, opts.telemetry?.tracer) as Record<string, RawCall>;
  const client: Record<string, unknown> = { state };
  for (const m of service.methods) {
    const call = raw[m.localName] as RawCall;
    if (m.methodKind === "unary") client[m.localName] = resilientUnary(guard, m, call);
    else if (m.methodKind === "server_streaming") {
      const start = wrap(bh, breaker);
      client[m.localName] = (req: unknown, callOpts: CallOptions = {}) =>
        streamThrough(start, () => call(req, { ...callOpts }) as AsyncIterable<MessageShape<DescMessage>>, downstream);
    }
  }
  return client as ResilientClient<S>;
}

type RawCall = (req: unknown, opts?: CallOptions) => unknown;

/** One unary method under the full policy: bulkhead, retry, breaker, per-attempt deadline. */
function resilientUnary(g: Guard, m: DescMethod, call: RawCall) {
  const idempotent = isIdempotent(m);
  const retryPolicy = retry(
    handleWhen((e) => isRetryable(e, idempotent)),
    {
      maxAttempts: g.config.retryMaxAttempts - 1,
      backoff: new ExponentialBackoff({
        initialDelay: g.config.retryInitialDelayMs,
        maxDelay: g.config.retryMaxDelayMs,
      }),
    },
  );
  retryPolicy.onRetry((r) => {
    const code = "error" in r && r.error instanceof RpcError ? r.error.codeName : "UNKNOWN";
    g.log.debug({ rpc: m.name, attempt: r.attempt, delayMs: Math.round(r.delay), code }, "retrying");
    g.events.onRetry(g.downstream, m.name, r.attempt, code);
  });
  const policy = wrap(g.bulkhead, retryPolicy, g.breaker);
  const observe = (code: string, started: number) =>
    g.metrics?.rpcClient.observe(
      { downstream: g.downstream, method: m.name, code },
      (performance.now() - started) / 1000,
    );

  return (req: MessageInitShape<DescMessage>, opts: CallOptions = {}) => {
    // The caller's budget is fixed once, for the whole call: queueing, retries and backoff included.
    const deadline = earliestDeadline(opts.deadline, opts.timeoutMs);
    if (deadline !== undefined && deadline <= Date.now()) {
      // Never reaches the breaker: a call that cannot be sent says nothing about the downstream.
      return Promise.reject(
        new CallerDeadlineError(status.DEADLINE_EXCEEDED, "caller deadline exceeded", new Metadata()),
      );
    }
    if (g.breaker.state === CircuitState.HalfOpen) {
      // One probe at a time decides; everyone else fails fast instead of waiting for it.
      return Promise.reject(toClientError(new BrokenCircuitError(), g.downstream));
    }
    const started = performance.now();
    return withDeadline(deadline, opts.signal, (signal) =>
      policy.execute(({ signal: s }) => call(req, attemptOptions(opts, deadline, g.config.timeoutMs, s)), signal),
    ).then(
      (res) => {
        observe("OK", started);
        return res;
      },
      (err: unknown) => {
        const e = toClientError(err, g.downstream);
        observe(e instanceof RpcError ? e.codeName : "UNKNOWN", started);
        throw e;
      },
    );
  };
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
