/**
 * Trace sampling (TRACE_SAMPLE_RATIO, TRACE_READ_SAMPLE_RATIO): new traces
 * are kept at the ratio — the read ratio when the first call only reads —
 * and a call inside a trace follows its root's decision, so a trace is
 * whole or absent, never half.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { context, propagation, ROOT_CONTEXT, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterEach, describe, expect, it } from "vitest";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { READ_ONLY, rpcAttributes, startTracing, TRACE_FLUSH_MS } from "./tracing.js";

let stop: (() => Promise<void>) | undefined;
afterEach(async () => {
  await stop?.();
  stop = undefined;
});

async function tracing(sampleRatio: number, readSampleRatio?: number) {
  const exporter = new InMemorySpanExporter();
  stop = await startTracing({
    service: "t",
    otlpEndpoint: "",
    traceFile: "",
    sampleRatio,
    ...(readSampleRatio === undefined ? {} : { readSampleRatio }),
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

  it("reads are marked by their proto's idempotency_level; a mutation, even a keyed one, is not", () => {
    const method = (s: typeof InventoryService | typeof OrderService, name: string) => {
      const m = s.methods.find((x) => x.name === name);
      if (!m) throw new Error(name);
      return m;
    };
    expect(rpcAttributes("grpc", method(InventoryService, "GetProduct"))[READ_ONLY]).toBe(true);
    expect(rpcAttributes("grpc", method(OrderService, "GetOrder"))[READ_ONLY]).toBe(true);
    expect(rpcAttributes("grpc", method(OrderService, "PlaceOrder"))).toEqual({ "rpc.system": "grpc" });
    expect(rpcAttributes("grpc", method(InventoryService, "ReserveStock"))).toEqual({ "rpc.system": "grpc" });
  });

  it("a new trace that begins with a read is kept at the read ratio, any other at the ratio", async () => {
    const { exporter, tracer } = await tracing(1, 0);
    const read = { attributes: { [READ_ONLY]: true } };
    for (let i = 0; i < 50; i++) tracer.startSpan("GetProduct", read).end();
    expect(exporter.getFinishedSpans()).toHaveLength(0);
    for (let i = 0; i < 50; i++) tracer.startSpan("PlaceOrder").end();
    expect(exporter.getFinishedSpans()).toHaveLength(50);
    // Inside a sampled trace a read is recorded whatever the read ratio: the trace stays whole.
    context.with(incoming(true), () => tracer.startSpan("GetProduct", read).end());
    expect(exporter.getFinishedSpans()).toHaveLength(51);
  });

  it("the read ratio keeps about that share of new read traces; left unset, reads follow the ratio", async () => {
    const { exporter, tracer } = await tracing(1, 0.25);
    for (let i = 0; i < 2000; i++) tracer.startSpan("GetProduct", { attributes: { [READ_ONLY]: true } }).end();
    const kept = exporter.getFinishedSpans().length;
    expect(kept).toBeGreaterThan(400);
    expect(kept).toBeLessThan(600);
    await stop?.();
    const unset = await tracing(0);
    for (let i = 0; i < 50; i++) unset.tracer.startSpan("GetProduct", { attributes: { [READ_ONLY]: true } }).end();
    expect(unset.exporter.getFinishedSpans()).toHaveLength(0);
  });
});

/** A TCP port that takes connections and never answers (`silent`), or, closed again, one that refuses them. */
async function collector(silent: boolean): Promise<{ url: string; close: () => void }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => sockets.add(s));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const close = () => {
    for (const s of sockets) s.destroy();
    server.close();
  };
  if (!silent) close();
  return { url, close };
}

// An unreachable OTLP collector made the stop wait for the exporter (~9 s of retries when refused, its
// 10 s timeout when silent) and then reject: every SIGTERM took that long and exited 1, "shutdown failed".
describe("stopping with the OTLP collector unreachable", () => {
  it.each([
    ["refuses connections", false],
    ["never answers", true],
  ])(
    "the collector %s: the stop ends in about TRACE_FLUSH_MS, without an error, and the trace file has its spans",
    async (_, silent) => {
      const c = await collector(silent);
      const dir = mkdtempSync(join(tmpdir(), "shopmesh-trace-"));
      try {
        const traceFile = join(dir, "spans.jsonl");
        const stopTracing = await startTracing({ service: "t", otlpEndpoint: c.url, traceFile });
        trace.getTracer("t").startSpan("last-span").end();
        const t0 = performance.now();
        await expect(stopTracing()).resolves.toBeUndefined();
        expect(performance.now() - t0).toBeLessThan(TRACE_FLUSH_MS + 1_000);
        expect(readFileSync(traceFile, "utf8")).toContain("last-span");
      } finally {
        c.close();
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
