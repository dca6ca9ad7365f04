/**
 * Hostile clients against what docs/observability.md, "Metrics", promises: label sets are bounded
 * whatever a client sends, and /metrics tells the truth. Thousands of distinct paths, methods and
 * content types at the gateway (HTTP/1.1 and h2c), of unknown services and methods at a service's own
 * gRPC port, of statuses from an upstream, and of event types on a consumer's subjects, each followed
 * by a scrape of the process's /metrics; and events stamped far ahead of the clock that measures their lag.
 */
import http from "node:http";
import http2 from "node:http2";
import { Code } from "@connectrpc/connect";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { ROUTES } from "../gateway/routes.js";
import { OrderCancelledSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { type Bus, connectBus } from "../platform/bus.js";
import { silentLogger } from "../platform/log.js";
import { createTelemetry } from "../platform/telemetry.js";
import { consumerSettled, event, publishEvents } from "./events.js";
import { type System, startSystem, startTestGateway } from "./system.js";

/** A gateway with /metrics, its limits high enough that every request of a flood is routed, not a 429. */
const UNLIMITED = {
  METRICS_PORT: "0",
  RATE_LIMIT_IP_RPS: "100000",
  RATE_LIMIT_IP_BURST: "100000",
  RATE_LIMIT_RPS: "100000",
  RATE_LIMIT_BURST: "100000",
  UPSTREAM_BULKHEAD_QUEUE: "100000",
};

let sys: System;
let gw: GatewayApp;
let bus: Bus;
beforeAll(async () => {
  const metrics = { METRICS_PORT: "0" };
  sys = await startSystem({ inventory: metrics, history: metrics, notification: metrics });
  gw = await startTestGateway(sys, UNLIMITED);
  bus = await connectBus(sys.nats.url, "hostile-metrics", silentLogger(), { streams: EVENTS.streams });
}, 60_000);
afterAll(async () => {
  await bus?.close();
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

async function scrape(port: number | undefined): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

/** The label sets of the samples named `name` (e.g. `http_server_duration_seconds_count`) in a scrape. */
function labelSets(text: string, name: string): Record<string, string>[] {
  return text
    .split("\n")
    .filter((l) => l.startsWith(`${name}{`))
    .map((l) => {
      const labels = l.slice(name.length + 1, l.lastIndexOf("}"));
      return Object.fromEntries([...labels.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1], m[2]]));
    });
}

/** The value of the sample named `name` whose labels include `labels`; 0 when there is none. */
function sample(text: string, name: string, labels: Record<string, string>): number {
  const line = text.split("\n").find((l) => {
    if (!l.startsWith(`${name}{`)) return false;
    return Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`));
  });
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
}

/** Runs `f(0..n-1)`, `width` at a time. */
async function inParallel(n: number, width: number, f: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await f(next++);
  };
  await Promise.all(Array.from({ length: width }, worker));
}

/** Request `i` of a flood: every path distinct, the methods and content types of every protocol and none. */
function hostileRequest(i: number): { method: string; path: string; contentType: string } {
  const methods = ["POST", "GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "BREW", "PROPFIND"];
  const contentTypes = [
    "application/json",
    "application/proto",
    "application/grpc",
    "application/grpc+json",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/connect+json",
    "text/plain",
    `x/"\\${i}`,
  ];
  const paths = [
    `/x${i}`,
    `/shopmesh.order.v1.OrderService/Nope${i}`,
    `/SHOPMESH.ORDER.V1.ORDERSERVICE/GETORDER${i}`,
    `/shopmesh.order.v1.OrderService%2FGetOrder${i}`,
    `/%73hopmesh.inventory.v1.InventoryService/ListProducts${i}`,
    `/shopmesh.inventory.v1.InventoryService/ListProducts/${i}`,
    `/v1/products/${i}/x`,
    `/v1/x${i}`,
    `/${"a".repeat(4_000)}${i}`,
    `/shopmesh.order.v1.OrderService/"\\${i}`,
  ];
  return {
    method: methods[i % methods.length] as string,
    path: paths[i % paths.length] as string,
    contentType: contentTypes[(i >> 1) % contentTypes.length] as string,
  };
}

describe("the gateway's http_server_duration_seconds", () => {
  it("takes procedure only from the routing table, whatever 2,000 distinct requests name (HTTP/1.1 and h2c)", async () => {
    const port = Number(new URL(gw.url).port);
    const statuses = new Set<number>();
    const h1 = (i: number) => {
      const { method, path, contentType } = hostileRequest(i);
      return new Promise<void>((resolve) => {
        const req = http.request(
          { host: "127.0.0.1", port, method, path, headers: { "content-type": contentType }, agent: false },
          (res) => {
            statuses.add(res.statusCode ?? 0);
            res.resume().on("end", resolve);
          },
        );
        req.on("error", () => resolve());
        req.end("{}");
      });
    };
    const session = http2.connect(gw.url);
    session.on("error", () => {});
    const h2 = (i: number) => {
      const { method, path, contentType } = hostileRequest(i);
      return new Promise<void>((resolve) => {
        const s = session.request({ ":method": method, ":path": path, "content-type": contentType, te: "trailers" });
        s.on("response", (h) => statuses.add(Number(h[":status"])));
        s.on("error", () => resolve());
        s.on("close", () => resolve());
        s.resume();
        s.end(Buffer.from([0, 0, 0, 0, 0]));
      });
    };
    await inParallel(1_000, 16, h1);
    await inParallel(1_000, 16, (i) => h2(i + 1_000));
    session.close();
    // Refused as the client's fault, each one: never the gateway's (5xx).
    expect([...statuses].filter((st) => st >= 500 || st < 200)).toEqual([]);

    const series = labelSets(await scrape(gw.telemetry.metricsPort), "http_server_duration_seconds_count");
    const routed = ROUTES.flatMap((r) => r.methods.map((m) => `${r.service.typeName}/${m}`));
    const codes = Object.values(Code).filter((c) => typeof c === "string");
    for (const s of series) {
      expect(["unknown", ...routed]).toContain(s.procedure);
      expect(["connect", "grpc", "grpc-web", "rest"]).toContain(s.protocol);
      expect(["OK", ...codes]).toContain(s.code);
    }
    // A handful: 4 protocols, a few codes, the procedures the paths named exactly.
    expect(series.length).toBeGreaterThan(0);
    expect(series.length).toBeLessThan(40);
  }, 60_000);
});

/** A compromised upstream: every call answered with a status of its own making, each one new (from 17). */
async function hostileUpstream(): Promise<{ address: string; answered(): number } & AsyncDisposable> {
  let answered = 0;
  const server = http2.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/grpc" });
      res.addTrailers({ "grpc-status": String(17 + answered++), "grpc-message": "hostile words" });
      res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    address: `127.0.0.1:${(server.address() as { port: number }).port}`,
    answered: () => answered,
    [Symbol.asyncDispose]: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const dev = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };

describe("statuses outside gRPC's 17 codes from an upstream", () => {
  it("are UNKNOWN in rpc_client_duration_seconds: 300 distinct ones are one series", async () => {
    await using upstream = await hostileUpstream();
    const gateway = await startTestGateway(sys, {
      ...UNLIMITED,
      INVENTORY_TARGET: upstream.address,
      UPSTREAM_BREAKER_CONSECUTIVE_FAILURES: "1000", // every call reaches it
    });
    try {
      const token = await signDevToken(dev, "mallory", ["customer"]);
      const codes = new Set<string>();
      await inParallel(300, 8, async () => {
        const res = await fetch(`${gateway.url}/shopmesh.inventory.v1.InventoryService/ListProducts`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
          body: "{}",
        });
        codes.add(((await res.json()) as { code: string }).code);
      });
      expect(upstream.answered()).toBeGreaterThanOrEqual(300);
      expect([...codes]).toEqual(["unknown"]);
      const series = labelSets(await scrape(gateway.telemetry.metricsPort), "rpc_client_duration_seconds_count");
      expect(series).toEqual([
        expect.objectContaining({ downstream: "inventory", method: "ListProducts", code: "UNKNOWN" }),
      ]);
    } finally {
      await gateway.stop();
    }
  }, 60_000);

  // Its metric and access line said Unknown; the client got `{"code":"12345","message":"hostile words"}`,
  // a code the Connect protocol does not have, with the upstream's own words (a unary call's are replaced).
  it("end a stream (WatchOrder, over grpc-js) as unknown, as the metric says, not with the upstream's number", async () => {
    await using upstream = await hostileUpstream();
    const gateway = await startTestGateway(sys, { ...UNLIMITED, ORDER_TARGET: upstream.address });
    try {
      const token = await signDevToken(dev, "mallory", ["customer"]);
      const message = Buffer.from(JSON.stringify({ orderId: "ord_1" }));
      const res = await fetch(`${gateway.url}/shopmesh.order.v1.OrderService/WatchOrder`, {
        method: "POST",
        headers: { "content-type": "application/connect+json", authorization: `Bearer ${token}` },
        body: Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]),
      });
      const body = Buffer.from(await res.arrayBuffer());
      expect(body[0]).toBe(2); // the end-stream message
      const end = JSON.parse(body.subarray(5).toString()) as { error: { code: string; message: string } };
      expect(end.error).toEqual({ code: "unknown", message: "order failed with an unknown error" });
      const text = await scrape(gateway.telemetry.metricsPort);
      const watch = { procedure: "shopmesh.order.v1.OrderService/WatchOrder", code: "Unknown" };
      expect(sample(text, "http_server_duration_seconds_count", watch)).toBe(1);
    } finally {
      await gateway.stop();
    }
  }, 30_000);
});

describe("a service's rpc_server_duration_seconds", () => {
  it("counts no call of a service or method it does not serve, however many distinct ones are called", async () => {
    const seriesNow = async () =>
      labelSets(await scrape(sys.inventory.telemetry.metricsPort), "rpc_server_duration_seconds_count");
    await sys.products.listProducts({}); // one real call: a series to compare with
    const before = await seriesNow();
    const session = http2.connect(`http://${sys.inventory.address}`);
    session.on("error", () => {});
    const statuses = new Set<string>();
    await inParallel(2_000, 16, async (i) => {
      const paths = [
        `/x.Y${i}/Z`,
        `/shopmesh.inventory.v1.InventoryService/Nope${i}`,
        `/shopmesh.inventory.v1.inventoryservice/listproducts${i}`,
        `/grpc.health.v1.Health/Check${i}`,
      ];
      await new Promise<void>((resolve) => {
        const s = session.request({
          ":method": "POST",
          ":path": paths[i % paths.length] as string,
          "content-type": "application/grpc",
          te: "trailers",
        });
        s.on("trailers", (t) => statuses.add(String(t["grpc-status"])));
        s.on("response", (h) => h["grpc-status"] !== undefined && statuses.add(String(h["grpc-status"])));
        s.on("error", () => resolve());
        s.on("close", () => resolve());
        s.resume();
        s.end(Buffer.from([0, 0, 0, 0, 0]));
      });
    });
    session.close();
    expect([...statuses]).toEqual([String(Code.Unimplemented)]);
    expect(await seriesNow()).toEqual(before);
  }, 60_000);
});

describe("a consumer's events_handled_total", () => {
  it("counts events of types it does not know as type unknown, however many distinct types are published", async () => {
    const acks: Promise<unknown>[] = [];
    for (let i = 0; i < 1_000; i++) {
      // A type as a newer version of order's publisher would name it, on the subject it would have.
      const newer = natsHeaders();
      newer.set("ce-type", `shopmesh.order.v1.OrderZz${i}`);
      newer.set("ce-id", `evt_newer_${i}`);
      acks.push(bus.js.publish(`order.order.zz${i}.none`, new Uint8Array(), { headers: newer }));
      if (i % 5 === 0) {
        // Not a shopmesh type at all, on a subject every order consumer reads: dead-lettered.
        const junk = natsHeaders();
        junk.set("ce-type", `junk"\\${i}`);
        junk.set("ce-id", `evt_junk_${i}`);
        acks.push(bus.js.publish("order.order.cancelled.choreography", new Uint8Array([1]), { headers: junk }));
      }
    }
    await Promise.all(acks);
    for (const durable of ["history-order", "notification-order"]) await consumerSettled(bus, "ORDER", durable, 30_000);
    for (const [port, consumer] of [
      [sys.history.telemetry.metricsPort, "history-order"],
      [sys.notification.telemetry.metricsPort, "notification-order"],
    ] as const) {
      const text = await scrape(port);
      const types = new Set(labelSets(text, "events_handled_total").map((s) => s.type));
      for (const type of types) expect(["unknown", ...EVENTS.kinds.map((k) => k.typeName)]).toContain(type);
      expect(sample(text, "events_handled_total", { consumer, type: "unknown", outcome: "ignored" })).toBe(1_000);
      expect(sample(text, "events_dead_lettered_total", { consumer })).toBeGreaterThanOrEqual(200);
    }
  }, 60_000);
});

describe("lag histograms", () => {
  // A negative observation lowers the histogram's _sum, which Prometheus takes for a counter reset:
  // rate() of it is then nonsense, and the average lag with it.
  it("take an event stamped ahead of the consumer's clock as no lag, not a negative one", async () => {
    const lagSum = async () =>
      sample(await scrape(sys.history.telemetry.metricsPort), "event_consumer_lag_seconds_sum", {
        consumer: "history-order",
      });
    const lagCount = async () =>
      sample(await scrape(sys.history.telemetry.metricsPort), "event_consumer_lag_seconds_count", {
        consumer: "history-order",
      });
    const [sumBefore, countBefore] = [await lagSum(), await lagCount()];
    // ce-time as the publisher stamps it: its outbox's clock, here the latest date there is.
    await publishEvents(bus, [event(OrderCancelledSchema, "ord_from_the_future", { reason: "skew" }, 8.64e15)]);
    await consumerSettled(bus, "ORDER", "history-order", 30_000);
    await expect.poll(lagCount).toBe(countBefore + 1);
    expect(await lagSum()).toBeGreaterThanOrEqual(sumBefore);
  }, 30_000);

  it("take a row committed by a clock ahead of the relay's as no relay lag", async () => {
    const telemetry = createTelemetry("skewed-writer");
    await publishEvents(
      bus,
      [event(OrderCancelledSchema, "ord_skewed", { reason: "skew" }, Date.now() + 3_600_000)],
      "test",
      telemetry,
    );
    const text = await telemetry.metrics.registry.metrics();
    expect(sample(text, "outbox_relay_lag_seconds_count", {})).toBe(1);
    expect(sample(text, "outbox_relay_lag_seconds_sum", {})).toBeGreaterThanOrEqual(0);
  }, 30_000);
});
