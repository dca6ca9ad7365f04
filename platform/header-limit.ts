/**
 * The header lists calls may bring a service, bounded as decoded: each, and those of the calls open
 * on one connection together. Node bounds the pairs of a list (128), not their size once HPACK has
 * expanded them, and grpc-js keeps each call's headers until it ends: a 3.8 KB header put in the
 * table once and named 60 times by each of 2,000 calls (one byte a name, 424 KB sent in all) held
 * 338 MB of a service; named 16 times (61 KB, under the limit of one) by each of 10,000 calls on one
 * connection (330 KB sent), 595 MB. The gateway refuses such a list on its own port
 * (gateway/listener.ts) and lets a connection have 100 calls; this is the same rule for the
 * services' ports, which let a connection have 10,000 (server.ts).
 */
import type http2 from "node:http2";
import * as grpc from "@grpc/grpc-js";
import { screeningStreams } from "./screened-streams.js";

/** Largest header list a call may bring, decoded, to a service or the gateway: Node's HTTP/1.1 parser's limit, times four. */
export const MAX_HEADER_LIST_BYTES = 64 * 1024;

/**
 * Decoded header lists the calls open on one connection may hold together: 10,000 calls (the most a
 * connection may have) of 3.3 KB each; the gateway's and the services' own calls bring about 1 KB.
 */
export const MAX_HEADER_BYTES_PER_CONNECTION = 32 * 1024 * 1024;

/** Bytes of a header list (names and values in turn) as decoded, per RFC 9113 §6.5.2 (name + value + 32 per field). */
export const headerListBytes = (raw: readonly string[]) => raw.reduce((n, s) => n + s.length + 16, 0);

/**
 * Makes `server`'s HTTP/2 servers answer RESOURCE_EXHAUSTED at once, before grpc-js holds it, a call
 * whose header list decodes past {@link MAX_HEADER_LIST_BYTES}, or past what is left of
 * {@link MAX_HEADER_BYTES_PER_CONNECTION} on its connection. Call before binding.
 */
export function boundingHeaderLists(server: grpc.Server): void {
  const held = new WeakMap<http2.Http2Session, number>();
  screeningStreams(server, "bound header lists", (stream, _headers, raw) => {
    const bytes = headerListBytes(raw);
    if (bytes > MAX_HEADER_LIST_BYTES) {
      return { code: grpc.status.RESOURCE_EXHAUSTED, message: `header list exceeds ${MAX_HEADER_LIST_BYTES} bytes` };
    }
    const session = stream.session;
    if (!session) return undefined; // closed already: grpc-js's handler ends it
    const total = (held.get(session) ?? 0) + bytes;
    if (total > MAX_HEADER_BYTES_PER_CONNECTION) {
      const message = `header lists of the calls open on this connection exceed ${MAX_HEADER_BYTES_PER_CONNECTION} bytes`;
      return { code: grpc.status.RESOURCE_EXHAUSTED, message };
    }
    held.set(session, total);
    stream.once("close", () => held.set(session, (held.get(session) ?? bytes) - bytes));
    return undefined;
  });
}
