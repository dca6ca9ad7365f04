/**
 * grpc-js's HTTP/2 servers with every call screened before grpc-js holds it, and refused with a
 * status of its own: grpc-js offers no hook between a stream's arrival and its handler, so its
 * handlers are taken off each HTTP/2 server it makes and called only for the calls a screen lets
 * through. The one way header-limit.ts, plain-requests.ts and timeout-header.ts do it.
 */
import type http2 from "node:http2";
import type * as grpc from "@grpc/grpc-js";

/** Why a call is refused before grpc-js sees it: the status it is answered with. */
export interface Refusal {
  readonly code: grpc.status;
  readonly message: string;
  /** Headers sent with the status (e.g. `grpc-accept-encoding`). */
  readonly headers?: Readonly<Record<string, string>>;
}

/**
 * Looks at a call as it arrives: its stream, its headers (which it may rewrite for grpc-js) and its
 * header list as sent (names and values in turn). A refusal ends the call; undefined lets it through.
 */
export type Screen = (
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  raw: readonly string[],
) => Refusal | undefined;

type StreamListener = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, ...rest: unknown[]) => void;

/**
 * Calls `use` with each HTTP/2 server grpc-js makes for `server`, before it serves anything. Call
 * before binding. `purpose` names the caller when grpc-js changes under it.
 */
export function eachHttp2Server(server: grpc.Server, purpose: string, use: (h2: http2.Http2Server) => void): void {
  const s = server as unknown as { createHttp2Server?: (credentials: unknown) => http2.Http2Server };
  const create = s.createHttp2Server;
  if (typeof create !== "function") {
    throw new Error(`grpc-js no longer makes its HTTP/2 servers in createHttp2Server: ${purpose} another way`);
  }
  s.createHttp2Server = (credentials) => {
    const h2 = create.call(server, credentials);
    use(h2);
    return h2;
  };
}

/**
 * Makes `server`'s HTTP/2 servers show every call to `screen` first, answering a refused one with its
 * status at once. Call before binding: grpc-js's handlers are wrapped as each HTTP/2 server is made.
 * Screens added later see a call first. `purpose` names the screen when grpc-js changes under it.
 */
export function screeningStreams(server: grpc.Server, purpose: string, screen: Screen): void {
  eachHttp2Server(server, purpose, (h2) => {
    const handlers = h2.listeners("stream") as StreamListener[];
    h2.removeAllListeners("stream");
    h2.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, flags, raw?: string[]) => {
      const refusal = screen(stream, headers, raw ?? []);
      if (refusal) return refuse(stream, refusal);
      for (const handler of handlers) handler.call(h2, stream, headers, flags, raw);
    });
  });
}

/** Answers a call `refusal`'s status (trailers only), its request body read and dropped. */
function refuse(stream: http2.ServerHttp2Stream, refusal: Refusal): void {
  // grpc-js's handler, not run here, is what hears every stream's 'error': one reset with an error
  // code while this answer is sent would otherwise be an unhandled 'error', and end the process.
  stream.on("error", () => {});
  if (!stream.headersSent && !stream.destroyed) {
    stream.respond(
      {
        ...refusal.headers,
        ":status": 200,
        "content-type": "application/grpc+proto",
        "grpc-status": String(refusal.code),
        "grpc-message": encodeURIComponent(refusal.message),
      },
      { endStream: true },
    );
  }
  stream.resume();
}
