/**
 * The header list a call may bring a service, bounded as decoded. Node bounds the pairs of a list
 * (128), not their size once HPACK has expanded them: a 3.8 KB header put in the table once and named
 * 60 times by each of 2,000 calls (one byte a name, 424 KB sent in all) held 338 MB of a service,
 * grpc-js keeping each call's headers until it ends. The gateway refuses such a list on its own port
 * (gateway/listener.ts); this is the same rule for the services' ports.
 */
import * as grpc from "@grpc/grpc-js";
import { screeningStreams } from "./screened-streams.js";

/** Largest header list a call may bring, decoded (as the gateway's). */
export const MAX_HEADER_LIST_BYTES = 64 * 1024;

/** Bytes of a header list as decoded, per RFC 9113 §6.5.2 (name + value + 32 per field). */
const headerListBytes = (raw: readonly string[]) => raw.reduce((n, s) => n + s.length + 16, 0);

/**
 * Makes `server`'s HTTP/2 servers answer a call whose header list decodes past
 * {@link MAX_HEADER_LIST_BYTES} RESOURCE_EXHAUSTED at once, before grpc-js holds it. Call before
 * binding: grpc-js's handlers are wrapped as each HTTP/2 server is made.
 */
export function boundingHeaderLists(server: grpc.Server): void {
  screeningStreams(server, "bound header lists", (_stream, _headers, raw) =>
    headerListBytes(raw) > MAX_HEADER_LIST_BYTES
      ? { code: grpc.status.RESOURCE_EXHAUSTED, message: `header list exceeds ${MAX_HEADER_LIST_BYTES} bytes` }
      : undefined,
  );
}
