/**
 * When the answer to a request is over, however it ends: its response closes or, on HTTP/1.1, its
 * connection does first. Node closes only the response being written when a connection dies: one
 * pipelined behind it, still queued, never emits 'close' — so a call slot, or an access line, that
 * waited for that alone would wait for ever (a client pipelining 60 requests and resetting the
 * connection kept 60 of its address's slots until the gateway restarted).
 */
import type { Socket } from "node:net";
import type { Req, Res } from "./endpoint.js";

/** What is still waiting on each HTTP/1.1 connection: one 'close' listener per connection, however many. */
const waiting = new WeakMap<Socket, Set<() => void>>();

/** Calls `fn` once when the answer to `req` is over (see above). */
export function onAnswerEnd(req: Req, res: Res, fn: () => void): void {
  let over = false;
  // HTTP/2 closes every stream of a session that dies: its response's 'close' is enough there.
  const socket = "stream" in req ? undefined : req.socket;
  const end = () => {
    if (over) return;
    over = true;
    res.off("close", end);
    if (socket) waiting.get(socket)?.delete(end);
    fn();
  };
  res.once("close", end);
  if (!socket) return;
  if (socket.closed) {
    queueMicrotask(end);
    return;
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
}
