/**
 * When the answer to a request is over, however it ends: its response closes or, on HTTP/1.1, its
 * connection does first. Node closes only the response being written when a connection dies: one
 * pipelined behind it, still queued, never emits 'close' — so a call slot, or an access line, that
 * waited for that alone would wait for ever (a client pipelining 60 requests and resetting the
 * connection kept 60 of its address's slots until the gateway restarted).
 */
import type http from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { Socket } from "node:net";
import { Code, ConnectError, type ContextValues } from "@connectrpc/connect";
import type { UniversalServerRequest } from "@connectrpc/connect/protocol";
import type { Req, Res } from "./endpoint.js";

/** What is still waiting on each HTTP/1.1 connection: one 'close' listener per connection, however many. */
const waiting = new WeakMap<Socket, Set<() => void>>();

/** Calls `fn` once when the answer to `req` is over (see above); the function returned lets go without calling it. */
export function onAnswerEnd(req: Req, res: Res, fn: () => void): () => void {
  let over = false;
  // HTTP/2 closes every stream of a session that dies: its response's 'close' is enough there.
  const socket = "stream" in req ? undefined : req.socket;
  const forget = () => {
    over = true;
    res.off("close", end);
    if (socket) waiting.get(socket)?.delete(end);
  };
  const end = () => {
    if (over) return;
    forget();
    fn();
  };
  res.once("close", end);
  if (!socket) {
    // A stream reset while the call was being admitted: its response closed before anyone listened.
    if ((req as Http2ServerRequest).stream.closed) queueMicrotask(end);
    return forget;
  }
  if (socket.closed) {
    queueMicrotask(end);
    return forget;
  }
  let set = waiting.get(socket);
  if (!set) {
    const mine = new Set<() => void>();
    socket.once("close", () => {
      for (const f of mine) f();
    });
    waiting.set(socket, mine);
    set = mine;
  }
  set.add(end);
  return forget;
}

/**
 * For an answer sent before the request's whole body arrived (a limit, a deadline): on HTTP/1.1 the
 * connection ends with the answer, or the rest would be parsed as a request (and answered again,
 * 408). Call before the answer's headers are written. (An HTTP/2 stream is left to the request
 * timeout: closing it once answered, with RST_STREAM, could overtake the answer's END_STREAM — which
 * curl then reported as an empty reply.)
 */
export function dropUnreadBody(req: Req, res: Res): void {
  if (!req.complete && !("stream" in req) && !res.headersSent) res.setHeader("connection", "close");
}

/**
 * The universal request (connect-es's view of `req`) for the gateway's Connect and REST handlers.
 * Its signal — what cancels the upstream call — aborts when the answer ends before it was written
 * whole: the client reset its stream or closed its connection, including an HTTP/1.1 connection
 * that dies with pipelined answers still queued (connect-node follows the response's 'close' only,
 * which such an answer never emits: queued calls ran on after their client had gone). An answer
 * written whole aborts nothing: connect-node's own request aborted then too, building a
 * DOMException (a stack trace) per call for nobody (~2% of the gateway's CPU on the REST path).
 */
export function universalRequest(req: Req, res: Res, values: ContextValues): UniversalServerRequest {
  const ac = new AbortController();
  onAnswerEnd(req, res, () => {
    if (!res.writableEnded) ac.abort(new ConnectError("the client went away", Code.Canceled));
  });
  const encrypted = "encrypted" in req.socket && req.socket.encrypted === true;
  const authority = "authority" in req ? req.authority : req.headers.host;
  return {
    httpVersion: req.httpVersion,
    method: req.method ?? "",
    url: new URL(req.url ?? "", `${encrypted ? "https" : "http"}://${authority}`).toString(),
    header: webHeaders(req.headers),
    body: bodyOf(req),
    signal: ac.signal,
    contextValues: values,
  };
}

/** A Node request's headers as fetch Headers, HTTP/2 pseudo-headers left out (as connect-node reads them). */
function webHeaders(headers: http.IncomingHttpHeaders): Headers {
  const h = new Headers();
  for (const [k, v] of Object.entries(headers)) {
    if (k.startsWith(":") || v === undefined) continue;
    if (typeof v === "string") h.append(k, v);
    else for (const e of v) h.append(k, e);
  }
  return h;
}

async function* bodyOf(req: Req): AsyncIterable<Uint8Array> {
  for await (const chunk of req as AsyncIterable<Uint8Array>) yield chunk;
  // A reset HTTP/2 stream ends its request (closes it, then ends it) as a whole body would end.
  if ("stream" in req && (req.stream.rstCode ?? 0) !== 0) throw new Error("the client reset its stream");
}
