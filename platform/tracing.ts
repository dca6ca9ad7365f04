/**
 * Process-wide tracing: one OpenTelemetry tracer provider per process
 * (W3C trace context, async-hooks context), exporting to an OTLP/HTTP
 * collector and/or the span file `make trace` reads. Just the trace SDK:
 * the all-in-one `sdk-node` would bring every exporter and instrumentation
 * into the image for nothing.
 */
import type { DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import {
  type Attributes,
  type Context,
  context,
  type Link,
  propagation,
  type SpanKind,
  trace,
} from "@opentelemetry/api";
import type { Sampler, SamplingResult, SpanProcessor } from "@opentelemetry/sdk-trace-base";
import { DEFAULT_TRACE_FILE_MAX_BYTES } from "./config.js";
import { FileSpanExporter } from "./span-file.js";

/**
 * How long a stop waits for the last spans to reach the OTLP collector, ms; those it has not taken by
 * then are dropped, as a crash would drop them. The exporter's own bound is its 10 s timeout (~9 s of
 * retries when the collector refuses), after which the SDK's shutdown rejects: with the collector
 * unreachable, every SIGTERM waited that long and exited 1, "shutdown failed". The trace file's
 * processor is flushed beside it, not after it.
 */
export const TRACE_FLUSH_MS = 2_000;

/** Process-wide tracing: starts the OpenTelemetry SDK once; returns its shutdown. */
export async function startTracing(opts: {
  service: string;
  otlpEndpoint: string;
  traceFile: string;
  /** Size at which the trace file is rotated, bytes (default 50 MiB). */
  traceFileMaxBytes?: number;
  /** Share of new traces recorded (default 1); calls inside a trace follow their parent's decision. */
  sampleRatio?: number;
  /** The same for new traces that begin with a read (see {@link READ_ONLY}); default `sampleRatio`. */
  readSampleRatio?: number;
  extra?: SpanProcessor[];
}): Promise<() => Promise<void>> {
  // Loaded only by a process that traces (and the OTLP exporter only by one that exports): ~5 MB less
  // in every process that does not.
  const [{ resourceFromAttributes }, { BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler }] =
    await Promise.all([import("@opentelemetry/resources"), import("@opentelemetry/sdk-trace-base")]);
  const { NodeTracerProvider } = await import("@opentelemetry/sdk-trace-node");
  const processors: SpanProcessor[] = [...(opts.extra ?? [])];
  if (opts.otlpEndpoint) {
    const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-http");
    processors.push(
      new BatchSpanProcessor(new OTLPTraceExporter({ url: `${opts.otlpEndpoint.replace(/\/$/, "")}/v1/traces` })),
    );
  }
  if (opts.traceFile)
    processors.push(
      new BatchSpanProcessor(
        new FileSpanExporter(opts.traceFile, opts.traceFileMaxBytes ?? DEFAULT_TRACE_FILE_MAX_BYTES),
        {
          scheduledDelayMillis: 500,
        },
      ),
    );
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ "service.name": opts.service }),
    spanProcessors: processors,
    sampler: new ParentBasedSampler({
      root: new ByWhatItDoes(
        new TraceIdRatioBasedSampler(opts.sampleRatio ?? 1),
        new TraceIdRatioBasedSampler(opts.readSampleRatio ?? opts.sampleRatio ?? 1),
      ),
    }),
  });
  // Global tracer provider, AsyncLocalStorage context manager and the W3C propagator.
  provider.register();
  return async () => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, TRACE_FLUSH_MS);
    });
    await Promise.race([provider.shutdown().catch(() => {}), late]);
    clearTimeout(timer);
    // Let go of the globals too, so tracing can be started again in this process.
    trace.disable();
    context.disable();
    propagation.disable();
  };
}

/**
 * The attribute that marks a span of a call that only reads (its method is declared
 * `idempotency_level = NO_SIDE_EFFECTS`), set where a call's first span starts (the gateway, a
 * service's server interceptor, a client call): a trace that begins there is sampled at the
 * read ratio.
 */
export const READ_ONLY = "shopmesh.read_only";

/** The span attributes of a call of `method` over `system` (`rpc.system`), marked READ_ONLY when it only reads. */
export function rpcAttributes(system: string, method: Pick<DescMethod, "idempotency"> | undefined): Attributes {
  return method?.idempotency === MethodOptions_IdempotencyLevel.NO_SIDE_EFFECTS
    ? { "rpc.system": system, [READ_ONLY]: true }
    : { "rpc.system": system };
}

/** A new trace's sampling: at one ratio when its first span is a read's, at another otherwise. */
class ByWhatItDoes implements Sampler {
  constructor(
    private readonly others: Sampler,
    private readonly reads: Sampler,
  ) {}

  shouldSample(
    ctx: Context,
    traceId: string,
    name: string,
    kind: SpanKind,
    attributes: Attributes,
    links: Link[],
  ): SamplingResult {
    const by = attributes[READ_ONLY] === true ? this.reads : this.others;
    return by.shouldSample(ctx, traceId, name, kind, attributes, links);
  }

  toString(): string {
    return `ByWhatItDoes{reads=${this.reads}, others=${this.others}}`;
  }
}

/**
 * A process's telemetry from its config: tracing (OTLP and/or the trace
 * file, when configured) started before anything else, and the app's
 * metrics served on METRICS_PORT when set. Returns what to stop at exit.
 */
export async function startProcessTelemetry(
  service: string,
  c: {
    OTEL_EXPORTER_OTLP_ENDPOINT: string;
    TRACE_FILE: string;
    TRACE_FILE_MAX_BYTES: number;
    TRACE_SAMPLE_RATIO: number;
    TRACE_READ_SAMPLE_RATIO: number;
  },
): Promise<() => Promise<void>> {
  if (!c.OTEL_EXPORTER_OTLP_ENDPOINT && !c.TRACE_FILE) return async () => {};
  return startTracing({
    service,
    otlpEndpoint: c.OTEL_EXPORTER_OTLP_ENDPOINT,
    traceFile: c.TRACE_FILE,
    traceFileMaxBytes: c.TRACE_FILE_MAX_BYTES,
    sampleRatio: c.TRACE_SAMPLE_RATIO,
    readSampleRatio: c.TRACE_READ_SAMPLE_RATIO,
  });
}
