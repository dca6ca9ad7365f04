/**
 * A client's `grpc-timeout`, read as the gateway reads it before grpc-js's server sees it: grpc-js
 * answers a value it cannot read INTERNAL (a server error, for the client's bytes), reads one that
 * is not a timeout (`-1m`, a ninth digit, `1m, 2m`) as the digits it finds in it, and truncates the
 * milliseconds to 32 bits, so a deadline over ~24.8 days (`3000000S`, what grpc-go sends for a
 * context of 35 days) became a negative one, and the call failed DEADLINE_EXCEEDED at once.
 */
import type http2 from "node:http2";
import { parseTimeout } from "@connectrpc/connect/protocol-grpc";
import * as grpc from "@grpc/grpc-js";
import { grpcTimeout, MAX_TIMER_MS } from "./deadline.js";

type StreamListener = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, ...rest: unknown[]) => void;

/**
 * Makes `server`'s HTTP/2 servers answer a gRPC call whose `grpc-timeout` is malformed
 * INVALID_ARGUMENT, in connect-es's words as the gateway does, and carry one further off than a
 * timer can wait as the longest it can ({@link MAX_TIMER_MS}), as the gateway does too. Call before
 * binding: grpc-js's handlers are wrapped as each HTTP/2 server is made.
 */
export function checkingTimeouts(server: grpc.Server): void {
  const s = server as unknown as { createHttp2Server?: (credentials: unknown) => http2.Http2Server };
  const create = s.createHttp2Server;
  if (typeof create !== "function") {
    throw new Error("grpc-js no longer makes its HTTP/2 servers in createHttp2Server: check grpc-timeout another way");
  }
  s.createHttp2Server = (credentials) => {
    const h2 = create.call(server, credentials);
    const handlers = h2.listeners("stream") as StreamListener[];
    h2.removeAllListeners("stream");
    h2.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, ...rest: unknown[]) => {
      if (refused(stream, headers)) return;
      for (const handler of handlers) handler.call(h2, stream, headers, ...rest);
    });
    return h2;
  };
}

/** The longest `grpc-timeout` a Node timer can wait (2147483S). */
const LONGEST = grpcTimeout(MAX_TIMER_MS);

/**
 * `value`, a `grpc-timeout`, as the longest a timer can wait ({@link MAX_TIMER_MS}) when it is a
 * well-formed one further off than that; otherwise `value` unchanged (a malformed one included).
 */
export function clampGrpcTimeout(value: string): string {
  const timeout = parseTimeout(value, MAX_TIMER_MS);
  return timeout.error && timeout.timeoutMs !== undefined ? LONGEST : value;
}

/** Answers a gRPC call with a malformed timeout (true), or rewrites one too long for a timer. */
function refused(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): boolean {
  const value = headers["grpc-timeout"];
  // Not a gRPC request: grpc-js refuses it for its content type first.
  if (value === undefined || !String(headers["content-type"] ?? "").startsWith("application/grpc")) return false;
  const timeout = parseTimeout(String(value), MAX_TIMER_MS);
  if (timeout.error && timeout.timeoutMs !== undefined) {
    headers["grpc-timeout"] = LONGEST;
    return false;
  }
  if (!timeout.error) return false;
  // grpc-js's handler, not run here, is what hears every stream's 'error': one reset with an error
  // code while this answer is sent would otherwise be an unhandled 'error', and end the process.
  stream.on("error", () => {});
  if (!stream.headersSent && !stream.destroyed) {
    stream.respond(
      {
        ":status": 200,
        "content-type": "application/grpc+proto",
        "grpc-status": String(grpc.status.INVALID_ARGUMENT),
        "grpc-message": encodeURIComponent(timeout.error.rawMessage),
      },
      { endStream: true },
    );
  }
  stream.resume(); // the request's body, if any, read and dropped
  return true;
}
