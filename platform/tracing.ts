/**
 * Process-wide tracing: one OpenTelemetry tracer provider per process
 * (W3C trace context, async-hooks context), exporting to an OTLP/HTTP
 * collector and/or the span file `make trace` reads. Just the trace SDK:
 * the all-in-one `sdk-node` would bring every exporter and instrumentation
 * into the image for nothing.
 */
import { context, propagation, trace } from "@opentelemetry/api";
import type { SpanProcessor } from "@opentelemetry/sdk-trace-base";
import { DEFAULT_TRACE_FILE_MAX_BYTES, FileSpanExporter } from "./span-file.js";

/** Process-wide tracing: starts the OpenTelemetry SDK once; returns its shutdown. */
export async function startTracing(opts: {
  service: string;
  otlpEndpoint: string;
  traceFile: string;
  /** Size at which the trace file is rotated, bytes (default 50 MiB). */
  traceFileMaxBytes?: number;
  /** Share of new traces recorded (default 1); calls inside a trace follow their parent's decision. */
  sampleRatio?: number;
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
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(opts.sampleRatio ?? 1) }),
  });
  // Global tracer provider, AsyncLocalStorage context manager and the W3C propagator.
  provider.register();
  return async () => {
    await provider.shutdown();
    // Let go of the globals too, so tracing can be started again in this process.
    trace.disable();
    context.disable();
    propagation.disable();
  };
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
  },
): Promise<() => Promise<void>> {
  if (!c.OTEL_EXPORTER_OTLP_ENDPOINT && !c.TRACE_FILE) return async () => {};
  return startTracing({
    service,
    otlpEndpoint: c.OTEL_EXPORTER_OTLP_ENDPOINT,
    traceFile: c.TRACE_FILE,
    traceFileMaxBytes: c.TRACE_FILE_MAX_BYTES,
    sampleRatio: c.TRACE_SAMPLE_RATIO,
  });
}
