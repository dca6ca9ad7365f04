/**
 * Scale-out, proven with real processes on a real PostgreSQL (postgres
 * project only): three order replicas, two of every other service, all
 * sharing one database and finding each other through the registry — then
 * killed, paused and cut off from their database, with the checkout's
 * invariants checked from the databases afterwards. Timings the issue asks
 * for (saga adoption after a kill, payment calls around a kill) are printed.
 */

import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { type Bus, connectBus } from "../platform/bus.js";
import { Code, RpcError } from "../platform/errors.js";
import { type Client, createChannel, createClient } from "../platform/grpc-client.js";
import { silentLogger } from "../platform/log.js";
import { DEFAULT_POLICY } from "../platform/policy-config.js";
import { createResilientClient, type ResilientClient } from "../platform/resilience.js";
import type { Db, DbLocation } from "../platform/sql.js";
import { withDb } from "./db.js";
import { type ServiceProcess, spawnService, tempDir } from "./fixtures.js";
import { expectCheckoutInvariants, expectFencedStepLog } from "./invariants.js";
import { startNats, type TestNats } from "./nats.js";
import { startPostgres, type TestPostgres } from "./postgres.js";
import { LEASE_MS, orderReplicasClient, PRODUCTS, replicaEnv, unfinishedOrders, customer as who } from "./replicas.js";

const log = silentLogger();
const dir = tempDir();

let pg: TestPostgres;
let nats: TestNats;
let bus: Bus;
let databaseUrl: string;
const at = (schema: string): DbLocation => ({ engine: "postgres", url: databaseUrl, schema, poolSize: 2 });
/** The services' schemas (once the database exists). */
const db = {
  get order() {
    return at("shopmesh_order");
  },
  get payment() {
    return at("shopmesh_payment");
  },
  get inventory() {
    return at("shopmesh_inventory");
  },
};

/** The running replicas, by service; killed ones are replaced in place. */
const replicas: Record<string, ServiceProcess[]> = {};
/** Every process ever started, for teardown. */
const started: ServiceProcess[] = [];

const envOf = (name: string) => replicaEnv(name, nats.url, databaseUrl, 5);

async function startReplica(name: string): Promise<ServiceProcess> {
  const p = await spawnService(name, envOf(name), 60_000);
  started.push(p);
  return p;
}

const orderClient = () =>
  orderReplicasClient(
    (replicas.order ?? []).map((r) => r.address),
    log,
  );

const unfinished = () => unfinishedOrders(db.order);

/** Once `orderId`'s payment is captured in `payment` (or 10 s have passed: the cancel then comes before it). */
async function charged(payment: Db, orderId: string): Promise<void> {
  const end = Date.now() + 10_000;
  while (Date.now() < end) {
    const row = await payment.one(
      sql<{ n: number }>`SELECT COUNT(*) AS n FROM payments WHERE order_id = ${orderId} AND status = 'CAPTURED'`,
    );
    if ((row?.n ?? 0) > 0) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function allSettled(ms: number): Promise<void> {
  const end = Date.now() + ms;
  let left = await unfinished();
  while (left > 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 250));
    left = await unfinished();
  }
  expect(left, "orders still in flight").toBe(0);
}

beforeAll(async () => {
  pg = await startPostgres();
  databaseUrl = await pg.createDatabase("scaleout");
  nats = await startNats();
  bus = await connectBus(nats.url, "scale-out-test", log);
  // Schemas first, by one replica each, so the others start in parallel on a migrated database.
  for (const name of ["inventory", "payment", "order", "notification", "history"]) {
    replicas[name] = [await startReplica(name)];
  }
  const more = await Promise.all([
    startReplica("inventory"),
    startReplica("payment"),
    startReplica("order"),
    startReplica("order"),
    startReplica("notification"),
    startReplica("history"),
  ]);
  replicas.inventory?.push(more[0] as ServiceProcess);
  replicas.payment?.push(more[1] as ServiceProcess);
  replicas.order?.push(more[2] as ServiceProcess, more[3] as ServiceProcess);
  replicas.notification?.push(more[4] as ServiceProcess);
  replicas.history?.push(more[5] as ServiceProcess);
}, 180_000);

afterAll(async () => {
  await Promise.all(started.map((p) => p.kill("SIGKILL")));
  await bus?.close();
  await nats?.[Symbol.asyncDispose]();
  await pg?.[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

describe("one key, three replicas", () => {
  it("20 concurrent PlaceOrder with one key spread over the replicas make one order", async () => {
    const req = {
      idempotencyKey: "same-key-everywhere",
      items: [{ productId: "paper-filters", quantity: 1 }],
      cardToken: "tok_visa",
    };
    const channels = (replicas.order ?? []).map((r) => createChannel(r.address));
    try {
      const answers = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          createClient(OrderService, channels[i % channels.length] as (typeof channels)[number]).placeOrder(
            req,
            who("kai"),
          ),
        ),
      );
      const ids = new Set(answers.map((a) => a.order?.id));
      expect(ids.size).toBe(1);
      const rows = await withDb(db.order, (q) =>
        q.all(sql`SELECT id FROM orders WHERE customer_id = 'kai' AND idempotency_key = ${req.idempotencyKey}`),
      );
      expect(rows).toHaveLength(1);
    } finally {
      for (const c of channels) c.close();
    }
  });
});

describe("one order, seen from every replica", () => {
  it("WatchOrder on one replica follows a saga another drives, and a cancel sent to a third reaches it", async () => {
    const [a, b, c] = (replicas.order ?? []).map((r) => createChannel(r.address));
    const on = (ch: typeof a) => createClient(OrderService, ch as NonNullable<typeof a>);
    const chaos = await slowPayments(1_000);
    try {
      const { order } = await on(a).placeOrder(
        {
          idempotencyKey: "watched-elsewhere",
          items: [{ productId: "coffee-beans", quantity: 1 }],
          cardToken: "tok_visa",
        },
        who("wes"),
      );
      const id = order?.id ?? "";
      const seen: string[] = [];
      const watching = (async () => {
        for await (const m of on(b).watchOrder({ orderId: id }, { ...who("wes"), timeoutMs: 20_000 })) {
          seen.push(`${OrderStatus[m.order?.status ?? 0]}:${m.order?.steps.length}`);
        }
      })();
      await new Promise((r) => setTimeout(r, 300));
      await on(c).cancelOrder({ orderId: id, reason: "changed my mind" }, who("wes"));
      await watching;
      // Several states arrived while the saga ran on another replica, ending where the cancel led.
      expect(seen.length).toBeGreaterThan(2);
      expect(seen.at(-1)).toMatch(/^CANCELLED:/);
      const final = (await on(b).getOrder({ orderId: id }, who("wes"))).order;
      expect(final?.statusReason).toContain("changed my mind");
    } finally {
      await chaos.restore();
      for (const ch of [a, b, c]) ch?.close();
    }
  }, 60_000);
});

describe("choreographed orders cancelled while they are charged", () => {
  it("no refund is left pending once the money is back, whichever replica hears which event first", async () => {
    // Two replicas take an order's PaymentSucceeded and PaymentRefunded (or StockReserved and
    // StockReleased) in batches of their own; the undo could commit first, and the success then set
    // the step back to done: refund pending for ever, the watch never ending (a hostile round found
    // 4 of 30 such orders).
    const channels = (replicas.order ?? []).map((r) => createChannel(r.address));
    const clients = channels.map((ch) => createClient(OrderService, ch));
    const on = (i: number) => clients[i % clients.length] as (typeof clients)[number];
    const ids: string[] = [];
    try {
      await withDb(db.payment, (payment) =>
        Promise.all(
          Array.from({ length: 30 }, async (_, i) => {
            const { order } = await on(i).placeOrder(
              {
                idempotencyKey: `charged-then-cancelled-${i}`,
                items: [{ productId: "ceramic-mug", quantity: 1 }],
                cardToken: "tok_visa",
                sagaMode: SagaMode.CHOREOGRAPHY,
              },
              who("late"),
            );
            const id = order?.id ?? "";
            ids.push(id);
            // A fixed delay alone raced nothing on a loaded machine (CI, 2026-12-06: every cancel came
            // before its charge, no refund): a third of the cancels wait for the charge's commit.
            if (i % 3 === 0) await charged(payment, id);
            else await new Promise((r) => setTimeout(r, 20 + (i % 5) * 15));
            await Promise.all(
              [0, 1, 2, 0].map((k) =>
                on(k)
                  .cancelOrder({ orderId: id, reason: "x" }, who("late"))
                  .catch((err: unknown) => {
                    // Confirmed before the cancel came: nothing to undo. Anything else is a failure of its own.
                    if (!(err instanceof RpcError && err.code === Code.FAILED_PRECONDITION)) throw err;
                  }),
              ),
            );
          }),
        ),
      );
      await allSettled(20_000);
      // A choreographed order is CANCELLED first; payment refunds on hearing OrderCancelled, and the
      // order on hearing PaymentRefunded no longer waits: each refund is heard, nothing left pending.
      const ours = new Set(ids);
      const pending = async () =>
        (
          await withDb(db.order, (q) =>
            q.all(sql<{ id: string; payment: string }>`SELECT id, payment FROM orders
              WHERE status = 'CANCELLED' AND payment IN ('done', 'attempted')`),
          )
        ).filter((o) => ours.has(o.id));
      await expect.poll(pending, { timeout: 20_000, interval: 250 }).toEqual([]); // cancelled orders whose payment is still taken, or whose refund was not heard
      const refunded = await withDb(db.payment, (q) =>
        q.all(sql<{ order_id: string }>`SELECT order_id FROM payments WHERE status = 'REFUNDED'`),
      );
      const back = new Set(refunded.map((r) => r.order_id).filter((id) => ours.has(id)));
      // This scenario found the hole by chance (5 and 6 orders of 30 in two runs before the fix); the
      // deterministic guard is services/order/guard.test.ts. Without a refund here it proves nothing.
      console.log(`scale-out: ${back.size} of 30 orders charged, then cancelled and refunded`);
      expect(back.size, "orders charged and then refunded").toBeGreaterThan(0);
    } finally {
      for (const ch of channels) ch.close();
    }
  }, 90_000);
});

/**
 * Unfinished orchestrated sagas (those `claimSagas` adopts) whose lease the order replica of process `pid`
 * holds: its owner is `<host>/<pid>/<id>`.
 */
async function sagasHeldBy(q: Db, pid: number): Promise<number> {
  const row = await q.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM orders
    WHERE owner LIKE ${`%/${pid}/%`} AND saga_mode = 'ORCHESTRATION'
      AND (status IN ('PENDING', 'COMPENSATING') OR (status = 'CANCELLED' AND payment IN ('attempted', 'done')))`);
  return Number(row?.n ?? 0);
}

describe("a burst while order replicas die", () => {
  it("300 orders, both saga modes, two order replicas SIGKILLed in turn: every invariant holds, no step has two owners", async () => {
    const orders = orderClient();
    const placed: string[] = [];
    const failures: string[] = [];
    const place = async (i: number) => {
      try {
        const { order } = await orders.placeOrder(
          {
            idempotencyKey: `burst-${i}`,
            items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 + (i % 2) }],
            cardToken: i % 9 === 0 ? "tok_decline" : "tok_visa",
            sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
          },
          { ...who(`c${i % 7}`), timeoutMs: 30_000 },
        );
        placed.push(order?.id ?? "");
      } catch (err) {
        failures.push(err instanceof RpcError ? `${err.codeName}: ${err.message}` : String(err));
      }
    };
    // Paced so that the kills land while sagas are in flight on every replica.
    const burst = (async () => {
      const inFlight: Promise<void>[] = [];
      for (let i = 0; i < 300; i++) {
        inFlight.push(place(i));
        if (i % 10 === 9) await new Promise((r) => setTimeout(r, 40));
      }
      await Promise.all(inFlight);
    })();

    const adoption: number[] = [];
    try {
      for (const victim of [0, 1]) {
        await new Promise((r) => setTimeout(r, 1_200));
        const dead = replicas.order?.[victim] as ServiceProcess;
        // Timed from the database: the dead replica's own sagas changing hands. The first "lease expiry"
        // line a survivor logged was not that: on a loaded machine a live replica's lapsed lease is
        // adopted too, and that line came 295 ms after a kill whose sagas changed hands at 1,386 ms.
        const adopted = await withDb(db.order, async (q) => {
          const held = () => sagasHeldBy(q, dead.child.pid ?? 0);
          const before = await held();
          const killedAt = Date.now();
          expect(await dead.kill("SIGKILL")).toBe("SIGKILL");
          if (before === 0) return undefined;
          while ((await held()) > 0) {
            if (Date.now() > killedAt + 20_000) throw new Error("no survivor adopted the dead replica's sagas");
            await new Promise((r) => setTimeout(r, 10));
          }
          return Date.now() - killedAt;
        });
        if (adopted !== undefined) adoption.push(adopted);
      }
      await burst;
    } finally {
      orders.close();
      // The killed replicas come back for the tests below.
      const order = replicas.order as ServiceProcess[];
      for (const [i, r] of order.entries())
        if (r.child.exitCode !== null || r.child.signalCode !== null) order[i] = await startReplica("order");
    }
    console.log(
      `scale-out: adoption after SIGKILL ${adoption.map((ms) => `${ms} ms`).join(", ")} (lease ${LEASE_MS} ms); ` +
        `${placed.length} orders placed, ${failures.length} client failures`,
    );
    expect(failures).toEqual([]);
    expect(new Set(placed).size).toBe(300);

    // Settled before anything is asserted of the adoption's timing: the suite's next test counts the
    // effects of these orders, and must not find them half done.
    await allSettled(90_000);
    const outcome = await expectCheckoutInvariants(db);
    expect(outcome.confirmed.size + outcome.cancelled.size).toBeGreaterThanOrEqual(300);
    const { handedOver } = await expectFencedStepLog(db.order);
    console.log(
      `scale-out: ${outcome.confirmed.size} confirmed, ${outcome.cancelled.size} cancelled; ${handedOver} sagas changed owner`,
    );
    expect(handedOver, "the kills caught sagas in flight").toBeGreaterThan(0);
    expect(adoption.length, "a kill caught sagas in flight").toBeGreaterThan(0);
    // Adopted once the lease runs out, not at some later sweep: seconds, where a missed expiry would be
    // the 20 s above, or minutes. A CI run with three test workers measured 1,428 and 3,909 ms.
    for (const ms of adoption) expect(ms).toBeLessThan(LEASE_MS + 5_000);
  }, 240_000);

  it("each event was handled once per service, by both replicas between them", async () => {
    // Effects, not deliveries: one notification per terminal order event, one history row per order.
    const terminal = await withDb(db.order, (q) =>
      q.all(
        sql<{ id: string; status: string }>`SELECT id, status FROM orders WHERE status IN ('CONFIRMED', 'CANCELLED')`,
      ),
    );
    const notified = async () =>
      withDb(at("shopmesh_notification"), (q) =>
        q.all(sql<{ order_id: string; kind: string; n: number }>`SELECT order_id, kind, COUNT(*) AS n FROM notifications
          WHERE kind IN ('ORDER_CONFIRMED', 'ORDER_CANCELLED') GROUP BY order_id, kind`),
      );
    let rows = await notified();
    for (let i = 0; i < 80 && rows.length < terminal.length; i++) {
      await new Promise((r) => setTimeout(r, 250));
      rows = await notified();
    }
    expect(rows.filter((r) => r.n !== 1)).toEqual([]);
    expect(rows.length).toBe(terminal.length);
    // The history view is eventually consistent, like the notifications: it may still be catching up
    // (under a loaded CI machine it was seconds behind). An event it lost would never arrive.
    const unlike = async () => {
      const views = await withDb(at("shopmesh_history"), (q) =>
        q.all(sql<{ order_id: string; status: string | null }>`SELECT order_id, status FROM order_history`),
      );
      const byOrder = new Map(views.map((v) => [v.order_id, v.status]));
      return terminal.filter((o) => byOrder.get(o.id) !== o.status);
    };
    let behind = await unlike();
    for (let i = 0; i < 80 && behind.length > 0; i++) {
      await new Promise((r) => setTimeout(r, 250));
      behind = await unlike();
    }
    expect(behind).toEqual([]);
    // Both replicas of each consumer did part of the work (work-queue consumers, not one per replica).
    for (const name of ["notification", "history"]) {
      const handled = await Promise.all(
        (replicas[name] ?? []).map(async (r) => {
          const { port } = await r.logLine("metrics on /metrics");
          const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
          return text
            .split("\n")
            .filter((l) => l.startsWith("events_handled_total") && l.includes('outcome="handled"'))
            .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
        }),
      );
      console.log(`scale-out: ${name} replicas handled ${handled.join(" + ")} events`);
      expect(
        handled.every((h) => h > 0),
        `${name}: both replicas consumed`,
      ).toBe(true);
    }
  }, 60_000);
});

describe("fencing", () => {
  it("a replica paused past its lease, then resumed, writes nothing: another replica finished its sagas", async () => {
    const [paused, ...others] = replicas.order as ServiceProcess[];
    const channel = createChannel((paused as ServiceProcess).address);
    // Slow payments keep the paused replica's sagas mid-call when it stops.
    const chaos = await slowPayments(1_500);
    try {
      const ids: string[] = [];
      for (let i = 0; i < 6; i++) {
        const { order } = await createClient(OrderService, channel).placeOrder(
          { idempotencyKey: `paused-${i}`, items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
          who("pia"),
        );
        ids.push(order?.id ?? "");
      }
      await new Promise((r) => setTimeout(r, 300));
      const fencesBefore = await fencesOf(ids);
      (paused as ServiceProcess).child.kill("SIGSTOP");
      // Past the lease: the others adopt (and, payments slow or not, finish) these sagas.
      const end = Date.now() + 30_000;
      while (Date.now() < end && (await unfinishedOf(ids)) > 0) await new Promise((r) => setTimeout(r, 200));
      expect(await unfinishedOf(ids)).toBe(0);
      const finished = await stepCount(ids);
      const said = (paused as ServiceProcess).output().length;
      (paused as ServiceProcess).child.kill("SIGCONT");
      // Resumed, its calls in flight complete (their answers came while it was stopped) and it tries to
      // write their outcomes: fenced, every one. Checked once it has tried: once it says, after the
      // resume, that a write for one of these orders was fenced, or once a step more is written (a write
      // the fence let through), whichever comes first.
      const fenced = () =>
        (paused as ServiceProcess)
          .output()
          .slice(said)
          .split("\n")
          .some((l) => l.includes(`"msg":"${FENCED_LINE}"`) && ids.some((id) => l.includes(id)));
      await expect
        .poll(async () => fenced() || (await stepCount(ids)) !== finished, { timeout: 15_000, interval: 50 })
        .toBe(true);
      expect(await stepCount(ids), "no step written after the resume").toBe(finished);
      const fencesAfter = await fencesOf(ids);
      for (const id of ids) expect(fencesAfter.get(id), id).toBeGreaterThan(fencesBefore.get(id) ?? 0);
      expect(fenced(), "the resumed replica said its write was fenced").toBe(true);
      await expectFencedStepLog(db.order);
      expect(others.length).toBe(2);
    } finally {
      await chaos.restore();
      channel.close();
    }
  }, 90_000);
});

/** What an order replica logs when a saga write of its own is fenced (services/order/saga-loop.ts). */
const FENCED_LINE =
  "saga lease taken over since this run began (by another replica, or by this one after a pause); stopping here";

/** Makes every payment replica answer after `ms` (fault injection), until restored. */
async function slowPayments(ms: number): Promise<{ restore(): Promise<void> }> {
  const channels = (replicas.payment ?? []).map((r) => createChannel(r.address));
  const set = (latencyMs: number) =>
    Promise.all(channels.map((c) => createClient(ChaosService, c).setFaults({ faults: { latencyMs } })));
  await set(ms);
  return {
    async restore() {
      await set(0);
      for (const c of channels) c.close();
    },
  };
}

const fencesOf = async (ids: string[]) =>
  new Map(
    (
      await withDb(db.order, (q) =>
        q.all(sql<{ id: string; fence: number }>`SELECT id, fence FROM orders WHERE id = ANY(${ids}::text[])`),
      )
    ).map((r) => [r.id, r.fence]),
  );
const unfinishedOf = async (ids: string[]) =>
  (
    await withDb(db.order, (q) =>
      q.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM orders
        WHERE id = ANY(${ids}::text[]) AND status IN ('PENDING', 'COMPENSATING')`),
    )
  )?.n ?? 0;
const stepCount = async (ids: string[]) =>
  (
    await withDb(db.order, (q) =>
      q.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM saga_steps WHERE order_id = ANY(${ids}::text[])`),
    )
  )?.n ?? 0;

describe("PostgreSQL restarted mid-burst", () => {
  it("services reconnect; no order lost, none charged twice, stock conserved", async () => {
    const orders = orderClient();
    const keys = Array.from({ length: 80 }, (_, i) => `pg-restart-${i}`);
    /**
     * Places with one key until an answer comes: a client that keeps its key across an outage. A call
     * that ran out its deadline (its retries waited out PostgreSQL's restart, seconds longer on a busy
     * machine: CI on 53cd14c) has an unknown outcome, so it is placed again with the same key too —
     * for a minute at most, so a service that stays stuck fails here with its own error, not the test's timeout.
     */
    const place = async (key: string, i: number) => {
      const until = Date.now() + 60_000;
      for (;;) {
        try {
          const { order } = await orders.placeOrder(
            {
              idempotencyKey: key,
              items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 }],
              cardToken: "tok_visa",
              sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
            },
            { ...who("ren"), timeoutMs: 10_000 },
          );
          return order?.id ?? "";
        } catch (err) {
          const again =
            err instanceof RpcError && (err.code === Code.UNAVAILABLE || err.code === Code.DEADLINE_EXCEEDED);
          if (Date.now() > until || !again) throw err;
          await new Promise((r) => setTimeout(r, 250));
        }
      }
    };
    const burst = Promise.all(
      keys.map(async (k, i) => {
        await new Promise((r) => setTimeout(r, i * 25));
        return place(k, i);
      }),
    );
    await new Promise((r) => setTimeout(r, 600));
    await pg.stop("immediate");
    await new Promise((r) => setTimeout(r, 2_000));
    await pg.start();
    const ids = await burst;
    orders.close();
    expect(new Set(ids).size).toBe(keys.length);
    // Every replica lived through it (a dropped connection must never crash a process).
    const dead = Object.values(replicas)
      .flat()
      .filter((r) => r.child.exitCode !== null || r.child.signalCode !== null);
    expect(dead.map((r) => r.output().slice(-500))).toEqual([]);
    await allSettled(90_000);
    await expectCheckoutInvariants(db);
    await expectFencedStepLog(db.order);
  }, 180_000);
});

describe("per-instance resilience", () => {
  it("2 payment replicas under steady load, one SIGKILLed: no client call fails and the healthy one is never refused", async () => {
    const payments: ResilientClient<typeof PaymentService> = createResilientClient(
      "payment",
      PaymentService,
      "registry:///payment",
      { ...DEFAULT_POLICY, retryInitialDelayMs: 20 },
      log,
      { nc: bus.nc },
    );
    const [doomed, healthy] = replicas.payment as [ServiceProcess, ServiceProcess];
    // Both instances known and in use before the kill.
    for (let i = 0; i < 50 && payments.state().endpoints.length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    expect(
      payments
        .state()
        .endpoints.map((e) => e.address)
        .sort(),
    ).toEqual([doomed.address, healthy.address].sort());

    let calls = 0;
    const failures: string[] = [];
    const latencies: number[] = [];
    let healthyRefused = false;
    let n = 0;
    const charge = async (client: Client<typeof PaymentService>) => {
      const i = ++n;
      const started = performance.now();
      try {
        await client.chargePayment(
          {
            idempotencyKey: `steady-${i}`,
            orderId: `ord-steady-${i}`,
            customerId: "sam",
            amount: { currencyCode: "USD", amountMinor: 100n },
            cardToken: "tok_visa",
          },
          { timeoutMs: 3_000 },
        );
      } catch (err) {
        failures.push(err instanceof RpcError ? `${err.codeName}: ${err.message}` : String(err));
      }
      calls++;
      latencies.push(performance.now() - started);
      const h = payments.state().endpoints.find((e) => e.address === healthy.address);
      if (h && h.breaker !== "closed") healthyRefused = true;
    };
    const load = (async () => {
      const end = Date.now() + 4_000;
      // Eight callers at once, like a busy order service.
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (Date.now() < end) await charge(payments);
        }),
      );
    })();
    await new Promise((r) => setTimeout(r, 1_500));
    const killedAt = calls;
    expect(await doomed.kill("SIGKILL")).toBe("SIGKILL");
    await load;
    payments.close();
    const sorted = [...latencies].sort((a, b) => a - b);
    const p = (q: number) => Math.round(sorted[Math.floor(q * (sorted.length - 1))] ?? 0);
    console.log(
      `scale-out: payment SIGKILL under load — ${calls} calls (${killedAt} before the kill), ${failures.length} failed, ` +
        `latency p50 ${p(0.5)} ms, p99 ${p(0.99)} ms, max ${p(1)} ms; healthy replica refused: ${healthyRefused}`,
    );
    expect(failures).toEqual([]);
    expect(healthyRefused).toBe(false);
    expect(calls - killedAt).toBeGreaterThan(20);
  }, 60_000);
});
