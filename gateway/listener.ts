/**
 * The gateway's one port: HTTP/1.1 and cleartext HTTP/2 (h2c, told apart by the connection preface
 * "PRI * HTTP/2.0"), with the limits that keep a slow or hostile client from holding resources:
 *
 * - a connection must send its first byte, then complete request headers, within `headersTimeoutMs`; a whole
 *   request (body included) within `requestTimeoutMs`;
 * - a connection with no request in progress (HTTP/1.1 keep-alive, an HTTP/2 session without open streams) is
 *   closed after `idleTimeoutMs`; a call in progress — a long WatchOrder stream — is never cut by it;
 * - a call during which no byte moves either way for `streamIdleTimeoutMs` is cut, and so is an HTTP/2 call
 *   whose queued answer has not shrunk for that long: above all one whose client does not read its answer (an
 *   HTTP/2 receive window of zero), which would otherwise hold the answer, and its memory, for ever;
 * - at most `maxConnectionsPerIp` open connections per client address and `maxConnections` in all; beyond that
 *   a new connection is closed at once;
 * - HTTP/2: at most `maxConcurrentStreams` calls per connection, at most 64 header fields and
 *   {@link MAX_HEADER_LIST_BYTES} of them (and of trailers) once decoded (HPACK lets a few bytes on the wire name a large header many
 *   times: the limit is checked on what was decoded, not only advertised), bounded session memory.
 *
 * Both protocols run on the native socket (the first chunk, read to sniff the protocol, is put back with
 * unshift), so HTTP/2 requests know their client's address like HTTP/1.1 ones.
 */
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { namingPeerErrors } from "../platform/goaway-codes.js";
import { headerListBytes, MAX_HEADER_LIST_BYTES } from "../platform/header-limit.js";
import type { Logger } from "../platform/log.js";
import { endingWithin } from "../platform/socket-end.js";
import { stalledStreams } from "../platform/stalled-streams.js";
import { bodyLimit } from "./grpc-web-text.js";
import { addressKey } from "./limits.js";

/** Limits and address of the listener. Times in ms. */
export interface ListenerOptions {
  readonly host: string;
  readonly port: number;
  readonly log: Logger;
  readonly headersTimeoutMs: number;
  readonly requestTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly streamIdleTimeoutMs: number;
  /** 0: no per-address limit. */
  readonly maxConnectionsPerIp: number;
  readonly maxConnections: number;
  readonly maxConcurrentStreams: number;
  /** Request bodies declared longer (gRPC-Web text: its base64, grpc-web-text.ts) are refused without "100 Continue". */
  readonly maxBodyBytes: number;
  /** Called when the listener closes a connection itself, with why. */
  readonly onClose?: (reason: CloseReason) => void;
}

/** Every reason the listener closes a connection (or an HTTP/2 stream) for itself. */
export const CLOSE_REASONS = [
  "per-ip-limit",
  "headers-timeout",
  "request-timeout",
  "idle",
  "stream-idle",
  "header-list-size",
] as const;

/** Why the listener closed a connection itself. */
export type CloseReason = (typeof CLOSE_REASONS)[number];

/** A listening port. */
export interface Listener {
  readonly port: number;
  /** `http://host:port` a local client can dial. */
  readonly url: string;
  /** Open connections right now. */
  connections(): number;
  /** Stops accepting, GOAWAY to HTTP/2, HTTP/1.1 closed once idle; waits `graceMs` for calls, then cuts them. */
  stop(graceMs: number): Promise<void>;
}

type Handler = (
  req: http.IncomingMessage | http2.Http2ServerRequest,
  res: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** Closes an HTTP/2 session once it has had no open stream for `ms`. */
function closeWhenIdle(session: http2.ServerHttp2Session, ms: number, onIdle: () => void): void {
  let open = 0;
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      onIdle();
      session.close();
      // A client that ignores GOAWAY is cut after one more idle period (and one that keeps its side of the ended socket open: endingWithin).
      setTimeout(() => session.destroy(), ms).unref();
    }, ms);
    timer.unref();
  };
  arm();
  session.on("stream", (stream) => {
    open++;
    clearTimeout(timer);
    stream.once("close", () => {
      if (--open === 0 && !session.closed) arm();
    });
  });
  session.once("close", () => clearTimeout(timer));
}

/**
 * Cuts an HTTP/2 request whose body is not complete within `ms` (Node's
 * requestTimeout covers HTTP/1.1 only). Answers that finish first stop it.
 */
function boundRequestTime(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  ms: number,
  onCut: () => void,
) {
  const timer = setTimeout(() => {
    onCut();
    req.stream.close(http2.constants.NGHTTP2_CANCEL);
  }, ms);
  timer.unref();
  const done = () => clearTimeout(timer);
  req.once("end", done);
  res.once("finish", done);
  req.stream.once("close", done);
}

/** Answers `status` with no body and closes the stream, whatever the client still means to send. */
function refuse(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse, status: number): void {
  res.writeHead(status, { "content-length": "0" });
  res.end(() => req.stream.close(http2.constants.NGHTTP2_NO_ERROR));
}

/** The HTTP/1.1 and HTTP/2 servers that the front hands connections to, with their limits. */
function protocolServers(o: ListenerOptions, handle: Handler, closed: (why: CloseReason) => void) {
  const h1 = http.createServer(
    {
      headersTimeout: o.headersTimeoutMs,
      requestTimeout: o.requestTimeoutMs,
      keepAliveTimeout: o.idleTimeoutMs,
      // Node checks these timeouts on this interval (default 30 s): check often enough to honour them.
      connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(o.headersTimeoutMs / 4))),
    },
    handle,
  );
  // Expect: 100-continue invites the body only if it may be read: a declared length over the limit
  // is refused (413) without it — Node sends "100 Continue" to every such request unless told.
  const invited = (req: http.IncomingMessage | http2.Http2ServerRequest) =>
    !(Number(req.headers["content-length"] ?? 0) > bodyLimit(req.headers["content-type"], o.maxBodyBytes));
  h1.on("checkContinue", (req, res) => {
    if (invited(req)) res.writeContinue();
    handle(req, res);
  });
  // CONNECT (a tunnel, which nothing here serves): 405 and close, as on HTTP/2 (Node would just drop it);
  // what follows is read and dropped, and a client that keeps its side open is let go after a second.
  h1.on("connect", (_req, socket) => {
    socket.on("error", () => {}).resume();
    socket.end("HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    setTimeout(() => socket.destroy(), 1_000).unref();
  });
  // A connection on which nothing moves while a request is answered (its client stopped reading), or
  // between requests for the keep-alive timeout (Node's 'timeout' for both: the answer under way tells).
  h1.on("timeout", (socket: net.Socket & { _httpMessage?: unknown }) => {
    closed(socket._httpMessage ? "stream-idle" : "idle");
    socket.destroy();
  });
  h1.timeout = o.streamIdleTimeoutMs;
  // Node tracks HTTP/1.1 connections — and enforces the header, request and keep-alive timeouts
  // on them — from the server's 'listening' event. This server never listens itself (the front
  // hands it connections), so it is told once that it does.
  h1.emit("listening");
  const h2Handle = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
    if (headerListBytes(req.rawHeaders) > MAX_HEADER_LIST_BYTES) {
      closed("header-list-size");
      refuse(req, res, 431);
      return;
    }
    boundRequestTime(req, res, o.requestTimeoutMs, () => closed("request-timeout"));
    handle(req, res);
  };
  const h2 = http2.createServer(
    {
      settings: { maxConcurrentStreams: o.maxConcurrentStreams, maxHeaderListSize: MAX_HEADER_LIST_BYTES },
      maxHeaderListPairs: 64,
      maxSessionMemory: 16,
    },
    h2Handle,
  );
  h2.on("checkContinue", (req, res) => {
    if (invited(req)) res.writeContinue();
    h2Handle(req, res);
  });
  // CONNECT (a tunnel, which nothing here serves): without this listener Node's compatibility layer
  // answers 405 itself, never calling the handler above, and leaves the stream open for as long as the
  // client keeps its side open.
  h2.on("connect", (req, res) => refuse(req, res, 405));
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (session) => {
    namingPeerErrors(session);
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    closeWhenIdle(session, o.idleTimeoutMs, () => closed("idle"));
    // Every stream, whoever answers it: one on which no byte moves either way is cut.
    session.on("stream", (stream) => {
      stream.setTimeout(o.streamIdleTimeoutMs, () => cut(stream));
      stalled.watch(stream);
      // Trailers are a header list too, bounded as decoded like the headers (h2Handle).
      stream.on("trailers", (_t: unknown, _f: unknown, raw: string[]) => {
        if (headerListBytes(raw) <= MAX_HEADER_LIST_BYTES) return;
        closed("header-list-size");
        stream.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      });
    });
  });
  const cut = (stream: http2.ServerHttp2Stream) => {
    if (stream.closed || stream.destroyed) return; // cut already (by the sweep or Node's timer)
    closed("stream-idle");
    stream.close(http2.constants.NGHTTP2_CANCEL);
  };
  const stalled = stalledStreams(o.streamIdleTimeoutMs, cut);
  return { h1, h2, sessions, stalled };
}

/** Open connections per client (its {@link addressKey}), refusing one past the limit (0: no limit). */
function addressLimit(max: number) {
  const open = new Map<string, number>();
  return {
    /** Takes a slot for `ip`; false when it has none left. */
    take(ip: string): boolean {
      const n = (open.get(ip) ?? 0) + 1;
      if (max > 0 && n > max) return false;
      open.set(ip, n);
      return true;
    },
    release(ip: string): void {
      const left = (open.get(ip) ?? 1) - 1;
      if (left > 0) open.set(ip, left);
      else open.delete(ip);
    },
  };
}

/** Starts listening; resolves once the port is bound. */
export async function listen(o: ListenerOptions, handle: Handler): Promise<Listener> {
  const closed = (why: CloseReason) => o.onClose?.(why);
  const { h1, h2, sessions, stalled } = protocolServers(o, handle, closed);
  const sockets = new Set<net.Socket>();
  const perIp = addressLimit(o.maxConnectionsPerIp);
  const front = net.createServer((socket) => {
    const ip = addressKey(socket.remoteAddress ?? "");
    if (!perIp.take(ip)) {
      closed("per-ip-limit");
      socket.destroy();
      return;
    }
    sockets.add(socket);
    endingWithin(socket, o.idleTimeoutMs); // ended by a server (an idle session's GOAWAY), gone one idle period later
    socket.once("close", () => {
      sockets.delete(socket);
      perIp.release(ip);
    });
    socket.on("error", () => {}); // resets by clients are theirs to have; the close handler cleans up
    // Small RPC messages must not wait for Nagle's algorithm (a ~40 ms stall against delayed ACKs).
    socket.setNoDelay(true);
    // A connection that never speaks is closed like one that never finishes its headers.
    const silent = () => {
      closed("headers-timeout");
      socket.destroy();
    };
    socket.setTimeout(o.headersTimeoutMs, silent);
    socket.once("data", (first: Buffer) => {
      socket.setTimeout(0).off("timeout", silent); // else it fires again on the servers' own timeouts
      socket.pause();
      socket.unshift(first);
      // Both servers read the native socket and see the sniffed chunk first. HTTP/2 reads the
      // buffered bytes itself; the HTTP/1.1 parser listens for 'data', which a paused socket holds back.
      if (first.subarray(0, 3).toString("latin1") === "PRI") {
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    });
  });
  front.maxConnections = o.maxConnections;
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
    connections: () => sockets.size,
    async stop(graceMs) {
      front.close();
      h1.close(); // closes its idle connections too
      // Answers still to come say Connection: close: said keep-alive, a client's next call raced the drain's close.
      const last = (res?: http.ServerResponse) => res?.headersSent === false && res.setHeader("connection", "close");
      for (const s of sockets) last((s as net.Socket & { _httpMessage?: http.ServerResponse })._httpMessage);
      h1.prependListener("request", (_req, res) => last(res));
      h2.close();
      for (const s of sessions) s.close(); // GOAWAY: no new calls; calls in progress may finish
      const deadline = Date.now() + graceMs;
      for (; sockets.size > 0 && Date.now() < deadline; await new Promise((r) => setTimeout(r, 25))) {
        h1.closeIdleConnections(); // one kept alive past its answer: closed once idle, not held to the grace
      }
      if (sockets.size > 0) o.log.warn({ connections: sockets.size, graceMs }, "drain timed out; closing connections");
      for (const s of sockets) s.destroy();
      stalled.stop();
    },
  };
}
