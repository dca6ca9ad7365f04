/**
 * A hostile round on frozen peers (2026-12-05): processes stopped with SIGSTOP and let go with
 * SIGCONT, as an operator meets them when a VM pauses, a container is throttled to zero or a GC
 * spiral freezes a process — their sockets stay open and nothing answers, unlike the killed peers
 * earlier rounds covered. Real nats-server, real databases, the frozen service a real process.
 * Each `describe` is one suspicion; a test that found a defect says so.
 */
import { Code, ConnectError, createClient as createConnectClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { startGateway } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, loadConfig as gatewayConfig, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { installLeanAsyncBind } from "../platform/async-bind.js";
import { type Bus, connectBus } from "../platform/bus.js";
import { RpcError } from "../platform/errors.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { silentLogger } from "../platform/log.js";
import { StallClock } from "../platform/stall.js";
import { startHistory } from "../services/history/app.js";
import { loadConfig as historyConfig } from "../services/history/config.js";
import { type InventoryApp, startInventory } from "../services/inventory/app.js";
import { loadConfig as inventoryConfig } from "../services/inventory/config.js";
import { startNotification } from "../services/notification/app.js";
import { loadConfig as notificationConfig } from "../services/notification/config.js";
import { type OrderApp, startOrder } from "../services/order/app.js";
import { loadConfig as orderConfig } from "../services/order/config.js";
import { type PaymentApp, startPayment } from "../services/payment/app.js";
import { loadConfig as paymentConfig } from "../services/payment/config.js";
import { TestDatabases, withDb } from "./db.js";
import { type ServiceProcess, spawnGateway, spawnService, tempDir } from "./fixtures.js";
import { expectCheckoutInvariants } from "./invariants.js";
import { startNats, type TestNats } from "./nats.js";
import { gatewayTargets, startSystem, startTestGateway } from "./system.js";

/** A customer's token as the gateway of `make run` (its development secret) accepts it. */
const customerToken = (subject: string) =>
  signDevToken({ JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" }, subject, [
    "customer",
  ]);

const log = silentLogger();
const who = (subject: string) => ({ metadata: identityMetadata({ subject, roles: ["customer"] }) });
const BUDGET_MS = 3_000;

type Frozen = "payment" | "inventory" | "order" | "notification" | "history";

/** The checkout with `frozen` a process of its own (to SIGSTOP) and the rest in this process. */
interface Checkout extends AsyncDisposable {
  readonly nats: TestNats;
  readonly proc: ServiceProcess;
  readonly dbs: TestDatabases;
  /** Payment, when it runs in this process. */
  readonly payment: PaymentApp | undefined;
  readonly orders: ReturnType<typeof createClient<typeof OrderService>>;
  freeze(): void;
  thaw(): void;
}

async function checkout(frozen: Frozen, orderEnv: Record<string, string> = {}): Promise<Checkout> {
  installLeanAsyncBind();
  const dir = tempDir();
  const nats = await startNats();
  const dbs = new TestDatabases(dir.path);
  const base = { GRPC_HOST: "127.0.0.1", GRPC_PORT: "0", SHUTDOWN_GRACE_MS: "2000", NATS_URL: nats.url };
  const apps: { stop(): Promise<void> }[] = [];
  const keep = async <A extends { stop(): Promise<void> }>(a: Promise<A>) => {
    const app = await a;
    apps.push(app);
    return app;
  };
  const spawned = (env: Record<string, string>) => spawnService(frozen, { NATS_URL: nats.url, ...env }, 60_000);
  let proc: ServiceProcess | undefined = frozen === "order" ? undefined : await spawned(await dbs.env(frozen));
  const inventory: InventoryApp | undefined =
    frozen === "inventory"
      ? undefined
      : await keep(startInventory(inventoryConfig({ ...base, ...(await dbs.env("inventory")) }), log));
  const payment: PaymentApp | undefined =
    frozen === "payment"
      ? undefined
      : await keep(startPayment(paymentConfig({ ...base, ...(await dbs.env("payment")) }), log));
  const orderSettings = {
    ...(await dbs.env("order")),
    INVENTORY_TARGET: inventory?.address ?? proc?.address ?? "",
    PAYMENT_TARGET: payment?.address ?? proc?.address ?? "",
    SAGA_RETRY_BASE_MS: "20",
    SAGA_RETRY_MAX_MS: "200",
    SAGA_STEP_BUDGET_MS: String(BUDGET_MS),
    ...orderEnv,
  };
  let order: OrderApp | undefined;
  if (frozen === "order") proc = await spawned(orderSettings);
  else order = await keep(startOrder(orderConfig({ ...base, ...orderSettings }), log));
  if (!proc) throw new Error("unreachable");
  if (frozen !== "notification") {
    await keep(startNotification(notificationConfig({ ...base, ...(await dbs.env("notification")) }), log));
  }
  if (frozen !== "history") await keep(startHistory(historyConfig({ ...base, ...(await dbs.env("history")) }), log));
  const channel = createChannel(order?.address ?? proc.address);
  const pid = proc.child.pid ?? 0;
  const child = proc.child;
  return {
    nats,
    proc,
    dbs,
    payment,
    orders: createClient(OrderService, channel),
    freeze: () => process.kill(pid, "SIGSTOP"),
    thaw: () => {
      if (child.exitCode === null && child.signalCode === null) process.kill(pid, "SIGCONT");
    },
    async [Symbol.asyncDispose]() {
      channel.close();
      if (child.exitCode === null) process.kill(pid, "SIGCONT");
      for (const a of apps.reverse()) await a.stop().catch(() => {});
      await proc?.kill("SIGKILL");
      await nats[Symbol.asyncDispose]();
      dir[Symbol.dispose]();
    },
  };
}

const PRODUCTS = ["coffee-beans", "ceramic-mug", "paper-filters"];

for (const frozen of ["payment", "inventory"] as const) {
  describe(`${frozen} frozen mid-saga past the step budget, then resumed`, () => {
    it("every order settles, none charged twice, stock conserved; GetOrder answers meanwhile", async () => {
      await using sys = await checkout(frozen);
      const placed: string[] = [];
      const owner = new Map<string, string>();
      const place = async (i: number, mode: SagaMode) => {
        const { order } = await sys.orders.placeOrder(
          {
            idempotencyKey: `${frozen}-${i}`,
            items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 }],
            cardToken: "tok_visa",
            sagaMode: mode,
          },
          { ...who(`c${i % 3}`), timeoutMs: 10_000 },
        );
        placed.push(order?.id ?? "");
        owner.set(order?.id ?? "", `c${i % 3}`);
      };
      // A few settled first, so the frozen one has served calls and events.
      await Promise.all([0, 1].map((i) => place(i, i % 2 ? SagaMode.CHOREOGRAPHY : SagaMode.ORCHESTRATION)));
      sys.freeze();
      const frozenAt = Date.now();
      const slow: string[] = [];
      try {
        await Promise.all(
          Array.from({ length: 10 }, (_, k) => place(10 + k, k % 2 ? SagaMode.CHOREOGRAPHY : SagaMode.ORCHESTRATION)),
        );
        // The customer asks meanwhile: each answer within its deadline.
        while (Date.now() - frozenAt < BUDGET_MS * 3) {
          for (const id of placed) {
            const t = Date.now();
            try {
              await sys.orders.getOrder({ orderId: id }, { ...who(owner.get(id) ?? ""), timeoutMs: 2_000 });
            } catch (err) {
              slow.push(`${id}: ${err instanceof RpcError ? err.codeName : String(err)} after ${Date.now() - t} ms`);
            }
          }
          // And watches one: the stream ends by the order's end or its deadline, whichever comes first.
          const id = placed.at(-1) ?? "";
          const t = Date.now();
          try {
            for await (const _ of sys.orders.watchOrder(
              { orderId: id },
              { ...who(owner.get(id) ?? ""), timeoutMs: 2_000 },
            )) {
              // each state as it changes
            }
          } catch (err) {
            if (!(err instanceof RpcError && err.codeName === "DEADLINE_EXCEEDED"))
              slow.push(`watch ${id}: ${String(err)}`);
          }
          if (Date.now() - t > 2_000 + 2_000) slow.push(`watch ${id}: ended after ${Date.now() - t} ms`);
          await new Promise((r) => setTimeout(r, 300));
        }
      } finally {
        sys.thaw();
      }
      expect(slow).toEqual([]);
      const dbs = {
        order: await sys.dbs.location("order"),
        payment: await sys.dbs.location("payment"),
        inventory: await sys.dbs.location("inventory"),
      };
      const states = () =>
        withDb(dbs.order, (q) =>
          q.all(sql<{ id: string; status: string; saga_mode: string }>`SELECT id, status, saga_mode FROM orders`),
        );
      await expect
        .poll(async () => (await states()).filter((o) => o.status === "PENDING" || o.status === "COMPENSATING"), {
          timeout: 60_000,
          interval: 250,
        })
        .toEqual([]);
      console.log(JSON.stringify(await states()));
      await expectCheckoutInvariants(dbs);
    }, 120_000);
  });
}

describe("the gateway's upstream frozen while clients call through every protocol", () => {
  it("each call ends within its deadline or the gateway's with a clear status; after SIGCONT, calls and slots are back", async () => {
    const dir = tempDir();
    const dbs = new TestDatabases(dir.path);
    const order = await spawnService("order", { ...(await dbs.env("order")) }, 60_000);
    const pid = order.child.pid ?? 0;
    const CALLS_PER_IP = 24;
    const IDLE_MS = 4_000;
    const STREAMS = 4;
    const gw = await startGateway(
      gatewayConfig({
        HTTP_HOST: "127.0.0.1",
        HTTP_PORT: "0",
        ORDER_TARGET: order.address,
        METRICS_PORT: "0",
        UPSTREAM_TIMEOUT_MS: "1000",
        HTTP_STREAM_IDLE_TIMEOUT_MS: String(IDLE_MS),
        HTTP_MAX_CALLS_PER_IP: String(CALLS_PER_IP),
        HTTP_MAX_STREAMS_PER_PRINCIPAL: String(STREAMS),
        RATE_LIMIT_RPS: "100000",
        RATE_LIMIT_BURST: "100000",
        RATE_LIMIT_IP_RPS: "100000",
        RATE_LIMIT_IP_BURST: "500",
      }),
      log,
    );
    const url = `http://127.0.0.1:${gw.port}`;
    const token = await signDevToken(
      { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
      "frozen",
      ["customer"],
    );
    const headers = { authorization: `Bearer ${token}` };
    const grpc = createConnectClient(OrderService, createGrpcTransport({ baseUrl: url }));
    const json = createConnectClient(OrderService, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
    try {
      const { order: placed } = await grpc.placeOrder(
        { idempotencyKey: "frozen-gw", items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
        { headers },
      );
      const id = placed?.id ?? "";
      type Outcome = { what: string; ms: number; status: string; limitMs: number };
      const timed = async (what: string, limitMs: number, call: () => Promise<string>): Promise<Outcome> => {
        const t = Date.now();
        const status = await call().catch((err: unknown) =>
          err instanceof ConnectError ? Code[err.code] : String(err),
        );
        return { what, ms: Date.now() - t, status, limitMs };
      };
      const rpc = (p: Promise<unknown>) => p.then(() => "OK");
      const http = (path: string, init: RequestInit = {}) =>
        fetch(`${url}${path}`, { ...init, headers: { ...headers, ...(init.headers ?? {}) } }).then(
          async (r) => `${r.status} ${(await r.text()).slice(0, 80)}`,
        );
      const watch = async (client: typeof grpc, timeoutMs?: number) => {
        const n = { events: 0 };
        for await (const _ of client.watchOrder({ orderId: id }, { headers, timeoutMs })) n.events++;
        return `OK after ${n.events}`;
      };
      process.kill(pid, "SIGSTOP");
      let outcomes: Outcome[];
      try {
        outcomes = await Promise.all([
          timed("grpc GetOrder 1.5 s", 1_500, () => rpc(grpc.getOrder({ orderId: id }, { headers, timeoutMs: 1_500 }))),
          timed("grpc GetOrder", 15_000, () => rpc(grpc.getOrder({ orderId: id }, { headers }))),
          timed("connect GetOrder 1.5 s", 1_500, () =>
            rpc(json.getOrder({ orderId: id }, { headers, timeoutMs: 1_500 })),
          ),
          timed("connect GetOrder", 15_000, () => rpc(json.getOrder({ orderId: id }, { headers }))),
          timed("connect JSON by hand", 15_000, () =>
            http("/shopmesh.order.v1.OrderService/GetOrder", {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: JSON.stringify({ orderId: id }),
            }),
          ),
          timed("REST GetOrder 1.5 s", 1_500, () =>
            http(`/v1/orders/${id}`, { headers: { "connect-timeout-ms": "1500" } }),
          ),
          timed("REST GetOrder", 15_000, () => http(`/v1/orders/${id}`)),
          timed("REST ListOrders", 15_000, () => http("/v1/orders")),
          timed("REST GetOrderDetails", 2_000, () => http(`/v1/orders/${id}/details`)),
          timed("grpc WatchOrder 1.5 s", 1_500, () => watch(grpc, 1_500)),
          // No deadline: a watch no byte moves on is cut at the stream idle timeout, frozen upstream or quiet order.
          timed("grpc WatchOrder", IDLE_MS, () => watch(grpc)),
          timed("connect WatchOrder", IDLE_MS, () => watch(json)),
          timed("REST WatchOrder", IDLE_MS, () => http(`/v1/orders/${id}:watch`)),
        ]);
      } finally {
        process.kill(pid, "SIGCONT");
      }
      console.log(outcomes.map((o) => `${o.what}: ${o.status.slice(0, 40)} in ${o.ms} ms`).join("\n"));
      // Within its deadline and a busy machine's slack, with the status a client can act on.
      expect(outcomes.filter((o) => o.ms > o.limitMs + 3_000)).toEqual([]);
      expect(
        outcomes.filter(
          (o) => !/DeadlineExceeded|Unavailable|^50[34]/.test(o.status) && !o.what.endsWith("WatchOrder"),
        ),
      ).toEqual([]);
      // Back without a restart: the calls succeed again, and no admission slot was kept.
      await expect
        .poll(() => rpc(grpc.getOrder({ orderId: id }, { headers, timeoutMs: 2_000 })).catch(String), {
          timeout: 20_000,
        })
        .toBe("OK");
      const again = await Promise.all(
        Array.from({ length: CALLS_PER_IP }, () => http(`/v1/orders/${id}`).then((s) => s.slice(0, 3))),
      );
      expect(again.filter((s) => s !== "200")).toEqual([]);
      // Each principal's stream slots too: as many watches as it may hold are admitted again.
      const watches = await Promise.all(
        Array.from({ length: STREAMS }, () =>
          watch(grpc, 1_000).catch((err: unknown) => (err instanceof ConnectError ? Code[err.code] : String(err))),
        ),
      );
      expect(watches.filter((w) => w !== "DeadlineExceeded")).toEqual([]);
    } finally {
      process.kill(pid, "SIGCONT");
      await gw.stop();
      await order.kill("SIGKILL");
      dir[Symbol.dispose]();
    }
  }, 90_000);
});

describe("nats-server frozen for 15 s while orders arrive, then resumed", () => {
  it("no accepted order is lost, events flow again, every effect once; the gateway keeps routing by the registry", async () => {
    await using sys = await startSystem({ order: { SAGA_STEP_BUDGET_MS: "5000" } });
    const gw = await startTestGateway(sys, {
      NATS_URL: sys.nats.url,
      ...Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), `registry:///${u}`])),
      RATE_LIMIT_RPS: "100000",
      RATE_LIMIT_BURST: "100000",
    });
    const token = await customerToken("bus");
    const viaGateway = (i: number) =>
      fetch(`http://127.0.0.1:${gw.port}/v1/orders`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${token}`,
          "content-type": "application/json",
          "connect-timeout-ms": "10000",
        },
        body: JSON.stringify({
          idempotencyKey: `bus-gw-${i}`,
          items: [{ productId: PRODUCTS[i % PRODUCTS.length], quantity: 1 }],
          cardToken: "tok_visa",
          sagaMode: i % 2 ? "SAGA_MODE_CHOREOGRAPHY" : "SAGA_MODE_ORCHESTRATION",
        }),
      }).then(async (r) => `${r.status}${r.status === 200 ? "" : ` ${await r.text()}`}`);
    try {
      // The gateway knows the instances before the freeze.
      await expect.poll(() => viaGateway(0), { timeout: 20_000 }).toBe("200");
      sys.nats.pause();
      const statuses: string[] = [];
      try {
        const t0 = Date.now();
        let i = 1;
        while (Date.now() - t0 < 15_000) {
          statuses.push(...(await Promise.all([viaGateway(i++), viaGateway(i++)])));
          await new Promise((r) => setTimeout(r, 250));
        }
      } finally {
        sys.nats.resume();
      }
      const failed = statuses.filter((s) => s !== "200");
      console.log(
        `${statuses.length} orders through the gateway during the freeze, ${failed.length} failed: ${[...new Set(failed)].join("; ").slice(0, 500)}`,
      );
      expect(failed).toEqual([]);
      const dbs = { order: sys.order.store.db, payment: sys.payment.store.db, inventory: sys.inventory.store.db };
      const unfinished = async () =>
        (
          await dbs.order.all(
            sql<{
              id: string;
              status: string;
            }>`SELECT id, status FROM orders WHERE status IN ('PENDING', 'COMPENSATING')`,
          )
        ).length;
      await expect.poll(unfinished, { timeout: 60_000, interval: 250 }).toBe(0);
      const all = await dbs.order.all(sql<{ id: string; status: string }>`SELECT id, status FROM orders`);
      console.log(`orders: ${all.length}, confirmed ${all.filter((o) => o.status === "CONFIRMED").length}`);
      expect(all.length).toBe(statuses.length + 1);
      await expectCheckoutInvariants(dbs);
      // Every terminal order notified once, and the history view equal to the orders.
      const notified = () =>
        sys.notification.store.db.all(sql<{
          order_id: string;
          n: number;
        }>`SELECT order_id, COUNT(*) AS n FROM notifications
          WHERE kind IN ('ORDER_CONFIRMED', 'ORDER_CANCELLED') GROUP BY order_id`);
      await expect.poll(async () => (await notified()).length, { timeout: 30_000 }).toBe(all.length);
      expect((await notified()).filter((r) => r.n !== 1)).toEqual([]);
      const behind = async () => {
        const views = await sys.history.store.db.all(
          sql<{ order_id: string; status: string | null }>`SELECT order_id, status FROM order_history`,
        );
        const byOrder = new Map(views.map((v) => [v.order_id, v.status]));
        return all.filter((o) => byOrder.get(o.id) !== o.status).map((o) => o.id);
      };
      await expect.poll(behind, { timeout: 30_000 }).toEqual([]);
    } finally {
      await gw.stop();
    }
  }, 120_000);
});

describe("the only order replica frozen past its saga lease and its step budget mid-saga, then resumed", () => {
  // Found a defect: the step budget ran on the wall clock, the freeze included. The first failure after
  // the resumption — a call whose deadline timer fired before its answer, waiting in the socket, was
  // read — gave the step up: every orchestrated order in flight was cancelled and refunded (and the
  // choreography sweep cancelled orders whose events had not been read yet), with payment and
  // inventory answering all along. And those calls, failing at once, opened the participants'
  // circuits (5 consecutive failures) for their half-open time, failing the retries fast: a freeze of
  // the caller was counted as the callee's failure.
  it("it takes its own sagas up again and confirms them: time it spent frozen is not a participant's", async () => {
    const LEASE_MS = 1_500;
    await using sys = await checkout("order", { SAGA_LEASE_MS: String(LEASE_MS) });
    const chaos = createClient(ChaosService, createChannel(sys.payment?.address ?? ""));
    // Payment slow: the sagas are still charging when the order process freezes.
    await chaos.setFaults({ faults: { latencyMs: 1_000 } });
    const placed = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        sys.orders.placeOrder(
          {
            idempotencyKey: `order-frozen-${i}`,
            items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 }],
            cardToken: "tok_visa",
            sagaMode: i % 2 ? SagaMode.CHOREOGRAPHY : SagaMode.ORCHESTRATION,
          },
          { ...who(`o${i}`), timeoutMs: 10_000 },
        ),
      ),
    );
    sys.freeze();
    try {
      // Past its lease and twice its step budget (3 s).
      await new Promise((r) => setTimeout(r, BUDGET_MS * 2));
      await chaos.setFaults({ faults: {} });
    } finally {
      sys.thaw();
    }
    const dbs = {
      order: await sys.dbs.location("order"),
      payment: await sys.dbs.location("payment"),
      inventory: await sys.dbs.location("inventory"),
    };
    const statuses = () =>
      withDb(dbs.order, (q) =>
        q.all(sql<{ id: string; status: string; saga_mode: string; reason: string | null }>`
          SELECT id, status, saga_mode, reason FROM orders`),
      );
    await expect
      .poll(async () => (await statuses()).filter((o) => o.status === "PENDING" || o.status === "COMPENSATING"), {
        timeout: 30_000,
        interval: 250,
      })
      .toEqual([]);
    expect(placed.length).toBe(10);
    expect((await statuses()).filter((o) => o.status !== "CONFIRMED")).toEqual([]);
    await expectCheckoutInvariants(dbs);
  }, 90_000);
});

/** The durables of the consumers frozen below, by stream (services/notification/events.ts, services/history/events.ts). */
const DURABLES = {
  notification: [
    ["ORDER", "notification-order"],
    ["PAYMENT", "notification-payment"],
  ],
  history: [
    ["ORDER", "history-order"],
    ["INVENTORY", "history-inventory"],
    ["PAYMENT", "history-payment"],
  ],
} as const;

/**
 * What `durables` hold that the server can still hand out again since their consumer froze: events
 * delivered and not yet redelivered while the frozen pull has room left (its budget of messages, pull.ts,
 * counts redeliveries too: it ends with some never sent again), or not delivered at all. Empty once
 * every redelivery the server can make is queued behind the freeze (and there is one).
 */
async function notHandedOutAgain(bus: Bus, durables: readonly (readonly [string, string])[]): Promise<string[]> {
  const infos = await Promise.all(durables.map(([stream, durable]) => bus.jsm.consumers.info(stream, durable)));
  const behind = infos
    .filter((i) => i.num_pending > 0 || (i.num_redelivered < i.num_ack_pending && i.num_waiting > 0))
    .map(
      (i) =>
        `${i.name}: ${i.num_redelivered} of ${i.num_ack_pending} redelivered, ${i.num_pending} undelivered, ` +
        `${i.num_waiting} pull(s) waiting`,
    );
  return infos.some((i) => i.num_redelivered > 0) ? behind : ["no event redelivered yet", ...behind];
}

for (const frozen of ["notification", "history"] as const) {
  describe(`the ${frozen} consumer frozen past its ack wait while events arrive, then resumed`, () => {
    it("each event's effect lands once: redeliveries queued behind the freeze are not applied twice", async () => {
      await using sys = await checkout(frozen);
      const place = (i: number) =>
        sys.orders.placeOrder(
          {
            idempotencyKey: `${frozen}-${i}`,
            items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 }],
            cardToken: i % 4 === 3 ? "tok_decline" : "tok_visa",
            sagaMode: i % 2 ? SagaMode.CHOREOGRAPHY : SagaMode.ORCHESTRATION,
          },
          { ...who(`n${i % 3}`), timeoutMs: 10_000 },
        );
      const bus = await connectBus(sys.nats.url, "frozen-test", log, { streams: EVENTS.streams });
      sys.freeze();
      try {
        for (let i = 0; i < 20; i++) {
          await place(i);
          await new Promise((r) => setTimeout(r, 100));
        }
        // Past the consumer's ack wait (10 s): the server has handed out again what it can.
        await expect
          .poll(() => notHandedOutAgain(bus, DURABLES[frozen]), { timeout: 40_000, interval: 250 })
          .toEqual([]);
      } finally {
        sys.thaw();
        await bus.close();
      }
      const order = await sys.dbs.location("order");
      const settled = () =>
        withDb(order, (q) =>
          q.all(
            sql<{
              id: string;
              status: string;
            }>`SELECT id, status FROM orders WHERE status IN ('CONFIRMED', 'CANCELLED')`,
          ),
        );
      await expect.poll(async () => (await settled()).length, { timeout: 30_000 }).toBe(20);
      const all = await settled();
      const where = await sys.dbs.location(frozen);
      if (frozen === "notification") {
        const notified = () =>
          withDb(where, (q) =>
            q.all(sql<{
              order_id: string;
              kind: string;
              n: number;
            }>`SELECT order_id, kind, COUNT(*) AS n FROM notifications
              GROUP BY order_id, kind`),
          );
        await expect
          .poll(async () => (await notified()).filter((r) => r.kind.startsWith("ORDER_")).length, { timeout: 30_000 })
          .toBe(20);
        expect((await notified()).filter((r) => r.n !== 1)).toEqual([]);
      } else {
        const behind = async () => {
          const views = await withDb(where, (q) =>
            q.all(sql<{ order_id: string; status: string | null }>`SELECT order_id, status FROM order_history`),
          );
          const byOrder = new Map(views.map((v) => [v.order_id, v.status]));
          return all.filter((o) => byOrder.get(o.id) !== o.status).map((o) => o.id);
        };
        await expect.poll(behind, { timeout: 30_000 }).toEqual([]);
      }
      const errors = sys.proc
        .output()
        .split("\n")
        .filter((l) => /"level":(50|60)/.test(l));
      expect(errors, "the frozen process logged no error").toEqual([]);
    }, 90_000);
  });
}

describe("the gateway frozen with calls in flight, then resumed", () => {
  // Found a defect: on resumption every upstream call in flight timed out at once, its answer unread;
  // five opened the upstream's circuit, and the gateway answered every client 503 for its half-open
  // time (5 s) with the upstream healthy all along.
  it("the calls in flight are answered and the ones after them too: no circuit opened by the gateway's own freeze", async () => {
    await using sys = await startSystem();
    const gw = await spawnGateway(
      {
        HTTP_HOST: "127.0.0.1",
        ...gatewayTargets(sys),
        RATE_LIMIT_IP_RPS: "100000",
        RATE_LIMIT_IP_BURST: "500",
        RATE_LIMIT_RPS: "100000",
        RATE_LIMIT_BURST: "500",
      },
      60_000,
    );
    const pid = gw.child.pid ?? 0;
    const token = await customerToken("paused");
    const products = () =>
      fetch(`http://127.0.0.1:${gw.port}/v1/products`, { headers: { authorization: `Bearer ${token}` } }).then(
        async (r) => `${r.status}${r.status === 200 ? "" : ` ${(await r.text()).slice(0, 120)}`}`,
      );
    try {
      expect(await products()).toBe("200");
      // Inventory slow: the calls are still upstream (1.5 s of the 2 s per-attempt timeout) when the gateway freezes.
      await sys.inventoryChaos.setFaults({ faults: { latencyMs: 1_500 } });
      const inFlight = Array.from({ length: 8 }, products);
      await new Promise((r) => setTimeout(r, 300));
      process.kill(pid, "SIGSTOP");
      try {
        await new Promise((r) => setTimeout(r, 4_000));
        await sys.inventoryChaos.setFaults({ faults: {} });
      } finally {
        process.kill(pid, "SIGCONT");
      }
      const answered = await Promise.all(inFlight);
      const after = await Promise.all(Array.from({ length: 4 }, products));
      expect({ answered, after }).toEqual({ answered: answered.map(() => "200"), after: after.map(() => "200") });
    } finally {
      process.kill(pid, "SIGCONT");
      await gw.kill("SIGKILL");
    }
  }, 90_000);
});

describe("the stall clock the budgets and circuits leave frozen time out with", () => {
  it("counts a timer a second or more late as a stall, from when it began; a busy moment is none", async () => {
    const began = 10_000;
    let now = began;
    const clock = new StallClock(250, 1_000, () => now);
    try {
      now += 250 + 600; // a busy moment
      expect(clock.stalledSince(began)).toBe(0);
      now += 250 + 4_000; // frozen 4 s
      expect(clock.stalledSince(began)).toBe(4_000);
      expect(clock.stalledSince(now - 1_500)).toBe(1_500);
      now += 100;
      expect(clock.stalledSince(now)).toBe(0);
      expect(clock.stalledSince(began)).toBe(4_000);
      // Before the clock began the process was not running (hostile-upgrade.test.ts): all of it counts.
      expect(clock.stalledSince(began - 60_000)).toBe(64_000);
    } finally {
      clock.stop();
    }
  });
});
