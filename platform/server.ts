/**
 * A shopmesh gRPC server: the service's own handlers plus the standard
 * grpc.health.v1 service, server reflection (v1 and v1alpha, so grpcurl and
 * `buf curl` need no .proto files) and the chaos service; per-call logging
 * and fault injection; graceful shutdown with a bounded drain.
 */
import { setMaxListeners } from "node:events";
import { type DescService, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";
import { Health } from "../gen/health/v1/health_pb.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { FaultInjector } from "./chaos.js";
import { isStorageFailed, isStorageFull } from "./db-errors.js";
import { toStatusObject } from "./errors.js";
import { namingPeerErrors } from "./goaway-codes.js";
import {
  endOnShutdown,
  grpcHandlers,
  grpcServiceDefinition,
  type InFlight,
  type Interceptor,
  NO_CHANNELZ,
  type ServiceImpl,
  withImports,
} from "./grpc.js";
import { CONNECTION_LIMITS, type ConnectionLimits, connectionOptions, listenGrpc } from "./grpc-port.js";
import { boundingHeaderLists } from "./header-limit.js";
import { healthService } from "./health.js";
import { refusingUnreadableIdentity } from "./identity-headers.js";
import type { Logger } from "./log.js";
import { refusingCompressedRequests, refusingOtherThanProtoPosts } from "./plain-requests.js";
import { eachHttp2Server } from "./screened-streams.js";
import { cuttingStalledAnswers } from "./stalled-streams.js";
import { serverTelemetry, type Telemetry } from "./telemetry.js";
import { checkingTimeouts } from "./timeout-header.js";

/** A service descriptor and its implementation, as registered on a server. */
export interface ServiceBinding {
  readonly service: DescService;
  readonly impl: unknown;
}

/** Pairs a descriptor with a type-checked implementation. */
export function bind<S extends DescService>(service: S, impl: ServiceImpl<S>): ServiceBinding {
  return { service, impl };
}

/** Options for {@link startGrpcServer}. */
export interface GrpcServerOptions {
  /** Host to listen on, e.g. "0.0.0.0" or "127.0.0.1". */
  readonly host: string;
  /** Port to listen on; 0 picks a free one (see {@link RunningServer.port}). */
  readonly port: number;
  /** The business services. */
  readonly services: readonly ServiceBinding[];
  readonly log: Logger;
  /** Fault injection for the business services; a no-fault injector when omitted. */
  readonly faults?: FaultInjector;
  /** Traces and metrics of the calls; none when omitted. */
  readonly telemetry?: Telemetry;
  /** What a client may hold of the port: {@link CONNECTION_LIMITS} when omitted (tests set less). */
  readonly limits?: ConnectionLimits;
}

/** A listening server. */
export interface RunningServer {
  /** The bound port. */
  readonly port: number;
  /** `host:port` a local client can dial. */
  readonly address: string;
  readonly faults: FaultInjector;
  /**
   * Stops accepting calls, reports NOT_SERVING, ends server streams
   * UNAVAILABLE (a watch may last longer than any grace), waits up to
   * `graceMs` for unary calls in flight to finish, then cuts the rest.
   */
  stop(graceMs: number): Promise<void>;
  /** Readiness: the business services' health, SERVING or not (their database); "" answers SERVING until the stop. */
  setReady(ready: boolean): void;
}

/** Logs one line per finished call: debug when OK, info for expected errors. */
function callLogger(): Interceptor {
  return async (ctx, next) => {
    const started = performance.now();
    try {
      const res = await next();
      ctx.log.debug({ code: "OK", ms: Math.round(performance.now() - started) }, "rpc");
      return res;
    } catch (err) {
      const { code } = toStatusObject(err);
      if (code !== grpc.status.INTERNAL) {
        // A full or failing disk refuses every write until someone acts: the operator's business, not the caller's.
        ctx.log[isStorageFailed(err) ? "error" : isStorageFull(err) ? "warn" : "info"](
          { code: grpc.status[code], ms: Math.round(performance.now() - started), reason: (err as Error).message },
          "rpc",
        );
      }
      throw err;
    }
  };
}

/** File descriptors of `services` and everything they import, serialized for reflection. */
function fileDescriptorProtos(services: readonly DescService[]): Buffer[] {
  return withImports(services.map((s) => s.file)).map((f) => Buffer.from(toBinary(FileDescriptorProtoSchema, f.proto)));
}

/**
 * Node's HTTP/2 server closes a connection with INTERNAL_ERROR once its peer has reset more than
 * 1,000 streams beyond 33 a second (nghttp2's rapid-reset defence), failing every call in flight
 * on it (grpc-node#2872). A service's callers are the gateway and other services, each carrying
 * many callers over one connection, and every caller that gives up mid-call (a closed tab, a
 * deadline) is a reset on it. Node 22.10 and later let a server allow more (`streamResetBurst`,
 * `streamResetRate`; the image runs Node 24): 2,000 beyond 5,000 a second here — all a gateway's
 * calls in flight to one upstream at once (bulkhead and queue: 640), and more a second than a
 * 2-core gateway forwards — a flood still cut within a second: on Node 24 a 3 s flood grew a service
 * by 24-27 MB, by 130 at 100,000 beyond 10,000 (test/hostile-h2). The gateway's listener keeps
 * Node's default, so a hostile client only closes its own connection. On Node 20 the options are
 * ignored; clients there avoid resets where they can (platform/grpc-client.ts), and keep each
 * connection's count under the default, moving new calls to another connection before it
 * (platform/reset-budget.ts). grpc-js has no option for it: its http2 server options are set here.
 */
function tolerateCancellations(server: grpc.Server): void {
  const options = (server as unknown as { commonServerOptions?: Record<string, unknown> }).commonServerOptions;
  if (!options) throw new Error("grpc-js no longer keeps commonServerOptions: allow stream resets another way");
  options.streamResetBurst = 2_000;
  options.streamResetRate = 5_000;
}

/** A request a library's service could not decode (see {@link refusingUndecodable}). */
class Undecodable {
  constructor(readonly reason: string) {}
}

/**
 * `server`, as the health and reflection libraries see it: their services' requests that do not
 * decode are refused INVALID_ARGUMENT, naming the message. grpc-js answers INTERNAL when a
 * deserializer throws, a server error for the client's bytes (our own services' definitions do
 * the same in platform/grpc.ts).
 */
function refusingUndecodable(server: grpc.Server): Pick<grpc.Server, "addService"> {
  const refusal = (def: grpc.MethodDefinition<unknown, unknown>, u: Undecodable) => ({
    code: grpc.status.INVALID_ARGUMENT,
    details: `request is not a valid ${def.path.slice(1)} request: ${u.reason}`,
  });
  return {
    addService(service, impl) {
      const defs: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
      const handlers: grpc.UntypedServiceImplementation = {};
      for (const [name, def] of Object.entries(service)) {
        const decode = def.requestDeserialize;
        defs[name] = {
          ...def,
          requestDeserialize: (buf: Buffer) => {
            try {
              return decode(buf);
            } catch (err) {
              return new Undecodable((err as Error).message);
            }
          },
        };
        // As grpc-js looks handlers up: by the definition's key, or by its original (camel-case) name.
        const handler = (impl[name] ?? impl[def.originalName ?? ""]) as (
          call: never,
          callback?: grpc.sendUnaryData<unknown>,
        ) => void;
        if (!def.requestStream) {
          handlers[name] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback?: grpc.sendUnaryData<unknown>) => {
            if (!(call.request instanceof Undecodable)) return handler(call as never, callback);
            if (callback) callback(refusal(def, call.request));
            else call.emit("error", refusal(def, call.request));
          };
        } else {
          // Streamed requests arrive as "data" events: an undecodable one ends the call instead, and
          // none after it reaches the handler (an answer written after the end lost the status: the
          // call hung).
          handlers[name] = (call: grpc.ServerDuplexStream<unknown, unknown>) => {
            const emit = call.emit.bind(call);
            let refused = false;
            call.emit = (event: string | symbol, ...args: unknown[]) => {
              if (event !== "data") return emit(event, ...args);
              if (refused) return false;
              if (!(args[0] instanceof Undecodable)) return emit(event, ...args);
              refused = true;
              return emit("error", refusal(def, args[0]));
            };
            handler(call as never);
          };
        }
      }
      server.addService(defs, handlers);
    },
  };
}

/**
 * `target`, on which the libraries' streams (health's Watch, reflection's) end UNAVAILABLE once
 * `shutdown` is aborted, as our own services' do (platform/grpc.ts): a client that checks its
 * connections' health (grpc-go's or C-core's healthCheckConfig) keeps a Watch open on each, and
 * every one held the drain, and the process, to its grace.
 */
function endingStreams(
  target: Pick<grpc.Server, "addService">,
  shutdown: AbortSignal,
): Pick<grpc.Server, "addService"> {
  return {
    addService(service, impl) {
      const handlers: grpc.UntypedServiceImplementation = {};
      for (const [name, def] of Object.entries(service)) {
        const handler = (impl[name] ?? impl[def.originalName ?? ""]) as (
          call: grpc.ServerWritableStream<unknown, unknown>,
        ) => void;
        if (!def.responseStream) handlers[name] = handler as grpc.UntypedHandleCall;
        else {
          handlers[name] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
            // grpc-js reports every call's end as "cancelled", the answered ones too.
            call.once("cancelled", endOnShutdown(call, shutdown));
            handler(call);
          };
        }
      }
      target.addService(service, handlers);
    },
  };
}

/**
 * Calls one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). Without it Node's
 * default (2^32 - 1) let one client open calls and never finish them: 20,000, ~17 bytes each once
 * HPACK has the headers, held 160 MB. Above the gateway's default HTTP_MAX_CALLS (4,096), all of which
 * may be on one instance's connection; a client's calls beyond it wait in its HTTP/2 queue, not failed.
 */
const MAX_CALLS_PER_CONNECTION = 10_000;

/** Starts a server; resolves once it listens. */
export async function startGrpcServer(opts: GrpcServerOptions): Promise<RunningServer> {
  const faults = opts.faults ?? new FaultInjector();
  const limits = opts.limits ?? CONNECTION_LIMITS;
  const server = new grpc.Server({
    "grpc.max_receive_message_length": 4 * 1024 * 1024,
    "grpc.max_concurrent_streams": MAX_CALLS_PER_CONNECTION,
    ...connectionOptions(limits),
    ...NO_CHANNELZ,
  });
  tolerateCancellations(server);
  checkingTimeouts(server);
  refusingCompressedRequests(server);
  refusingOtherThanProtoPosts(server);
  boundingHeaderLists(server);
  refusingUnreadableIdentity(server);
  eachHttp2Server(server, "name peer errors in GOAWAY", (h2) => h2.on("session", namingPeerErrors));
  const stopCutting = cuttingStalledAnswers(server, limits.stallMs);
  // Telemetry outermost: the span is active for the log line and everything below.
  const observed: Interceptor[] = opts.telemetry
    ? [
        serverTelemetry(
          opts.telemetry,
          (e) => toStatusObject(e).code,
          (c) => grpc.status[c] ?? String(c),
        ),
      ]
    : [];
  // The business calls in progress, for the drain to say what it waits for.
  const inFlight: InFlight = { calls: 0, streams: 0 };
  const draining = new AbortController();
  // One listener per open stream, each removed at its end: as many as streams are open, not a leak.
  setMaxListeners(0, draining.signal);
  const business = [...observed, callLogger(), faults.interceptor];
  for (const { service, impl } of opts.services) {
    server.addService(
      grpcServiceDefinition(service),
      grpcHandlers(service, impl as ServiceImpl<DescService>, {
        log: opts.log,
        interceptors: business,
        shutdown: draining.signal,
        inFlight,
      }),
    );
  }
  server.addService(
    grpcServiceDefinition(ChaosService),
    grpcHandlers(
      ChaosService,
      faults.service(() => opts.telemetry?.metrics.downstreams() ?? {}),
      {
        log: opts.log,
        interceptors: [callLogger()],
        shutdown: draining.signal,
      },
    ),
  );

  const names = opts.services.map((s) => s.service.typeName);
  const health = healthService(["", ...names]);
  health.addToServer(endingStreams(refusingUndecodable(server), draining.signal) as grpc.Server);

  const reflected = [...opts.services.map((s) => s.service), ChaosService, Health];
  const pkg = { shopmesh: { fileDescriptorProtos: fileDescriptorProtos(reflected) } };
  // The files imported for their types may declare services this server does not serve (history's
  // imports declare OrderService and PaymentService): ListServices names only the served ones.
  new ReflectionService(pkg as never, { services: reflected.map((s) => s.typeName) }).addToServer(
    endingStreams(refusingUndecodable(server), draining.signal) as grpc.Server,
  );

  const listening = await listenGrpc(server, opts.host, opts.port, opts.log, limits);
  const { port } = listening;
  opts.log.info({ port, services: names }, "gRPC server listening");

  let stopping: Promise<void> | undefined;
  const stop = (graceMs: number) => {
    stopping ??= new Promise<void>((resolve) => {
      for (const n of ["", ...names]) health.setStatus(n, "NOT_SERVING");
      const started = performance.now();
      // What the drain waits for, said while it waits: streams end now (UNAVAILABLE), unary calls may finish.
      opts.log.info({ ...inFlight, graceMs }, "draining calls in flight");
      draining.abort();
      listening.close();
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        opts.log.warn({ ...inFlight, graceMs }, "drain timed out; cancelling in-flight calls");
        server.forceShutdown();
        resolve();
      }, graceMs);
      // Drained once the connections have closed, not when grpc-js says so (sessionsClosed: Node 24).
      server.tryShutdown(async () => {
        await listening.closed();
        if (timedOut) return;
        clearTimeout(timer);
        opts.log.info({ ms: Math.round(performance.now() - started) }, "calls drained");
        resolve();
      });
    }).finally(stopCutting);
    return stopping;
  };

  const setReady = (ready: boolean) => {
    for (const n of stopping ? [] : names) health.setStatus(n, ready ? "SERVING" : "NOT_SERVING");
  };
  const dialHost = opts.host === "0.0.0.0" || opts.host === "::" ? "127.0.0.1" : opts.host;
  return { port, address: `${dialHost}:${port}`, faults, stop, setReady };
}
