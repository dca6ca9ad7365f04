/**
 * The gateway's HTTP front: one port (see listener.ts) that speaks the
 * Connect protocol (JSON and binary), gRPC-Web and gRPC. Before the
 * pipeline (dispatch.ts) it settles what every request gets whatever it asks
 * for: a request id (accepted from the client when well-formed, returned
 * always), CORS for allowed origins, the health probes, and the plain
 * endpoints (endpoint.ts: the OpenAPI document, the web page, the
 * development sign-in) and CORS preflights behind the same per-address
 * limits as every call, each with its RED sample and access line.
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError, cors as connectCors } from "@connectrpc/connect";
import { onAnswerEnd } from "./answer-end.js";
import { hostProblem } from "./context.js";
import { answer, clientIp, createDispatch, type DispatchOptions } from "./dispatch.js";
import type { Endpoint, Req, Res } from "./endpoint.js";
import { admitAddress } from "./limits.js";
import { CLOSE_REASONS, type Listener, type ListenerOptions, listen } from "./listener.js";
import { findOpenApiDocument, openApiEndpoint } from "./openapi.js";
import { restErrorAnswer } from "./rest-serve.js";

/** What the HTTP front needs. */
export interface FrontOptions extends DispatchOptions, Omit<ListenerOptions, "log" | "onClose"> {
  /** Allowed CORS origins; "*" allows any; empty disables CORS. */
  readonly corsOrigins: readonly string[];
  /** Plain HTTP endpoints tried before the RPC pipeline (the web page, the development sign-in). */
  readonly endpoints?: readonly Endpoint[];
}

/** A listening gateway front. */
export interface RunningFront {
  readonly port: number;
  readonly url: string;
  /** Stops accepting connections, lets in-flight calls finish within `graceMs`, then closes the rest. */
  stop(graceMs: number): Promise<void>;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const EXPOSED = [...connectCors.exposedHeaders, "x-request-id", "retry-after"].join(", ");
const ALLOWED = [...connectCors.allowedHeaders, "authorization", "x-request-id", "traceparent", "idempotency-key"].join(
  ", ",
);

/** Sets the CORS headers for an allowed `origin`; true when the request is a preflight (answered by {@link PREFLIGHT}). */
function cors(req: Req, res: Res, allowed: readonly string[]): boolean {
  if (allowed.length === 0) return false;
  // Whether an answer has CORS headers depends on Origin: a shared cache must key on it, also for an answer
  // to a request without one (else a year-long asset, cached first without, reached an allowed origin bare).
  res.setHeader("vary", "Origin");
  const origin = req.headers.origin;
  if (origin === undefined || !(allowed.includes("*") || allowed.includes(origin))) return false;
  res.setHeader("access-control-allow-origin", origin);
  res.setHeader("access-control-expose-headers", EXPOSED);
  if (req.method !== "OPTIONS") return false;
  res.setHeader("access-control-allow-methods", connectCors.allowedMethods.join(", "));
  res.setHeader("access-control-allow-headers", ALLOWED);
  res.setHeader("access-control-max-age", "7200");
  return true;
}

/** The answer to an allowed origin's preflight: counted, logged and holding a call slot like any request (any client can send an Origin). */
const PREFLIGHT: Endpoint = {
  name: "preflight",
  owns: () => false,
  serve: (_req, res) => {
    res.writeHead(204);
    res.end();
  },
};

/** The codes the plain endpoints' statuses mean (the REST mapping read backwards); any other 4xx/5xx is Unknown/Internal. */
const CODE_OF_STATUS: Readonly<Record<number, Code>> = {
  400: Code.InvalidArgument,
  404: Code.NotFound,
  405: Code.Unimplemented,
  413: Code.ResourceExhausted,
  429: Code.ResourceExhausted,
  503: Code.Unavailable,
};
const plainCodeName = (status: number): string =>
  status < 400 ? "OK" : Code[CODE_OF_STATUS[status] ?? (status < 500 ? Code.Unknown : Code.Internal)];

/**
 * A plain endpoint's RED sample and access line, as every call has (dispatch.ts), when its answer
 * ends: its status read as a code (429 is ResourceExhausted), Canceled if the client left first.
 */
function observePlain(o: FrontOptions, name: string, req: Req, res: Res, ip: string, requestId: string): void {
  const started = performance.now();
  onAnswerEnd(req, res, () => {
    // A status only for an answer sent whole: one cut short may have been Node's own (a 408, a 400).
    // An HTTP/2 client's reset ends its body as if complete (Node's compatibility layer), so the
    // answer may even have been written since: the stream's reset code tells.
    const sent = res.writableFinished && !("stream" in req && req.stream.rstCode);
    const code = sent ? plainCodeName(res.statusCode) : "Canceled";
    const ms = performance.now() - started;
    const procedure = `plain/${name}`;
    o.telemetry.metrics.httpServer.observe({ procedure, protocol: "http", code }, ms / 1000);
    const line = { procedure, protocol: "http", code, ...(sent ? { status: res.statusCode } : {}) };
    o.log.info({ ...line, ms: Math.round(ms * 10) / 10, ip, request_id: requestId }, "access");
  });
}

/**
 * A target in absolute form (`GET http://host/v1/products`, which RFC 9112 §3.2.2 says a server must
 * accept) as the origin form every layer reads, and its authority; any other form is left as sent (and
 * not found), with none.
 */
export function originForm(target: string): { path: string; authority?: string } {
  const absolute = /^https?:\/\/([^/?#]*)/i.exec(target);
  if (!absolute) return { path: target };
  const rest = target.slice(absolute[0].length);
  return { path: rest.startsWith("/") ? rest : `/${rest}`, authority: absolute[1] ?? "" };
}

/** Starts the front on `host:port`. */
export async function startFront(o: FrontOptions): Promise<RunningFront> {
  const dispatch = createDispatch(o);
  const endpoints = [openApiEndpoint(findOpenApiDocument(), o.log), ...(o.endpoints ?? [])];
  let draining = false;
  const handle = (req: Req, res: Res) => {
    if (req.url !== undefined && !req.url.startsWith("/")) {
      const { path, authority } = originForm(req.url);
      req.url = path;
      // The target's authority, not Host, names what is asked for (RFC 9112 §3.2.2), and every check of
      // Host reads it from here on (an authority with user info is not a valid Host).
      if (authority !== undefined) req.headers.host = authority;
    }
    let requestId = String(req.headers["x-request-id"] ?? "");
    if (!REQUEST_ID.test(requestId)) {
      requestId = randomUUID();
      req.headers["x-request-id"] = requestId;
    }
    res.setHeader("x-request-id", requestId);
    // Every answer says what it is (JSON, protobuf, gRPC, text): a browser is not to guess otherwise.
    res.setHeader("x-content-type-options", "nosniff");
    const preflight = cors(req, res, o.corsOrigins);
    const probe = req.method === "GET" ? req.url?.split("?", 1)[0] : undefined;
    if (probe === "/healthz" || probe === "/readyz") {
      // Probes (a query, such as a cache-buster, changes nothing): /healthz while the process runs,
      // /readyz until shutdown begins.
      const ok = probe === "/healthz" || !draining;
      res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" });
      res.end(ok ? "ok\n" : "draining\n");
      return;
    }
    const plain = preflight ? PREFLIGHT : endpoints.find((e) => e.owns(req));
    if (!plain) {
      dispatch(req, res, requestId);
      return;
    }
    // The same per-address limits as every call: /dev/token signs a token per request.
    const ip = clientIp(req, o.trustProxy);
    observePlain(o, plain.name, req, res, ip, requestId);
    // A preflight takes a call slot but no rate token: a browser reads a refused preflight as a CORS
    // failure (no status, no Retry-After), and the call it precedes is rated anyway.
    const badHost = hostProblem(req, o.loopbackHostsOnly);
    const refused = badHost
      ? new ConnectError(badHost, Code.InvalidArgument)
      : admitAddress(o, ip, req, res, plain !== PREFLIGHT);
    if (refused) answer(res, restErrorAnswer(refused));
    else plain.serve(req, res);
  };
  const closes = o.telemetry.metrics.httpConnectionsClosed;
  // Each from 0: a series first seen at 1 is invisible to rate() and increase() (see createMetrics).
  for (const reason of CLOSE_REASONS) closes.inc({ reason }, 0);
  const listener: Listener = await listen({ ...o, log: o.log, onClose: (reason) => closes.inc({ reason }) }, handle);
  return {
    port: listener.port,
    url: listener.url,
    async stop(graceMs) {
      draining = true;
      // What the drain waits for, said while it waits: calls in progress hold their connections open.
      o.log.info({ connections: listener.connections(), graceMs }, "draining connections");
      await listener.stop(graceMs);
    },
  };
}
