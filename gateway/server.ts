/**
 * The gateway's HTTP front: one port that speaks the Connect protocol (JSON
 * and binary), gRPC-Web and gRPC, over HTTP/1.1 and cleartext HTTP/2 (h2c,
 * told apart by the connection preface). Around the Connect handlers: request
 * ids, CORS, a body size limit, rate limits, authentication and one access
 * log line per call.
 */
import { randomUUID } from "node:crypto";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { Duplex } from "node:stream";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  cors as connectCors,
  createContextValues,
  type Interceptor,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { context, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { extractContext, type Logger, type Telemetry } from "../platform/index.js";
import { AuthError, type Authenticator } from "./auth.js";
import { type ClientInfo, kClient, kIdentity } from "./forward.js";
import type { RateLimiter } from "./limits.js";

/** What the HTTP front needs. */
export interface FrontOptions {
  readonly host: string;
  readonly port: number;
  readonly log: Logger;
  readonly telemetry: Telemetry;
  readonly routes: (router: ConnectRouter) => void;
  readonly authenticate: Authenticator;
  readonly perPrincipal: RateLimiter;
  readonly perIp: RateLimiter;
  readonly maxBodyBytes: number;
  /** Allowed CORS origins; "*" allows any; empty disables CORS. */
  readonly corsOrigins: readonly string[];
  /** Take the client IP from X-Forwarded-For (only behind a trusted proxy). */
  readonly trustProxy: boolean;
}

/** A listening gateway front. */
export interface RunningFront {
  readonly port: number;
  readonly url: string;
  /** Stops accepting connections, lets in-flight calls finish within `graceMs`, then closes the rest. */
  stop(graceMs: number): Promise<void>;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function protocolOf(contentType: string | null): string {
  if (!contentType) return "connect";
  if (contentType.startsWith("application/grpc-web")) return "grpc-web";
  if (contentType.startsWith("application/grpc")) return "grpc";
  return "connect";
}

/**
 * The socket as a plain duplex stream that first yields the bytes already
 * read. Node's HTTP/2 server reads a net.Socket through its native handle
 * and would never see bytes put back with unshift(); given a non-socket
 * duplex it reads through JavaScript instead.
 */
function replaying(socket: net.Socket, first: Buffer): Duplex {
  const d = new Duplex({
    read: () => {
      socket.resume();
    },
    write: (chunk: Buffer, _enc, cb) => {
      socket.write(chunk, cb);
    },
    final: (cb) => {
      socket.end(cb);
    },
    destroy: (err, cb) => {
      socket.destroy(err ?? undefined);
      cb(err);
    },
  });
  d.push(first);
  socket.on("data", (chunk: Buffer) => {
    if (!d.push(chunk)) socket.pause();
  });
  socket.once("end", () => d.push(null));
  socket.once("error", (err) => d.destroy(err));
  socket.once("close", () => d.destroy());
  return d;
}

/** Starts the front on `host:port`. */
export async function startFront(o: FrontOptions): Promise<RunningFront> {
  // One span, one RED sample and one access log line per call; the span is active for
  // everything below (auth, the upstream call), so the trace continues downstream.
  const observe: Interceptor = (next) => async (req) => {
    const started = performance.now();
    const client = req.contextValues.get(kClient);
    const procedure = `${req.service.typeName}/${req.method.name}`;
    const protocol = protocolOf(req.header.get("content-type"));
    const parent = extractContext(req.header);
    const span = o.telemetry.tracer.startSpan(
      procedure,
      { kind: SpanKind.SERVER, attributes: { "rpc.system": "connect_rpc", "http.request.protocol": protocol } },
      parent,
    );
    const ctx = trace.setSpan(parent, span);
    const done = (err?: unknown) => {
      const code = err === undefined ? "OK" : (Code[ConnectError.from(err).code] ?? "Unknown");
      const ms = performance.now() - started;
      if (err !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: code });
      span.end();
      o.telemetry.metrics.httpServer.observe({ procedure, protocol, code }, ms / 1000);
      context.with(ctx, () =>
        o.log.info(
          {
            procedure,
            protocol,
            code,
            ms: Math.round(ms * 10) / 10,
            principal: req.contextValues.get(kIdentity)?.subject ?? "",
            ip: client.ip,
            request_id: client.requestId,
          },
          "access",
        ),
      );
    };
    try {
      const res = await context.with(ctx, () => next(req));
      if (!res.stream) {
        done();
        return res;
      }
      // A stream's outcome is known when it ends.
      const message = res.message;
      return {
        ...res,
        message: (async function* () {
          try {
            yield* message;
            done();
          } catch (err) {
            done(err);
            throw err;
          }
        })(),
      };
    } catch (err) {
      done(err);
      throw err;
    }
  };

  const guard: Interceptor = (next) => async (req) => {
    const client = req.contextValues.get(kClient);
    const limited = (what: string, retryAfterSec: number) =>
      new ConnectError(`rate limit exceeded (${what}); retry after ${retryAfterSec}s`, Code.ResourceExhausted, {
        "retry-after": String(retryAfterSec),
      });
    const byIp = o.perIp.take(`ip:${client.ip}`);
    if (!byIp.ok) throw limited("client address", byIp.retryAfterSec);
    // Reflection describes the public contract only; tools may read it without a token.
    if (req.service.typeName === "grpc.reflection.v1.ServerReflection") return next(req);
    try {
      req.contextValues.set(kIdentity, await o.authenticate(req.header.get("authorization")));
    } catch (err) {
      if (!(err instanceof AuthError)) throw err;
      o.log.debug({ reason: err.message, ip: client.ip, request_id: client.requestId }, "authentication failed");
      // One generic answer for every failure: no hint which check failed.
      throw new ConnectError("authentication required: a valid bearer token", Code.Unauthenticated);
    }
    const who = req.contextValues.get(kIdentity)?.subject ?? "";
    const byPrincipal = o.perPrincipal.take(`sub:${who}`);
    if (!byPrincipal.ok) throw limited("principal", byPrincipal.retryAfterSec);
    return next(req);
  };

  const connect = connectNodeAdapter({
    routes: o.routes,
    interceptors: [observe, guard],
    readMaxBytes: o.maxBodyBytes,
    // Unknown procedures, internal RPCs included: a Connect-shaped 404 rather than an empty one.
    fallback: (req, res) => {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ code: "unimplemented", message: `no public procedure ${req.url ?? ""}` }));
    },
    contextValues: (req) => {
      const values = createContextValues();
      const requestId = String(req.headers["x-request-id"] ?? "");
      const forwarded = o.trustProxy
        ? String(req.headers["x-forwarded-for"] ?? "")
            .split(",")[0]
            ?.trim()
        : "";
      const info: ClientInfo = {
        ip: forwarded || req.socket.remoteAddress || "",
        requestId: REQUEST_ID.test(requestId) ? requestId : "",
      };
      values.set(kClient, info);
      return values;
    },
  });

  const allowOrigin = (origin: string | undefined) =>
    origin !== undefined && (o.corsOrigins.includes("*") || o.corsOrigins.includes(origin));

  const handle = (
    req: http.IncomingMessage | http2.Http2ServerRequest,
    res: http.ServerResponse | http2.Http2ServerResponse,
  ) => {
    // A request id is accepted from the client or generated, and always returned.
    let requestId = String(req.headers["x-request-id"] ?? "");
    if (!REQUEST_ID.test(requestId)) {
      requestId = randomUUID();
      req.headers["x-request-id"] = requestId;
    }
    res.setHeader("x-request-id", requestId);
    const origin = req.headers.origin;
    if (allowOrigin(origin)) {
      res.setHeader("access-control-allow-origin", origin as string);
      res.setHeader("vary", "Origin");
      res.setHeader(
        "access-control-expose-headers",
        [...connectCors.exposedHeaders, "x-request-id", "retry-after"].join(", "),
      );
      if (req.method === "OPTIONS") {
        res.setHeader("access-control-allow-methods", connectCors.allowedMethods.join(", "));
        res.setHeader(
          "access-control-allow-headers",
          [...connectCors.allowedHeaders, "authorization", "x-request-id", "traceparent"].join(", "),
        );
        res.setHeader("access-control-max-age", "7200");
        res.writeHead(204);
        res.end();
        return;
      }
    }
    if (req.method === "GET" && (req.url === "/healthz" || req.url === "/readyz")) {
      // Probes: /healthz while the process runs; /readyz until shutdown begins.
      const ok = req.url === "/healthz" || !draining;
      res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" });
      res.end(ok ? "ok\n" : "draining\n");
      return;
    }
    const length = Number(req.headers["content-length"] ?? 0);
    if (length > o.maxBodyBytes) {
      // Refuse before reading: 413 with a Connect-shaped error body.
      res.writeHead(413, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          code: "resource_exhausted",
          message: `request body of ${length} bytes exceeds the limit of ${o.maxBodyBytes}`,
        }),
      );
      return;
    }
    connect(req as http.IncomingMessage, res as http.ServerResponse);
  };

  let draining = false;
  const h1 = http.createServer(handle);
  const h2 = http2.createServer({}, handle);
  const sockets = new Set<net.Socket>();
  // One port for both: HTTP/2 with prior knowledge starts with the connection preface "PRI * HTTP/2.0".
  const front = net.createServer((socket) => {
    // Small RPC messages must not wait for Nagle's algorithm (a ~40 ms stall against delayed ACKs).
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.once("data", (first: Buffer) => {
      if (first.subarray(0, 3).toString("latin1") === "PRI") {
        h2.emit("connection", replaying(socket, first));
      } else {
        socket.pause();
        socket.unshift(first);
        h1.emit("connection", socket);
        socket.resume();
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    front.once("error", reject);
    front.listen(o.port, o.host, () => resolve());
  });
  const addr = front.address();
  const port = typeof addr === "object" && addr ? addr.port : o.port;
  const dialHost = o.host === "0.0.0.0" || o.host === "::" ? "127.0.0.1" : o.host;
  o.log.info({ port, protocols: ["connect", "grpc-web", "grpc"], http: ["1.1", "h2c"] }, "gateway listening");

  return {
    port,
    url: `http://${dialHost}:${port}`,
    async stop(graceMs) {
      draining = true;
      front.close();
      h1.close();
      h1.closeIdleConnections();
      h2.close();
      const deadline = Date.now() + graceMs;
      while (sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
      for (const s of sockets) s.destroy();
    },
  };
}
