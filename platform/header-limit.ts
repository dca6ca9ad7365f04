/**
 * The header list a call may bring a service, bounded as decoded. Node bounds the pairs of a list
 * (128), not their size once HPACK has expanded them: a 3.8 KB header put in the table once and named
 * 60 times by each of 2,000 calls (one byte a name, 424 KB sent in all) held 338 MB of a service,
 * grpc-js keeping each call's headers until it ends. The gateway refuses such a list on its own port
 * (gateway/listener.ts); this is the same rule for the services' ports.
 */
import type http2 from "node:http2";
import * as grpc from "@grpc/grpc-js";

/** Largest header list a call may bring, decoded (as the gateway's). */
export const MAX_HEADER_LIST_BYTES = 64 * 1024;

type StreamListener = (stream: http2.ServerHttp2Stream, ...rest: unknown[]) => void;

/** Bytes of a header list as decoded, per RFC 9113 §6.5.2 (name + value + 32 per field). */
const headerListBytes = (raw: readonly string[]) => raw.reduce((n, s) => n + s.length + 16, 0);

/**
 * Makes `server`'s HTTP/2 servers answer a call whose header list decodes past
 * {@link MAX_HEADER_LIST_BYTES} RESOURCE_EXHAUSTED at once, before grpc-js holds it. Call before
 * binding: grpc-js's handlers are wrapped as each HTTP/2 server is made.
 */
export function boundingHeaderLists(server: grpc.Server): void {
  const s = server as unknown as { createHttp2Server?: (credentials: unknown) => http2.Http2Server };
  const create = s.createHttp2Server;
  if (typeof create !== "function") {
    throw new Error("grpc-js no longer makes its HTTP/2 servers in createHttp2Server: bound header lists another way");
  }
  s.createHttp2Server = (credentials) => {
    const h2 = create.call(server, credentials);
    const handlers = h2.listeners("stream") as StreamListener[];
    h2.removeAllListeners("stream");
    h2.on("stream", (stream: http2.ServerHttp2Stream, headers: unknown, flags: unknown, raw: string[]) => {
      if (headerListBytes(raw ?? []) <= MAX_HEADER_LIST_BYTES) {
        for (const handler of handlers) handler.call(h2, stream, headers, flags, raw);
        return;
      }
      stream.on("error", () => {}); // grpc-js's handler, not run here, is what hears a reset's 'error'
      if (!stream.headersSent && !stream.destroyed) {
        const message = `header list exceeds ${MAX_HEADER_LIST_BYTES} bytes`;
        const status = String(grpc.status.RESOURCE_EXHAUSTED);
        stream.respond(
          { ":status": 200, "content-type": "application/grpc+proto", "grpc-status": status, "grpc-message": message },
          { endStream: true },
        );
      }
      stream.resume(); // the request's body, if any, read and dropped
    });
    return h2;
  };
}
