/**
 * A service's gRPC port: a listener of our own whose connections grpc-js serves (its connection
 * injector), so the port bounds what clients hold before they speak any gRPC. grpc-js's own
 * listener takes every connection and keeps one that never sends a byte: 5,000 such held 5,000 file
 * descriptors and 94 MB of a service, and 20,000 — the descriptor limit here — would leave it none
 * for its database, NATS, or a caller's next connection.
 */
import type http2 from "node:http2";
import net from "node:net";
import * as grpc from "@grpc/grpc-js";
import { throttledWarn } from "./instances.js";
import type { Logger } from "./log.js";
import { eachHttp2Server } from "./screened-streams.js";
import { endingWithin } from "./socket-end.js";

/** What one port lets its clients hold. */
export interface ConnectionLimits {
  /**
   * Connections open at once; a further one is closed as it arrives (and said, at most every 10 s).
   * A port's callers are the gateway's and the other services' replicas (one connection per instance
   * each) and an operator's tools: tens, not thousands.
   */
  readonly maxConnections: number;
  /**
   * A connection with no call in progress for this long is closed (GOAWAY); a caller's channel
   * connects again for its next call. A WatchOrder in progress keeps its connection however quiet.
   */
  readonly idleMs: number;
  /**
   * Each connection is pinged this long after its last ping was answered, and cut if the next is not
   * answered within `pingTimeoutMs`: a peer that sent nothing at all, or froze, is let go.
   */
  readonly pingEveryMs: number;
  /** Also how long a connection the server ended (idle, or a ping unanswered) waits for its peer's end. */
  readonly pingTimeoutMs: number;
  /**
   * A call whose queued answer has not shrunk for this long (its client does not read: a receive
   * window of zero) is reset, CANCEL (platform/stalled-streams.ts). The port's callers read at once.
   */
  readonly stallMs: number;
}

export const CONNECTION_LIMITS: ConnectionLimits = {
  maxConnections: 1_024,
  idleMs: 5 * 60_000,
  pingEveryMs: 60_000,
  pingTimeoutMs: 20_000,
  stallMs: 15_000,
};

/** The grpc-js server options for `limits` (all but `maxConnections`, which {@link listenGrpc} keeps). */
export function connectionOptions(limits: ConnectionLimits): grpc.ServerOptions {
  return {
    "grpc.max_connection_idle_ms": limits.idleMs,
    "grpc.keepalive_time_ms": limits.pingEveryMs,
    "grpc.keepalive_timeout_ms": limits.pingTimeoutMs,
  };
}

/** A port being listened on. */
export interface GrpcPort {
  readonly port: number;
  /** Takes no further connection (those open are `server`'s to end). */
  close(): void;
  /** Resolves once every connection open now has closed ({@link sessionsClosed}): what a drain waits for. */
  closed(): Promise<void>;
}

/**
 * Serves `server`'s calls on `host:port` (0: a free one), at most `limits.maxConnections` connections at
 * once; one the server ended is let go `limits.pingTimeoutMs` later, whether or not its peer ended it too.
 */
export async function listenGrpc(
  server: grpc.Server,
  host: string,
  port: number,
  log: Logger,
  limits: Pick<ConnectionLimits, "maxConnections" | "pingTimeoutMs">,
): Promise<GrpcPort> {
  const { maxConnections } = limits;
  const closed = sessionsClosed(server);
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const listener = net.createServer((socket) => {
    endingWithin(socket, limits.pingTimeoutMs);
    injector.injectConnection(socket);
  });
  listener.maxConnections = maxConnections;
  const warn = throttledWarn(log, "gRPC port: a connection refused, as many open as allowed", 10_000, () =>
    performance.now(),
  );
  listener.on("drop", () => warn({ maxConnections }));
  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen({ host, port }, () => {
      listener.off("error", reject);
      resolve();
    });
  });
  return { port: (listener.address() as net.AddressInfo).port, close: () => listener.close(), closed };
}

/**
 * What a graceful stop of `server` waits for: a function that resolves once every HTTP/2 session open
 * when it is called has closed. grpc-js's tryShutdown no longer does on Node 24, the image's: there
 * Node's http2 server.close() closes each session itself, gracefully (nodejs/node#57586), and grpc-js
 * then takes a session already marked closed as finished — the drain "completed" at once, and the
 * calls in flight were cut as the process exited (the client: INTERNAL, RST_STREAM with code 0).
 * Call before binding (listenGrpc does).
 */
export function sessionsClosed(server: grpc.Server): () => Promise<void> {
  const open = new Set<http2.ServerHttp2Session>();
  eachHttp2Server(server, "wait for its sessions to close", (h2) =>
    h2.on("session", (session: http2.ServerHttp2Session) => {
      open.add(session);
      session.once("close", () => open.delete(session));
    }),
  );
  return async () => {
    await Promise.all([...open].map((session) => new Promise((closed) => session.once("close", closed))));
  };
}
