/**
 * Observability end to end: an order placed through the gateway is one
 * trace from the gateway through order, inventory and payment to the
 * notification consumer, in both saga modes; every process's /metrics shows
 * what a fault scenario implies; and one order's log lines across services
 * can be found by its trace id.
 */
import { Writable } from "node:stream";
import { SpanKind } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { logIds } from "../platform/propagation.js";
import { READ_ONLY, startTracing } from "../platform/tracing.js";
import { type System, startSystem, startTestGateway } from "./system.js";

const spans = new InMemorySpanExporter();
const logLines: Record<string, unknown>[] = [];
let stopTracing: () => Promise<void>;
let sys: System;
let gw: GatewayApp;

beforeAll(async () => {
  stopTracing = await startTracing({
    service: "test",
    otlpEndpoint: "",
    traceFile: "",
    extra: [new SimpleSpanProcessor(spans)],
  });
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split("\n").filter(Boolean)) logLines.push(JSON.parse(line));
      cb();
    },
  });
  const log = pino({ level: "debug", mixin: logIds }, sink);
  const metrics = { METRICS_PORT: "0" };
  sys = await startSystem(
    {
      inventory: metrics,
      payment: metrics,
      notification: metrics,
      history: metrics,
      order: {
        ...metrics,
        PAYMENT_BREAKER_CONSECUTIVE_FAILURES: "3",
        PAYMENT_BREAKER_HALF_OPEN_AFTER_MS: "200",
        // Short, for the outage test below to see its order compensate soon; long enough that a
        // choreographed order's events, on a loaded machine, arrive before it is given up.
        SAGA_STEP_BUDGET_MS: "3000",
      },
    },
    { log },
  );
  gw = await startTestGateway(sys, { METRICS_PORT: "0" }, log.child({ service: "gateway" }));
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
  await stopTracing();
});

async function placeThroughGateway(sagaMode: "SAGA_MODE_ORCHESTRATION" | "SAGA_MODE_CHOREOGRAPHY", key: string) {
  const token = await signDevToken(
    { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
    "tess",
    ["customer"],
  );
  const res = await fetch(`${gw.url}/shopmesh.order.v1.OrderService/PlaceOrder`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({
      idempotencyKey: key,
      items: [{ productId: "coffee-beans", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode,
    }),
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { order: { id: string } }).order.id;
}

async function waitFor<T>(read: () => T | Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

const scope = (s: ReadableSpan) => s.instrumentationScope.name;

describe("traces", () => {
  it.each(["SAGA_MODE_ORCHESTRATION", "SAGA_MODE_CHOREOGRAPHY"] as const)(
    "one trace holds gateway, order, inventory, payment and the notification consumer (%s)",
    async (mode) => {
      const orderId = await placeThroughGateway(mode, `trace-${mode}`);
      // The order service tags its PlaceOrder span with the new order's id.
      const placed = (await waitFor(
        () => spans.getFinishedSpans().find((s) => scope(s) === "order" && s.attributes["order.id"] === orderId),
        (s) => s !== undefined,
      )) as ReadableSpan;
      const traceId = placed.spanContext().traceId;
      const everyone = new Set(["gateway", "order", "inventory", "payment", "notification", "history"]);
      // History and notification apply events up to 100 ms after they arrive (their linger).
      const inTrace = await waitFor(
        () => spans.getFinishedSpans().filter((s) => s.spanContext().traceId === traceId),
        (list) =>
          list.some((s) => scope(s) === "notification" && s.name === "process shopmesh.order.v1.OrderConfirmed") &&
          new Set(list.map(scope)).size === everyone.size,
      );
      expect([...new Set(inTrace.map(scope))].sort(), "the processes in the order's trace").toEqual(
        [...everyone].sort(),
      );
      // The trace starts at the gateway: its PlaceOrder span is the root.
      const root = inTrace.find(
        (s) => scope(s) === "gateway" && s.kind === SpanKind.SERVER && s.name.endsWith("/PlaceOrder"),
      );
      expect(root).toBeDefined();
      expect(root?.parentSpanContext).toBeUndefined();
      // A change, sampled at TRACE_SAMPLE_RATIO (a read's trace would be at TRACE_READ_SAMPLE_RATIO).
      expect(root?.attributes[READ_ONLY]).toBeUndefined();
      const names = inTrace.map((s) => `${scope(s)}: ${s.name}`);
      if (mode === "SAGA_MODE_ORCHESTRATION") {
        expect(names).toEqual(
          expect.arrayContaining([
            "order: saga reserve_stock",
            "order: saga charge_payment",
            "inventory: shopmesh.inventory.v1.InventoryService/ReserveStock",
          ]),
        );
      } else {
        expect(names).toEqual(
          expect.arrayContaining([
            "inventory: process shopmesh.order.v1.OrderPlaced",
            "payment: process shopmesh.inventory.v1.StockReserved",
          ]),
        );
      }
      // Only this order's work: every span naming an order names this one, and no background work
      // (registry watches, endpoint changes, breaker transitions) logs under its trace.
      expect(
        inTrace.filter((s) => s.attributes["order.id"] !== undefined && s.attributes["order.id"] !== orderId),
      ).toEqual([]);
      const background = /registry|endpoints changed|circuit breaker|lease sweep|resuming sagas/;
      expect(logLines.filter((l) => l.trace_id === traceId && background.test(String(l.msg)))).toEqual([]);
      // Log lines of this order, across services, by its trace id.
      const services = new Set(logLines.filter((l) => l.trace_id === traceId).map((l) => l.service));
      expect([...services]).toEqual(expect.arrayContaining(["gateway", "order", "inventory", "payment"]));
    },
  );

  it("orders placed together keep a trace each: every span of an order is in its own trace", async () => {
    // Their transactions share commits (platform/group-commit.ts): each must still run in its caller's context.
    const ids = await Promise.all(
      Array.from({ length: 12 }, (_, i) => placeThroughGateway("SAGA_MODE_ORCHESTRATION", `together-${i}`)),
    );
    const traceOf = new Map<string, string>();
    const ofOrder = (s: ReadableSpan) => String(s.attributes["order.id"] ?? "");
    const confirmed = (id: string) =>
      spans.getFinishedSpans().some((s) => ofOrder(s) === id && s.name === "process shopmesh.order.v1.OrderConfirmed");
    await waitFor(
      () => ids.filter((id) => confirmed(id)).length,
      (n) => n === ids.length,
    );
    for (const s of spans.getFinishedSpans())
      if (scope(s) === "order" && s.name.endsWith("/PlaceOrder") && ids.includes(ofOrder(s)))
        traceOf.set(ofOrder(s), s.spanContext().traceId);
    expect(traceOf.size).toBe(ids.length);
    expect(new Set(traceOf.values()).size).toBe(ids.length);
    const astray = spans
      .getFinishedSpans()
      .filter((s) => ids.includes(ofOrder(s)) && s.spanContext().traceId !== traceOf.get(ofOrder(s)))
      .map((s) => `${scope(s)}: ${s.name}`);
    expect(astray).toEqual([]);
  });

  it("a client's traceparent is linked, never continued: it cannot switch tracing off or join another trace", async () => {
    const token = await signDevToken(
      { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
      "tess",
      ["customer"],
    );
    const theirs = "0af7651916cd43dd8448eb211c80319c";
    for (const [i, flags] of ["00", "01"].entries()) {
      const res = await fetch(`${gw.url}/shopmesh.inventory.v1.InventoryService/GetProduct`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          authorization: `Bearer ${token}`,
          traceparent: `00-${theirs}-b7ad6b716920333${i}-${flags}`,
          "x-request-id": `traced-${flags}`,
        },
        body: JSON.stringify({ productId: "coffee-beans" }),
      });
      expect(res.status).toBe(200);
    }
    const ours = await waitFor(
      () =>
        spans
          .getFinishedSpans()
          .filter((s) => scope(s) === "gateway" && s.name.endsWith("/GetProduct") && s.links.length > 0),
      (list) => list.length >= 2,
    );
    // Both recorded (the unsampled flag switched nothing off), each in a trace of its own, linked to the client's.
    expect(ours).toHaveLength(2);
    for (const s of ours) {
      expect(s.spanContext().traceId).not.toBe(theirs);
      expect(s.parentSpanContext).toBeUndefined();
      expect(s.links.map((l) => l.context.traceId)).toEqual([theirs]);
      // A read: a new trace of it is sampled at TRACE_READ_SAMPLE_RATIO.
      expect(s.attributes[READ_ONLY]).toBe(true);
    }
    expect(spans.getFinishedSpans().filter((s) => s.spanContext().traceId === theirs)).toEqual([]);
  });
});

describe("metrics", () => {
  async function scrape(port: number | undefined): Promise<string> {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(res.status).toBe(200);
    return res.text();
  }
  /** Value of the sample of `name` whose labels include every `labels` pair. */
  function sample(text: string, name: string, labels: Record<string, string>): number {
    for (const line of text.split("\n")) {
      if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
      if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.split(" ").at(-1));
    }
    return Number.NaN;
  }

  it("every process exposes /metrics with the values a payment outage implies", async () => {
    await sys.paymentChaos.setFaults({ faults: { down: true } });
    const orderId = await placeThroughGateway("SAGA_MODE_ORCHESTRATION", "metrics-outage");
    await waitFor(
      async () => (await sys.order.store.get(orderId))?.status,
      (s) => s === "COMPENSATING",
    );
    await sys.paymentChaos.setFaults({ faults: {} });
    await sys.settle(orderId, "tess");
    await waitFor(
      () => sys.order.payment.state().breaker,
      (b) => b === "closed",
    );

    // The cancellation's event leaves through the outbox after its commit (and its flush): asynchronously.
    const order = await waitFor(
      () => scrape(sys.order.telemetry.metricsPort),
      // The backlog gauge is sampled by the relay's housekeeping (about once a second): wait for it too.
      (text) =>
        sample(text, "events_published_total", { type: "shopmesh.order.v1.OrderCancelled" }) >= 1 &&
        sample(text, "outbox_backlog", {}) === 0,
    );
    expect(
      sample(order, "circuit_breaker_transitions_total", { downstream: "payment", to: "open" }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      sample(order, "circuit_breaker_transitions_total", { downstream: "payment", to: "closed" }),
    ).toBeGreaterThanOrEqual(1);
    expect(sample(order, "circuit_breaker_state", { downstream: "payment" })).toBe(0);
    expect(
      sample(order, "rpc_client_retries_total", {
        downstream: "payment",
        method: "ChargePayment",
        code: "UNAVAILABLE",
      }),
    ).toBeGreaterThanOrEqual(1);
    expect(
      sample(order, "saga_finished_total", { mode: "ORCHESTRATION", outcome: "cancelled" }),
    ).toBeGreaterThanOrEqual(1);
    expect(sample(order, "saga_compensated_total", { mode: "ORCHESTRATION" })).toBeGreaterThanOrEqual(1);
    expect(sample(order, "saga_started_total", { mode: "CHOREOGRAPHY" })).toBeGreaterThanOrEqual(1);
    expect(
      sample(order, "rpc_server_duration_seconds_count", {
        method: "shopmesh.order.v1.OrderService/PlaceOrder",
        code: "OK",
      }),
    ).toBeGreaterThanOrEqual(3);
    expect(sample(order, "outbox_backlog", {})).toBe(0);
    expect(
      sample(order, "events_published_total", { type: "shopmesh.order.v1.OrderCancelled" }),
    ).toBeGreaterThanOrEqual(1);
    expect(sample(order, "bulkhead_in_flight", { downstream: "payment" })).toBe(0);
    expect(order).toContain("process_cpu_user_seconds_total");

    const payment = await scrape(sys.payment.telemetry.metricsPort);
    expect(
      sample(payment, "rpc_server_duration_seconds_count", {
        method: "shopmesh.payment.v1.PaymentService/ChargePayment",
        code: "UNAVAILABLE",
      }),
    ).toBeGreaterThanOrEqual(1);
    // The consumers handle the published cancellation asynchronously too: wait for them, then check.
    const cancellationsHandled = (text: string, consumer: string) =>
      sample(text, "events_handled_total", { consumer, type: "shopmesh.order.v1.OrderCancelled", outcome: "handled" });
    const afterCancellation = async (port: number | undefined, consumer: string) => {
      const text = await waitFor(
        () => scrape(port),
        (t) => cancellationsHandled(t, consumer) >= 1,
      );
      expect(cancellationsHandled(text, consumer), consumer).toBeGreaterThanOrEqual(1);
      return text;
    };
    const notification = await afterCancellation(sys.notification.telemetry.metricsPort, "notification-order");
    const history = await afterCancellation(sys.history.telemetry.metricsPort, "history-order");
    expect(sample(history, "event_consumer_lag_seconds_count", { consumer: "history-order" })).toBeGreaterThanOrEqual(
      1,
    );
    const inventory = await scrape(sys.inventory.telemetry.metricsPort);
    expect(
      sample(inventory, "rpc_server_duration_seconds_count", {
        method: "shopmesh.inventory.v1.InventoryService/ReleaseStock",
        code: "OK",
      }),
    ).toBeGreaterThanOrEqual(1);
    const gateway = await scrape(gw.telemetry.metricsPort);
    expect(
      sample(gateway, "http_server_duration_seconds_count", {
        procedure: "shopmesh.order.v1.OrderService/PlaceOrder",
        protocol: "connect",
        code: "OK",
      }),
    ).toBeGreaterThanOrEqual(3);

    // No ids in labels: every label value comes from a small fixed set.
    for (const text of [order, payment, notification, history, inventory, gateway]) {
      expect(text).not.toMatch(/="(ord|pay|res|evt)_[0-9a-z]{10,}"/);
    }
  });
});
