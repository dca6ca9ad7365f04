/**
 * Trace sampling (TRACE_SAMPLE_RATIO): new traces are kept at the ratio,
 * and a call inside a trace follows its root's decision, so a trace is
 * whole or absent, never half.
 */
import { context, propagation, ROOT_CONTEXT, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterEach, describe, expect, it } from "vitest";
import { startTracing } from "./tracing.js";

let stop: (() => Promise<void>) | undefined;
afterEach(async () => {
  await stop?.();
  stop = undefined;
});

async function tracing(sampleRatio: number) {
  const exporter = new InMemorySpanExporter();
  stop = await startTracing({
    service: "t",
    otlpEndpoint: "",
    traceFile: "",
    sampleRatio,
    extra: [new SimpleSpanProcessor(exporter)],
  });
  return { exporter, tracer: trace.getTracer("t") };
}

/** The context a call arrives with: a remote parent, sampled or not. */
const incoming = (sampled: boolean) =>
  propagation.extract(ROOT_CONTEXT, {
    traceparent: `00-${"a".repeat(32)}-${"b".repeat(16)}-${sampled ? "01" : "00"}`,
  });

describe("trace sampling", () => {
  it("ratio 0 records no new trace, but a call inside a sampled trace is recorded", async () => {
    const { exporter, tracer } = await tracing(0);
    for (let i = 0; i < 50; i++) tracer.startSpan("root").end();
    expect(exporter.getFinishedSpans()).toHaveLength(0);
    context.with(incoming(true), () => tracer.startSpan("child").end());
    expect(exporter.getFinishedSpans().map((s) => s.name)).toEqual(["child"]);
  });

  it("ratio 1 records every new trace, but nothing inside a trace its root left out", async () => {
    const { exporter, tracer } = await tracing(1);
    for (let i = 0; i < 50; i++) tracer.startSpan("root").end();
    expect(exporter.getFinishedSpans()).toHaveLength(50);
    context.with(incoming(false), () => tracer.startSpan("child").end());
    expect(exporter.getFinishedSpans()).toHaveLength(50);
  });

  it("ratio 0.5 records about half of new traces", async () => {
    const { exporter, tracer } = await tracing(0.5);
    for (let i = 0; i < 2000; i++) tracer.startSpan("root").end();
    const kept = exporter.getFinishedSpans().length;
    expect(kept).toBeGreaterThan(800);
    expect(kept).toBeLessThan(1200);
  });
});
