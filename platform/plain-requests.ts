/**
 * A service takes its requests uncompressed. grpc-js bounds a compressed message by its size once
 * expanded (4 MiB), not by how far it expands: 3.9 KB of gzip expanding to 4 MB of empty order lines
 * cost a service 1.5 s of CPU and 190 MB. The gateway, which bounds how far a client's body may
 * expand (gateway/body.ts), sends plain messages upstream, as the services' own clients do
 * (h2-bytes.ts, and grpc-js channels, which compress only when told to).
 */
import * as grpc from "@grpc/grpc-js";
import { screeningStreams } from "./screened-streams.js";
import { clipText } from "./validate.js";

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

/** gRPC's content types in the one codec the services speak (parameters allowed, as grpc-js allows them). */
const PROTO_GRPC = /^application\/grpc(?:\+proto)?\s*(?:;|$)/;

/**
 * Makes `server` refuse a gRPC call it would misread: a method other than POST, or a codec other than
 * proto (`application/grpc+json`, `+foo`, `application/grpc-web`), which grpc-js served as a proto POST
 * (connectrpc/conformance: unexpected-verb, unexpected-codec). UNIMPLEMENTED, as grpc-go refuses an
 * unknown codec; a content type not gRPC's at all is left to grpc-js (415). Call before binding.
 */
export function refusingOtherThanProtoPosts(server: grpc.Server): void {
  screeningStreams(server, "refuse what is not a proto POST", (_stream, headers) => {
    const type = String(headers["content-type"] ?? "");
    if (!type.startsWith("application/grpc")) return undefined;
    if (headers[":method"] !== "POST") {
      return {
        code: grpc.status.UNIMPLEMENTED,
        message: `method ${clipText(String(headers[":method"]), 20)}: gRPC is POST`,
      };
    }
    if (PROTO_GRPC.test(type)) return undefined;
    return {
      code: grpc.status.UNIMPLEMENTED,
      message: `content type ${clipText(type, 100)}: only proto is served here`,
    };
  });
}
