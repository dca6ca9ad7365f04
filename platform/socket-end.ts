/**
 * A connection the server ended, let go even if its peer never ends it too. Node ends the server's side
 * of a connection (an HTTP/2 session closed: idle, a ping unanswered; an HTTP/1.1 answer that closes)
 * and then waits for the peer's end, or for what is left to send to leave: a peer that never sent its
 * end, or never read, kept the socket — a descriptor and a place under the port's connection limits —
 * for good, and enough such peers shut the port to every new caller.
 */
import type net from "node:net";

/** Makes `socket` close at most `graceMs` after the server ends its side (nothing is read or written on it after). */
export function endingWithin(socket: net.Socket, graceMs: number): void {
  const end = socket.end.bind(socket) as (...args: unknown[]) => net.Socket;
  socket.end = ((...args: unknown[]) => {
    const timer = setTimeout(() => socket.destroy(), graceMs).unref();
    socket.once("close", () => clearTimeout(timer));
    return end(...args);
  }) as net.Socket["end"];
}
