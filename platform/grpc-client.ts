/**
 * Typed promise clients over grpc-js channels, derived from protobuf-es
 * service descriptors: a promise per unary RPC, an async iterable per server
 * stream, errors as {@link RpcError}. With a tracer, each call is a CLIENT
 * span whose context travels in the call's `traceparent` metadata.
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
import { earliestDeadline } from "./deadline.js";
import { knownStatus, RpcError } from "./errors.js";
import { deserializer, methodPath, NO_CHANNELZ, serializer } from "./grpc.js";
import { injectContext, injectHeaders } from "./propagation.js";
import { rpcAttributes } from "./tracing.js";

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
  const deadline = earliestDeadline(opts?.deadline, opts?.timeoutMs);
  return deadline === undefined ? {} : { deadline };
}

function toRpcError(err: grpc.ServiceError): RpcError {
  const broken = NO_STATUS.test(err.details);
  return new RpcError(knownStatus(err.code), err.details, err.metadata ?? new grpc.Metadata(), { cause: err, broken });
}

/** grpc-js's words for a status it made up for an answer that held none (see RpcError's `broken`). */
const NO_STATUS =
  /^(Received HTTP status code|Received RST_STREAM|Stream refused by server|Bandwidth exhausted|Protocol not secure enough|Received message larger than max)/;

/** The span, metadata and outcome of one call of `m`. */
export function callTracing(m: DescMethod, tracer: Tracer | undefined) {
  const path = methodPath(m);
  const attributes = rpcAttributes("grpc", m);
  return {
    start: () => tracer?.startSpan(path.slice(1), { kind: SpanKind.CLIENT, attributes }),
    /** Metadata for one call: a copy (callers may reuse theirs), with the trace context injected. */
    metadata: (opts: CallOptions | undefined, span: Span | undefined) => {
      const md = opts?.metadata?.clone() ?? new grpc.Metadata();
      if (span) injectContext(md, trace.setSpan(context.active(), span));
      return md;
    },
    /** The same as HTTP/2 headers, for a client that writes its own (h2-bytes.ts): no copy of the metadata. */
    headers: (opts: CallOptions | undefined, span: Span | undefined): Record<string, string | string[]> => {
      const h = opts?.metadata?.toHttp2Headers() ?? {};
      if (span) injectHeaders(h, trace.setSpan(context.active(), span));
      return h as Record<string, string | string[]>;
    },
    end: (span: Span | undefined, code: number) => {
      if (!span) return;
      span.setAttribute("rpc.grpc.status_code", code);
      if (code !== 0) span.setStatus({ code: SpanStatusCode.ERROR, message: grpc.status[code] ?? String(code) });
      span.end();
    },
  };
}

function unaryCall(m: DescMethod, channel: grpc.Client, tracer: Tracer | undefined) {
  const path = methodPath(m);
  const tracing = callTracing(m, tracer);
  const serialize = serializer(m.input);
  const deserialize = deserializer(m.output);
  return (req: MessageInitShape<DescMessage>, opts?: CallOptions) =>
    new Promise((resolve, reject) => {
      if (opts?.signal?.aborted) {
        reject(new RpcError(grpc.status.CANCELLED, "cancelled before start", new grpc.Metadata()));
        return;
      }
      const span = tracing.start();
      const call = channel.makeUnaryRequest(
        path,
        serialize,
        deserialize,
        create(m.input, req),
        tracing.metadata(opts, span),
        grpcCallOptions(opts),
        (err, res) => {
          opts?.signal?.removeEventListener("abort", onAbort);
          tracing.end(span, err ? knownStatus(err.code) : 0);
          if (err) reject(toRpcError(err));
          else resolve(res);
        },
      );
      const onAbort = () => call.cancel();
      opts?.signal?.addEventListener("abort", onAbort, { once: true });
    });
}

/** A unary call per method on already-encoded messages: bytes in, bytes out (platform/h2-bytes.ts). */
export type BytesClient = Readonly<Record<string, (request: Uint8Array, options?: CallOptions) => Promise<Uint8Array>>>;

/** How long a stream its caller stopped reading may stay quiet before it is cancelled. */
const ABANDONED_IDLE_MS = 2_000;

/** Where one server stream runs: its channel, and what its cancel and its end tell their owner (stream-channels.ts). */
export interface StreamRoute {
  readonly channel: grpc.Client;
  cancel(call: grpc.ClientReadableStream<unknown>): void;
  ended(): void;
}

function streamCall(m: DescMethod, route: () => StreamRoute, tracer: Tracer | undefined) {
  const path = methodPath(m);
  const tracing = callTracing(m, tracer);
  const serialize = serializer(m.input);
  const deserialize = deserializer(m.output);
  return (req: MessageInitShape<DescMessage>, opts?: CallOptions) =>
    (async function* () {
      const span = tracing.start();
      let code = 0;
      const { channel, cancel, ended: done } = route();
      const call = channel.makeServerStreamRequest(
        path,
        serialize,
        deserialize,
        create(m.input, req),
        tracing.metadata(opts, span),
        grpcCallOptions(opts),
      );
      const onAbort = () => cancel(call);
      opts?.signal?.addEventListener("abort", onAbort, { once: true });
      let ended = false;
      call.once("status", () => {
        ended = true;
        done();
      });
      // Read by hand: `for await` would destroy the stream when the caller stops reading, and a
      // destroyed stream never reports the status that may already be on its way.
      const messages = call[Symbol.asyncIterator]();
      try {
        for (let next = await messages.next(); !next.done; next = await messages.next()) yield next.value;
      } catch (err) {
        code = isServiceError(err) ? knownStatus(err.code) : grpc.status.UNKNOWN;
        throw isServiceError(err) ? toRpcError(err) : err;
      } finally {
        opts?.signal?.removeEventListener("abort", onAbort);
        tracing.end(span, code);
        // A caller that stops reading at the last message (a watch that saw the terminal state)
        // would reset a stream the server has already ended, its status on the way — and every
        // reset counts against Node's rapid-reset limit for the whole connection (platform/server.ts).
        // So read on: the end means there is nothing to cancel; another message, or quiet for a
        // while, means the stream is live and the caller is done with it.
        if (!ended && !opts?.signal?.aborted) {
          const idle = setTimeout(() => cancel(call), ABANDONED_IDLE_MS);
          idle.unref();
          messages.next().then(
            (next) => {
              clearTimeout(idle);
              if (!next.done) cancel(call);
            },
            () => clearTimeout(idle),
          );
        }
      }
    })();
}

/**
 * A unary call of `m` on `call`, an encoded-message client (platform/h2-bytes.ts, which traces the
 * call): the request encoded here and the answer decoded — an answer that does not decode is
 * INTERNAL, as grpc-js reports it.
 */
function unaryOverBytes(m: DescMethod, call: BytesClient[string]) {
  return async (req: MessageInitShape<DescMessage>, opts?: CallOptions) => {
    const answer = await call(toBinary(m.input, create(m.input, req)), opts);
    try {
      return fromBinary(m.output, answer);
    } catch (err) {
      const why = `Response message parsing error: ${(err as Error).message}`;
      throw new RpcError(grpc.status.INTERNAL, why, new grpc.Metadata(), { cause: err });
    }
  };
}

/**
 * A typed client for `service` over a grpc-js channel. Unary calls reject
 * with {@link RpcError}; server streams throw it from the iterator. With
 * `bytes` (a plain HTTP/2 client of the same instance), unary calls go through
 * it instead of grpc-js: the same statuses, deadlines and cancellation for a
 * fraction of grpc-js's per-call work. With `streams`, server streams run on
 * the channels it gives (stream-channels.ts) instead of `channel`.
 */
export function createClient<S extends DescService>(
  service: S,
  channel: grpc.Client,
  tracer?: Tracer,
  bytes?: BytesClient,
  streams: () => StreamRoute = () => ({ channel, cancel: (call) => call.cancel(), ended: () => {} }),
): Client<S> {
  const client: Record<string, unknown> = {};
  for (const m of service.methods) {
    const overBytes = bytes?.[m.localName];
    if (m.methodKind === "unary")
      client[m.localName] = overBytes ? unaryOverBytes(m, overBytes) : unaryCall(m, channel, tracer);
    else if (m.methodKind === "server_streaming") client[m.localName] = streamCall(m, streams, tracer);
  }
  return client as Client<S>;
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === "number" && "metadata" in err;
}

/** A plaintext channel to `target` (host:port, dns:///..., or any registered resolver scheme). */
export function createChannel(target: string, options: grpc.ChannelOptions = {}): grpc.Client {
  return new grpc.Client(target, grpc.credentials.createInsecure(), { ...NO_CHANNELZ, ...options });
}
