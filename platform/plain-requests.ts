/**
 * A service takes its requests uncompressed. grpc-js bounds a compressed message by its size once
 * expanded (4 MiB), not by how far it expands: 3.9 KB of gzip expanding to 4 MB of empty order lines
 * cost a service 1.5 s of CPU and 190 MB. The gateway, which bounds how far a client's body may
 * expand (gateway/body.ts), sends plain messages upstream, as the services' own clients do
 * (h2-bytes.ts, and grpc-js channels, which compress only when told to).
 */
import * as grpc from "@grpc/grpc-js";
import { screeningStreams } from "./screened-streams.js";

/**
 * Makes `server` refuse a call that declares a request compression (`grpc-encoding` other than
 * `identity`) at once, as gRPC refuses an encoding it does not take: UNIMPLEMENTED, with
 * `grpc-accept-encoding: identity`. Call before binding.
 */
export function refusingCompressedRequests(server: grpc.Server): void {
  screeningStreams(server, "refuse compressed requests", (_stream, headers) => {
    const encoding = headers["grpc-encoding"];
    if (encoding === undefined || encoding === "identity") return undefined;
    return {
      code: grpc.status.UNIMPLEMENTED,
      message: `request compression "${encoding}" is not taken here: send messages uncompressed`,
      headers: { "grpc-accept-encoding": "identity" },
    };
  });
}
