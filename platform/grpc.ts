/**
 * The one adapter between protobuf-es service descriptors (gen/) and @grpc/grpc-js, server side:
 * typed handler implementations, interceptors around every call, and errors turned into statuses —
 * for unary and server-streaming methods, with no proto-loader at run time. The client side is
 * grpc-client.ts.
 */
import {
  create,
  type DescFile,
  type DescMessage,
  type DescMethod,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { InvalidArgumentError, toStatusObject } from "./errors.js";
import { keepsUnknownFields } from "./idempotency.js";
import type { Logger } from "./log.js";
import { stringWithNul } from "./validate.js";

type ServerCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>;

/** What a handler knows about the call it serves. */
export interface CallContext {
  /** The method being served. */
  readonly method: DescMethod;
  /** Request metadata (headers) as received. */
  readonly metadata: grpc.Metadata;
  /** Absolute deadline in ms since the epoch, or undefined when the caller set none. */
  readonly deadline: number | undefined;
  /** Aborted when the caller cancels or the deadline passes. */
  readonly signal: AbortSignal;
  /** Logger bound to this call (method, peer). */
  readonly log: Logger;
}

type UnaryImpl<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  ctx: CallContext,
) => Promise<MessageInitShape<O>> | MessageInitShape<O>;

type ServerStreamingImpl<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  ctx: CallContext,
) => AsyncIterable<MessageInitShape<O>>;

/** A handler per method of service `S`, keyed by the method's local name (e.g. `getProduct`). */
export type ServiceImpl<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends {
    methodKind: "unary";
    input: infer I extends DescMessage;
    output: infer O extends DescMessage;
  }
    ? UnaryImpl<I, O>
    : S["method"][K] extends {
          methodKind: "server_streaming";
          input: infer I extends DescMessage;
          output: infer O extends DescMessage;
        }
      ? ServerStreamingImpl<I, O>
      : never;
};

/**
 * Wraps every call of a service: runs before the handler and around its whole execution (a stream
 * counts as one execution). Throwing rejects the call with the thrown error's status. Used for
 * logging, fault injection, metrics, tracing and auth context.
 */
export type Interceptor = <T>(ctx: CallContext, next: () => Promise<T>) => Promise<T>;

/** `files` and every file they import, each once, importers before what they import. */
export function withImports(files: readonly DescFile[]): DescFile[] {
  const seen = new Map<string, DescFile>();
  const visit = (f: DescFile) => {
    if (seen.has(f.name)) return;
    seen.set(f.name, f);
    for (const d of f.dependencies) visit(d);
  };
  for (const f of files) visit(f);
  return [...seen.values()];
}

/** `/package.Service/Method`, the HTTP/2 path of a method. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

export function serializer<D extends DescMessage>(schema: D): (msg: MessageShape<D>) => Buffer {
  return (msg) => Buffer.from(toBinary(schema, msg));
}

export function deserializer<D extends DescMessage>(schema: D): (buf: Buffer) => MessageShape<D> {
  return (buf) => fromBinary(schema, buf);
}

/** A request that did not decode, or holds a string no service stores (`field`): the client's fault, not INTERNAL. */
class Undecodable {
  constructor(
    readonly reason: string,
    readonly field?: string,
  ) {}
}

/** Decodes a request, or marks it {@link Undecodable} for the handler to refuse with INVALID_ARGUMENT. */
function requestDeserializer<D extends DescMessage>(schema: D): (buf: Buffer) => MessageShape<D> | Undecodable {
  // Unknown fields are skipped, not kept (2,000,000, 4 MB, cost 2.2 s and 290 MB), but by a request
  // an idempotency key fingerprints: the fingerprint must tell requests apart by them (idempotency.ts).
  const readUnknownFields = keepsUnknownFields(schema);
  return (buf) => {
    let req: MessageShape<D>;
    try {
      req = fromBinary(schema, buf, { readUnknownFields });
    } catch (err) {
      return new Undecodable((err as Error).message);
    }
    const nul = stringWithNul(schema, req);
    return nul === undefined ? req : new Undecodable("must not contain U+0000 (NUL)", nul);
  };
}

/** The decoded request of `call`; INVALID_ARGUMENT when it did not decode. */
function requestOf(call: ServerCall, method: DescMethod): never {
  const req = call.request as unknown;
  if (req instanceof Undecodable) {
    if (req.field !== undefined) throw new InvalidArgumentError(req.field, req.reason);
    throw new InvalidArgumentError("request", `is not a valid ${method.input.typeName}: ${req.reason}`);
  }
  return req as never;
}

/** The grpc-js service definition for a protobuf-es service descriptor. */
export function grpcServiceDefinition(service: DescService): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    if (m.methodKind !== "unary" && m.methodKind !== "server_streaming") {
      throw new Error(`${methodPath(m)}: ${m.methodKind} methods are not supported`);
    }
    def[m.name] = {
      path: methodPath(m),
      requestStream: false,
      responseStream: m.methodKind === "server_streaming",
      requestSerialize: serializer(m.input),
      requestDeserialize: requestDeserializer(m.input),
      responseSerialize: serializer(m.output),
      responseDeserialize: deserializer(m.output),
      originalName: m.localName,
    } as grpc.MethodDefinition<unknown, unknown>;
  }
  return def;
}

function deadlineOf(call: ServerCall): number | undefined {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : d;
  return Number.isFinite(ms) ? ms : undefined;
}

function runInterceptors<T>(
  interceptors: readonly Interceptor[],
  ctx: CallContext,
  last: () => Promise<T>,
): Promise<T> {
  let next = last;
  for (let i = interceptors.length - 1; i >= 0; i--) {
    const ic = interceptors[i] as Interceptor;
    const inner = next;
    next = () => ic(ctx, inner);
  }
  return next();
}

/** The calls whose handlers are in progress, unary and streams apart. */
export type InFlight = { calls: number; streams: number };

/**
 * The context of one call and `settled`, to call once the handler has settled: grpc-js reports
 * every call's end as "cancelled", even one it answered, and aborting then would build a DOMException
 * (a stack trace) per call for nobody. Counted here (`inFlight`): an interceptor's async frame cost ~200 ns a call.
 */
function callContext(m: DescMethod, call: ServerCall, log: Logger, inFlight: InFlight | undefined) {
  const ac = new AbortController();
  const cancel = () => ac.abort();
  call.once("cancelled", cancel);
  const kind = m.methodKind === "unary" ? "calls" : "streams";
  if (inFlight) inFlight[kind]++;
  const settled = () => {
    call.off("cancelled", cancel);
    if (inFlight) inFlight[kind]--;
  };
  return {
    ctx: { method: m, metadata: call.metadata, deadline: deadlineOf(call), signal: ac.signal, log },
    settled,
    cancel,
  };
}

/** The status for a failed call; unknown errors are logged here and never shown. */
function failure(ctx: CallContext, err: unknown) {
  const st = toStatusObject(err);
  if (st.code === grpc.status.INTERNAL) ctx.log.error({ err }, "unhandled error in handler");
  return st;
}

/** Waits until `call` can take more output, or the call ends. */
function drained(call: grpc.ServerWritableStream<unknown, unknown>, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      call.off("drain", done);
      signal.removeEventListener("abort", done);
      resolve();
    };
    call.once("drain", done);
    signal.addEventListener("abort", done, { once: true });
  });
}

function unaryHandler(m: DescMethod, fn: unknown, interceptors: readonly Interceptor[], log: Logger, n?: InFlight) {
  const unary = fn as UnaryImpl<DescMessage, DescMessage>;
  return ((call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
    const { ctx, settled } = callContext(m, call, log, n);
    runInterceptors(interceptors, ctx, async () => create(m.output, await unary(requestOf(call, m), ctx))).then(
      (res) => {
        settled();
        callback(null, res);
      },
      (err: unknown) => {
        settled();
        callback(failure(ctx, err));
      },
    );
  }) as grpc.handleUnaryCall<unknown, unknown>;
}

/** The status a stream ends with when its server shuts down: retryable, so its client calls again (elsewhere). */
const SHUTTING_DOWN = { code: grpc.status.UNAVAILABLE, details: "the server is shutting down: call again" };

/**
 * Ends the streaming `call` UNAVAILABLE once `shutdown` is aborted (at once if it already is), after
 * `first` (which may stop the handler). Returns what stops watching, to call once the call has ended:
 * the signal lives as long as the server.
 */
export function endOnShutdown(
  call: Pick<grpc.ServerWritableStream<unknown, unknown>, "emit">,
  shutdown: AbortSignal | undefined,
  first: () => void = () => {},
): () => void {
  const end = () => {
    first();
    call.emit("error", SHUTTING_DOWN);
  };
  if (shutdown?.aborted) end();
  else shutdown?.addEventListener("abort", end, { once: true });
  return () => shutdown?.removeEventListener("abort", end);
}

function streamHandler(
  m: DescMethod,
  fn: unknown,
  interceptors: readonly Interceptor[],
  log: Logger,
  shutdown: AbortSignal | undefined,
  n: InFlight | undefined,
) {
  const streaming = fn as ServerStreamingImpl<DescMessage, DescMessage>;
  return ((call: grpc.ServerWritableStream<unknown, unknown>) => {
    const { ctx, settled: unwatch, cancel } = callContext(m, call, log, n);
    // A stream may run for as long as what it follows (WatchOrder: a saga): on shutdown it ends at
    // once, UNAVAILABLE, for its client to watch again on another instance. Left to the drain, it held
    // the process to its grace (10 s a pod at every rollout), then was cut.
    let shut = false;
    const unwatchShutdown = endOnShutdown(call, shutdown, () => {
      shut = true;
      cancel();
    });
    const settled = () => {
      unwatch();
      unwatchShutdown();
    };
    runInterceptors(interceptors, ctx, async () => {
      for await (const msg of streaming(requestOf(call, m), ctx)) {
        if (ctx.signal.aborted) break;
        if (!call.write(create(m.output, msg))) await drained(call, ctx.signal);
      }
    }).then(
      () => {
        settled();
        if (!shut) call.end();
      },
      (err: unknown) => {
        settled();
        if (!ctx.signal.aborted) call.emit("error", failure(ctx, err));
      },
    );
  }) as grpc.handleServerStreamingCall<unknown, unknown>;
}

/**
 * The grpc-js handlers for `impl`: each call gets a {@link CallContext}, runs through `interceptors`
 * (outermost first), and any thrown error becomes a status via {@link toStatusObject} (unknown errors
 * are logged and sent as INTERNAL without internals). Once `shutdown` is aborted, server streams end
 * UNAVAILABLE at once (unary calls are left to finish). `inFlight` counts the calls in progress.
 */
export function grpcHandlers<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
  opts: { log: Logger; interceptors?: readonly Interceptor[]; shutdown?: AbortSignal; inFlight?: InFlight },
): grpc.UntypedServiceImplementation {
  const interceptors = opts.interceptors ?? [];
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const m of service.methods) {
    const fn = (impl as Record<string, unknown>)[m.localName];
    if (typeof fn !== "function") throw new Error(`${methodPath(m)}: no handler "${m.localName}"`);
    const log = opts.log.child({ rpc: methodPath(m) });
    handlers[m.name] =
      m.methodKind === "unary"
        ? unaryHandler(m, fn, interceptors, log, opts.inFlight)
        : streamHandler(m, fn, interceptors, log, opts.shutdown, opts.inFlight);
  }
  return handlers;
}

/**
 * grpc-js option that turns channelz off (it is on by default): its per-call and per-message
 * bookkeeping (counters, timestamps) serves only a channelz service, which nothing here registers.
 */
export const NO_CHANNELZ = { "grpc.enable_channelz": 0 } as const;

/** The 5-byte prefix of an uncompressed gRPC message of `length` bytes (length-prefixed message framing). */
export function framePrefix(length: number): Buffer {
  const prefix = Buffer.allocUnsafe(5);
  prefix[0] = 0;
  prefix.writeUInt32BE(length, 1);
  return prefix;
}

/** The one uncompressed message of a unary gRPC body, or what is wrong with the body. */
export function unframe(body: Buffer): Buffer | string {
  if (body.byteLength < 5) return "holds no message";
  if ((body[0] ?? 0) & 1) return "is compressed, which was not negotiated";
  const length = body.readUInt32BE(1);
  if (5 + length < body.byteLength) return "holds more than one message";
  if (5 + length > body.byteLength) return "ended inside its message";
  return body.subarray(5);
}
