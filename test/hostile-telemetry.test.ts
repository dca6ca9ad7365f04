/**
 * A hostile round against the observability surface (2026-12-04): what a client of the gateway, in
 * any of its protocols, can do to the traces, metrics and logs an operator reads, and what a process's
 * own log entry becomes in `make run`'s readable output. Each `describe` is one finding; every test
 * fails on the code it was written against.
 */
import http2 from "node:http2";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type GatewayApp, startGateway } from "../gateway/app.js";
import { loadConfig as gatewayConfig, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { silentLogger, startTracing } from "../platform/index.js";

describe("requests for no procedure are sampled as what they are: nothing done", () => {
  const spans = new InMemorySpanExporter();
  let stopTracing: () => Promise<void>;
  let gw: GatewayApp;
  beforeAll(async () => {
    // Writes kept whole, reads (and so what does nothing at all) not at all: the operator's setting
    // for a busy shop, TRACE_READ_SAMPLE_RATIO turned down.
    stopTracing = await startTracing({
      service: "gateway",
      otlpEndpoint: "",
      traceFile: "",
      sampleRatio: 1,
      readSampleRatio: 0,
      extra: [new SimpleSpanProcessor(spans)],
    });
    // No upstream is ever reached: every request here is refused before one would be called.
    const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), "127.0.0.1:1"]));
    gw = await startGateway(gatewayConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", ...targets }), silentLogger());
  });
  afterAll(async () => {
    await gw?.stop();
    await stopTracing?.();
  });

  it("a scanner's unknown paths, in every protocol, do not each record a trace", async () => {
    // Before: each one a new trace at TRACE_SAMPLE_RATIO (1), as if it were an order — a client probing
    // paths wrote a span per request to the span file and the collector, and its rotation pushed the
    // orders' traces out of what `make trace` reads, while the shop's real reads were kept at 10%.
    const probes: { path: string; method: string; type?: string }[] = [];
    for (let i = 0; i < 10; i++) {
      probes.push({ path: `/shopmesh.x${i}.v1.S/M${i}`, method: "POST", type: "application/json" });
      probes.push({ path: `/v1/nothing-${i}`, method: "GET" });
      probes.push({ path: `/shopmesh.x${i}.v1.S/M`, method: "POST", type: "application/grpc-web+proto" });
      probes.push({ path: `/shopmesh.x${i}.v1.S/M`, method: "POST", type: "application/grpc" });
    }
    const session = http2.connect(gw.url);
    try {
      for (const p of probes) {
        const status = await new Promise<number>((resolve, reject) => {
          const s = session.request({
            ":method": p.method,
            ":path": p.path,
            ...(p.type ? { "content-type": p.type } : {}),
          });
          let st = 0;
          s.on("response", (h) => {
            st = Number(h[":status"]);
          });
          s.on("error", reject);
          s.on("close", () => resolve(st));
          s.resume();
          s.end(p.method === "POST" ? "{}" : undefined);
        });
        expect(status).toBeGreaterThan(0);
      }
    } finally {
      session.close();
    }
    // What a call that does something still gets: a refused PlaceOrder (no token) is a new trace, kept.
    const placed = await fetch(`${gw.url}/shopmesh.order.v1.OrderService/PlaceOrder`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    expect(placed.status).toBe(401);
    await expect
      .poll(() => spans.getFinishedSpans().map((s) => s.name))
      .toContain("shopmesh.order.v1.OrderService/PlaceOrder");
    expect(spans.getFinishedSpans().filter((s) => s.name === "unknown").length).toBe(0);
  });
});
