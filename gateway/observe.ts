/**
 * Each gateway request's span, RED sample and access log line (dispatch.ts).
 */
import type { IncomingHttpHeaders } from "node:http";
import { Code } from "@connectrpc/connect";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
import { context, type Link, ROOT_CONTEXT, type Span, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { extractContext } from "../platform/propagation.js";
import { READ_ONLY, rpcAttributes } from "../platform/tracing.js";
import type { ClientInfo } from "./context.js";
import type { DispatchOptions } from "./dispatch.js";
import type { Outcome } from "./wire.js";

/**
 * One span, one RED sample and one access line per request, whichever way it ends (reported once). The
 * span is begun once admission has decided (with the request's start time): a request refused before a
 * handler ran — no procedure, no or a bad token, a limit — did nothing, and is sampled as a read, not kept
 * whole as an order would be (a flood of such requests wrote a span each, and pushed the orders' traces
 * out of the span file). So is an admitted call without an identity (a token-free service: reflection,
 * which only describes the API): before its handler runs, no token was no more than a read.
 */
export function observe(
  o: Pick<DispatchOptions, "log" | "telemetry" | "trustTraceparent">,
  req: { readonly headers: IncomingHttpHeaders },
  handler: UniversalHandler | undefined,
  protocol: string,
  client: ClientInfo,
) {
  // Label values come from the routing table only: a client cannot mint new series.
  const procedure = handler ? `${handler.service.typeName}/${handler.method.name}` : "unknown";
  const started = performance.now();
  const incoming = extractContext({ get: (k) => req.headers[k], set: () => {} });
  const theirs = trace.getSpanContext(incoming);
  // Trusted, its trace is continued — the trace context alone: not its baggage, which went to every service.
  const parent = o.trustTraceparent && theirs ? trace.setSpanContext(ROOT_CONTEXT, theirs) : ROOT_CONTEXT;
  const links: Link[] = theirs && !o.trustTraceparent ? [{ context: theirs }] : [];
  let span: Span | undefined;
  /** The request's span, begun (once) at its start time; `read`: sampled as a read, whatever its method. */
  const begin = (read: boolean): Span => {
    if (span) return span;
    const call = { ...rpcAttributes("connect_rpc", handler?.method), ...(read ? { [READ_ONLY]: true } : {}) };
    const attributes = { ...call, "http.request.protocol": protocol };
    span = o.telemetry.tracer.startSpan(
      procedure,
      { kind: SpanKind.SERVER, attributes, links, startTime: started },
      parent,
    );
    return span;
  };
  let reported = false;
  const report = (outcome: Outcome, principal: string) => {
    if (reported) return;
    reported = true;
    const code = outcome.code === 0 ? "OK" : (Code[outcome.code] ?? "Unknown");
    const ended = performance.now();
    const ms = ended - started;
    const s = begin(true); // refused before a handler ran, if not begun yet
    if (outcome.code !== 0) s.setStatus({ code: SpanStatusCode.ERROR, message: code });
    s.end(ended);
    o.telemetry.metrics.httpServer.observe({ procedure, protocol, code }, ms / 1000);
    const line = { procedure, protocol, code, ms: Math.round(ms * 10) / 10, principal, ip: client.ip };
    context.with(trace.setSpan(parent, s), () => o.log.info({ ...line, request_id: client.requestId }, "access"));
  };
  /** The admitted call's context; `anonymous` when it has no identity (a token-free service). */
  const admitted = (anonymous: boolean) => trace.setSpan(parent, begin(anonymous));
  return { admitted, report, procedure };
}
