/**
 * Counters whose label values are known when a process starts are exported from its start at 0
 * (docs/observability.md, "Metrics"): prom-client makes a labelled series at its first increment, and
 * a series first seen at 1 is invisible to rate() and increase() — a process's first cancelled saga or
 * first bulkhead rejection raised no alert (ShopmeshSagasCancelling, ShopmeshBulkheadRejecting). Every
 * process of a system, and a gateway, scraped before any call, order or event.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import type { GatewayApp } from "../gateway/app.js";
import { type System, startSystem, startTestGateway } from "./system.js";

let sys: System;
let gw: GatewayApp;
beforeAll(async () => {
  const metrics = { METRICS_PORT: "0" };
  sys = await startSystem({
    inventory: metrics,
    payment: metrics,
    order: metrics,
    notification: metrics,
    history: metrics,
  });
  gw = await startTestGateway(sys, metrics);
}, 60_000);
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

async function scrape(port: number | undefined): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

/** The label sets (without `service`) of the samples named `name` in a scrape, each with its value. */
function series(text: string, name: string): { labels: Record<string, string>; value: number }[] {
  return text
    .split("\n")
    .filter((l) => l.startsWith(`${name}{`))
    .map((l) => {
      const inner = l.slice(name.length + 1, l.lastIndexOf("}"));
      const labels = Object.fromEntries(
        [...inner.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].filter((m) => m[1] !== "service").map((m) => [m[1], m[2]]),
      );
      return { labels, value: Number(l.slice(l.lastIndexOf(" ") + 1)) };
    });
}

/** `name`'s label sets in `text`, each as `k=v,...` (keys sorted), all expected at 0. */
function zeroSeries(text: string, name: string): string[] {
  const found = series(text, name);
  for (const s of found) expect(s.value, `${name}${JSON.stringify(s.labels)}`).toBe(0);
  return found.map((s) => key(s.labels)).sort();
}

const key = (labels: Record<string, string>) =>
  Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join(",");

/** Every combination of the given label values, as {@link zeroSeries} lists them. */
function product(values: Record<string, readonly string[]>): string[] {
  let sets: Record<string, string>[] = [{}];
  for (const [k, vs] of Object.entries(values)) sets = sets.flatMap((s) => vs.map((v) => ({ ...s, [k]: v })));
  return sets.map(key).sort();
}

const OUTCOMES = ["handled", "duplicate", "failed", "ignored"];
/** What a method with an idempotency level is retried on (policy.ts isRetryable). */
const RETRIED_ALL = ["UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"];
const typesOf = (stream: string) => EVENTS.kinds.filter((k) => k.stream === stream).map((k) => k.typeName);

describe("a process scraped before any call, saga or event", () => {
  it("order: its sagas, per mode and outcome, are at 0", async () => {
    const text = await scrape(sys.order.telemetry.metricsPort);
    const modes = ["ORCHESTRATION", "CHOREOGRAPHY"];
    expect(zeroSeries(text, "saga_started_total")).toEqual(product({ mode: modes }));
    expect(zeroSeries(text, "saga_finished_total")).toEqual(
      product({ mode: modes, outcome: ["confirmed", "cancelled"] }),
    );
    expect(zeroSeries(text, "saga_compensated_total")).toEqual(product({ mode: modes }));
    expect(zeroSeries(text, "saga_duration_seconds_count")).toEqual(
      product({ mode: modes, outcome: ["confirmed", "cancelled"] }),
    );
  });

  it("order: its downstreams' rejections, breaker changes and retries are at 0, the retries only for codes retried", async () => {
    const text = await scrape(sys.order.telemetry.metricsPort);
    const downstreams = ["inventory", "payment"];
    expect(zeroSeries(text, "bulkhead_rejected_total")).toEqual(product({ downstream: downstreams }));
    // The downstream as one is closed, half-open or open; never isolated (platform/endpoints.ts state()).
    expect(zeroSeries(text, "circuit_breaker_transitions_total")).toEqual(
      product({ downstream: downstreams, to: ["closed", "half-open", "open"] }),
    );
    // Only the methods the saga calls (participants.ts), each retried on all three codes (each declares
    // an idempotency level): no series for inventory's reads and Restock, nor payment's GetPayment.
    expect(zeroSeries(text, "rpc_client_retries_total")).toEqual(
      [
        ...product({ code: RETRIED_ALL, downstream: ["inventory"], method: ["ReserveStock", "ReleaseStock"] }),
        ...product({ code: RETRIED_ALL, downstream: ["payment"], method: ["ChargePayment", "RefundPayment"] }),
      ].sort(),
    );
  });

  it("order: what it publishes and each event its consumers handle are at 0", async () => {
    const text = await scrape(sys.order.telemetry.metricsPort);
    expect(zeroSeries(text, "events_published_total")).toEqual(product({ type: typesOf("ORDER") }));
    expect(zeroSeries(text, "events_redelivered_total")).toEqual(
      product({ consumer: ["order-inventory", "order-payment"] }),
    );
    expect(zeroSeries(text, "events_dead_lettered_total")).toEqual(
      product({ consumer: ["order-inventory", "order-payment"] }),
    );
    expect(zeroSeries(text, "events_handled_total")).toEqual(
      [
        ...product({ consumer: ["order-inventory"], type: typesOf("INVENTORY"), outcome: OUTCOMES }),
        ...product({ consumer: ["order-payment"], type: typesOf("PAYMENT"), outcome: OUTCOMES }),
      ].sort(),
    );
  });

  it("notification: each event type its consumers handle is at 0, not the types they only skip", async () => {
    const text = await scrape(sys.notification.telemetry.metricsPort);
    expect(zeroSeries(text, "events_handled_total")).toEqual(
      [
        ...product({
          consumer: ["notification-order"],
          type: ["shopmesh.order.v1.OrderConfirmed", "shopmesh.order.v1.OrderCancelled"],
          outcome: OUTCOMES,
        }),
        ...product({
          consumer: ["notification-payment"],
          type: ["shopmesh.payment.v1.PaymentRefunded"],
          outcome: OUTCOMES,
        }),
      ].sort(),
    );
    expect(zeroSeries(text, "events_published_total")).toEqual([]);
  });

  it("payment and inventory: what each publishes is at 0, and nothing of another's stream", async () => {
    for (const [port, stream] of [
      [sys.payment.telemetry.metricsPort, "PAYMENT"],
      [sys.inventory.telemetry.metricsPort, "INVENTORY"],
    ] as const) {
      expect(zeroSeries(await scrape(port), "events_published_total")).toEqual(product({ type: typesOf(stream) }));
    }
  });

  it("gateway: the connections it closes, per reason, and its upstreams' rejections are at 0", async () => {
    const text = await scrape(gw.telemetry.metricsPort);
    expect(zeroSeries(text, "http_connections_closed_total")).toEqual(
      product({
        reason: ["per-ip-limit", "headers-timeout", "request-timeout", "idle", "stream-idle", "header-list-size"],
      }),
    );
    expect(zeroSeries(text, "bulkhead_rejected_total")).toEqual(
      product({ downstream: ["history", "inventory", "notification", "order", "payment"] }),
    );
    // Only the methods the gateway routes (routes.ts): none of ReserveStock, ReleaseStock, ChargePayment
    // or RefundPayment, which do not exist at the gateway.
    expect(zeroSeries(text, "rpc_client_retries_total")).toEqual(
      [
        ...product({ code: RETRIED_ALL, downstream: ["inventory"], method: ["ListProducts", "GetProduct", "Restock"] }),
        ...product({ code: RETRIED_ALL, downstream: ["payment"], method: ["GetPayment"] }),
        ...product({ code: RETRIED_ALL, downstream: ["order"], method: ["PlaceOrder", "GetOrder", "ListOrders"] }),
        // No idempotency level: retried only when the call did not run. A stream (WatchOrder) is never retried.
        ...product({ code: ["UNAVAILABLE"], downstream: ["order"], method: ["CancelOrder"] }),
        ...product({ code: RETRIED_ALL, downstream: ["notification"], method: ["ListNotifications"] }),
        ...product({ code: RETRIED_ALL, downstream: ["history"], method: ["ListOrderHistory"] }),
      ].sort(),
    );
  });
});
