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
import { type Refusal, screeningStreams } from "./screened-streams.js";

/**
 * Makes `server`'s HTTP/2 servers answer a gRPC call whose `grpc-timeout` is malformed
 * INVALID_ARGUMENT, in connect-es's words as the gateway does, and carry one further off than a
 * timer can wait as the longest it can ({@link MAX_TIMER_MS}), as the gateway does too. Call before
 * binding: grpc-js's handlers are wrapped as each HTTP/2 server is made.
 */
export function checkingTimeouts(server: grpc.Server): void {
  screeningStreams(server, "check grpc-timeout", (_stream, headers) => refusal(headers));
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

/** The refusal of a gRPC call with a malformed timeout; one too long for a timer is rewritten. */
function refusal(headers: http2.IncomingHttpHeaders): Refusal | undefined {
  const value = headers["grpc-timeout"];
  // Not a gRPC request: grpc-js refuses it for its content type first.
  if (value === undefined || !String(headers["content-type"] ?? "").startsWith("application/grpc")) return undefined;
  const timeout = parseTimeout(String(value), MAX_TIMER_MS);
  if (timeout.error && timeout.timeoutMs !== undefined) {
    headers["grpc-timeout"] = LONGEST;
    return undefined;
  }
  if (timeout.error) return { code: grpc.status.INVALID_ARGUMENT, message: timeout.error.rawMessage };
  // A deadline already spent (`0n`, or under a millisecond: grpc-js reads `999u` as 0 ms too): grpc-js
  // served the call as if it had none; the gateway ends it at once.
  return timeout.timeoutMs !== undefined && timeout.timeoutMs < 1
    ? { code: grpc.status.DEADLINE_EXCEEDED, message: "the operation timed out" }
    : undefined;
}
