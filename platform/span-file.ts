/**
 * The span file: finished spans as JSON lines, bounded by rotation. What
 * `make trace` reads.
 */
import { appendFileSync, renameSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { type ExportResult, ExportResultCode } from "@opentelemetry/core";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace-base";
import { makeDirs } from "./make-dirs.js";

/**
 * Appends finished spans to a file as JSON lines — enough for `make trace`
 * to draw a waterfall without installing Jaeger. Several processes may share
 * the file: each batch is one `write` in append mode.
 *
 * The file is bounded: before a batch would take it past `maxBytes`, it is
 * renamed to `<path>.1` (replacing the previous one) and a new file starts,
 * so the spans on disk never exceed about twice `maxBytes`. Two processes
 * rotating at the same moment can drop one generation early; never more.
 */
export class FileSpanExporter implements SpanExporter {
  constructor(
    private readonly path: string,
    private readonly maxBytes: number,
  ) {
    makeDirs(dirname(path));
  }

  export(spans: ReadableSpan[], done: (r: ExportResult) => void): void {
    try {
      const lines = spans.map((s) => `${JSON.stringify(spanRecord(s))}\n`).join("");
      const size = statSync(this.path, { throwIfNoEntry: false })?.size ?? 0;
      if (size > 0 && size + Buffer.byteLength(lines) > this.maxBytes) renameSync(this.path, `${this.path}.1`);
      appendFileSync(this.path, lines);
      done({ code: ExportResultCode.SUCCESS });
    } catch (error) {
      done({ code: ExportResultCode.FAILED, error: error as Error });
    }
  }

  async shutdown(): Promise<void> {}
}

/** The JSON form of a span in the trace file. */
function spanRecord(s: ReadableSpan) {
  const start = s.startTime[0] * 1e3 + s.startTime[1] / 1e6;
  const duration = s.duration[0] * 1e3 + s.duration[1] / 1e6;
  return {
    trace_id: s.spanContext().traceId,
    span_id: s.spanContext().spanId,
    parent_id: s.parentSpanContext?.spanId ?? "",
    service: s.instrumentationScope.name,
    name: s.name,
    kind: SpanKind[s.kind],
    start_ms: Math.round(start * 1000) / 1000,
    duration_ms: Math.round(duration * 1000) / 1000,
    error: s.status.code === SpanStatusCode.ERROR ? s.status.message || "error" : "",
    attributes: s.attributes,
    links: s.links.map((l) => l.context.spanId),
  };
}
