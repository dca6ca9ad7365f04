/**
 * Resilient gRPC clients: every outbound call goes through one cockatiel
 * policy per downstream, configured in one place (the caller's config.ts,
 * via {@link policyEnv}). Layers, outermost first:
 *
 * 1. bulkhead (bulkhead.ts) — at most `bulkheadLimit` calls in flight to this downstream
 *    plus `bulkheadQueue` waiting; the rest are shed at once with
 *    RESOURCE_EXHAUSTED (the caller's own capacity is used up: retry later),
 *    so a slow downstream cannot take the caller's capacity for the others;
 * 2. retry — exponential backoff with decorrelated jitter, bounded attempts,
 *    only for codes that are safe to retry: UNAVAILABLE always (the call did
 *    not run, or the method is idempotent); DEADLINE_EXCEEDED and
 *    RESOURCE_EXHAUSTED only for methods whose proto declares an
 *    `idempotency_level` (reads and keyed mutations). Never a business error
 *    (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND...), and never past the
 *    caller's deadline. A retry goes to an instance the call has not tried
 *    when there is one;
 * 3. circuit breaker, one per instance (endpoints.ts) — an instance's circuit
 *    opens after `breakerConsecutiveFailures` consecutive failures (or, when
 *    `breakerFailureRatio` > 0, on that failure ratio in a sliding window);
 *    while open, calls skip it for the other instances; after
 *    `breakerHalfOpenAfterMs` one probe call decides between closed and open
 *    again — when no call comes, the instance's health check (idle-probe.ts).
 *    Only when every instance's circuit is open do calls fail fast
 *    with UNAVAILABLE, without touching the network;
 * 4. timeout — each attempt is a gRPC call with deadline
 *    min(now + timeoutMs, caller's deadline): the deadline travels to the
 *    server (grpc-timeout) and cancels the work there too. It is never
 *    extended past the incoming deadline.
 */
import type { DescMessage, DescMethod, DescService, MessageShape } from "@bufbuild/protobuf";
import type * as grpc from "@grpc/grpc-js";
import type { NatsConnection } from "@nats-io/transport-node";
import { BrokenCircuitError, ExponentialBackoff, handleWhen, retry } from "cockatiel";
import { Bulkhead } from "./bulkhead.js";
import { earliestDeadline, withDeadline } from "./deadline.js";
import { type BreakerName, type Endpoint, Endpoints, type EndpointsOptions } from "./endpoints.js";
import { RpcError } from "./errors.js";
import type { BytesClient, CallOptions, Client } from "./grpc-client.js";
import type { Logger } from "./log.js";
import {
  breakerOf,
  CallerDeadlineError,
  callersDeadline,
  isIdempotent,
  isRetryable,
  retriedCalls,
  stalledAttempt,
  toClientError,
} from "./policy.js";
import type { PolicyConfig } from "./policy-config.js";
import { detached } from "./propagation.js";
import { processStalls } from "./stall.js";
import type { Telemetry } from "./telemetry.js";

/** Observable state of one downstream's policy. */
export interface DownstreamState {
  /** The downstream as one: open only when every instance's circuit is. */
  readonly breaker: BreakerName;
  readonly inFlight: number;
  readonly queued: number;
  /** Each instance's circuit. */
  readonly endpoints: readonly { readonly address: string; readonly breaker: BreakerName }[];
}

/** Hooks for metrics (the logs are written regardless). */
export interface PolicyEvents {
  onBreakerStateChange?(downstream: string, state: DownstreamState["breaker"]): void;
  onBulkheadRejected?(downstream: string): void;
  onRetry?(downstream: string, method: string, attempt: number, code: string): void;
}

/** A typed client whose every call goes through the downstream's policy. */
export type ResilientClient<S extends DescService> = Client<S> & {
  /** The unary calls on encoded messages, under the same policy (the gateway's gRPC pass-through). */
  readonly bytes: BytesClient;
  /** Breaker and bulkhead state right now. */
  readonly state: () => DownstreamState;
  /** Stops following the downstream's instances and closes the connections it opened. */
  readonly close: () => void;
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

/** What every method's wrapper of one downstream shares. */
interface Guard<S extends DescService> {
  readonly downstream: string;
  readonly config: PolicyConfig;
  readonly bulkhead: Bulkhead;
  readonly endpoints: Endpoints<S>;
  readonly log: Logger;
  readonly events: Required<PolicyEvents>;
  readonly metrics: Telemetry["metrics"] | undefined;
}

/**
 * Wraps a typed client of `service` in the policy `config`, over the
 * instances `target` names (host:port, dns:///name:port, registry:///name —
 * see endpoints.ts; registry targets need `opts.nc`) or over one existing
 * channel (`target` a grpc.Client). `downstream` names it in logs, metrics and errors. Unary calls
 * get the full policy; server streams get the bulkhead and an instance's
 * circuit for their start (a stream that already delivered messages is
 * never silently replayed). `opts.calls` names the methods the caller makes (every one when left out):
 * their retries are exported at 0 from now, no other's (a series no call can ever count is noise).
 */
export function createResilientClient<S extends DescService>(
  downstream: string,
  service: S,
  target: string | grpc.Client,
  config: PolicyConfig,
  log: Logger,
  opts: { events?: PolicyEvents; telemetry?: Telemetry; nc?: NatsConnection; calls?: readonly string[] } = {},
): ResilientClient<S> {
  const retried = retriedCalls(service, opts.calls); // a misspelt name fails at start, telemetry or not
  processStalls(); // measuring from now on: a stall is only seen by a clock that ran before it
  const metrics = opts.telemetry?.metrics;
  const events = observedEvents(metrics, opts.events);
  const plog = log.child({ downstream });
  const bh = new Bulkhead(config.bulkheadLimit, config.bulkheadQueue, () => {
    plog.warn({ limit: config.bulkheadLimit, queue: config.bulkheadQueue }, "bulkhead full: call rejected");
    events.onBulkheadRejected(downstream);
  });
  let overall: BreakerName = "closed";
  const endpointOptions: EndpointsOptions<S> = {
    downstream,
    service,
    log: plog,
    newBreaker: () => breakerOf(config),
    ...(opts.telemetry ? { tracer: opts.telemetry.tracer } : {}),
    onBreakerChange: () => {
      // The downstream's own state follows its instances': report it when it changes.
      const now = endpoints.state();
      if (now === overall) return;
      overall = now;
      // The call that tripped it is one request's; the breaker's change is everyone's: no trace.
      detached(() => (now === "closed" ? plog.info : plog.warn).call(plog, { breaker: now }, `circuit breaker ${now}`));
      events.onBreakerStateChange(downstream, now);
    },
  };
  const endpoints =
    typeof target === "string"
      ? Endpoints.follow(target, opts.nc, endpointOptions)
      : Endpoints.fixed(target, endpointOptions);
  const state = (): DownstreamState => ({
    breaker: endpoints.state(),
    inFlight: bh.inFlight,
    queued: bh.queued,
    endpoints: endpoints.breakers(),
  });
  metrics?.trackDownstream(downstream, state, retried);
  const guard: Guard<S> = { downstream, config, bulkhead: bh, endpoints, log: plog, events, metrics };
  const bytes: Record<string, unknown> = {};
  const client: Record<string, unknown> = { state, close: () => endpoints.close(), bytes };
  for (const m of service.methods) {
    if (m.methodKind === "unary") {
      client[m.localName] = resilientUnary(guard, m, (ep) => call(ep, m));
      bytes[m.localName] = resilientUnary(guard, m, (ep) => ep.bytes[m.localName] as RawCall);
    } else if (m.methodKind === "server_streaming") {
      client[m.localName] = (req: unknown, o: CallOptions = {}) =>
        streamThrough(
          guard,
          earliestDeadline(o.deadline, o.timeoutMs),
          o.signal,
          (ep) => call(ep, m)(req, { ...o }) as AsyncIterable<MessageShape<DescMessage>>,
        );
    }
  }
  return client as ResilientClient<S>;
}

type RawCall = (req: unknown, opts?: CallOptions) => unknown;

/** The typed call of method `m` on instance `ep`. */
const call = <S extends DescService>(ep: Endpoint<S>, m: DescMethod) =>
  (ep.client as unknown as Record<string, RawCall>)[m.localName] as RawCall;

/**
 * Runs `fn` on the first instance whose circuit takes the call (see
 * Endpoints.candidates), remembering it in `tried`. When every circuit
 * refuses, or there is no instance, fails with BrokenCircuitError: the
 * downstream is open, and that is never retried.
 */
async function onSomeInstance<S extends DescService, T>(
  g: Guard<S>,
  tried: Set<string>,
  fn: (ep: Endpoint<S>) => Promise<T>,
): Promise<T> {
  for (const ep of g.endpoints.candidates(tried)) {
    tried.add(ep.address);
    try {
      return await ep.breaker.execute(() => fn(ep));
    } catch (err) {
      // Open (a half-open one held the call until its probe failed): the next instance takes it.
      if (err instanceof BrokenCircuitError) continue;
      throw err;
    }
  }
  throw new BrokenCircuitError(g.endpoints.unavailable());
}

/** How long this process stood still since a time (a timeout through a stall is not the downstream's). */
const stalls = (since: number) => processStalls().stalledSince(since);

/** One unary method under the full policy: bulkhead, retry (preferring untried instances), per-instance breaker, per-attempt deadline. */
function resilientUnary<S extends DescService>(g: Guard<S>, m: DescMethod, callOn: (ep: Endpoint<S>) => RawCall) {
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
  const observe = (code: string, started: number) =>
    g.metrics?.rpcClient.observe(
      { downstream: g.downstream, method: m.name, code },
      (performance.now() - started) / 1000,
    );

  return (req: unknown, opts: CallOptions = {}) => {
    // The caller's budget is fixed once, for the whole call: queueing, retries and backoff included.
    const deadline = earliestDeadline(opts.deadline, opts.timeoutMs);
    if (deadline !== undefined && deadline <= Date.now()) {
      // Never reaches a breaker: a call that cannot be sent says nothing about the downstream. Counted
      // all the same, as the caller's failed call: the histogram held every failure but these.
      observe("DEADLINE_EXCEEDED", performance.now());
      return Promise.reject(CallerDeadlineError.now());
    }
    const started = performance.now();
    const tried = new Set<string>();
    // Whether any attempt reached the network: a call none of whose attempts did cannot have taken effect.
    let sent = false;
    return withDeadline(deadline, opts.signal, CallerDeadlineError.now, (signal) =>
      g.bulkhead.execute(
        () =>
          retryPolicy.execute(
            ({ signal: s }) =>
              onSomeInstance(g, tried, (ep) => {
                sent = true;
                const sentAt = processStalls().time();
                return (
                  callOn(ep)(req, attemptOptions(opts, deadline, g.config.timeoutMs, s)) as Promise<unknown>
                ).catch((err: unknown) =>
                  Promise.reject(stalledAttempt(callersDeadline(err, deadline), sentAt, stalls)),
                );
              }),
            signal,
          ),
        signal,
      ),
    ).then(
      (res) => {
        observe("OK", started);
        return res;
      },
      (err: unknown) => {
        const e = toClientError(err, g.downstream, sent);
        observe(e instanceof RpcError ? e.codeName : "UNKNOWN", started);
        throw e;
      },
    );
  };
}

/** Options of one attempt: the per-attempt timeout capped by the caller's deadline. */
function attemptOptions(
  opts: CallOptions,
  deadline: number | undefined,
  timeoutMs: number,
  policySignal: AbortSignal,
): CallOptions {
  const now = Date.now();
  if (deadline !== undefined && deadline <= now) throw CallerDeadlineError.now();
  const attemptDeadline = deadline === undefined ? now + timeoutMs : Math.min(now + timeoutMs, deadline);
  // cockatiel derives the attempt's signal from the caller's (passed to execute), so it is enough.
  return { metadata: opts.metadata, deadline: attemptDeadline, signal: policySignal };
}

/**
 * Runs a server stream under the bulkhead and one instance's circuit: they see the stream from start until its
 * first message (or its end), so a circuit learns of streams that cannot start and the bulkhead counts them while
 * they connect; not of one whose caller's `deadline` ran out first, as with a unary call (five 1 ms watches opened it).
 */
async function* streamThrough<S extends DescService, T>(
  g: Guard<S>,
  deadline: number | undefined,
  signal: AbortSignal | undefined,
  open: (ep: Endpoint<S>) => AsyncIterable<T>,
): AsyncIterable<T> {
  let it: AsyncIterator<T> | undefined;
  let first: IteratorResult<T>;
  try {
    // Queued under its caller's signal and deadline, as a unary call: without them, a stream whose caller
    // gave up kept its place until its turn, and live calls behind it were shed "bulkhead full".
    first = await withDeadline(deadline, signal, CallerDeadlineError.now, (s) =>
      g.bulkhead.execute(
        () =>
          onSomeInstance(g, new Set(), (ep) => {
            it = open(ep)[Symbol.asyncIterator]();
            return it.next().catch((err: unknown) => Promise.reject(callersDeadline(err, deadline)));
          }),
        s,
      ),
    );
  } catch (err) {
    throw toClientError(err, g.downstream);
  }
  if (first.done || !it) return;
  yield first.value;
  yield* { [Symbol.asyncIterator]: () => it as AsyncIterator<T> };
}
