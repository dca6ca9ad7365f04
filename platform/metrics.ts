/**
 * Every metric a shopmesh process exports (prom-client), each process with
 * its own registry (served by metrics-server.ts). Label sets are
 * bounded: no ids, nothing a client chooses.
 */
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** Seconds buckets for latencies from sub-millisecond RPCs to slow sagas. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Live state sampled at scrape time. */
/** What a resilient client reports about one downstream at each scrape. */
export interface DownstreamSample {
  readonly breaker: string;
  readonly inFlight: number;
  readonly queued: number;
  readonly endpoints: readonly { readonly address: string; readonly breaker: string }[];
}

interface Sources {
  downstreams: Map<string, () => DownstreamSample>;
  backlog?: () => { count: number; oldestAgeMs: number };
  /** Per consumer, the events its stream holds for it unacknowledged; undefined when that cannot be read. */
  pending: Map<string, () => Promise<number | undefined>>;
  /** Per consumer, the check that counts what its stream dropped before it read it (dropped-unread.ts). */
  dropped: Map<string, () => Promise<void>>;
  /** Per consumer, its dead letters not redriven yet; undefined when that cannot be read. */
  lettersWaiting: Map<string, () => Promise<number | undefined>>;
}

const BREAKER_VALUE: Record<string, number> = { closed: 0, open: 1, "half-open": 2, isolated: 3 };

type Registers = { registers: Registry[] };

/** RED metrics of calls served and made. */
function callMetrics(r: Registers) {
  return {
    rpcServer: new Histogram({
      name: "rpc_server_duration_seconds",
      help: "gRPC server calls by method and status code (RED: rate, errors, duration)",
      labelNames: ["method", "code"],
      buckets: LATENCY_BUCKETS,
      ...r,
    }),
    rpcClient: new Histogram({
      name: "rpc_client_duration_seconds",
      help: "Outbound gRPC calls by downstream, method and status code, policies included",
      labelNames: ["downstream", "method", "code"],
      buckets: LATENCY_BUCKETS,
      ...r,
    }),
    httpServer: new Histogram({
      name: "http_server_duration_seconds",
      help: "Gateway calls by procedure, protocol and status code",
      labelNames: ["procedure", "protocol", "code"],
      buckets: LATENCY_BUCKETS,
      ...r,
    }),
    httpConnectionsClosed: new Counter({
      name: "http_connections_closed_total",
      help: "Gateway connections closed by the gateway itself, by reason (per-ip-limit, headers-timeout, request-timeout, idle, stream-idle, header-list-size)",
      labelNames: ["reason"],
      ...r,
    }),
  };
}

/** Circuit breakers, bulkheads and retries, per downstream. */
function resilienceMetrics(r: Registers, sources: Sources) {
  return {
    breakerState: new Gauge({
      name: "circuit_breaker_state",
      help: "Circuit breaker state per downstream: 0 closed, 1 open, 2 half-open, 3 isolated",
      labelNames: ["downstream"],
      collect() {
        for (const [d, st] of sources.downstreams) this.set({ downstream: d }, BREAKER_VALUE[st().breaker] ?? -1);
      },
      ...r,
    }),
    endpointBreakerState: new Gauge({
      name: "endpoint_circuit_breaker_state",
      help: "Circuit breaker state per downstream instance: 0 closed, 1 open, 2 half-open, 3 isolated",
      labelNames: ["downstream", "endpoint"],
      collect() {
        // Instances come and go: only the current ones are reported.
        this.reset();
        for (const [d, st] of sources.downstreams) {
          for (const e of st().endpoints)
            this.set({ downstream: d, endpoint: e.address }, BREAKER_VALUE[e.breaker] ?? -1);
        }
      },
      ...r,
    }),
    breakerTransitions: new Counter({
      name: "circuit_breaker_transitions_total",
      help: "Circuit breaker state changes per downstream and target state",
      labelNames: ["downstream", "to"],
      ...r,
    }),
    bulkheadInFlight: new Gauge({
      name: "bulkhead_in_flight",
      help: "Calls executing per downstream",
      labelNames: ["downstream"],
      collect() {
        for (const [d, st] of sources.downstreams) this.set({ downstream: d }, st().inFlight);
      },
      ...r,
    }),
    bulkheadQueued: new Gauge({
      name: "bulkhead_queued",
      help: "Calls waiting for a bulkhead slot per downstream",
      labelNames: ["downstream"],
      collect() {
        for (const [d, st] of sources.downstreams) this.set({ downstream: d }, st().queued);
      },
      ...r,
    }),
    bulkheadRejected: new Counter({
      name: "bulkhead_rejected_total",
      help: "Calls rejected at once because the downstream's bulkhead was full",
      labelNames: ["downstream"],
      ...r,
    }),
    retries: new Counter({
      name: "rpc_client_retries_total",
      help: "Retried attempts per downstream, method and the code that caused the retry",
      labelNames: ["downstream", "method", "code"],
      ...r,
    }),
  };
}

/** Checkout sagas: started, finished, compensated, how long. */
function sagaMetrics(r: Registers) {
  return {
    sagasStarted: new Counter({
      name: "saga_started_total",
      help: "Checkout sagas started, by mode",
      labelNames: ["mode"],
      ...r,
    }),
    sagasFinished: new Counter({
      name: "saga_finished_total",
      help: "Checkout sagas finished, by mode and outcome (confirmed, cancelled)",
      labelNames: ["mode", "outcome"],
      ...r,
    }),
    sagasCompensated: new Counter({
      name: "saga_compensated_total",
      help: "Sagas that ran compensation (undid completed steps), by mode",
      labelNames: ["mode"],
      ...r,
    }),
    sagaDuration: new Histogram({
      name: "saga_duration_seconds",
      help: "Time from order placed to a terminal state, by mode and outcome",
      labelNames: ["mode", "outcome"],
      buckets: LATENCY_BUCKETS,
      ...r,
    }),
  };
}

/** Sets `gauge` to each consumer's reading, read all at once; a consumer whose reading failed is left out. */
async function readEach(gauge: Gauge<"consumer">, reads: Map<string, () => Promise<number | undefined>>) {
  gauge.reset();
  const read = [...reads].map(async ([consumer, value]) => [consumer, await value()] as const);
  for (const [consumer, n] of await Promise.all(read)) if (n !== undefined) gauge.set({ consumer }, n);
}

/** The outbox relay and the consumers. */
function eventMetrics(r: Registers, sources: Sources) {
  return {
    outboxBacklog: new Gauge({
      name: "outbox_backlog",
      help: "Events committed but not yet published",
      collect() {
        if (sources.backlog) this.set(sources.backlog().count);
      },
      ...r,
    }),
    outboxOldestAge: new Gauge({
      name: "outbox_oldest_unsent_age_seconds",
      help: "Age of the oldest unpublished event (0 when the backlog is empty)",
      collect() {
        if (sources.backlog) this.set(sources.backlog().oldestAgeMs / 1000);
      },
      ...r,
    }),
    relayLag: new Histogram({
      name: "outbox_relay_lag_seconds",
      help: "Time from an event's commit to its publish acknowledgement",
      buckets: LATENCY_BUCKETS,
      ...r,
    }),
    eventsPublished: new Counter({
      name: "events_published_total",
      help: "Events published by the outbox relay, by type",
      labelNames: ["type"],
      ...r,
    }),
    eventsHandled: new Counter({
      name: "events_handled_total",
      help: "Events a consumer processed, by outcome: handled, duplicate, failed, ignored",
      labelNames: ["consumer", "type", "outcome"],
      ...r,
    }),
    redeliveries: new Counter({
      name: "events_redelivered_total",
      help: "Deliveries after the first, per consumer",
      labelNames: ["consumer"],
      ...r,
    }),
    deadLetters: new Counter({
      name: "events_dead_lettered_total",
      help: "Events moved to the DLQ stream, per consumer",
      labelNames: ["consumer"],
      ...r,
    }),
    consumerPending: new Gauge({
      name: "event_consumer_pending",
      help: "Events a consumer's stream holds for it not yet acknowledged (delivered or not), per consumer; absent while NATS does not answer",
      labelNames: ["consumer"],
      async collect() {
        await readEach(this, sources.pending);
      },
      ...r,
    }),
    deadLettersWaiting: new Gauge({
      name: "dead_letters_waiting",
      help: "Dead letters of a consumer the DLQ holds and no redrive has sent back yet, per consumer; absent while NATS does not answer",
      labelNames: ["consumer"],
      async collect() {
        await readEach(this, sources.lettersWaiting);
      },
      ...r,
    }),
    eventsDroppedUnread: new Counter({
      name: "events_dropped_unread_total",
      help: "Events a consumer's stream dropped (its size or age bound) before the consumer read them, per consumer; checked at its start and at each scrape",
      labelNames: ["consumer"],
      async collect() {
        await Promise.all([...sources.dropped.values()].map((check) => check()));
      },
      ...r,
    }),
    eventLag: new Histogram({
      name: "event_consumer_lag_seconds",
      help: "Time from an event's commit to its handling (for history: the read model's lag)",
      labelNames: ["consumer"],
      buckets: LATENCY_BUCKETS,
      ...r,
    }),
  };
}

/** What a downstream's breaker as one changes to: never isolated (endpoints.ts state()). */
const DOWNSTREAM_BREAKERS = ["closed", "half-open", "open"] as const;

/** What a consumer's events_handled_total counts an event of a type it handles as. */
const HANDLED_OUTCOMES = ["handled", "duplicate", "failed", "ignored"] as const;

/**
 * Every metric of one process, in its own registry. A counter's series whose labels are known when
 * what it counts is set up (a downstream, a consumer: see the track methods) is exported from then at
 * 0: prom-client makes a series at its first increment, and one first seen at 1 is invisible to
 * rate() and increase() (the first cancelled saga or bulkhead rejection of a process raised no alert).
 */
export function createMetrics(service: string) {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  // The event loop's delay sampled every 100 ms, not every 10 (prom-client's default): a timer that
  // woke each process ~100 times a second, idle or not, for a histogram read every scrape.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 });
  const r = { registers: [registry] };
  const sources: Sources = {
    downstreams: new Map(),
    pending: new Map(),
    dropped: new Map(),
    lettersWaiting: new Map(),
  };
  const m = {
    ...callMetrics(r),
    ...resilienceMetrics(r, sources),
    ...sagaMetrics(r),
    ...eventMetrics(r, sources),
  };
  return {
    registry,
    /**
     * Samples a downstream's breaker and bulkhead at every scrape; its rejections, breaker changes and
     * the retries of `retried` (each method and a code it is retried on) are at 0 from now.
     */
    trackDownstream(
      name: string,
      state: () => DownstreamSample,
      retried: readonly { readonly method: string; readonly code: string }[] = [],
    ) {
      sources.downstreams.set(name, state);
      m.bulkheadRejected.inc({ downstream: name }, 0);
      for (const to of DOWNSTREAM_BREAKERS) m.breakerTransitions.inc({ downstream: name, to }, 0);
      for (const { method, code } of retried) m.retries.inc({ downstream: name, method, code }, 0);
    },
    /** The downstreams' breakers and bulkheads now, by name (what the chaos service's GetResilience answers). */
    downstreams(): Record<string, DownstreamSample> {
      return Object.fromEntries([...sources.downstreams].map(([name, state]) => [name, state()]));
    },
    /** Samples the outbox backlog at every scrape. */
    trackBacklog(backlog: () => { count: number; oldestAgeMs: number }) {
      sources.backlog = backlog;
    },
    /** The relay publishes events of `types`: each is at 0 from now. */
    trackPublished(types: readonly string[]) {
      for (const type of types) m.eventsPublished.inc({ type }, 0);
    },
    /**
     * A consumer of the event types `types` (those it has handlers for): its letters, drops,
     * redeliveries and each outcome of each of `types` are at 0 from now.
     */
    trackConsumer(consumer: string, types: readonly string[]) {
      m.deadLetters.inc({ consumer }, 0);
      m.eventsDroppedUnread.inc({ consumer }, 0);
      m.redeliveries.inc({ consumer }, 0);
      for (const type of types)
        for (const outcome of HANDLED_OUTCOMES) m.eventsHandled.inc({ consumer, type, outcome }, 0);
    },
    /** Samples what `consumer` has yet to acknowledge at every scrape. */
    trackPending(consumer: string, pending: () => Promise<number | undefined>) {
      sources.pending.set(consumer, pending);
    },
    /** Samples `consumer`'s dead letters not redriven yet at every scrape. */
    trackLettersWaiting(consumer: string, waiting: () => Promise<number | undefined>) {
      sources.lettersWaiting.set(consumer, waiting);
    },
    /** Runs `check` (it counts on `eventsDroppedUnread` itself) for `consumer` at every scrape. */
    trackDropped(consumer: string, check: () => Promise<void>) {
      sources.dropped.set(consumer, check);
    },
    ...m,
  };
}

/** A service's metrics. */
export type Metrics = ReturnType<typeof createMetrics>;
