/**
 * Hostile round on races (postgres project only): many clients acting on the same entity at the same
 * moment, across two replicas of order, payment and inventory and through the gateway's protocols —
 * one idempotency key from hundreds of callers at once, CancelOrder racing the saga at every step in
 * both modes, the last unit of a product wanted by 200 orders, Restock racing reservations, watchers
 * and readers while orders change, and operator actions racing the traffic. Each burst is released
 * together; every answer is checked (one effect, one answer, never INTERNAL/UNKNOWN or a 5xx), then
 * the invariants from the databases.
 */

import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { InventoryService, ReservationStatus } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService, PaymentStatus } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { type Bus, connectBus } from "../platform/bus.js";
import { RpcError } from "../platform/errors.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { silentLogger } from "../platform/log.js";
import type { DbLocation } from "../platform/sql.js";
import { DEMO_CATALOGUE } from "../services/inventory/catalogue.js";
import { UNFINISHED } from "../services/order/schema.js";
import { withDb } from "./db.js";
import { type ServiceProcess, spawnGateway, spawnService } from "./fixtures.js";
import { expectChargedOnce, expectEffectsOnce, expectFencedStepLog, forward } from "./invariants.js";
import { startNats, type TestNats } from "./nats.js";
import { startPostgres, type TestPostgres } from "./postgres.js";
import { replicaEnv, customer as who } from "./replicas.js";

const log = silentLogger();
const SERVICES = ["inventory", "payment", "order", "notification", "history"] as const;
const REPLICAS = { inventory: 2, payment: 2, order: 2, notification: 1, history: 1 } as const;

let server: TestPostgres;
let nats: TestNats;
let bus: Bus;
let databaseUrl: string;
let gateway: ServiceProcess;
const at = (schema: string): DbLocation => ({ engine: "postgres", url: databaseUrl, schema, poolSize: 2 });
const replicas: Record<string, ServiceProcess[]> = {};
const started: ServiceProcess[] = [];
/** Units restocked by the tests, by product: conservation counts them in. */
const restocked = new Map<string, number>();

const admin = { metadata: identityMetadata({ subject: "ops", roles: ["admin"] }) };
const orderClients = () => (replicas.order ?? []).map((r) => createClient(OrderService, createChannel(r.address)));
const inventoryClients = () =>
  (replicas.inventory ?? []).map((r) => createClient(InventoryService, createChannel(r.address)));

/** What a call came to: its answer, or the gRPC code name (or HTTP status) it failed with. */
type Answer = { ok: true; value: string } | { ok: false; code: string };
const settle = async (p: Promise<unknown>): Promise<Answer> => {
  try {
    return { ok: true, value: String(await p) };
  } catch (err) {
    return { ok: false, code: err instanceof RpcError ? err.codeName : String(err) };
  }
};

/** A Connect JSON call through the gateway as `subject`: the answer's JSON, or a failure naming its HTTP status and code. */
async function connect(path: string, body: unknown, token: string): Promise<Record<string, unknown>> {
  const res = await fetch(`http://${gateway.address}/${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as Record<string, unknown>;
  if (res.status !== 200) throw new Error(`HTTP ${res.status} ${String(json.code)}`);
  return json;
}

const tokenOf = (subject: string, roles: ("customer" | "admin")[] = ["customer"]) =>
  signDevToken({ JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" }, subject, roles);

/** A gate: every call of a burst waits on it, so they are released together. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open = () => {};
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

/** Waits until no saga has more to do: every order terminal, and every cancelled one's refund landed. */
async function allSettled(): Promise<void> {
  const left = () =>
    withDb(at("shopmesh_order"), async (q) => {
      const r = await q.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM orders WHERE ${UNFINISHED}`);
      return r?.n ?? 0;
    });
  await expect.poll(left, { timeout: 60_000, interval: 250 }).toBe(0);
}

/**
 * Money and stock: every order terminal, one capture per confirmed order and none else, and per product
 * available + reserved = initial + restocked, reserved = what confirmed orders hold, neither negative.
 */
async function expectConserved(): Promise<void> {
  await allSettled();
  const orders = await withDb(at("shopmesh_order"), (q) =>
    q.all(sql<{ id: string; items: string; status: string }>`SELECT id, items, status FROM orders`),
  );
  const confirmed = orders.filter((o) => o.status === "CONFIRMED");
  await expectChargedOnce(at("shopmesh_payment"), new Set(confirmed.map((o) => o.id)));
  const held = new Map<string, number>();
  for (const o of confirmed) {
    for (const it of JSON.parse(o.items) as { productId: string; quantity: number }[]) {
      held.set(it.productId, (held.get(it.productId) ?? 0) + it.quantity);
    }
  }
  // What inventory does about a cancelled order (choreography: on its event) may come a moment after the order.
  const wrong = async () => {
    const stock = await withDb(at("shopmesh_inventory"), (q) =>
      q.all(sql<{ id: string; available: number; reserved: number }>`SELECT id, available, reserved FROM products`),
    );
    return DEMO_CATALOGUE.flatMap((p) => {
      const s = stock.find((x) => x.id === p.id);
      const want = {
        available: p.available + (restocked.get(p.id) ?? 0) - (held.get(p.id) ?? 0),
        reserved: held.get(p.id) ?? 0,
      };
      return s?.available === want.available && s.reserved === want.reserved
        ? []
        : [`${p.id}: ${s?.available}/${s?.reserved} available/reserved, not ${want.available}/${want.reserved}`];
    });
  };
  await expect.poll(wrong, { timeout: 30_000, interval: 250 }).toEqual([]);
}

beforeAll(async () => {
  server = await startPostgres();
  databaseUrl = await server.createDatabase("hostilerace");
  nats = await startNats();
  bus = await connectBus(nats.url, "hostile-race-test", log);
  const start = async (name: string) => {
    const p = await spawnService(name, replicaEnv(name, nats.url, databaseUrl, 6), 60_000);
    started.push(p);
    replicas[name] = [...(replicas[name] ?? []), p];
  };
  for (const s of SERVICES) await start(s);
  await Promise.all(SERVICES.flatMap((s) => Array.from({ length: REPLICAS[s] - 1 }, () => start(s))));
  gateway = await spawnGateway({
    HTTP_HOST: "127.0.0.1",
    ...Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), `registry:///${u}`])),
    NATS_URL: nats.url,
    METRICS_PORT: "0",
    RATE_LIMIT_IP_RPS: "100000",
    RATE_LIMIT_IP_BURST: "600",
    RATE_LIMIT_RPS: "100000",
    RATE_LIMIT_BURST: "600",
    FAULT_INJECTION: "true",
    // Races, not latency, are under test: on two shared cores a burst's calls queue for seconds.
    UPSTREAM_TIMEOUT_MS: "20000",
    COMPOSITION_TIMEOUT_MS: "20000",
  });
  started.push(gateway);
}, 120_000);

afterAll(async () => {
  await Promise.all(started.map((p) => p.kill("SIGKILL")));
  await bus?.close();
  await nats?.[Symbol.asyncDispose]();
  await server?.[Symbol.asyncDispose]();
});

describe("one idempotency key from hundreds of callers at once", () => {
  it("PlaceOrder: 240 callers over both replicas and the gateway get one order; another body ALREADY_EXISTS", async () => {
    const req = {
      idempotencyKey: "race-key",
      items: [{ productId: "paper-filters", quantity: 2 }],
      cardToken: "tok_visa",
    };
    const token = await tokenOf("racer");
    const clients = orderClients();
    const g = gate();
    const calls = Array.from({ length: 240 }, (_, i) =>
      settle(
        g.wait.then(async () => {
          const other = i % 20 === 19;
          const body = other ? { ...req, cardToken: "tok_other" } : req;
          if (i % 3 === 2) {
            const json = await connect("shopmesh.order.v1.OrderService/PlaceOrder", body, token);
            return (json.order as { id: string }).id;
          }
          const c = clients[i % clients.length] as (typeof clients)[number];
          return (await c.placeOrder(body, who("racer"))).order?.id ?? "";
        }),
      ),
    );
    g.open();
    const answers = await Promise.all(calls);
    const same = answers.filter((_, i) => i % 20 !== 19);
    const other = answers.filter((_, i) => i % 20 === 19);
    expect(same.filter((a) => !a.ok)).toEqual([]);
    expect(new Set(same.map((a) => (a.ok ? a.value : ""))).size).toBe(1);
    expect(
      other.map((a) => (a.ok ? "ok" : a.code)),
      "another body under the key",
    ).toEqual(other.map((_, i) => ([2, 5, 8, 11].includes(i) ? "Error: HTTP 409 already_exists" : "ALREADY_EXISTS")));
    const rows = await withDb(at("shopmesh_order"), (q) =>
      q.all(sql`SELECT id FROM orders WHERE customer_id = 'racer' AND idempotency_key = 'race-key'`),
    );
    expect(rows.length).toBe(1);
    await expectConserved();
  }, 60_000);

  it("Restock: 200 callers with one key over both replicas and the gateway add the units once", async () => {
    const before = await inventoryClients()[0]?.getProduct({ productId: "hand-grinder" }, admin);
    const token = await tokenOf("ops", ["admin"]);
    const clients = inventoryClients();
    const g = gate();
    const req = { idempotencyKey: "restock-race", productId: "hand-grinder", quantity: 7 };
    const calls = Array.from({ length: 200 }, (_, i) =>
      settle(
        g.wait.then(async () => {
          if (i % 4 === 3) {
            const json = await connect("shopmesh.inventory.v1.InventoryService/Restock", req, token);
            return String((json.product as { available: number }).available);
          }
          const c = clients[i % clients.length] as (typeof clients)[number];
          return String((await c.restock(req, admin)).product?.available);
        }),
      ),
    );
    g.open();
    const answers = await Promise.all(calls);
    restocked.set("hand-grinder", (restocked.get("hand-grinder") ?? 0) + 7);
    expect(answers.filter((a) => !a.ok)).toEqual([]);
    expect(new Set(answers.map((a) => (a.ok ? a.value : ""))).size).toBe(1);
    const after = await clients[0]?.getProduct({ productId: "hand-grinder" }, admin);
    expect(after?.product?.available).toBe((before?.product?.available ?? 0) + 7);
    await expectConserved();
  }, 60_000);

  it("CancelOrder: 100 callers at once over both replicas and the gateway, both modes: one cancellation", async () => {
    const clients = orderClients();
    const token = await tokenOf("canceller");
    for (const mode of [SagaMode.ORCHESTRATION, SagaMode.CHOREOGRAPHY]) {
      const { order } = await (clients[0] as (typeof clients)[number]).placeOrder(
        {
          idempotencyKey: `cancel-many-${mode}`,
          items: [{ productId: "ceramic-mug", quantity: 1 }],
          cardToken: "tok_visa",
          sagaMode: mode,
        },
        who("canceller"),
      );
      const g = gate();
      const calls = Array.from({ length: 100 }, (_, i) =>
        settle(
          g.wait.then(async () => {
            const req = { orderId: order?.id ?? "", reason: "changed my mind" };
            if (i % 3 === 2) {
              const json = await connect("shopmesh.order.v1.OrderService/CancelOrder", req, token);
              return String((json.order as { status: string }).status);
            }
            const c = clients[i % clients.length] as (typeof clients)[number];
            return OrderStatus[(await c.cancelOrder(req, who("canceller"))).order?.status ?? 0];
          }),
        ),
      );
      g.open();
      const answers = await Promise.all(calls);
      // A cancel that comes too late (the order confirmed) is FAILED_PRECONDITION; nothing else.
      expect(answers.filter((a) => !a.ok && a.code !== "FAILED_PRECONDITION" && !a.code.includes("HTTP 400"))).toEqual(
        [],
      );
    }
    await expectConserved();
    await expectEffectsOnce(bus, at);
  }, 60_000);
});

/** Watches `orderId` to its end; the statuses seen, in order. */
async function watchStatuses(
  client: ReturnType<typeof orderClients>[number],
  orderId: string,
  subject: string,
): Promise<string[]> {
  const seen: string[] = [];
  for await (const m of client.watchOrder({ orderId }, { ...who(subject), timeoutMs: 60_000 })) {
    const s = OrderStatus[m.order?.status ?? 0] ?? "?";
    if (seen.at(-1) !== s) seen.push(s);
    if (s === "CONFIRMED" || s === "CANCELLED") break;
  }
  return seen;
}

describe("CancelOrder racing the saga at every step, both modes, watched and read all along", () => {
  it.each(["inventory", "payment"])(
    "%s slowed: each order ends in one terminal state; money, stock, events, history and notifications agree",
    async (slowed) => {
      const clients = orderClients();
      const token = await tokenOf("c-race");
      // A participant slowed on every instance, so cancels land while it works as well as before and after.
      await connect(
        "shopmesh.gateway.v1.OperatorService/SetServiceFaults",
        { service: slowed, faults: { latencyMs: 150 } },
        await tokenOf("ops", ["admin"]),
      );
      const N = 80;
      const placed = await Promise.all(
        Array.from({ length: N }, async (_, i) => {
          const c = clients[i % clients.length] as (typeof clients)[number];
          const { order } = await c.placeOrder(
            {
              idempotencyKey: `c-race-${slowed}-${i}`,
              items: [{ productId: i % 2 ? "coffee-beans" : "pour-over-kettle", quantity: 1 }],
              cardToken: i % 11 === 0 ? "tok_decline" : "tok_visa",
              sagaMode: i % 2 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
            },
            who("c-race"),
          );
          return order?.id ?? "";
        }),
      );
      const watches = placed.map((id, i) =>
        watchStatuses(clients[(i + 1) % clients.length] as (typeof clients)[number], id, "c-race"),
      );
      const errors: string[] = [];
      // Readers of every kind while the orders change: no failure, no torn composite.
      let reading = true;
      const readers = Array.from({ length: 6 }, async (_, r) => {
        while (reading) {
          const id = placed[Math.floor(Math.random() * placed.length)] ?? "";
          try {
            if (r % 3 === 0) {
              const d = await connect("shopmesh.gateway.v1.GatewayService/GetOrderDetails", { orderId: id }, token);
              const order = d.order as { id: string; status: string; paymentId?: string };
              const payment = d.payment as { orderId?: string; status?: string } | undefined;
              if (order.id !== id || (payment?.orderId && payment.orderId !== id)) errors.push(`torn details ${id}`);
              if (
                order.status === "ORDER_STATUS_CONFIRMED" &&
                payment &&
                payment.status !== "PAYMENT_STATUS_CAPTURED"
              ) {
                errors.push(`confirmed ${id} with payment ${payment.status}`);
              }
            } else if (r % 3 === 1) {
              await connect("shopmesh.order.v1.OrderService/ListOrders", { pageSize: 100 }, token);
            } else {
              await (clients[r % clients.length] as (typeof clients)[number]).getOrder({ orderId: id }, who("c-race"));
            }
          } catch (err) {
            errors.push(err instanceof RpcError ? err.codeName : String(err));
          }
        }
      });
      // Every order cancelled by 3 callers at a moment of its own: at once, while reserving, charging, confirming.
      const cancels = placed.flatMap((id, i) =>
        Array.from({ length: 3 }, (_, k) =>
          settle(
            new Promise((r) => setTimeout(r, (i * 7) % 450)).then(async () => {
              const req = { orderId: id, reason: "race" };
              if (k === 2) return (await connect("shopmesh.order.v1.OrderService/CancelOrder", req, token)).order;
              const c = clients[(i + k) % clients.length] as (typeof clients)[number];
              return OrderStatus[(await c.cancelOrder(req, who("c-race"))).order?.status ?? 0];
            }),
          ),
        ),
      );
      const answers = await Promise.all(cancels);
      const seen = await Promise.all(watches);
      reading = false;
      await Promise.all(readers);
      await connect(
        "shopmesh.gateway.v1.OperatorService/SetServiceFaults",
        { service: slowed, faults: {} },
        await tokenOf("ops", ["admin"]),
      );
      expect(answers.filter((a) => !a.ok && a.code !== "FAILED_PRECONDITION" && !a.code.includes("HTTP 400"))).toEqual(
        [],
      );
      expect(errors).toEqual([]);
      expect(seen.filter((s) => !forward(s))).toEqual([]);
      await expectConserved();
      await expectFencedStepLog(at("shopmesh_order"));
      await expectEffectsOnce(bus, at);
      // The watchers' last state is the order's.
      const final = await withDb(at("shopmesh_order"), (q) =>
        q.all(sql<{ id: string; status: string }>`SELECT id, status FROM orders WHERE customer_id = 'c-race'`),
      );
      const byId = new Map(final.map((o) => [o.id, o.status]));
      expect(placed.filter((id, i) => byId.get(id) !== seen[i]?.at(-1))).toEqual([]);
    },
    90_000,
  );
});

describe("the last unit", () => {
  it("200 orders at once for a product with 1 unit left: exactly one reserves it", async () => {
    const clients = orderClients();
    const token = await tokenOf("last");
    const g = gate();
    const calls = Array.from({ length: 200 }, (_, i) =>
      settle(
        g.wait.then(async () => {
          const req = {
            idempotencyKey: `last-${i}`,
            items: [{ productId: "limited-print", quantity: 1 }],
            cardToken: "tok_visa",
            sagaMode: i % 2 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
          };
          if (i % 4 === 3) {
            return String(
              ((await connect("shopmesh.order.v1.OrderService/PlaceOrder", req, token)).order as { id: string }).id,
            );
          }
          const c = clients[i % clients.length] as (typeof clients)[number];
          return (await c.placeOrder(req, who("last"))).order?.id ?? "";
        }),
      ),
    );
    g.open();
    const answers = await Promise.all(calls);
    expect(answers.filter((a) => !a.ok)).toEqual([]);
    await allSettled();
    const confirmed = await withDb(at("shopmesh_order"), (q) =>
      q.all(sql`SELECT id FROM orders WHERE customer_id = 'last' AND status = 'CONFIRMED'`),
    );
    expect(confirmed.length).toBe(1);
    await expectConserved();
  }, 60_000);

  it("Restock racing reservations and releases: stock never negative, the sum conserved", async () => {
    const clients = orderClients();
    const inventory = inventoryClients();
    const g = gate();
    const orders = Array.from({ length: 150 }, (_, i) =>
      settle(
        g.wait.then(async () => {
          const c = clients[i % clients.length] as (typeof clients)[number];
          const { order } = await c.placeOrder(
            {
              idempotencyKey: `rr-${i}`,
              items: [{ productId: "limited-print", quantity: 1 + (i % 2) }],
              cardToken: i % 3 === 0 ? "tok_decline" : "tok_visa",
              sagaMode: i % 2 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
            },
            who("rr"),
          );
          if (i % 5 === 0) await c.cancelOrder({ orderId: order?.id ?? "", reason: "race" }, who("rr")).catch(() => {});
          return order?.id ?? "";
        }),
      ),
    );
    const restocks = Array.from({ length: 40 }, (_, i) =>
      settle(
        g.wait.then(async () => {
          await new Promise((r) => setTimeout(r, i * 10));
          const c = inventory[i % inventory.length] as (typeof inventory)[number];
          return String(
            (await c.restock({ idempotencyKey: `rr-restock-${i}`, productId: "limited-print", quantity: 2 }, admin))
              .product?.available,
          );
        }),
      ),
    );
    let low = 0;
    let samples = 0;
    let sampling = true;
    // On one connection, every 5 ms: a connection per sample (pool, connect, query, close) came to 7
    // samples a second on this machine, each a PostgreSQL backend started beside the services under test.
    const sampler = withDb(at("shopmesh_inventory"), async (q) => {
      while (sampling) {
        const r = await q.one(
          sql<{ a: number; r: number }>`SELECT available AS a, reserved AS r FROM products WHERE id = 'limited-print'`,
        );
        low = Math.min(low, r?.a ?? 0, r?.r ?? 0);
        samples++;
        await new Promise((r) => setTimeout(r, 5));
      }
    });
    g.open();
    const answers = [...(await Promise.all(orders)), ...(await Promise.all(restocks))];
    restocked.set("limited-print", (restocked.get("limited-print") ?? 0) + 80);
    expect(answers.filter((a) => !a.ok)).toEqual([]);
    await allSettled();
    sampling = false;
    await sampler;
    console.log(`hostile-race: stock sampled ${samples} times while restocks raced the orders`);
    expect(low).toBe(0);
    await expectConserved();
    await expectEffectsOnce(bus, at);
  }, 90_000);
});

describe("a participant's key from many sagas at once (a retry on one replica while the first call runs on the other)", () => {
  it("ChargePayment racing RefundPayment by the charge's key: the money is never left taken, one payment", async () => {
    const clients = (replicas.payment ?? []).map((r) => createClient(PaymentService, createChannel(r.address)));
    for (let round = 0; round < 4; round++) {
      const key = `charge-race-${round}`;
      const g = gate();
      const charge = {
        idempotencyKey: key,
        orderId: `ord-charge-race-${round}`,
        customerId: "payer",
        amount: { currencyCode: "USD", amountMinor: 1234n },
        cardToken: "tok_visa",
      };
      const calls = Array.from({ length: 150 }, (_, i) =>
        settle(
          g.wait.then(async () => {
            // The refunds start a moment into the charges (round 0: together), later each round.
            if (i % 3 === 2) await new Promise((r) => setTimeout(r, round * 3));
            const c = clients[i % clients.length] as (typeof clients)[number];
            const p =
              i % 3 === 2
                ? (await c.refundPayment({ chargeIdempotencyKey: key, reason: "race" })).payment
                : (await c.chargePayment(charge)).payment;
            return `${p?.id} ${PaymentStatus[p?.status ?? 0]}`;
          }),
        ),
      );
      g.open();
      const answers = await Promise.all(calls);
      expect(answers.filter((a) => !a.ok)).toEqual([]);
      const rows = await withDb(at("shopmesh_payment"), (q) =>
        q.all(sql<{ id: string; status: string }>`SELECT id, status FROM payments WHERE order_id = ${charge.orderId}`),
      );
      expect(rows.length, `${key}: payments`).toBeLessThanOrEqual(1);
      expect(
        rows.filter((r) => r.status === "CAPTURED"),
        `${key}: left captured`,
      ).toEqual([]);
      // Every charge caller saw the one payment (a refund or void may have come after its answer).
      const ids = new Set(answers.map((a) => (a.ok ? a.value.split(" ")[0] : "")));
      expect(ids.size, `${key}: ${[...new Set(answers.map((a) => (a.ok ? a.value : a.code)))]}`).toBeLessThanOrEqual(1);
    }
  }, 60_000);

  it("ReserveStock by 150 callers with one key, then ReleaseStock by 150: stock taken once and given back once", async () => {
    const clients = inventoryClients();
    const before = await clients[0]?.getProduct({ productId: "pour-over-kettle" }, admin);
    const g = gate();
    const req = {
      idempotencyKey: "reserve-race",
      orderId: "ord-reserve-race",
      items: [{ productId: "pour-over-kettle", quantity: 3 }],
    };
    const reserves = Array.from({ length: 150 }, (_, i) =>
      settle(
        g.wait.then(async () => {
          const c = clients[i % clients.length] as (typeof clients)[number];
          return (await c.reserveStock(req)).reservation?.id;
        }),
      ),
    );
    g.open();
    const reserved = await Promise.all(reserves);
    expect(reserved.filter((a) => !a.ok)).toEqual([]);
    const ids = new Set(reserved.map((a) => (a.ok ? a.value : "")));
    expect(ids.size).toBe(1);
    const mid = await clients[1]?.getProduct({ productId: "pour-over-kettle" }, admin);
    expect(mid?.product?.available).toBe((before?.product?.available ?? 0) - 3);
    const g2 = gate();
    const releases = Array.from({ length: 150 }, (_, i) =>
      settle(
        g2.wait.then(async () => {
          const c = clients[i % clients.length] as (typeof clients)[number];
          if (i % 10 === 9) return (await c.reserveStock(req)).reservation?.id;
          const r = (await c.releaseStock({ reservationId: [...ids][0] ?? "" })).reservation;
          return ReservationStatus[r?.status ?? 0];
        }),
      ),
    );
    g2.open();
    const released = await Promise.all(releases);
    expect(released.filter((a) => !a.ok)).toEqual([]);
    const after = await clients[0]?.getProduct({ productId: "pour-over-kettle" }, admin);
    expect(after?.product?.available).toBe(before?.product?.available);
    await expectConserved();
  }, 60_000);
});

describe("operators racing each other and the traffic", () => {
  it("SetServiceFaults from 40 operators at once: every instance of the service ends with the same faults", async () => {
    const token = await tokenOf("ops", ["admin"]);
    const set = (latencyMs: number) =>
      connect(
        "shopmesh.gateway.v1.OperatorService/SetServiceFaults",
        { service: "inventory", faults: { latencyMs } },
        token,
      );
    try {
      for (let round = 0; round < 3; round++) {
        const g = gate();
        const latency = (i: number) => 1 + i + round * 40;
        const calls = Array.from({ length: 40 }, (_, i) =>
          settle(g.wait.then(() => set(latency(i)).then(() => latency(i)))),
        );
        g.open();
        const answers = await Promise.all(calls);
        // An operator whose setting another's overtook on an instance is told so (ABORTED, 409), and
        // nothing else; the one in force everywhere is one whose operator was told it took.
        expect(answers.filter((a) => !a.ok && a.code !== "Error: HTTP 409 aborted")).toEqual([]);
        const took = answers.flatMap((a) => (a.ok ? [Number(a.value)] : []));
        const status = await connect("shopmesh.gateway.v1.OperatorService/GetSystemStatus", {}, token);
        const inventory = (
          status.services as { service: string; instances: { faults?: { latencyMs?: number } }[] }[]
        ).find((s) => s.service === "inventory");
        const faults = new Set(inventory?.instances.map((i) => i.faults?.latencyMs ?? 0));
        expect(inventory?.instances.length).toBe(2);
        expect([...faults], "the faults in force on inventory's instances").toHaveLength(1);
        expect(took).toContain([...faults][0]);
      }
    } finally {
      await set(0);
    }
  }, 60_000);
});

/** Follows `orderId` through the gateway's REST watch (one JSON line per state); the statuses seen, in order. */
async function restWatch(orderId: string, token: string): Promise<string[]> {
  const res = await fetch(`http://${gateway.address}/v1/orders/${orderId}:watch`, {
    headers: { authorization: `Bearer ${token}` },
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
  const seen: string[] = [];
  for (const line of (await res.text()).split("\n")) {
    if (!line.trim()) continue;
    const m = JSON.parse(line) as { result?: { status?: string }; error?: { code?: string } };
    if (m.error) throw new Error(`watch failed: ${m.error.code}`);
    const s = String(m.result?.status).replace("ORDER_STATUS_", "");
    if (seen.at(-1) !== s) seen.push(s);
  }
  return seen;
}

describe("one key over every protocol, and watchers through the gateway", () => {
  it("PlaceOrder by REST's Idempotency-Key, Connect's body and gRPC at once: one order; REST watchers never see it go back", async () => {
    const token = await tokenOf("proto-racer");
    const clients = orderClients();
    const body = { items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" };
    const ids: string[] = [];
    for (let round = 0; round < 10; round++) {
      const key = `proto-race-${round}`;
      const g = gate();
      const calls = Array.from({ length: 30 }, (_, i) =>
        settle(
          g.wait.then(async () => {
            if (i % 3 === 0) {
              const res = await fetch(`http://${gateway.address}/v1/orders`, {
                method: "POST",
                headers: {
                  authorization: `Bearer ${token}`,
                  "content-type": "application/json",
                  "idempotency-key": key,
                },
                body: JSON.stringify(body),
              });
              const json = (await res.json()) as { id?: string; code?: string };
              if (res.status !== 200) throw new Error(`HTTP ${res.status} ${json.code}`);
              return json.id;
            }
            if (i % 3 === 1) {
              const json = await connect(
                "shopmesh.order.v1.OrderService/PlaceOrder",
                { ...body, idempotencyKey: key },
                token,
              );
              return (json.order as { id: string }).id;
            }
            const c = clients[i % clients.length] as (typeof clients)[number];
            return (await c.placeOrder({ ...body, idempotencyKey: key }, who("proto-racer"))).order?.id;
          }),
        ),
      );
      g.open();
      const answers = await Promise.all(calls);
      expect(answers.filter((a) => !a.ok)).toEqual([]);
      const one = new Set(answers.map((a) => (a.ok ? a.value : "")));
      expect([...one], key).toHaveLength(1);
      ids.push([...one][0] ?? "");
    }
    const watches = ids.map((id) => restWatch(id, token));
    await Promise.all(
      ids.map(async (id, i) => {
        await new Promise((r) => setTimeout(r, i * 20));
        await connect("shopmesh.order.v1.OrderService/CancelOrder", { orderId: id, reason: "race" }, token).catch(
          () => {},
        );
      }),
    );
    const seen = await Promise.all(watches);
    expect(seen.filter((s) => !forward(s))).toEqual([]);
    await expectConserved();
  }, 60_000);
});
