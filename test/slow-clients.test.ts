/**
 * Slow and idle clients against the gateway's one port: connections that
 * never speak, dribble their headers or body, or sit idle, are closed within
 * the configured timeouts — while calls in progress (a WatchOrder stream
 * that outlives the idle timeout) are never cut, and normal clients keep
 * their latency with 1,000 idle connections open. Timeouts are set small
 * here (1-2 s) so the suite runs in seconds; docs/security.md lists the
 * defaults.
 */
import http2 from "node:http2";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { rawConnect } from "./raw.js";
import { type System, startSystem, startTestGateway } from "./system.js";

const HEADERS_MS = 1_000;
const REQUEST_MS = 2_000;
const IDLE_MS = 1_500;
/** The headers timeout of the gateway that holds 1,000 idle connections while calls are timed: past the timing. */
const IDLE_HEADERS_MS = 8_000;
/** Slack for Node's timeout checks (every headers/4 ms here) and a loaded CI machine. */
const SLACK_MS = 1_500;

let sys: System;
let gw: GatewayApp;
let auth: string;

beforeAll(async () => {
  // Payment may take longer than the idle timeout without the saga giving up on it.
  sys = await startSystem({ order: { PAYMENT_TIMEOUT_MS: "10000" } });
  gw = await startTestGateway(sys, {
    HTTP_HEADERS_TIMEOUT_MS: String(HEADERS_MS),
    HTTP_REQUEST_TIMEOUT_MS: String(REQUEST_MS),
    HTTP_IDLE_TIMEOUT_MS: String(IDLE_MS),
    HTTP_MAX_CONNECTIONS_PER_IP: "200",
    RATE_LIMIT_IP_BURST: "500",
    RATE_LIMIT_BURST: "1000",
    RATE_LIMIT_RPS: "1000",
  });
  auth = `Bearer ${await signDevToken(
    { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
    "slow",
    ["customer"],
  )}`;
});
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const GET_PRODUCT = "/shopmesh.inventory.v1.InventoryService/GetProduct";

describe("closed within the configured timeouts", () => {
  it("a connection that never sends a byte", async () => {
    const c = await rawConnect(gw.port);
    const ms = await c.closed;
    expect(ms).toBeGreaterThanOrEqual(HEADERS_MS - 50);
    expect(ms).toBeLessThan(HEADERS_MS + SLACK_MS);
  });

  it("headers sent one line at a time, slower than the headers timeout", async () => {
    const c = await rawConnect(gw.port);
    await c.write(`POST ${GET_PRODUCT} HTTP/1.1\r\n`);
    const dribble = (async () => {
      for (let i = 0; i < 20 && !c.socket.destroyed; i++) {
        await sleep(300);
        await c.write(`x-slow-${i}: ${i}\r\n`).catch(() => {});
      }
    })();
    const ms = await c.closed;
    await dribble;
    expect(ms).toBeLessThan(HEADERS_MS + SLACK_MS);
  });

  it("an HTTP/1.1 body at a few bytes a second", async () => {
    const c = await rawConnect(gw.port);
    await c.write(
      `POST ${GET_PRODUCT} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nauthorization: ${auth}\r\ncontent-length: 100\r\n\r\n{`,
    );
    const dribble = (async () => {
      for (let i = 0; i < 30 && !c.socket.destroyed; i++) {
        await sleep(200);
        await c.write(" ").catch(() => {});
      }
    })();
    const ms = await c.closed;
    await dribble;
    expect(ms).toBeLessThan(REQUEST_MS + SLACK_MS);
    expect(c.received().toString("latin1")).toMatch(/^HTTP\/1\.1 408/);
  });

  it("an HTTP/2 body at a few bytes a second: the stream is cut, the connection stays usable", async () => {
    const session = http2.connect(gw.url);
    session.on("error", () => {});
    try {
      const started = Date.now();
      const req = session.request({
        ":method": "POST",
        ":path": GET_PRODUCT,
        "content-type": "application/json",
        authorization: auth,
      });
      req.on("error", () => {});
      req.write("{");
      const timer = setInterval(() => req.write(" "), 200);
      const ended = await new Promise<number>((resolve) => req.once("close", () => resolve(Date.now() - started)));
      clearInterval(timer);
      expect(ended).toBeLessThan(REQUEST_MS + SLACK_MS);
      // The same session still serves a well-behaved call.
      const ok = session.request({
        ":method": "POST",
        ":path": GET_PRODUCT,
        "content-type": "application/json",
        authorization: auth,
      });
      ok.end('{"productId":"coffee-beans"}');
      const status = await new Promise<number>((resolve) => ok.once("response", (h) => resolve(Number(h[":status"]))));
      expect(status).toBe(200);
    } finally {
      session.destroy();
    }
  });

  it("an HTTP/2 CONNECT whose client keeps its side open: refused, its stream closed, then the idle session", async () => {
    const session = http2.connect(gw.url);
    session.on("error", () => {});
    try {
      const started = Date.now();
      // A tunnel request that never ends its side (no END_STREAM): nothing here serves CONNECT.
      const req = session.request({ ":method": "CONNECT", ":authority": "example.com:443" }, { endStream: false });
      req.on("error", () => {});
      const [status, streamClosed] = await Promise.all([
        new Promise<number>((resolve) => req.once("response", (h) => resolve(Number(h[":status"])))),
        new Promise<number>((resolve) => req.once("close", () => resolve(Date.now() - started))),
      ]);
      expect(status).toBe(405);
      expect(streamClosed).toBeLessThan(SLACK_MS);
      const sessionClosed = await new Promise<number>((resolve) =>
        session.once("close", () => resolve(Date.now() - started)),
      );
      expect(sessionClosed).toBeLessThan(IDLE_MS + 2 * SLACK_MS);
    } finally {
      session.destroy();
    }
  });

  it("an idle HTTP/1.1 keep-alive connection and an idle HTTP/2 session, each counted once as idle", async () => {
    const closes = async () =>
      Object.fromEntries(
        (await gw.telemetry.metrics.httpConnectionsClosed.get()).values.map((v) => [v.labels.reason, v.value]),
      );
    const before = await closes();
    const c = await rawConnect(gw.port);
    await c.write(
      `POST ${GET_PRODUCT} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nauthorization: ${auth}\r\ncontent-length: 28\r\n\r\n{"productId":"coffee-beans"}`,
    );
    while (!c.received().toString("latin1").includes("\r\n\r\n")) await sleep(10);
    const answered = Date.now();
    await c.closed;
    expect(c.received().toString("latin1")).toMatch(/^HTTP\/1\.1 200/);
    expect(Date.now() - answered).toBeLessThan(IDLE_MS + SLACK_MS);

    const started = Date.now();
    const session = http2.connect(gw.url);
    session.on("error", () => {});
    const closedAfter = await new Promise<number>((resolve) =>
      session.once("close", () => resolve(Date.now() - started)),
    );
    expect(closedAfter).toBeGreaterThanOrEqual(IDLE_MS - 50);
    expect(closedAfter).toBeLessThan(IDLE_MS + SLACK_MS);
    // Not as a connection that never spoke nor as a stalled call (the first-byte timer once fired again).
    const after = await closes();
    const moved = (reason: string) => (after[reason] ?? 0) - (before[reason] ?? 0);
    expect({ idle: moved("idle"), silent: moved("headers-timeout"), stalled: moved("stream-idle") }).toEqual({
      idle: 2,
      silent: 0,
      stalled: 0,
    });
  });
});

describe("calls in progress are never cut by the idle timeout", () => {
  it("WatchOrder streams over HTTP/1.1 and HTTP/2 outlive it and end CONFIRMED", async () => {
    await sys.paymentChaos.setFaults({ faults: { latencyMs: IDLE_MS * 2 } });
    try {
      const headers = { authorization: auth };
      for (const transport of [
        createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
        createGrpcTransport({ baseUrl: gw.url }),
      ]) {
        const orders = createClient(OrderService, transport);
        const { order } = await orders.placeOrder(
          {
            idempotencyKey: `slow-watch-${Math.random()}`,
            items: [{ productId: "ceramic-mug", quantity: 1 }],
            cardToken: "tok_visa",
          },
          { headers },
        );
        const started = Date.now();
        let last = OrderStatus.UNSPECIFIED;
        for await (const m of orders.watchOrder({ orderId: order?.id ?? "" }, { headers })) {
          last = m.order?.status ?? last;
        }
        expect(Date.now() - started).toBeGreaterThan(IDLE_MS);
        expect(last).toBe(OrderStatus.CONFIRMED);
      }
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });
});

describe("connection limits", () => {
  it("at most HTTP_MAX_CONNECTIONS_PER_IP from one address; others are not affected", async () => {
    const conns = await Promise.all(Array.from({ length: 230 }, () => rawConnect(gw.port, "127.0.0.1", "127.0.0.2")));
    try {
      // The gateway closes the 30 over the limit as it accepts them: wait for it, then the count must stay 200.
      const open = () => conns.filter((c) => !c.socket.destroyed && !c.socket.readableEnded).length;
      await expect.poll(open, { timeout: 5_000 }).toBe(200);
      await sleep(200);
      expect(open()).toBe(200);
      const products = createClient(InventoryService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }));
      expect(
        (await products.getProduct({ productId: "coffee-beans" }, { headers: { authorization: auth } })).product?.id,
      ).toBe("coffee-beans");
    } finally {
      await Promise.all(conns.map((c) => c[Symbol.asyncDispose]()));
    }
  });

  it("normal clients keep their latency while 1,000 idle connections are open, and the idle ones are closed", async () => {
    // A gateway of its own whose headers timeout outlasts the measurement: at the suite's 1 s, the first
    // idle connections were cut before the last had connected on a loaded machine (1,000 connects took
    // 2-4 s on one busy core), and the calls timed "while they are open" were timed while 1,000 sockets
    // were being closed (p95 335 ms against a bound of 250).
    const idleGw = await startTestGateway(sys, {
      HTTP_HEADERS_TIMEOUT_MS: String(IDLE_HEADERS_MS),
      HTTP_REQUEST_TIMEOUT_MS: String(IDLE_HEADERS_MS),
      HTTP_MAX_CONNECTIONS_PER_IP: "200",
      RATE_LIMIT_IP_BURST: "500",
      RATE_LIMIT_BURST: "1000",
      RATE_LIMIT_RPS: "1000",
    });
    const products = createClient(InventoryService, createGrpcTransport({ baseUrl: idleGw.url }));
    const opts = { headers: { authorization: auth } };
    const timeCalls = async (n: number) => {
      const ms: number[] = [];
      for (let i = 0; i < n; i++) {
        const t = performance.now();
        await products.getProduct({ productId: "coffee-beans" }, opts);
        ms.push(performance.now() - t);
      }
      return ms.sort((a, b) => a - b);
    };
    await timeCalls(20); // warm up
    const before = await timeCalls(100);
    // 10 addresses x 100 connections: under the per-address limit, 1,000 in all.
    const idle = await Promise.all(
      Array.from({ length: 1_000 }, (_, i) => rawConnect(idleGw.port, "127.0.0.1", `127.0.0.${10 + (i % 10)}`)),
    );
    try {
      const during = await timeCalls(100);
      const p = (xs: number[], q: number) => xs[Math.min(xs.length - 1, Math.floor(q * xs.length))] ?? 0;
      console.log(
        `GetProduct over gRPC, ms: before p50 ${p(before, 0.5).toFixed(2)} p99 ${p(before, 0.99).toFixed(2)}; ` +
          `with 1,000 idle connections p50 ${p(during, 0.5).toFixed(2)} p99 ${p(during, 0.99).toFixed(2)}`,
      );
      // A liveness bound, not a benchmark: idle sockets must not stall the event loop. The typical call
      // and the 95th percentile are bounded against the same run's calls before; the slowest call only
      // against a second (one 275 ms pause on a shared 2-core machine failed a bound on the slowest of
      // 100): a call held behind the idle connections would wait for their cut, 8 s.
      expect(p(during, 0.5)).toBeLessThan(Math.max(50, 5 * p(before, 0.5)));
      expect(p(during, 0.95)).toBeLessThan(Math.max(250, 10 * p(before, 0.95)));
      expect(during.at(-1) ?? 0).toBeLessThan(HEADERS_MS);
      const closed = await Promise.race([
        Promise.all(idle.map((c) => c.closed)).then(() => true),
        sleep(IDLE_HEADERS_MS + 3 * SLACK_MS).then(() => false),
      ]);
      expect(closed, "every idle connection closed after the headers timeout").toBe(true);
    } finally {
      await Promise.all(idle.map((c) => c[Symbol.asyncDispose]()));
      await idleGw.stop();
    }
  }, 60_000);
});
