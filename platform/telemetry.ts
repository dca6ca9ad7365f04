/**
 * Observability (seed 4-7): traces with OpenTelemetry, RED and pattern
 * metrics with prom-client, and the glue that puts trace ids into logs.
 *
 * Tracing is process-wide (one tracer provider, set up by {@link startTracing}
 * in a process's main); every app gets its own {@link Telemetry} — a tracer
 * named after the service and its own metrics registry — so several services
 * can share one test process without their metrics colliding.
 *
 * Trace context travels as W3C `traceparent`: in gRPC metadata, in HTTP
 * headers at the gateway, in NATS message headers and in the outbox rows
 * (so an event published after a crash still belongs to the request that
 * wrote it).
 */
import http from "node:http";
import {
  type Context,
  context,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  trace,
} from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { BatchSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace-base";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { Logger } from "./log.js";
import { DEFAULT_TRACE_FILE_MAX_BYTES, FileSpanExporter } from "./span-file.js";

/** Seconds buckets for latencies from sub-millisecond RPCs to slow sagas. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** Live state sampled at scrape time. */
interface Sources {
  downstreams: Map<string, () => { breaker: string; inFlight: number; queued: number }>;
  backlog?: () => { count: number; oldestAgeMs: number };
}

const BREAKER_VALUE: Record<string, number> = { closed: 0, open: 1, "half-open": 2, isolated: 3 };

/** Every metric a shopmesh process exports. Label sets are bounded: no ids in labels. */
export function createMetrics(service: string) {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry });
  const r = { registers: [registry] };
  const sources: Sources = { downstreams: new Map() };
  return {
    registry,
    /** Samples a downstream's breaker and bulkhead at every scrape. */
    trackDownstream(name: string, state: () => { breaker: string; inFlight: number; queued: number }) {
      sources.downstreams.set(name, state);
    },
    /** Samples the outbox backlog at every scrape. */
    trackBacklog(backlog: () => { count: number; oldestAgeMs: number }) {
      sources.backlog = backlog;
    },
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
      help: "Gateway connections closed by the gateway itself, by reason (per-ip-limit, headers-timeout, request-timeout, idle)",
      labelNames: ["reason"],
      ...r,
    }),
    breakerState: new Gauge({
      name: "circuit_breaker_state",
      help: "Circuit breaker state per downstream: 0 closed, 1 open, 2 half-open, 3 isolated",
      labelNames: ["downstream"],
      collect() {
        for (const [d, st] of sources.downstreams) this.set({ downstream: d }, BREAKER_VALUE[st().breaker] ?? -1);
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
    eventLag: new Histogram({
      name: "event_consumer_lag_seconds",
      help: "Time from an event's commit to its handling (for history: the read model's lag)",
      labelNames: ["consumer"],
      buckets: LATENCY_BUCKETS,
      ...r,
    }),
  };
}

/** A service's metrics. */
export type Metrics = ReturnType<typeof createMetrics>;

/** A service's tracer and metrics. */
export interface Telemetry {
  readonly service: string;
  readonly tracer: Tracer;
  readonly metrics: Metrics;
}

/** Telemetry for `service`: a tracer named after it (on the process-wide provider) and its own registry. */
export function createTelemetry(service: string): Telemetry {
  return { service, tracer: trace.getTracer(service), metrics: createMetrics(service) };
}

// ---------------------------------------------------------------------------
// Context propagation

/** A carrier we can inject into / extract from: gRPC Metadata, NATS headers, fetch Headers. */
interface Carrier {
  get(key: string): unknown;
  set(key: string, value: string): void;
}

const getter = {
  keys: (_c: Carrier) => ["traceparent", "tracestate"],
  get: (c: Carrier, key: string) => {
    const v = c.get(key);
    const first = Array.isArray(v) ? v[0] : v;
    return typeof first === "string" && first !== "" ? first : undefined;
  },
};
const setter = { set: (c: Carrier, key: string, value: string) => c.set(key, value) };

/** Writes the context's trace headers into `carrier`. */
export function injectContext(carrier: Carrier, ctx: Context = context.active()): void {
  propagation.inject(ctx, carrier, setter);
}

/** The context carried by `carrier` (the root context if it carries none). */
export function extractContext(carrier: Carrier): Context {
  return propagation.extract(ROOT_CONTEXT, carrier, getter);
}

/** The active span's `traceparent`, or "" outside any span. */
export function currentTraceparent(ctx: Context = context.active()): string {
  const m = new Map<string, string>();
  propagation.inject(ctx, m, { set: (c, k, v) => c.set(k, v) });
  return m.get("traceparent") ?? "";
}

/** The context a stored `traceparent` denotes. */
export function contextOf(traceparent: string): Context {
  return traceparent ? extractContext(new Map([["traceparent", traceparent]])) : ROOT_CONTEXT;
}

/**
 * Runs `fn` inside a new span (made active), ending it when `fn` settles;
 * a thrown error marks the span as failed and is rethrown.
 */
export async function inSpan<T>(
  tracer: Tracer,
  name: string,
  opts: { kind?: SpanKind; parent?: Context; attributes?: Record<string, string | number> },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const span = tracer.startSpan(
    name,
    { kind: opts.kind ?? SpanKind.INTERNAL, attributes: opts.attributes },
    opts.parent ?? context.active(),
  );
  try {
    return await context.with(trace.setSpan(opts.parent ?? context.active(), span), () => fn(span));
  } catch (err) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
    throw err;
  } finally {
    span.end();
  }
}

/** Trace and span id of the active span, for log lines. */
export function logIds(): { trace_id?: string; span_id?: string } {
  const sc = trace.getActiveSpan()?.spanContext();
  return sc ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}

// ---------------------------------------------------------------------------
// Export

/** Process-wide tracing: starts the OpenTelemetry SDK once; returns its shutdown. */
export async function startTracing(opts: {
  service: string;
  otlpEndpoint: string;
  traceFile: string;
  /** Size at which the trace file is rotated, bytes (default 50 MiB). */
  traceFileMaxBytes?: number;
  extra?: SpanProcessor[];
}): Promise<() => Promise<void>> {
  const processors: SpanProcessor[] = [...(opts.extra ?? [])];
  if (opts.otlpEndpoint) {
    processors.push(
      new BatchSpanProcessor(new OTLPTraceExporter({ url: `${opts.otlpEndpoint.replace(/\/$/, "")}/v1/traces` })),
    );
  }
  if (opts.traceFile)
    processors.push(
      new BatchSpanProcessor(
        new FileSpanExporter(opts.traceFile, opts.traceFileMaxBytes ?? DEFAULT_TRACE_FILE_MAX_BYTES),
        {
          scheduledDelayMillis: 500,
        },
      ),
    );
  const sdk = new NodeSDK({
    resource: resourceFromAttributes({ "service.name": opts.service }),
    spanProcessors: processors,
    instrumentations: [],
  });
  sdk.start();
  return () => sdk.shutdown();
}

/** Serves `/metrics` (Prometheus text) and `/healthz` on `host:port` (port 0: any free port). */
export async function serveMetrics(
  registry: Registry,
  port: number,
  host: string,
  log: Logger,
): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.url === "/metrics") {
      registry.metrics().then(
        (body) => {
          res.writeHead(200, { "content-type": registry.contentType });
          res.end(body);
        },
        (err: unknown) => {
          res.writeHead(500);
          res.end(String(err));
        },
      );
    } else if (req.url === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok\n");
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address();
  const bound = typeof addr === "object" && addr ? addr.port : port;
  log.info({ port: bound }, "metrics on /metrics");
  return { port: bound, close: () => new Promise((r) => server.close(() => r())) };
}

// ---------------------------------------------------------------------------
// gRPC

/** Status codes that mark a server span as failed (OpenTelemetry semantic conventions for gRPC). */
const SERVER_ERROR_CODES = new Set([2, 4, 12, 13, 14, 15]);

/**
 * Server interceptor: continues the caller's trace (traceparent metadata)
 * in a SERVER span that is active while the handler runs, and records the
 * call in `rpc_server_duration_seconds`.
 */
export function serverTelemetry(tel: Telemetry, codeOf: (err: unknown) => number, codeName: (code: number) => string) {
  return async <T>(
    ctx: { method: { name: string; parent: { typeName: string } }; metadata: Carrier },
    next: () => Promise<T>,
  ) => {
    const method = `${ctx.method.parent.typeName}/${ctx.method.name}`;
    const parent = extractContext(ctx.metadata);
    const span = tel.tracer.startSpan(method, { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc" } }, parent);
    const started = performance.now();
    let code = 0;
    try {
      return await context.with(trace.setSpan(parent, span), next);
    } catch (err) {
      code = codeOf(err);
      if (SERVER_ERROR_CODES.has(code)) span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      throw err;
    } finally {
      span.setAttribute("rpc.grpc.status_code", code);
      span.end();
      tel.metrics.rpcServer.observe({ method, code: codeName(code) }, (performance.now() - started) / 1000);
    }
  };
}

/**
 * A process's telemetry from its config: tracing (OTLP and/or the trace
 * file, when configured) started before anything else, and the app's
 * metrics served on METRICS_PORT when set. Returns what to stop at exit.
 */
export async function startProcessTelemetry(
  service: string,
  c: { OTEL_EXPORTER_OTLP_ENDPOINT: string; TRACE_FILE: string; TRACE_FILE_MAX_BYTES: number },
): Promise<() => Promise<void>> {
  if (!c.OTEL_EXPORTER_OTLP_ENDPOINT && !c.TRACE_FILE) return async () => {};
  return startTracing({
    service,
    otlpEndpoint: c.OTEL_EXPORTER_OTLP_ENDPOINT,
    traceFile: c.TRACE_FILE,
    traceFileMaxBytes: c.TRACE_FILE_MAX_BYTES,
  });
}

/** An app's telemetry, with its /metrics endpoint when one was asked for. */
export interface AppTelemetry extends Telemetry {
  /** Port of /metrics, when served. */
  readonly metricsPort: number | undefined;
  /** Stops serving /metrics. */
  close(): Promise<void>;
}

/** Telemetry for an app of `service`, serving /metrics on `METRICS_HOST:METRICS_PORT` when the port is set (0: any free port). */
export async function startAppTelemetry(
  service: string,
  c: { readonly METRICS_PORT: number | undefined; readonly METRICS_HOST: string },
  log: Logger,
): Promise<AppTelemetry> {
  const tel = createTelemetry(service);
  const served =
    c.METRICS_PORT === undefined
      ? undefined
      : await serveMetrics(tel.metrics.registry, c.METRICS_PORT, c.METRICS_HOST, log);
  return { ...tel, metricsPort: served?.port, close: async () => served?.close() };
}
