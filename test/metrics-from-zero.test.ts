/**
 * Counters whose label values are known when a process starts are exported from its start at 0
 * (docs/observability.md, "Metrics"): prom-client makes a labelled series at its first increment, and
 * a series first seen at 1 is invisible to rate() and increase() — a process's first cancelled saga or
 * first bulkhead rejection raised no alert (ShopmeshSagasCancelling, ShopmeshBulkheadRejecting). Every
 * process of a system, and a gateway, scraped before any call, order or event; then again after
 * checkouts in both modes, a declined card and a payment outage: what they counted went on the series
 * that were at 0, never on a second series spelt otherwise beside it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { type System, startSystem, startTestGateway } from "./system.js";

let sys: System;
let gw: GatewayApp;
beforeAll(async () => {
  const metrics = { METRICS_PORT: "0" };
  sys = await startSystem({
    inventory: metrics,
    payment: metrics,
    // A payment outage opens its breaker after three failures and probes it again soon; a step not
    // answered in 3 s is compensated.
    order: {
      ...metrics,
      PAYMENT_BREAKER_CONSECUTIVE_FAILURES: "3",
      PAYMENT_BREAKER_HALF_OPEN_AFTER_MS: "200",
      SAGA_STEP_BUDGET_MS: "3000",
    },
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

/** The families exported at 0 before they count (the rest start at their first count). */
const FROM_ZERO = [
  "saga_started_total",
  "saga_finished_total",
  "saga_compensated_total",
  "saga_duration_seconds_count",
  "bulkhead_rejected_total",
  "circuit_breaker_transitions_total",
  "rpc_client_retries_total",
  "events_published_total",
  "events_handled_total",
  "events_redelivered_total",
  "events_dead_lettered_total",
  "events_dropped_unread_total",
  "http_connections_closed_total",
];

/** Every process's scrape now, by name. */
async function scrapeAll(): Promise<Record<string, string>> {
  const ports = {
    gateway: gw.telemetry.metricsPort,
    order: sys.order.telemetry.metricsPort,
    inventory: sys.inventory.telemetry.metricsPort,
    payment: sys.payment.telemetry.metricsPort,
    notification: sys.notification.telemetry.metricsPort,
    history: sys.history.telemetry.metricsPort,
  };
  return Object.fromEntries(await Promise.all(Object.entries(ports).map(async ([n, p]) => [n, await scrape(p)])));
}

/** The value of `name`'s series with exactly `labels` (without `service`) in `text`; 0 when absent. */
const countOf = (text: string, name: string, labels: Record<string, string>) =>
  series(text, name).find((s) => key(s.labels) === key(labels))?.value ?? 0;

async function until<T>(read: () => Promise<T>, ok: (v: T) => boolean, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("the same processes after checkouts, a declined card and a payment outage", () => {
  it("counted each on a series that was at 0, no other beside it but a type a consumer only skips", async () => {
    const before = await scrapeAll();
    const token = await signDevToken(
      { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
      "tess",
      ["customer"],
    );
    const call = async (procedure: string, body: unknown) => {
      const res = await fetch(`${gw.url}/${procedure}`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
      });
      return { status: res.status, body: (await res.json()) as { order?: { id: string } } };
    };
    const place = async (idempotencyKey: string, sagaMode: string, cardToken: string) => {
      const { body } = await call("shopmesh.order.v1.OrderService/PlaceOrder", {
        idempotencyKey,
        items: [{ productId: "coffee-beans", quantity: 1 }],
        cardToken,
        sagaMode,
      });
      return body.order?.id ?? "";
    };
    const placed: string[] = [];
    for (const mode of ["SAGA_MODE_ORCHESTRATION", "SAGA_MODE_CHOREOGRAPHY"])
      for (const card of ["tok_visa", "tok_decline"]) placed.push(await place(`${mode}-${card}`, mode, card));
    for (const id of placed) await sys.settle(id, "tess");

    await sys.paymentChaos.setFaults({ faults: { down: true } });
    const outage = await place("outage", "SAGA_MODE_ORCHESTRATION", "tok_visa");
    // The gateway retries its read on UNAVAILABLE.
    expect((await call("shopmesh.payment.v1.PaymentService/GetPayment", { orderId: outage })).status).toBe(503);
    await until(
      async () => (await sys.order.store.get(outage))?.status,
      // Given up past its step budget: compensating, or (nothing charged) cancelled already.
      (s) => s === "COMPENSATING" || s === "CANCELLED",
    );
    await sys.paymentChaos.setFaults({ faults: {} });
    await sys.settle(outage, "tess");

    const after = await until(scrapeAll, (a) => {
      const o = a.order ?? "";
      return (
        countOf(o, "circuit_breaker_transitions_total", { downstream: "payment", to: "closed" }) >= 1 &&
        countOf(o, "events_published_total", { type: "shopmesh.order.v1.OrderCancelled" }) >= 3 &&
        countOf(a.notification ?? "", "events_handled_total", {
          consumer: "notification-order",
          type: "shopmesh.order.v1.OrderCancelled",
          outcome: "handled",
        }) >= 3
      );
    });
    const order = after.order ?? "";
    for (const to of ["open", "half-open", "closed"])
      expect(countOf(order, "circuit_breaker_transitions_total", { downstream: "payment", to }), to).toBeGreaterThan(0);
    expect(
      countOf(order, "rpc_client_retries_total", {
        downstream: "payment",
        method: "ChargePayment",
        code: "UNAVAILABLE",
      }),
    ).toBeGreaterThan(0);
    for (const mode of ["ORCHESTRATION", "CHOREOGRAPHY"]) {
      expect(countOf(order, "saga_started_total", { mode })).toBeGreaterThan(0);
      expect(countOf(order, "saga_compensated_total", { mode })).toBeGreaterThan(0);
      for (const outcome of ["confirmed", "cancelled"]) {
        expect(countOf(order, "saga_finished_total", { mode, outcome }), `${mode} ${outcome}`).toBeGreaterThan(0);
        expect(countOf(order, "saga_duration_seconds_count", { mode, outcome })).toBeGreaterThan(0);
      }
    }
    expect(
      countOf(after.gateway ?? "", "rpc_client_retries_total", {
        downstream: "payment",
        method: "GetPayment",
        code: "UNAVAILABLE",
      }),
    ).toBeGreaterThan(0);

    // A series counted now that was not there at 0 is the same count spelt otherwise (its 0 left stale
    // beside it), unless it is what starts at its first count: a type a consumer has no handler for.
    for (const [proc, text] of Object.entries(after)) {
      const known = new Set(
        FROM_ZERO.flatMap((name) => series(before[proc] ?? "", name).map((s) => `${name}{${key(s.labels)}}`)),
      );
      const handled = new Set(
        series(before[proc] ?? "", "events_handled_total").map((s) => `${s.labels.consumer}/${s.labels.type}`),
      );
      const astray = FROM_ZERO.flatMap((name) =>
        series(text, name)
          .filter((s) => !known.has(`${name}{${key(s.labels)}}`))
          .filter(
            (s) =>
              !(
                name === "events_handled_total" &&
                s.labels.outcome === "ignored" &&
                !handled.has(`${s.labels.consumer}/${s.labels.type}`)
              ),
          )
          .map((s) => `${name}{${key(s.labels)}} ${s.value}`),
      );
      expect(astray, proc).toEqual([]);
    }
  }, 60_000);
});
