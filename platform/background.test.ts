/**
 * Background work keeps out of requests' traces: a registry watch or a
 * circuit breaker that a request happens to start or trip logs its own
 * lines without that request's trace id (real nats-server, a real gRPC
 * client against a closed port, real tracing with async context).
 */
import { trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { startNats, type TestNats } from "../test/nats.js";
import { connectBus } from "./bus.js";
import { silentLogger } from "./log.js";
import { DEFAULT_POLICY } from "./policy-config.js";
import { logIds } from "./propagation.js";
import { announce } from "./registry.js";
import { watchInstances } from "./registry-watch.js";
import { createResilientClient } from "./resilience.js";
import { startTracing } from "./tracing.js";

let nats: TestNats;
let stopTracing: () => Promise<void>;
beforeAll(async () => {
  nats = await startNats();
  stopTracing = await startTracing({
    service: "t",
    otlpEndpoint: "",
    traceFile: "",
    sampleRatio: 1,
    extra: [new SimpleSpanProcessor(new InMemorySpanExporter())],
  });
});
afterAll(async () => {
  await stopTracing();
  await nats[Symbol.asyncDispose]();
});

/** A logger that keeps its lines, with trace ids as the services' loggers add them. */
function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "debug", mixin: logIds }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

/** Runs `fn` inside a request's span, as a handler would. */
function inRequest<T>(fn: () => T): { result: T; traceId: string } {
  const span = trace.getTracer("t").startSpan("request");
  const result = trace.getTracer("t").startActiveSpan("handler", (s) => {
    try {
      return fn();
    } finally {
      s.end();
    }
  });
  span.end();
  return { result, traceId: span.spanContext().traceId };
}

it("a registry watch started inside a request logs without the request's trace id", async () => {
  const bus = await connectBus(nats.url, "t", silentLogger());
  const { log, lines } = capture();
  let seen = 0;
  const { result: watch } = inRequest(() => watchInstances(bus.nc, "inventory", log, { onChange: () => seen++ }));
  const reg = await announce(bus, "inventory", "127.0.0.1", 50099, silentLogger());
  for (
    let i = 0;
    i < 100 && !lines.some((l) => l.msg === "registry: live instances changed" && (l.added as string[])?.length);
    i++
  ) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const changed = lines.filter((l) => l.msg === "registry: live instances changed");
  expect(changed.length).toBeGreaterThan(0);
  expect(seen).toBeGreaterThan(0);
  for (const l of changed) expect(l.trace_id, JSON.stringify(l)).toBeUndefined();
  watch.stop();
  await reg?.stop();
  await bus.close();
});

it("a circuit breaker tripped by a request's call logs its change without the request's trace id", async () => {
  const { log, lines } = capture();
  const client = createResilientClient(
    "inventory",
    InventoryService,
    "127.0.0.1:1", // nothing listens: every call fails
    { ...DEFAULT_POLICY, timeoutMs: 500, retryMaxAttempts: 1, breakerConsecutiveFailures: 2 },
    log,
  );
  for (let i = 0; i < 3; i++) {
    const { result } = inRequest(() => client.getProduct({ productId: "x" }).catch(() => undefined));
    await result;
  }
  const opened = lines.filter((l) => l.msg === "circuit breaker open");
  expect(opened.length, JSON.stringify(lines.map((l) => l.msg))).toBeGreaterThan(0);
  for (const l of opened) expect(l.trace_id).toBeUndefined();
  // The calls' own lines do carry the request's trace: the isolation is for background work only.
  client.close();
});
