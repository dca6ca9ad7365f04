/**
 * Trace context propagation: W3C `traceparent` in and out of gRPC metadata,
 * HTTP headers, NATS headers and stored rows (an outbox row, an order), the
 * span helper every layer uses, and the trace ids put into log lines.
 */
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

/** A carrier we can inject into / extract from: gRPC Metadata, NATS headers, fetch Headers. */
export interface Carrier {
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

/** Writes the context's trace headers into a plain object of headers (e.g. HTTP/2's). */
export function injectHeaders(headers: Record<string, unknown>, ctx: Context = context.active()): void {
  propagation.inject(ctx, headers);
}

/** The context carried by `carrier` (the root context if it carries none). */
export function extractContext(carrier: Carrier): Context {
  return propagation.extract(ROOT_CONTEXT, carrier, getter);
}

/** The active span's `traceparent`, or "" outside any span. */
export function currentTraceparent(): string {
  const m = new Map<string, string>();
  propagation.inject(context.active(), m, { set: (c, k, v) => c.set(k, v) });
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

/**
 * Runs `fn` outside any request's trace: for background work (watchers,
 * relays, sweeps, breaker transitions) that a request may happen to start or
 * wake, so its spans and log lines never join that request's trace.
 */
export function detached<T>(fn: () => T): T {
  return context.with(ROOT_CONTEXT, fn);
}

/** Trace and span id of the active span, for log lines. */
export function logIds(): { trace_id?: string; span_id?: string } {
  const sc = trace.getActiveSpan()?.spanContext();
  return sc ? { trace_id: sc.traceId, span_id: sc.spanId } : {};
}
