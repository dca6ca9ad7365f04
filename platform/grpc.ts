/**
 * The one adapter between protobuf-es service descriptors (gen/) and
 * @grpc/grpc-js: typed server implementations and typed promise clients,
 * for unary and server-streaming methods, with no proto-loader at run time.
 */
import {
  create,
  type DescMessage,
  type DescMethod,
  type DescService,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { context, type Span, SpanKind, SpanStatusCode, type Tracer, trace } from "@opentelemetry/api";
import { InvalidArgumentError, RpcError, toStatusObject } from "./errors.js";
import type { Logger } from "./log.js";
import { injectContext } from "./telemetry.js";

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
 * Wraps every call of a service: runs before the handler and around its
 * whole execution (a stream counts as one execution). Throwing rejects the
 * call with the thrown error's status. Used for logging, fault injection,
 * metrics, tracing and auth context.
 */
export type Interceptor = <T>(ctx: CallContext, next: () => Promise<T>) => Promise<T>;

/** `/package.Service/Method`, the HTTP/2 path of a method. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

function serializer<D extends DescMessage>(schema: D): (msg: MessageShape<D>) => Buffer {
  return (msg) => Buffer.from(toBinary(schema, msg));
}

function deserializer<D extends DescMessage>(schema: D): (buf: Buffer) => MessageShape<D> {
  return (buf) => fromBinary(schema, buf);
}

/** A request that did not decode. grpc-js would answer INTERNAL for a throwing deserializer; it is the client's fault. */
class Undecodable {
  constructor(readonly reason: string) {}
}

/** Decodes a request, or marks it {@link Undecodable} for the handler to refuse with INVALID_ARGUMENT. */
function requestDeserializer<D extends DescMessage>(schema: D): (buf: Buffer) => MessageShape<D> | Undecodable {
  return (buf) => {
    try {
      return fromBinary(schema, buf);
    } catch (err) {
      return new Undecodable((err as Error).message);
    }
  };
}

/** The decoded request of `call`; INVALID_ARGUMENT when it did not decode. */
function requestOf(call: ServerCall, method: DescMethod): never {
  const req = call.request as unknown;
  if (req instanceof Undecodable) {
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

/**
 * The grpc-js handlers for `impl`: each call gets a {@link CallContext},
 * runs through `interceptors` (outermost first), and any thrown error becomes
 * a status via {@link toStatusObject} (unknown errors are logged and sent as
 * INTERNAL without internals).
 */
export function grpcHandlers<S extends DescService>(
  service: S,
  impl: ServiceImpl<S>,
  opts: { log: Logger; interceptors?: readonly Interceptor[] },
): grpc.UntypedServiceImplementation {
  const interceptors = opts.interceptors ?? [];
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const m of service.methods) {
    const fn = (impl as Record<string, unknown>)[m.localName];
    if (typeof fn !== "function") throw new Error(`${methodPath(m)}: no handler "${m.localName}"`);
    const log = opts.log.child({ rpc: methodPath(m) });
    const context = (call: ServerCall): CallContext => {
      const ac = new AbortController();
      call.once("cancelled", () => ac.abort());
      return { method: m, metadata: call.metadata, deadline: deadlineOf(call), signal: ac.signal, log };
    };
    const fail = (ctx: CallContext, err: unknown) => {
      const st = toStatusObject(err);
      if (st.code === grpc.status.INTERNAL) ctx.log.error({ err }, "unhandled error in handler");
      return st;
    };
    if (m.methodKind === "unary") {
      const unary = fn as UnaryImpl<DescMessage, DescMessage>;
      handlers[m.name] = ((call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        const ctx = context(call);
        runInterceptors(interceptors, ctx, async () => create(m.output, await unary(requestOf(call, m), ctx))).then(
          (res) => callback(null, res),
          (err: unknown) => callback(fail(ctx, err)),
        );
      }) as grpc.handleUnaryCall<unknown, unknown>;
    } else {
      const streaming = fn as ServerStreamingImpl<DescMessage, DescMessage>;
      handlers[m.name] = ((call: grpc.ServerWritableStream<unknown, unknown>) => {
        const ctx = context(call);
        runInterceptors(interceptors, ctx, async () => {
          for await (const msg of streaming(requestOf(call, m), ctx)) {
            if (ctx.signal.aborted) break;
            if (!call.write(create(m.output, msg))) {
              await new Promise<void>((resolve) => {
                call.once("drain", resolve);
                ctx.signal.addEventListener("abort", () => resolve(), { once: true });
              });
            }
          }
        }).then(
          () => call.end(),
          (err: unknown) => {
            if (!ctx.signal.aborted) call.emit("error", fail(ctx, err));
          },
        );
      }) as grpc.handleServerStreamingCall<unknown, unknown>;
    }
  }
  return handlers;
}

/** Per-call options of a typed client. */
export interface CallOptions {
  /** Absolute deadline in ms since the epoch. The earlier of this and `timeoutMs` wins. */
  readonly deadline?: number;
  /** Relative timeout in ms from now. */
  readonly timeoutMs?: number;
  /** Request metadata to send. */
  readonly metadata?: grpc.Metadata;
  /** Cancels the call when aborted. */
  readonly signal?: AbortSignal;
}

/** A promise-returning method per unary RPC and an async iterable per server stream. */
export type Client<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends {
    methodKind: "unary";
    input: infer I extends DescMessage;
    output: infer O extends DescMessage;
  }
    ? (request: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
    : S["method"][K] extends {
          methodKind: "server_streaming";
          input: infer I extends DescMessage;
          output: infer O extends DescMessage;
        }
      ? (request: MessageInitShape<I>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
      : never;
};

function grpcCallOptions(opts: CallOptions | undefined): grpc.CallOptions {
  if (!opts) return {};
  let deadline = opts.deadline;
  if (opts.timeoutMs !== undefined) {
    const t = Date.now() + opts.timeoutMs;
    deadline = deadline === undefined ? t : Math.min(deadline, t);
  }
  return deadline === undefined ? {} : { deadline };
}

function toRpcError(err: grpc.ServiceError): RpcError {
  return new RpcError(err.code, err.details, err.metadata ?? new grpc.Metadata(), { cause: err });
}

/**
 * A typed client for `service` over a grpc-js channel. Unary calls reject
 * with {@link RpcError}; server streams throw it from the iterator. With a
 * tracer, each call is a CLIENT span whose context travels in the call's
 * `traceparent` metadata.
 */
export function createClient<S extends DescService>(service: S, channel: grpc.Client, tracer?: Tracer): Client<S> {
  const client: Record<string, unknown> = {};
  for (const m of service.methods) {
    const path = methodPath(m);
    /** Metadata for one call: a copy (callers may reuse theirs), with the trace context injected. */
    const metadataFor = (opts: CallOptions | undefined, span: Span | undefined) => {
      const md = opts?.metadata?.clone() ?? new grpc.Metadata();
      if (span) injectContext(md, trace.setSpan(context.active(), span));
      return md;
    };
    const startSpan = () =>
      tracer?.startSpan(path.slice(1), { kind: SpanKind.CLIENT, attributes: { "rpc.system": "grpc" } });
    const endSpan = (span: Span | undefined, code: number) => {
      if (!span) return;
      span.setAttribute("rpc.grpc.status_code", code);
      if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, message: grpc.status[code] ?? String(code) });
      span.end();
    };
    const serialize = serializer(m.input);
    const deserialize = deserializer(m.output);
    if (m.methodKind === "unary") {
      client[m.localName] = (req: MessageInitShape<DescMessage>, opts?: CallOptions) =>
        new Promise((resolve, reject) => {
          if (opts?.signal?.aborted) {
            reject(new RpcError(grpc.status.CANCELLED, "cancelled before start", new grpc.Metadata()));
            return;
          }
          const span = startSpan();
          const call = channel.makeUnaryRequest(
            path,
            serialize,
            deserialize,
            create(m.input, req),
            metadataFor(opts, span),
            grpcCallOptions(opts),
            (err, res) => {
              opts?.signal?.removeEventListener("abort", onAbort);
              endSpan(span, err ? err.code : 0);
              if (err) reject(toRpcError(err));
              else resolve(res);
            },
          );
          const onAbort = () => call.cancel();
          opts?.signal?.addEventListener("abort", onAbort, { once: true });
        });
    } else if (m.methodKind === "server_streaming") {
      client[m.localName] = (req: MessageInitShape<DescMessage>, opts?: CallOptions) =>
        (async function* () {
          const span = startSpan();
          let code = 0;
          const call = channel.makeServerStreamRequest(
            path,
            serialize,
            deserialize,
            create(m.input, req),
            metadataFor(opts, span),
            grpcCallOptions(opts),
          );
          const onAbort = () => call.cancel();
          opts?.signal?.addEventListener("abort", onAbort, { once: true });
          try {
            for await (const msg of call) yield msg;
          } catch (err) {
            code = isServiceError(err) ? err.code : grpc.status.UNKNOWN;
            throw isServiceError(err) ? toRpcError(err) : err;
          } finally {
            opts?.signal?.removeEventListener("abort", onAbort);
            call.cancel();
            endSpan(span, code);
          }
        })();
    }
  }
  return client as Client<S>;
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === "number" && "metadata" in err;
}

/** A plaintext channel to `target` (host:port, dns:///..., or any registered resolver scheme). */
export function createChannel(target: string, options: grpc.ChannelOptions = {}): grpc.Client {
  return new grpc.Client(target, grpc.credentials.createInsecure(), options);
}
