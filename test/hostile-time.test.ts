/**
 * A hostile round on time (2026-12-05): clock and duration edges on every input path and in the
 * runtime — times events carry, tokens' time claims, clocks that step. Real servers, a real
 * nats-server and the real gateway, as the other hostile suites. Each `describe` is one finding,
 * whose test failed on the code it was written against — but for the tokens' time claims, which
 * were found decided alike on every protocol, and are kept so.
 */
import { createHmac } from "node:crypto";
import http2 from "node:http2";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { GetProductRequestSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { type Bus, connectBus } from "../platform/bus.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { silentLogger } from "../platform/log.js";
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

/** A token for `payload` (raw JSON, so 1e400 stays as written) signed with the development key. */
function rawToken(payload: string): string {
  const head = Buffer.from(JSON.stringify({ alg: "HS256", typ: "JWT" })).toString("base64url");
  const body = Buffer.from(payload).toString("base64url");
  const sig = createHmac("sha256", DEV_JWT_SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** GetProduct with `token` on each protocol: the HTTP status (REST, Connect) or grpc-status (gRPC-Web, gRPC). */
async function getProductEverywhere(token: string): Promise<Record<string, number>> {
  const authorization = `Bearer ${token}`;
  const path = "/shopmesh.inventory.v1.InventoryService/GetProduct";
  const msg = toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "coffee-beans" }));
  const framed = Buffer.concat([Buffer.from([0, 0, 0, 0, msg.length]), msg]);
  const rest = (await fetch(`${gw.url}/v1/products/coffee-beans`, { headers: { authorization } })).status;
  const connect = (
    await fetch(`${gw.url}${path}`, {
      method: "POST",
      headers: { authorization, "content-type": "application/json" },
      body: JSON.stringify({ productId: "coffee-beans" }),
    })
  ).status;
  const web = await fetch(`${gw.url}${path}`, {
    method: "POST",
    headers: { authorization, "content-type": "application/grpc-web+proto" },
    body: framed,
  });
  const webBody = Buffer.from(await web.arrayBuffer()).toString("latin1");
  const grpcWeb = Number(web.headers.get("grpc-status") ?? /grpc-status:\s*(\d+)/.exec(webBody)?.[1] ?? -1);
  const session = http2.connect(gw.url);
  try {
    const grpc = await new Promise<number>((resolve, reject) => {
      const req = session.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
        authorization,
      });
      let code: string | undefined;
      req.on("response", (h) => (code ??= h["grpc-status"] as string | undefined));
      req.on("trailers", (h) => (code ??= h["grpc-status"] as string | undefined));
      req.on("data", () => {});
      req.on("close", () => resolve(Number(code ?? -1)));
      req.on("error", reject);
      req.end(framed);
    });
    return { rest, connect, grpcWeb, grpc };
  } finally {
    session.close();
  }
}

describe("tokens whose time claims are missing, odd or out of range", () => {
  it("are refused as unauthenticated on every protocol, never a server error; a good one is served on each", async () => {
    const now = Math.floor(Date.now() / 1000);
    const claims = (time: string) => `{"sub":"tim","iss":"shopmesh-dev","aud":"shopmesh",${time}}`;
    expect(await getProductEverywhere(rawToken(claims(`"iat":${now},"exp":${now + 60}`)))).toEqual({
      rest: 200,
      connect: 200,
      grpcWeb: 0,
      grpc: 0,
    });
    const odd = [
      `"iat":${now}`, // no exp
      `"exp":${now + 60}`, // no iat
      // Beyond the 30 s skew (by a few seconds: the second may turn before the gateway reads its clock).
      `"iat":${now - 100},"exp":${now - 35}`,
      `"iat":${now + 35},"exp":${now + 90}`,
      `"iat":${now},"exp":${now + 60},"nbf":${now + 35}`,
      `"iat":${now},"exp":1e20`,
      `"iat":${now},"exp":9007199254740993`,
      `"iat":${now},"exp":1e400`, // Infinity once parsed
      `"iat":-1e400,"exp":${now + 60}`,
      `"iat":-1,"exp":${now + 60}`,
      `"iat":${now},"exp":"${now + 60}"`,
      `"iat":${now},"exp":[${now + 60}]`,
      `"iat":${now},"exp":null`,
      `"iat":${now},"exp":${now + 60},"nbf":"soon"`,
      `"iat":"${now}","exp":${now + 60}`,
      `"iat":{},"exp":${now + 60}`,
    ];
    for (const time of odd) {
      expect(await getProductEverywhere(rawToken(claims(time))), time).toEqual({
        rest: 401,
        connect: 401,
        grpcWeb: 16,
        grpc: 16,
      });
    }
  });
});

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

/**
 * A gateway to `sys` whose wall clock steps back an hour on SIGUSR2 (test/fixtures/clock-step.ts), and
 * GetProduct through it as `subject`, with a token valid on both sides of the step (issued an hour and
 * a minute ago, expiring in ten minutes): the answer's HTTP status.
 */
async function steppingGateway(env: Record<string, string>) {
  const gateway = await spawnGateway({ ...gatewayTargets(sys), ...env }, 20_000, [
    "--import",
    "tsx",
    "--import",
    join(ROOT, "test/fixtures/clock-step.ts"),
  ]);
  const product = async (subject: string) => {
    const s = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ roles: ["customer"] })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject(subject)
      .setIssuer(claims.JWT_ISSUER)
      .setAudience(claims.JWT_AUDIENCE)
      .setIssuedAt(s - 3_660)
      .setExpirationTime(s + 600)
      .sign(new TextEncoder().encode(claims.JWT_SECRET));
    const r = await fetch(`http://${gateway.address}/v1/products/coffee-beans`, {
      headers: { authorization: `Bearer ${token}` },
    });
    return r.status;
  };
  return Object.assign(gateway, { product });
}

describe("a gateway whose wall clock steps back an hour while an upstream's breaker is open", () => {
  // cockatiel times the half-open wait on Date.now: after the step the breaker stayed open for the
  // hour, every call to the healed upstream refused, instead of probing it UPSTREAM_BREAKER_HALF_OPEN_AFTER_MS later.
  it("probes the upstream after the half-open wait, as it would without the step", async () => {
    await using gateway = await steppingGateway({
      UPSTREAM_RETRY_MAX_ATTEMPTS: "1",
      UPSTREAM_BREAKER_CONSECUTIVE_FAILURES: "2",
      UPSTREAM_BREAKER_HALF_OPEN_AFTER_MS: "500",
    });
    const product = () => gateway.product("tim-step");
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

describe("a gateway whose wall clock steps back an hour, its breakers judging a failure ratio", () => {
  // cockatiel's SamplingBreaker moves to its next window on Date.now: after the step none moved for
  // the hour, the calls of the whole hour were one sample, and an outage after many good calls never
  // reached the ratio: the breaker stayed closed, every call sent to the failing upstream.
  it("opens on an outage once the good calls before it have left the window, as without the step", async () => {
    await using gateway = await steppingGateway({
      UPSTREAM_RETRY_MAX_ATTEMPTS: "1",
      UPSTREAM_BREAKER_FAILURE_RATIO: "0.5",
      UPSTREAM_BREAKER_WINDOW_MS: "1000",
      UPSTREAM_BREAKER_HALF_OPEN_AFTER_MS: "60000",
    });
    const product = () => gateway.product("tim-ratio");
    expect(await product()).toBe(200);
    gateway.child.kill("SIGUSR2");
    await gateway.logLine("clock stepped");
    for (let i = 0; i < 60; i++) expect(await product()).toBe(200);
    await sys.inventoryChaos.setFaults({ faults: { down: true } });
    try {
      // Paced past the window's fifths (it moves on at a call a fifth of it after its last start):
      // within two seconds the good calls have left it.
      for (let i = 0; i < 10; i++) {
        expect(await product()).toBe(503);
        await new Promise((r) => setTimeout(r, 250));
      }
    } finally {
      await sys.inventoryChaos.setFaults({ faults: {} });
    }
    expect(await product()).toBe(503); // open (for a minute): refused without a call, the upstream healed or not
  });
});

/** Node's `--import` of a module that sets this process's clock `ms` ahead (a node whose clock is off). */
const clockAhead = (ms: number) => [
  "--import",
  `data:text/javascript,const now = Date.now; Date.now = () => now() + ${ms};`,
];

/**
 * Order replicas on one PostgreSQL, the first started on a node whose clock is twelve seconds ahead,
 * with inventory and payment: what the order tests below share. The fast replica runs longer than
 * its lead before any order is placed: a process counts the time before it started as standing
 * still (platform/stall.ts), which would hide the lead.
 */
describe("order replicas on PostgreSQL, one on a node whose clock is twelve seconds ahead", () => {
  const AHEAD_MS = 12_000;
  /** What started, stopped in reverse. */
  const started: AsyncDisposable[] = [];
  const keep = <T extends AsyncDisposable>(x: T): T => {
    started.push(x);
    return x;
  };
  let inventory: ServiceProcess;
  let payment: ServiceProcess;
  let fast: ServiceProcess;
  let other: ServiceProcess;
  const who = { metadata: identityMetadata({ subject: "tim-fast", roles: ["customer"] }) };

  beforeAll(async () => {
    const pg = keep(await startPostgres());
    const nats = keep(await startNats());
    const url = await pg.createDatabase("time");
    const env = { NATS_URL: nats.url, DATABASE_URL: url, DATABASE_POOL_SIZE: "4" };
    const orderEnv = {
      ...env,
      SAGA_STEP_BUDGET_MS: "8000",
      SAGA_LEASE_MS: "1000",
      SAGA_RETRY_BASE_MS: "100",
      SAGA_RETRY_MAX_MS: "300",
      INVENTORY_TARGET: "registry:///inventory",
      PAYMENT_TARGET: "registry:///payment",
    };
    fast = keep(await spawnService("order", orderEnv, 60_000, clockAhead(AHEAD_MS)));
    const fastSince = Date.now();
    inventory = keep(await spawnService("inventory", env, 60_000));
    payment = keep(await spawnService("payment", env, 60_000));
    other = keep(await spawnService("order", orderEnv, 60_000));
    await new Promise((r) => setTimeout(r, Math.max(0, fastSince + AHEAD_MS + 500 - Date.now())));
  }, 120_000);
  afterAll(async () => {
    inventory?.child.kill("SIGCONT");
    for (const x of started.reverse()) await x[Symbol.asyncDispose]();
  });

  /** Waits for order `id` (read from `replica`) to be CONFIRMED; fails naming its state and reason. */
  async function confirmed(replica: ServiceProcess, id: string): Promise<void> {
    const orders = createClient(OrderService, createChannel(replica.address));
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
  }

  /** Places an order of one coffee on `replica` in `sagaMode`; its id. */
  async function place(replica: ServiceProcess, key: string, sagaMode: SagaMode): Promise<string> {
    const orders = createClient(OrderService, createChannel(replica.address));
    const placed = await orders.placeOrder(
      { idempotencyKey: key, items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa", sagaMode },
      { ...who, timeoutMs: 10_000 },
    );
    return placed.order?.id ?? "";
  }

  // Each replica's choreography sweep compared an order's updated_at, written by the clock of
  // whichever replica wrote it, with its own: the fast one cancelled the orders the other had
  // placed while a participant took a few seconds, "no answer within the 8000 ms step budget".
  it("a choreographed order waiting for a participant (less than the step budget) goes on to confirm", async () => {
    // Inventory frozen: the order waits, PENDING, with nothing written since it was placed.
    inventory.child.kill("SIGSTOP");
    let id: string;
    try {
      id = await place(other, "fast-clock", SagaMode.CHOREOGRAPHY);
      // Two of the fast replica's sweeps (every 2 s at this budget), well within the budget.
      await new Promise((r) => setTimeout(r, 4_500));
    } finally {
      inventory.child.kill("SIGCONT");
    }
    await confirmed(other, id);
  });

  // The step's budget ran from its first start as the step log dated it, by the clock of the replica
  // that wrote it, and the adopting replica compared that with its own: a payment outage of a few
  // seconds, well within the budget, was taken for one past it and the order compensated.
  it("a saga it adopts keeps retrying its step until the budget has passed in fact, and confirms once payment is back", async () => {
    const chaos = createClient(ChaosService, createChannel(payment.address));
    await chaos.setFaults({ faults: { down: true } });
    let id: string;
    try {
      // The fast replica drives no saga of the other's until the other dies.
      id = await place(other, "adopted", SagaMode.ORCHESTRATION);
      // Its charge failing, the replica that placed it dies; the fast one adopts it within the lease.
      await new Promise((r) => setTimeout(r, 1_000));
      await other.kill("SIGKILL");
      await new Promise((r) => setTimeout(r, 3_000));
    } finally {
      await chaos.setFaults({ faults: {} });
    }
    await confirmed(fast, id);
  });
});
