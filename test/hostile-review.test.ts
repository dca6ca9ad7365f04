/**
 * A demanding review of 2026-12-05's changes (6718ba9..7d9a9f7): spans begun after admission, leases
 * and outbox claims in PostgreSQL's clock, Vary, the web page's token paste, call timeouts, restock key,
 * stream reconnect and history, the Python client. Each `describe` is one finding; a test that found a
 * defect says so.
 */
import http2 from "node:http2";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type GatewayApp, startGateway } from "../gateway/app.js";
import { loadConfig as gatewayConfig, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { silentLogger, startTracing } from "../platform/index.js";

describe("an anonymous reflection call (what grpcurl and buf curl send first) is sampled as the read it is", () => {
  // Found: a7a47f6 moved the span's start to after admission and marked as a read only what admission
  // refused. Before it, every request without a token was a read (`idle`); since, a tokenless call of a
  // token-free service — server reflection, which only describes the API — was admitted and so a new
  // trace kept at TRACE_SAMPLE_RATIO: a flood of anonymous `grpcurl list` wrote a span each and pushed
  // the orders' traces out of the span file, the very thing that change set out to end.
  const spans = new InMemorySpanExporter();
  let stopTracing: () => Promise<void>;
  let gw: GatewayApp;
  beforeAll(async () => {
    // Writes kept whole, reads not at all (TRACE_READ_SAMPLE_RATIO turned down).
    stopTracing = await startTracing({
      service: "gateway",
      otlpEndpoint: "",
      traceFile: "",
      sampleRatio: 1,
      readSampleRatio: 0,
      extra: [new SimpleSpanProcessor(spans)],
    });
    const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), "127.0.0.1:1"]));
    gw = await startGateway(gatewayConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", ...targets }), silentLogger());
  });
  afterAll(async () => {
    await gw?.stop();
    await stopTracing?.();
  });

  it("answers the reflection call and keeps no trace of it", async () => {
    // ServerReflectionRequest{list_services: "*"} (field 7), in a gRPC envelope.
    const message = Buffer.from([0x3a, 0x01, 0x2a]);
    const envelope = Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]);
    const session = http2.connect(gw.url);
    const ask = () =>
      new Promise<{ grpcStatus: string | undefined; body: Buffer }>((resolve, reject) => {
        const s = session.request({
          ":method": "POST",
          ":path": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
          "content-type": "application/grpc",
          te: "trailers",
        });
        const chunks: Buffer[] = [];
        let grpcStatus: string | undefined;
        s.on("response", (h) => {
          if (h["grpc-status"] !== undefined) grpcStatus = String(h["grpc-status"]);
        });
        s.on("trailers", (h) => {
          grpcStatus = String(h["grpc-status"]);
        });
        s.on("data", (c: Buffer) => chunks.push(c));
        s.on("error", reject);
        s.on("close", () => resolve({ grpcStatus, body: Buffer.concat(chunks) }));
        s.end(envelope);
      });
    try {
      for (let i = 0; i < 5; i++) {
        const { grpcStatus, body } = await ask();
        expect(grpcStatus).toBe("0");
        expect(body.toString("latin1")).toContain("shopmesh.order.v1.OrderService");
      }
    } finally {
      session.close();
    }
    // The access line of each was written after its span ended: every span that will be kept is by now.
    expect(spans.getFinishedSpans().map((s) => s.name)).toEqual([]);
  });
});
