/**
 * When the answer to a request is over, however it ends: its response closes or, on HTTP/1.1, its
 * connection does first. Node closes only the response being written when a connection dies: one
 * pipelined behind it, still queued, never emits 'close' — so a call slot, or an access line, that
 * waited for that alone would wait for ever (a client pipelining 60 requests and resetting the
 * connection kept 60 of its address's slots until the gateway restarted).
 */
import type http from "node:http";
import type { Socket } from "node:net";
import { Code, ConnectError, type ContextValues } from "@connectrpc/connect";
import type { UniversalServerRequest } from "@connectrpc/connect/protocol";
import { universalRequestFromNodeRequest } from "@connectrpc/connect-node";
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
  if (!socket) return forget;
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
 * connect-node's universal request, whose signal — what cancels the upstream call — also aborts when
 * an HTTP/1.1 connection dies first: connect-node follows the response's 'close' only, which a
 * queued pipelined answer never emits (queued calls ran on after their client had gone).
 */
export function universalRequest(req: Req, res: Res, values: ContextValues): UniversalServerRequest {
  const uReq = universalRequestFromNodeRequest(
    req as http.IncomingMessage,
    res as http.ServerResponse,
    undefined,
    values,
  );
  if ("stream" in req) return uReq;
  const ac = new AbortController();
  const gone = () => ac.abort(uReq.signal.reason ?? new ConnectError("the client went away", Code.Canceled));
  uReq.signal.addEventListener("abort", gone, { once: true });
  onAnswerEnd(req, res, gone);
  return { ...uReq, signal: ac.signal };
}
