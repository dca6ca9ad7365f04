/**
 * Unary gRPC calls on encoded messages straight over one HTTP/2 session per
 * instance (node:http2), for the gateway's fast path and, encoded and decoded
 * around it (grpc-client.ts), every typed unary call between services:
 * grpc-js's per-call machinery (call stacks, filters, status objects) was the
 * largest single owner of the gateway's CPU after Node's own HTTP/2, and ~10%
 * of the order service's in an orchestrated saga (docs/performance.md).
 *
 * What a caller sees is what grpc-js gives: a status code and message as
 * {@link RpcError} (with the answer's metadata, details included), UNAVAILABLE
 * when the instance cannot be reached or refuses the stream, CANCELLED when
 * the caller's signal aborts, DEADLINE_EXCEEDED at the deadline (sent along
 * as grpc-timeout, so the server stops too). The session is opened on first
 * use, with Nagle off, and opened again after it closes or fails, or has spent
 * half the resets its server allows (reset-budget.ts).
 */
import http2 from "node:http2";
import net from "node:net";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Metadata, status } from "@grpc/grpc-js";
import type { Tracer } from "@opentelemetry/api";
import { earliestDeadline, grpcTimeout, MAX_TIMER_MS } from "./deadline.js";
import { knownStatus, RpcError } from "./errors.js";
import { framePrefix, methodPath, unframe } from "./grpc.js";
import { type BytesClient, type CallOptions, callTracing } from "./grpc-client.js";
import { Connection } from "./reset-budget.js";

const c = http2.constants;

/** Largest answer taken, as grpc-js's default receive limit. */
const MAX_ANSWER_BYTES = 4 * 1024 * 1024;
const ignore = () => {};
/** The events a call listens to on its stream until 'close'. */
const CALL_EVENTS = ["response", "trailers", "data", "error"] as const;

/** A bytes client over one lazily opened HTTP/2 session to `host:port`. */
export interface H2BytesClient {
  readonly bytes: BytesClient;
  /** Unary calls of another service of the same instance over the same session, untraced (its health check: idle-probe.ts). */
  bytesOf(service: DescService): BytesClient;
  /** Whether its connection failed (refused, reset) within the last second and none is up since. */
  failing(): boolean;
  close(): void;
}

function rpcError(code: status, message: string, md = new Metadata()): RpcError {
  return new RpcError(code, message, md);
}

/** The status carried by a response's trailers (or the headers of a trailers-only answer). */
function statusOf(h: http2.IncomingHttpHeaders): { code: number; message: string } | undefined {
  const raw = h["grpc-status"];
  if (raw === undefined) return undefined;
  const code = Number(raw);
  let message = String(h["grpc-message"] ?? "");
  try {
    message = decodeURIComponent(message);
  } catch {}
  return { code: knownStatus(code), message };
}

/** The status grpc-js reports for a non-200 HTTP answer without a gRPC status. */
function httpStatusCode(s: number): status {
  if (s === 401) return status.UNAUTHENTICATED;
  if (s === 403) return status.PERMISSION_DENIED;
  if (s === 404) return status.UNIMPLEMENTED;
  if (s === 429 || s === 502 || s === 503 || s === 504) return status.UNAVAILABLE;
  return s === 400 ? status.INTERNAL : status.UNKNOWN;
}

/**
 * The status of a call that ended without a gRPC status, as grpc-js maps it:
 * only a call the server did not take or could not answer (a refused stream,
 * a lost connection) is UNAVAILABLE, which the resilience layer may retry
 * even for a non-idempotent method; a reset from a server that may have
 * acted is not.
 */
function endedWithoutStatus(http: number, rst: number, connectionLost: boolean): status {
  if (connectionLost) return status.UNAVAILABLE;
  if (http && http !== 200) return httpStatusCode(http);
  switch (rst) {
    case c.NGHTTP2_REFUSED_STREAM:
      return status.UNAVAILABLE;
    case c.NGHTTP2_CANCEL:
      return status.CANCELLED;
    case c.NGHTTP2_ENHANCE_YOUR_CALM:
      return status.RESOURCE_EXHAUSTED;
    case c.NGHTTP2_INADEQUATE_SECURITY:
      return status.PERMISSION_DENIED;
    default:
      return status.INTERNAL;
  }
}

export function createH2BytesClient(service: DescService, address: string, tracer?: Tracer): H2BytesClient {
  const sep = address.lastIndexOf(":");
  const host = address.slice(0, sep).replace(/^\[|\]$/g, "");
  const port = Number(address.slice(sep + 1));
  let session: http2.ClientHttp2Session | undefined;
  /** Each session's calls and resets (reset-budget.ts). */
  const connections = new WeakMap<http2.ClientHttp2Session, Connection>();
  let closed = false;
  /**
   * When the connection last failed, on the monotonic clock (undefined: it has not, or one is up
   * since): on the wall clock, a step back kept the instance failing, picked last, for the step.
   */
  let failedAt: number | undefined;

  const open = (): http2.ClientHttp2Session => {
    if (session && !session.closed && !session.destroyed) return session;
    const s = http2.connect(`http://${address}`, {
      createConnection: () => net.connect({ host, port, noDelay: true }),
    });
    // A session that fails (refused, reset) fails its streams, which report it; then it closes.
    s.on("error", () => {
      failedAt = performance.now();
    });
    s.on("connect", () => {
      failedAt = undefined;
    });
    const forget = () => {
      if (session === s) session = undefined;
    };
    s.on("close", forget);
    s.on("goaway", forget);
    s.unref();
    connections.set(s, new Connection());
    session = s;
    return s;
  };

  /**
   * Ends `stream` of `sess` with a reset if the connection has one left (reset-budget.ts): one that has
   * none left is abandoned unreset — its answer read and dropped, its server's work ended by its
   * deadline. Past half the allowance the session is retired: its calls in flight end on it, new
   * calls take a fresh one, and it closes after its last (a grpc-js server refuses the calls in flight
   * on a connection its client closes).
   */
  const reset = (sess: http2.ClientHttp2Session, stream: http2.ClientHttp2Stream) => {
    const conn = connections.get(sess) as Connection;
    if (conn.takeReset()) stream.close(c.NGHTTP2_CANCEL);
    if (conn.spent()) {
      conn.retired = true;
      if (session === sess) session = undefined;
    }
  };

  const unary = (m: DescMethod, traced: Tracer | undefined) => {
    const path = methodPath(m);
    const tracing = callTracing(m, traced);
    return (message: Uint8Array, opts: CallOptions = {}) =>
      new Promise<Uint8Array>((resolve, reject) => {
        if (closed) return reject(rpcError(status.UNAVAILABLE, "client closed"));
        if (opts.signal?.aborted) return reject(rpcError(status.CANCELLED, "cancelled before start"));
        const span = tracing.start();
        const deadline = earliestDeadline(opts.deadline, opts.timeoutMs);
        const headers: http2.OutgoingHttpHeaders = {
          ...tracing.headers(opts, span),
          ":method": "POST",
          ":path": path,
          "content-type": "application/grpc",
          te: "trailers",
        };
        if (deadline !== undefined) headers["grpc-timeout"] = grpcTimeout(deadline - Date.now());
        let stream: http2.ClientHttp2Stream | undefined;
        let settled = false;
        let timer: NodeJS.Timeout | undefined;
        const finish = (err: RpcError | undefined, answer?: Uint8Array) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          opts.signal?.removeEventListener("abort", onAbort);
          tracing.end(span, err ? err.code : 0);
          if (err) reject(err);
          else resolve(answer as Uint8Array);
        };
        const onAbort = () => {
          if (stream) reset(sess, stream);
          finish(rpcError(status.CANCELLED, "Cancelled on client"));
        };
        let sess: http2.ClientHttp2Session;
        try {
          sess = open();
          stream = sess.request(headers);
        } catch (err) {
          // A session that can take no more streams (ids used up, closing) is replaced on the next call.
          session?.destroy();
          session = undefined;
          finish(rpcError(status.UNAVAILABLE, `connection to ${address} failed: ${(err as Error).message}`));
          return;
        }
        const s = stream;
        const conn = connections.get(sess) as Connection;
        conn.calls++;
        opts.signal?.addEventListener("abort", onAbort, { once: true });
        if (deadline !== undefined && deadline - Date.now() <= MAX_TIMER_MS) {
          timer = setTimeout(() => {
            reset(sess, s);
            finish(rpcError(status.DEADLINE_EXCEEDED, "Deadline exceeded"));
          }, deadline - Date.now());
        }
        let responseHeaders: http2.IncomingHttpHeaders = {};
        let trailers: http2.IncomingHttpHeaders | undefined;
        const chunks: Buffer[] = [];
        let received = 0;
        let connectionLost = false;
        const listeners = {
          response: (h: http2.IncomingHttpHeaders) => {
            responseHeaders = h;
          },
          trailers: (t: http2.IncomingHttpHeaders) => {
            trailers = t;
          },
          data: (d: Buffer) => {
            if (settled) return; // abandoned unreset: read and dropped
            received += d.byteLength;
            if (received <= MAX_ANSWER_BYTES) {
              chunks.push(d);
              return;
            }
            reset(sess, s);
            // grpc-js's code and words.
            const why = `Received message larger than max (${received} vs. ${MAX_ANSWER_BYTES})`;
            finish(new RpcError(status.RESOURCE_EXHAUSTED, why, new Metadata(), { broken: true }));
          },
          error: (err: NodeJS.ErrnoException) => {
            // A reset is mapped by its code when the stream closes; anything else is the connection's loss.
            if (err.code !== "ERR_HTTP2_STREAM_ERROR") connectionLost = true;
          },
        };
        for (const event of CALL_EVENTS) s.on(event, listeners[event]);
        s.on("error", ignore); // stays: an error after "close" must not throw (it captures nothing)
        s.once("close", () => {
          // Let go of the call: Node frees a closed stream's wrapper only in a full collection, and every
          // scavenge before keeps alive — then promotes — whatever its listeners reach (here the whole
          // call, up to the caller's request): ~1.8 KB a call per 2 KB reachable, measured.
          for (const event of CALL_EVENTS) s.off(event, listeners[event]);
          if (--conn.calls === 0 && conn.retired) sess.close();
          if (settled) return;
          const st = statusOf(trailers ?? {}) ?? statusOf(responseHeaders);
          if (!st) {
            const http = Number(responseHeaders[":status"] ?? 0);
            const code = endedWithoutStatus(http, s.rstCode ?? 0, connectionLost || sess.destroyed);
            const why = `${address}: the call ended without a gRPC status (HTTP ${http || "none"})`;
            finish(new RpcError(code, why, new Metadata(), { broken: true }));
            return;
          }
          if (st.code !== 0) {
            finish(rpcError(st.code, st.message, Metadata.fromHttp2Headers({ ...responseHeaders, ...trailers })));
            return;
          }
          const answer = unframe(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
          if (typeof answer === "string") {
            finish(new RpcError(status.INTERNAL, `${address}: the answer ${answer}`, new Metadata(), { broken: true }));
          } else finish(undefined, answer);
        });
        s.write(framePrefix(message.byteLength));
        s.end(message);
      });
  };

  const bytesOf = (of: DescService, traced?: Tracer): BytesClient =>
    Object.fromEntries(of.methods.filter((m) => m.methodKind === "unary").map((m) => [m.localName, unary(m, traced)]));
  return {
    bytes: bytesOf(service, tracer),
    bytesOf: (of) => bytesOf(of),
    // For a second only: after that a call may try the instance again (it may be back).
    failing: () => failedAt !== undefined && performance.now() - failedAt < 1_000,
    close: () => {
      closed = true;
      session?.close();
    },
  };
}
