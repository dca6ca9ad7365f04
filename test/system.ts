/**
 * The checkout system in one test process: inventory, payment and order
 * apps on ephemeral ports, each with its own database (a SQLite file in a
 * temp dir, or a schema of a fresh PostgreSQL database: see db.ts), and
 * typed clients that call them as a given customer.
 */

import type { DescService } from "@bufbuild/protobuf";
import type { Metadata } from "@grpc/grpc-js";
import { pino } from "pino";
import type { GatewayApp } from "../gateway/app.js";
import { targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { type Order, OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { installLeanAsyncBind } from "../platform/async-bind.js";
import { type Client, createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import type { Role } from "../platform/identity-rule.js";
import { type Logger, silentLogger } from "../platform/log.js";
import { type HistoryApp, startHistory } from "../services/history/app.js";
import { loadConfig as historyConfig } from "../services/history/config.js";
import { type InventoryApp, startInventory } from "../services/inventory/app.js";
import { loadConfig as inventoryConfig } from "../services/inventory/config.js";
import { type NotificationApp, startNotification } from "../services/notification/app.js";
import { loadConfig as notificationConfig } from "../services/notification/config.js";
import { type OrderApp, startOrder } from "../services/order/app.js";
import { loadConfig as orderConfig } from "../services/order/config.js";
import { type PaymentApp, startPayment } from "../services/payment/app.js";
import { loadConfig as paymentConfig } from "../services/payment/config.js";
import { TestDatabases } from "./db.js";
import { tempDir } from "./fixtures.js";
import { startNats, type TestNats } from "./nats.js";

type Env = Record<string, string>;

/** A running system and clients for it. */
export interface System extends AsyncDisposable {
  readonly dir: string;
  /** The system's own nats-server (stop/start it for outage tests). */
  readonly nats: TestNats;
  readonly inventory: InventoryApp;
  readonly payment: PaymentApp;
  readonly order: OrderApp;
  readonly notification: NotificationApp;
  readonly history: HistoryApp;
  readonly orders: Client<typeof OrderService>;
  readonly products: Client<typeof InventoryService>;
  readonly payments: Client<typeof PaymentService>;
  /** Fault injection on the payment server. */
  readonly paymentChaos: Client<typeof ChaosService>;
  readonly inventoryChaos: Client<typeof ChaosService>;
  /** Call options carrying `subject`'s identity (as the gateway would set it). */
  as(subject: string, roles?: string[]): { metadata: Metadata };
  /** Follows WatchOrder until the order is CONFIRMED or CANCELLED; fails after `timeoutMs`. */
  settle(orderId: string, subject: string, timeoutMs?: number): Promise<Order>;
}

/**
 * Starts a nats-server and every service; `env` per service overrides defaults. The process binds as
 * the system's processes do (runService installs the lean `AsyncResource.bind`), so the calls between
 * the services started here keep their async context, their traces included, through the same code.
 */
export async function startSystem(
  env: { inventory?: Env; payment?: Env; order?: Env; notification?: Env; history?: Env } = {},
  opts: { log?: Logger; natsConfig?: string } = {},
): Promise<System> {
  installLeanAsyncBind();
  const dir = tempDir();
  const nats = await startNats(opts.natsConfig);
  // What started, stopped again (in reverse) if a later part fails to start: else its nats-server and
  // services would outlive the run, and the failure would be hidden by the test's teardown.
  const started: { stop(): Promise<void> }[] = [];
  const keep = async <A extends { stop(): Promise<void> }>(app: Promise<A>): Promise<A> => {
    const a = await app;
    started.push(a);
    return a;
  };
  const apps = await (async () => {
    const root = opts.log ?? silentLogger();
    const log = (service: string) => root.child({ service });
    const base = { GRPC_HOST: "127.0.0.1", GRPC_PORT: "0", SHUTDOWN_GRACE_MS: "2000", NATS_URL: nats.url };
    const dbs = new TestDatabases(dir.path);
    const inventory = await keep(
      startInventory(inventoryConfig({ ...base, ...(await dbs.env("inventory")), ...env.inventory }), log("inventory")),
    );
    const payment = await keep(
      startPayment(paymentConfig({ ...base, ...(await dbs.env("payment")), ...env.payment }), log("payment")),
    );
    const order = await keep(
      startOrder(
        orderConfig({
          ...base,
          ...(await dbs.env("order")),
          INVENTORY_TARGET: inventory.address,
          PAYMENT_TARGET: payment.address,
          SAGA_RETRY_BASE_MS: "20",
          SAGA_RETRY_MAX_MS: "200",
          ...env.order,
        }),
        log("order"),
      ),
    );
    const notification = await keep(
      startNotification(
        notificationConfig({ ...base, ...(await dbs.env("notification")), ...env.notification }),
        log("notification"),
      ),
    );
    const history = await keep(
      startHistory(historyConfig({ ...base, ...(await dbs.env("history")), ...env.history }), log("history")),
    );
    return { inventory, payment, order, notification, history };
  })().catch(async (err: unknown) => {
    for (const app of started.reverse()) await app.stop().catch(() => {});
    await nats[Symbol.asyncDispose]();
    dir[Symbol.dispose]();
    throw err;
  });
  const { inventory, payment, order, notification, history } = apps;
  const channels = [
    createChannel(order.address),
    createChannel(inventory.address),
    createChannel(payment.address),
  ] as const;
  const orders = createClient(OrderService, channels[0]);
  const as = (subject: string, roles: Role[] = ["customer"]) => ({ metadata: identityMetadata({ subject, roles }) });
  return {
    dir: dir.path,
    nats,
    inventory,
    payment,
    order,
    notification,
    history,
    orders,
    products: createClient(InventoryService, channels[1]),
    payments: createClient(PaymentService, channels[2]),
    inventoryChaos: createClient(ChaosService, channels[1]),
    paymentChaos: createClient(ChaosService, channels[2]),
    as,
    async settle(orderId, subject, timeoutMs = 15_000) {
      let last: Order | undefined;
      for await (const { order: o } of orders.watchOrder({ orderId }, { ...as(subject), timeoutMs })) {
        last = o;
      }
      if (!last || (last.status !== OrderStatus.CONFIRMED && last.status !== OrderStatus.CANCELLED)) {
        throw new Error(`order ${orderId} did not settle: ${last ? OrderStatus[last.status] : "no state"}`);
      }
      return last;
    },
    async [Symbol.asyncDispose]() {
      for (const c of channels) c.close();
      // Every part is stopped whatever one of them throws: a nats-server left running outlives the run.
      const failures: unknown[] = [];
      // What started, in reverse: a list of its own here once missed a new service, which kept running.
      for (const app of [...started].reverse()) {
        await app.stop().catch((err: unknown) => failures.push(err));
      }
      await nats[Symbol.asyncDispose]();
      dir[Symbol.dispose]();
      if (failures.length > 0) throw failures[0];
    },
  };
}

/** A logger whose JSON lines (the gateway's access lines among them) are kept in `lines`, parsed. */
export function capturedLogger(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino(
    { level: "info" },
    { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) },
  );
  return { log, lines };
}

/** The gateway's `*_TARGET` settings for `sys`: one per upstream its routes name. */
export function gatewayTargets(sys: System): Env {
  return Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), sys[u].address]));
}

/**
 * Starts a gateway on an ephemeral port in front of `sys`; `env` overrides its config. The gateway's
 * modules are loaded here, not with this file: half the suites that start a system start no gateway.
 */
export async function startTestGateway(sys: System, env: Env = {}, log: Logger = silentLogger()): Promise<GatewayApp> {
  const [{ startGateway }, { loadConfig: gatewayConfig }] = await Promise.all([
    import("../gateway/app.js"),
    import("../gateway/config.js"),
  ]);
  return startGateway(
    gatewayConfig({
      HTTP_HOST: "127.0.0.1",
      HTTP_PORT: "0",
      ...gatewayTargets(sys),
      ...env,
    }),
    log,
  );
}

/** One service started in the test's process, with a database of its own, and a client of it. */
export interface ServiceUnderTest<A, S extends DescService> extends AsyncDisposable {
  readonly app: A;
  readonly client: Client<S>;
}

/**
 * Starts one service as its `start` does, on an ephemeral loopback port with a database of its own
 * (`name`'s, on the run's engine) and the bus at `natsUrl` (none by default).
 */
export async function startServiceUnderTest<
  A extends { readonly address: string; stop(): Promise<void> },
  S extends DescService,
>(name: string, service: S, start: (env: Env) => Promise<A>, natsUrl = "off"): Promise<ServiceUnderTest<A, S>> {
  const dir = tempDir();
  try {
    const db = await new TestDatabases(dir.path).env(name);
    const app = await start({ GRPC_PORT: "0", GRPC_HOST: "127.0.0.1", ...db, NATS_URL: natsUrl });
    const channel = createChannel(app.address);
    return {
      app,
      client: createClient(service, channel),
      async [Symbol.asyncDispose]() {
        channel.close();
        await app.stop();
        dir[Symbol.dispose]();
      },
    };
  } catch (err) {
    dir[Symbol.dispose]();
    throw err;
  }
}
