/**
 * A hostile round on time (2026-12-05): clock and duration edges on every input path and in the
 * runtime — times events carry, tokens' time claims, clocks that step. Real servers, a real
 * nats-server and the real gateway, as the other hostile suites. Each `describe` is one finding;
 * each test failed on the code it was written against.
 */
import { join } from "node:path";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import {
  type Bus,
  connectBus,
  createChannel,
  createClient,
  identityMetadata,
  silentLogger,
} from "../platform/index.js";
import { event, publishEvents } from "./events.js";
import { ROOT, type ServiceProcess, spawnGateway, spawnService } from "./fixtures.js";
import { startNats } from "./nats.js";
import { startPostgres } from "./postgres.js";
import { gatewayTargets, type System, startSystem, startTestGateway } from "./system.js";

const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };

let sys: System;
let gw: GatewayApp;
let bus: Bus;

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys);
  bus = await connectBus(sys.nats.url, "hostile-time", silentLogger(), { streams: EVENTS.streams });
}, 60_000);
afterAll(async () => {
  await bus?.close();
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

/** A GET through the gateway's REST routes as `who`: status and parsed body. */
async function get(who: string, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const token = await signDevToken(claims, who, ["customer"]);
  const res = await fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe("an event dated before year 1 (a producer's clock or code gone wrong)", () => {
  // Timestamp's JSON form holds 0001-01-01 to 9999-12-31 only: a history entry listed by such a time
  // could not be written as JSON, and the customer's whole history answered 500 on REST and Connect.
  it("leaves the customer's history readable as JSON", async () => {
    const who = "tim-bc";
    const bc = Date.parse("-000001-06-01T00:00:00Z");
    await publishEvents(bus, [
      event(OrderPlacedSchema, "ord-time-ok", { customerId: who, items: [] }),
      event(OrderPlacedSchema, "ord-time-bc", { customerId: who, items: [] }, bc),
    ]);
    // Both events taken (projected, or refused into the dead letters): the later one is.
    await expect.poll(async () => (await sys.history.store.some(["ord-time-ok"])).length, { timeout: 10_000 }).toBe(1);
    const answer = await get(who, "/v1/history");
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    const entries = answer.body.entries as { orderId: string; lastEventAt: string }[];
    expect(entries.map((e) => e.orderId)).toEqual(["ord-time-ok", "ord-time-bc"]);
    // Kept, listed last, at the earliest time its JSON form holds.
    expect(entries[1]?.lastEventAt).toBe("0001-01-01T00:00:00Z");
  });
});

describe("a gateway whose wall clock steps back an hour while an upstream's breaker is open", () => {
  // cockatiel times the half-open wait on Date.now: after the step the breaker stayed open for the
  // hour, every call to the healed upstream refused, instead of probing it UPSTREAM_BREAKER_HALF_OPEN_AFTER_MS later.
  it("probes the upstream after the half-open wait, as it would without the step", async () => {
    await using gateway = await spawnGateway(
      {
        ...gatewayTargets(sys),
        UPSTREAM_RETRY_MAX_ATTEMPTS: "1",
        UPSTREAM_BREAKER_CONSECUTIVE_FAILURES: "2",
        UPSTREAM_BREAKER_HALF_OPEN_AFTER_MS: "500",
      },
      20_000,
      ["--import", "tsx", "--import", join(ROOT, "test/fixtures/clock-step.ts")],
    );
    // Valid on both sides of the step: issued an hour and a minute ago, expiring in ten minutes.
    const s = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ roles: ["customer"] })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("tim-step")
      .setIssuer(claims.JWT_ISSUER)
      .setAudience(claims.JWT_AUDIENCE)
      .setIssuedAt(s - 3_660)
      .setExpirationTime(s + 600)
      .sign(new TextEncoder().encode(claims.JWT_SECRET));
    const product = async () =>
      (
        await fetch(`http://${gateway.address}/v1/products/coffee-beans`, {
          headers: { authorization: `Bearer ${token}` },
        })
      ).status;
    expect(await product()).toBe(200);
    await sys.inventoryChaos.setFaults({ faults: { down: true } });
    try {
      expect([await product(), await product()]).toEqual([503, 503]);
    } finally {
      await sys.inventoryChaos.setFaults({ faults: {} });
    }
    expect(await product()).toBe(503); // open: refused without a call
    gateway.child.kill("SIGUSR2");
    await gateway.logLine("clock stepped");
    await expect.poll(product, { timeout: 5_000, interval: 200 }).toBe(200);
  });
});

/** Node's `--import` of a module that sets this process's clock `ms` ahead (a node whose clock is off). */
const clockAhead = (ms: number) => [
  "--import",
  `data:text/javascript,const now = Date.now; Date.now = () => now() + ${ms};`,
];

describe("two order replicas on PostgreSQL, one on a node whose clock is ten seconds ahead", () => {
  // Each replica's choreography sweep compared an order's updated_at, written by the clock of
  // whichever replica wrote it, with its own: the fast one cancelled the orders the other had
  // placed while a participant took a few seconds, "no answer within the 6000 ms step budget".
  it("a choreographed order waiting for a participant (less than the step budget) goes on to confirm", async () => {
    const AHEAD_MS = 10_000;
    await using pg = await startPostgres();
    await using nats = await startNats();
    const url = await pg.createDatabase("time");
    const env = { NATS_URL: nats.url, DATABASE_URL: url, DATABASE_POOL_SIZE: "4" };
    const orderEnv = { ...env, SAGA_STEP_BUDGET_MS: "6000", SAGA_LEASE_MS: "1500" };
    const procs: ServiceProcess[] = [];
    try {
      // The fast one first, and running longer than its lead: a process counts the time before it
      // started as standing still (platform/stall.ts), which would hide the lead.
      procs.push(await spawnService("order", orderEnv, 60_000, clockAhead(AHEAD_MS)));
      const fastSince = Date.now();
      const inventory = await spawnService("inventory", env, 60_000);
      procs.push(inventory, await spawnService("payment", env, 60_000));
      const placing = await spawnService("order", orderEnv, 60_000);
      procs.push(placing);
      await new Promise((r) => setTimeout(r, Math.max(0, fastSince + AHEAD_MS + 500 - Date.now())));
      const orders = createClient(OrderService, createChannel(placing.address));
      const who = { metadata: identityMetadata({ subject: "tim-fast", roles: ["customer"] }) };
      // Inventory frozen: the order waits, PENDING, with nothing written since it was placed.
      inventory.child.kill("SIGSTOP");
      let id = "";
      try {
        const placed = await orders.placeOrder(
          {
            idempotencyKey: "fast-clock",
            items: [{ productId: "coffee-beans", quantity: 1 }],
            cardToken: "tok_visa",
            sagaMode: SagaMode.CHOREOGRAPHY,
          },
          { ...who, timeoutMs: 10_000 },
        );
        id = placed.order?.id ?? "";
        // Two of the fast replica's sweeps (every 1.5 s at this budget), well within the budget.
        await new Promise((r) => setTimeout(r, 3_500));
      } finally {
        inventory.child.kill("SIGCONT");
      }
      let last = "";
      await expect
        .poll(
          async () => {
            const { order } = await orders.getOrder({ orderId: id }, { ...who, timeoutMs: 5_000 });
            last = `${OrderStatus[order?.status ?? 0]} ${order?.statusReason ?? ""}`;
            return order?.status;
          },
          { timeout: 20_000, interval: 250 },
        )
        .toBe(OrderStatus.CONFIRMED)
        .catch((err: unknown) => {
          throw new Error(`order ${id}: ${last}`, { cause: err });
        });
    } finally {
      for (const p of procs.reverse()) await p[Symbol.asyncDispose]();
    }
  }, 90_000);
});
