/**
 * Unary gRPC calls on encoded messages straight over one HTTP/2 session per
 * instance (node:http2), for the gateway's fast path: grpc-js's per-call
 * machinery (call stacks, filters, status objects) was the largest single
 * owner of the gateway's CPU after Node's own HTTP/2, for calls whose
 * message it never reads.
 *
 * What a caller sees is what grpc-js gives: a status code and message as
 * {@link RpcError} (with the answer's metadata, details included), UNAVAILABLE
 * when the instance cannot be reached or refuses the stream, CANCELLED when
 * the caller's signal aborts, DEADLINE_EXCEEDED at the deadline (sent along
 * as grpc-timeout, so the server stops too). The session is opened on first
 * use, with Nagle off, and opened again after it closes or fails.
 */
import http2 from "node:http2";
import net from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { Metadata, status } from "@grpc/grpc-js";
import { context, SpanKind, SpanStatusCode, type Tracer, trace } from "@opentelemetry/api";
import { earliestDeadline } from "./deadline.js";
import { RpcError } from "./errors.js";
import { methodPath } from "./grpc.js";
import type { BytesClient, CallOptions } from "./grpc-client.js";
import { injectContext } from "./propagation.js";

const { NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM } = http2.constants;

/** A bytes client over one lazily opened HTTP/2 session to `host:port`. */
export interface H2BytesClient {
  readonly bytes: BytesClient;
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
  return { code: Number.isInteger(code) && code >= 0 && code <= 16 ? code : status.UNKNOWN, message };
}

export function createH2BytesClient(service: DescService, address: string, tracer?: Tracer): H2BytesClient {
  const sep = address.lastIndexOf(":");
  const host = address.slice(0, sep).replace(/^\[|\]$/g, "");
  const port = Number(address.slice(sep + 1));
  let session: http2.ClientHttp2Session | undefined;
  let closed = false;

  const open = (): http2.ClientHttp2Session => {
    if (session && !session.closed && !session.destroyed) return session;
    const s = http2.connect(`http://${address}`, {
      createConnection: () => net.connect({ host, port, noDelay: true }),
    });
    // A session that fails (refused, reset) fails its streams, which report it; then it closes.
    s.on("error", () => {});
    const forget = () => {
      if (session === s) session = undefined;
    };
    s.on("close", forget);
    s.on("goaway", forget);
    s.unref();
    session = s;
    return s;
  };

  const unary =
    (path: string, name: string) =>
    (message: Uint8Array, opts: CallOptions = {}) =>
      new Promise<Uint8Array>((resolve, reject) => {
        if (closed) return reject(rpcError(status.UNAVAILABLE, "client closed"));
        if (opts.signal?.aborted) return reject(rpcError(status.CANCELLED, "cancelled before start"));
        const span = tracer?.startSpan(name, { kind: SpanKind.CLIENT, attributes: { "rpc.system": "grpc" } });
        const md = opts.metadata?.clone() ?? new Metadata();
        if (span) injectContext(md, trace.setSpan(context.active(), span));
        const deadline = earliestDeadline(opts.deadline, opts.timeoutMs);
        const headers: http2.OutgoingHttpHeaders = {
          ...md.toHttp2Headers(),
          ":method": "POST",
          ":path": path,
          "content-type": "application/grpc",
          te: "trailers",
        };
        if (deadline !== undefined) headers["grpc-timeout"] = `${Math.max(1, Math.ceil(deadline - Date.now()))}m`;
        let stream: http2.ClientHttp2Stream;
        let settled = false;
        let timer: NodeJS.Timeout | undefined;
        const finish = (err: RpcError | undefined, answer?: Uint8Array) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          opts.signal?.removeEventListener("abort", onAbort);
          if (span) {
            const code = err ? err.code : 0;
            span.setAttribute("rpc.grpc.status_code", code);
            if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, message: status[code] ?? String(code) });
            span.end();
          }
          if (err) reject(err);
          else resolve(answer as Uint8Array);
        };
        const onAbort = () => {
          stream?.close(NGHTTP2_CANCEL);
          finish(rpcError(status.CANCELLED, "Cancelled on client"));
        };
        try {
          stream = open().request(headers);
        } catch (err) {
          finish(rpcError(status.UNAVAILABLE, `connection to ${address} failed: ${(err as Error).message}`));
          return;
        }
        opts.signal?.addEventListener("abort", onAbort, { once: true });
        if (deadline !== undefined) {
          timer = setTimeout(() => {
            stream.close(NGHTTP2_CANCEL);
            finish(rpcError(status.DEADLINE_EXCEEDED, "Deadline exceeded"));
          }, deadline - Date.now());
        }
        let responseHeaders: http2.IncomingHttpHeaders = {};
        let trailers: http2.IncomingHttpHeaders | undefined;
        const chunks: Buffer[] = [];
        stream.on("response", (h) => {
          responseHeaders = h;
        });
        stream.on("data", (d: Buffer) => chunks.push(d));
        stream.on("error", (err: NodeJS.ErrnoException) => {
          finish(rpcError(status.UNAVAILABLE, `${address}: ${err.code ?? err.message}`));
        });
        stream.on("close", () => {
          if (settled) return;
          const st = statusOf(trailers ?? {}) ?? statusOf(responseHeaders);
          if (!st) {
            // Refused (or never answered): the request was not processed, as grpc-js reports it.
            const refused = stream.rstCode === NGHTTP2_REFUSED_STREAM || !responseHeaders[":status"];
            finish(
              rpcError(
                refused ? status.UNAVAILABLE : status.INTERNAL,
                `${address}: the stream closed without a status`,
              ),
            );
            return;
          }
          const md = Metadata.fromHttp2Headers({ ...responseHeaders, ...(trailers ?? {}) });
          if (st.code !== 0) {
            finish(rpcError(st.code, st.message, md));
            return;
          }
          const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
          if (body.byteLength < 5 || body.readUInt32BE(1) !== body.byteLength - 5 || (body[0] ?? 0) & 1) {
            finish(rpcError(status.INTERNAL, `${address}: the answer is not one uncompressed gRPC message`));
            return;
          }
          finish(undefined, body.subarray(5));
        });
        stream.on("trailers", (t) => {
          trailers = t;
        });
        const frame = Buffer.allocUnsafe(5);
        frame[0] = 0;
        frame.writeUInt32BE(message.byteLength, 1);
        stream.write(frame);
        stream.end(message);
      });

  const bytes: Record<string, unknown> = {};
  for (const m of service.methods) {
    if (m.methodKind === "unary") bytes[m.localName] = unary(methodPath(m), methodPath(m).slice(1));
  }
  return {
    bytes: bytes as BytesClient,
    close: () => {
      closed = true;
      session?.close();
    },
  };
}
