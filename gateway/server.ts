/**
 * The gateway's HTTP front: one port (see listener.ts) that speaks the
 * Connect protocol (JSON and binary), gRPC-Web and gRPC. Before the
 * pipeline (dispatch.ts) it settles what every request gets whatever it asks
 * for: a request id (accepted from the client when well-formed, returned
 * always), CORS for allowed origins, the health probes, and the plain
 * endpoints (endpoint.ts: the OpenAPI document, the web page, the
 * development sign-in) behind the same per-address limits as every call.
 */
import { randomUUID } from "node:crypto";
import { cors as connectCors } from "@connectrpc/connect";
import { answer, clientIp, createDispatch, type DispatchOptions } from "./dispatch.js";
import type { Endpoint, Req, Res } from "./endpoint.js";
import { admitAddress } from "./limits.js";
import { type Listener, type ListenerOptions, listen } from "./listener.js";
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

/** Sets the CORS headers for an allowed `origin`; true when the request was a preflight, answered here. */
function cors(req: Req, res: Res, allowed: readonly string[]): boolean {
  const origin = req.headers.origin;
  if (origin === undefined || !(allowed.includes("*") || allowed.includes(origin))) return false;
  res.setHeader("access-control-allow-origin", origin);
  res.setHeader("vary", "Origin");
  res.setHeader("access-control-expose-headers", EXPOSED);
  if (req.method !== "OPTIONS") return false;
  res.setHeader("access-control-allow-methods", connectCors.allowedMethods.join(", "));
  res.setHeader("access-control-allow-headers", ALLOWED);
  res.setHeader("access-control-max-age", "7200");
  res.writeHead(204);
  res.end();
  return true;
}

/** Starts the front on `host:port`. */
export async function startFront(o: FrontOptions): Promise<RunningFront> {
  const dispatch = createDispatch(o);
  const endpoints = [openApiEndpoint(findOpenApiDocument(), o.log), ...(o.endpoints ?? [])];
  let draining = false;
  const handle = (req: Req, res: Res) => {
    let requestId = String(req.headers["x-request-id"] ?? "");
    if (!REQUEST_ID.test(requestId)) {
      requestId = randomUUID();
      req.headers["x-request-id"] = requestId;
    }
    res.setHeader("x-request-id", requestId);
    if (cors(req, res, o.corsOrigins)) return;
    if (req.method === "GET" && (req.url === "/healthz" || req.url === "/readyz")) {
      // Probes: /healthz while the process runs; /readyz until shutdown begins.
      const ok = req.url === "/healthz" || !draining;
      res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" });
      res.end(ok ? "ok\n" : "draining\n");
      return;
    }
    const plain = endpoints.find((e) => e.owns(req));
    if (!plain) {
      dispatch(req, res, requestId);
      return;
    }
    // The same per-address limits as every call: /dev/token signs a token per request.
    const refused = admitAddress(o, clientIp(req, o.trustProxy), res);
    if (refused) answer(res, restErrorAnswer(refused));
    else plain.serve(req, res);
  };
  const closes = o.telemetry.metrics.httpConnectionsClosed;
  const listener: Listener = await listen({ ...o, log: o.log, onClose: (reason) => closes.inc({ reason }) }, handle);
  return {
    port: listener.port,
    url: listener.url,
    async stop(graceMs) {
      draining = true;
      await listener.stop(graceMs);
    },
  };
}
