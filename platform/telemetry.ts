/**
 * Observability (seed 4-7) as an app holds it: a tracer named after the
 * service (on the process-wide provider, see tracing.ts) and its own metrics
 * registry (metrics.ts), so several services can share one test process
 * without their metrics colliding; and the server interceptor that traces
 * and measures every call.
 *
 * Trace context travels as W3C `traceparent` (propagation.ts): in gRPC
 * metadata, HTTP headers, NATS message headers and the outbox rows, so an
 * event published after a crash still belongs to the request that wrote it.
 */

import type { DescMethod } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { context, SpanKind, SpanStatusCode, type Tracer, trace } from "@opentelemetry/api";
import type { Logger } from "./log.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { serveMetrics } from "./metrics-server.js";
import { type Carrier, extractContext } from "./propagation.js";
import { rpcAttributes } from "./tracing.js";

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

/**
 * Seconds from `sinceMs` (epoch ms, stamped by another process's clock: an event's ce-time, a row's
 * commit time) to `nowMs`, as the lag histograms take them: 0 when `sinceMs` is ahead, undefined when it
 * is no time (NaN: a ce-time missing or unreadable). A stamp ahead of this clock (skew, or a publisher's
 * forged ce-time) is no lag; observed negative, it lowered the histogram's `_sum`, which Prometheus takes
 * for a counter reset: one event stamped in the year 275760 took 8.6e12 s off a consumer's, and every
 * average lag computed from it after.
 */
export function lagSeconds(sinceMs: number, nowMs = Date.now()): number | undefined {
  return Number.isFinite(sinceMs) ? Math.max(0, nowMs - sinceMs) / 1000 : undefined;
}

/** Status codes that mark a server span as failed (OpenTelemetry semantic conventions for gRPC). */
const SERVER_ERROR_CODES: ReadonlySet<number> = new Set([
  status.UNKNOWN,
  status.DEADLINE_EXCEEDED,
  status.UNIMPLEMENTED,
  status.INTERNAL,
  status.UNAVAILABLE,
  status.DATA_LOSS,
]);

/**
 * Server interceptor: continues the caller's trace (traceparent metadata)
 * in a SERVER span that is active while the handler runs, and records the
 * call in `rpc_server_duration_seconds`.
 */
export function serverTelemetry(tel: Telemetry, codeOf: (err: unknown) => number, codeName: (code: number) => string) {
  return async <T>(
    ctx: { method: Pick<DescMethod, "name" | "parent" | "idempotency">; metadata: Carrier },
    next: () => Promise<T>,
  ) => {
    const method = `${ctx.method.parent.typeName}/${ctx.method.name}`;
    const parent = extractContext(ctx.metadata);
    const span = tel.tracer.startSpan(
      method,
      { kind: SpanKind.SERVER, attributes: rpcAttributes("grpc", ctx.method) },
      parent,
    );
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
