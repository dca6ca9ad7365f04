/**
 * A version-skew round (2026-12-05): what a process of version N meets on the wire from processes of
 * version N+1 during a rolling upgrade (docs/events.md, "Adding an event type, and rolling upgrades")
 * — events, gRPC answers and requests carrying fields, enum values and types it does not know. A
 * newer participant is stood in for by a server on the same contract answering what its newer
 * version would (an enum number this version has no name for); the order service under test is a
 * real process. Each `describe` is one finding; each test failed on the code it was written against.
 */
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { BUS_USERS, EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { StockReleasedSchema, StockReservedSchema } from "../gen/shopmesh/inventory/v1/events_pb.js";
import { InventoryService, ReservationStatus } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService, PaymentStatus } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { connectBus } from "../platform/bus.js";
import { BUS_ADMIN, natsAuthorization, provisionBus } from "../platform/bus-access.js";
import { startConsumer } from "../platform/consumer.js";
import { migrations, openDatabase } from "../platform/db.js";
import { ServiceError } from "../platform/errors.js";
import type { ServiceImpl } from "../platform/grpc.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { INBOX_FAILURES_MIGRATION, INBOX_MIGRATION, INBOX_PURGE_MIGRATION, on } from "../platform/inbox.js";
import { silentLogger } from "../platform/log.js";
import { bind, type RunningServer, startGrpcServer } from "../platform/server.js";
import { TestDatabases } from "./db.js";
import { event, publishEvents } from "./events.js";
import { type ServiceProcess, spawnService, tempDir } from "./fixtures.js";
import { startNats } from "./nats.js";

/** An enum number the contract of this version has no name for: what a newer participant may answer. */
const NEWER = 7;

/** A stand-in participant server on `impl`, stopped on dispose. */
async function participant(binding: Parameters<typeof startGrpcServer>[0]["services"][number]) {
  const server: RunningServer = await startGrpcServer({
    host: "127.0.0.1",
    port: 0,
    services: [binding],
    log: silentLogger(),
  });
  return Object.assign(server, { [Symbol.asyncDispose]: () => server.stop(0) });
}

/** A real inventory process (its own SQLite file in `dir`). */
function realInventory(dbs: TestDatabases): Promise<ServiceProcess> {
  return dbs.env("inventory").then((env) => spawnService("inventory", { GRPC_HOST: "127.0.0.1", ...env }, 60_000));
}

/** A real order process calling `inventory` and `payment`, with a short step budget. */
async function realOrder(dbs: TestDatabases, inventory: string, payment: string): Promise<ServiceProcess> {
  return spawnService(
    "order",
    {
      GRPC_HOST: "127.0.0.1",
      ...(await dbs.env("order")),
      INVENTORY_TARGET: inventory,
      PAYMENT_TARGET: payment,
      SAGA_STEP_BUDGET_MS: "1500",
      SAGA_RETRY_BASE_MS: "20",
      SAGA_RETRY_MAX_MS: "200",
    },
    60_000,
  );
}

const alice = { metadata: identityMetadata({ subject: "alice", roles: ["customer"] }) };

/** Places an orchestrated order on `order` and follows it until it settles. */
async function placeAndSettle(order: ServiceProcess, key: string) {
  const channel = createChannel(order.address);
  try {
    const orders = createClient(OrderService, channel);
    const { order: placed } = await orders.placeOrder(
      { idempotencyKey: key, items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
      alice,
    );
    if (!placed) throw new Error("no order");
    let last = placed;
    for await (const { order: o } of orders.watchOrder({ orderId: placed.id }, { ...alice, timeoutMs: 20_000 })) {
      if (o) last = o;
    }
    return last;
  } finally {
    channel.close();
  }
}

describe("a charge answered with a payment status this version does not know", () => {
  // participants.ts took every status but CAPTURED for DECLINED: "nothing was taken", so the order was
  // cancelled with no refund. A newer payment service's status (an authorisation held, a capture
  // pending) then kept the customer's money for an order that was cancelled. An answer it cannot read
  // is an unknown outcome: retried, and past the step budget compensated by a refund by charge key.
  it("is not taken for a decline: the order is cancelled with the charge refunded", async () => {
    using dir = tempDir("shopmesh-skew-");
    const dbs = new TestDatabases(dir.path);
    const refunds: string[] = [];
    const newerPayment: ServiceImpl<typeof PaymentService> = {
      chargePayment: async (req) => ({
        payment: {
          id: "pay_newer",
          orderId: req.orderId,
          customerId: req.customerId,
          amount: req.amount,
          status: NEWER as PaymentStatus,
        },
      }),
      refundPayment: async (req) => {
        refunds.push(req.chargeIdempotencyKey);
        return { payment: { id: "pay_newer", status: PaymentStatus.REFUNDED } };
      },
      getPayment: async () => ({}),
    };
    await using payment = await participant(bind(PaymentService, newerPayment));
    await using inventory = await realInventory(dbs);
    await using order = await realOrder(dbs, inventory.address, payment.address);
    const settled = await placeAndSettle(order, "skew-charge-1");
    expect(OrderStatus[settled.status]).toBe("CANCELLED");
    expect(settled.statusReason).not.toMatch(/declined/);
    expect(refunds).toEqual([`${settled.id}:charge_payment`]);
  }, 90_000);
});

describe("a refund answered with a payment status this version does not know", () => {
  // participants.ts took every refund answer but REFUNDED for "no charge happened (key voided)", and
  // the refund for done. Payment answers a refund by charge key REFUNDED, or DECLINED for a key with
  // nothing taken (voided, or declined); a newer one's status (a refund held for review, say) said
  // neither, and the order was settled with the money maybe still taken. It stays pending, retried.
  it("is not taken for done: the order is cancelled with its refund pending, and the refund retried", async () => {
    using dir = tempDir("shopmesh-skew-");
    const dbs = new TestDatabases(dir.path);
    let refunds = 0;
    const newerPayment: ServiceImpl<typeof PaymentService> = {
      // The charge's outcome stays unknown (payment away) until the step budget: the saga refunds by key.
      chargePayment: async () => {
        throw new ServiceError(status.UNAVAILABLE, "payment is away");
      },
      refundPayment: async () => {
        refunds++;
        return { payment: { id: "pay_newer", status: NEWER as PaymentStatus } };
      },
      getPayment: async () => ({}),
    };
    await using payment = await participant(bind(PaymentService, newerPayment));
    await using inventory = await realInventory(dbs);
    await using order = await realOrder(dbs, inventory.address, payment.address);
    const channel = createChannel(order.address);
    try {
      const orders = createClient(OrderService, channel);
      const { order: placed } = await orders.placeOrder(
        { idempotencyKey: "skew-refund-1", items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
        alice,
      );
      const orderId = placed?.id ?? "";
      const seen = async () => (await orders.getOrder({ orderId }, alice)).order;
      await expect.poll(async () => OrderStatus[(await seen())?.status ?? 0], { timeout: 20_000 }).toBe("CANCELLED");
      await expect.poll(() => refunds, { timeout: 10_000 }).toBeGreaterThan(1);
      expect((await seen())?.refundPending).toBe(true);
    } finally {
      channel.close();
    }
  }, 90_000);
});

describe("a reservation answered with a status this version does not know", () => {
  // participants.ts never read the reservation's status: any answer with a total was stock held, and
  // the saga went on to charge and confirm. A newer inventory's status (stock on back-order, a hold
  // not yet made) is no reservation this version can rely on: retried, then compensated by a release.
  it("is not taken for stock held: the order is cancelled, the reservation released, nothing charged", async () => {
    using dir = tempDir("shopmesh-skew-");
    const dbs = new TestDatabases(dir.path);
    const released: string[] = [];
    const charged: string[] = [];
    const reservation = (orderId: string, status: ReservationStatus) => ({
      id: "res_newer",
      orderId,
      items: [{ productId: "coffee-beans", quantity: 1 }],
      status,
      total: { currencyCode: "USD", amountMinor: 2400n },
    });
    const newerInventory: ServiceImpl<typeof InventoryService> = {
      listProducts: async () => ({}),
      getProduct: async () => ({}),
      restock: async () => ({}),
      reserveStock: async (req) => ({ reservation: reservation(req.orderId, NEWER as ReservationStatus) }),
      releaseStock: async (req) => {
        released.push(req.reservationId);
        return { reservation: reservation("", ReservationStatus.RELEASED) };
      },
    };
    const payment: ServiceImpl<typeof PaymentService> = {
      chargePayment: async (req) => {
        charged.push(req.orderId);
        return { payment: { id: "pay_1", orderId: req.orderId, status: PaymentStatus.CAPTURED, amount: req.amount } };
      },
      refundPayment: async () => ({ payment: { id: "pay_1", status: PaymentStatus.DECLINED } }),
      getPayment: async () => ({}),
    };
    await using inventory = await participant(bind(InventoryService, newerInventory));
    await using pay = await participant(bind(PaymentService, payment));
    await using order = await realOrder(dbs, inventory.address, pay.address);
    const settled = await placeAndSettle(order, "skew-reserve-1");
    expect(OrderStatus[settled.status]).toBe("CANCELLED");
    expect(charged).toEqual([]);
    expect(released).toEqual(["res_newer"]);
  }, 90_000);
});

const password = (user: string) => `skew-${user}-password`;

/**
 * A nats-server (`users`: with the bus's NATS users, as `make run` and Kubernetes run it, the streams
 * made by its administrator), payment's connection and database inbox — what a consumer of
 * payment's needs — and inventory's connection (`publisher`), to publish its events.
 */
async function consumerParts(dir: string, users: boolean) {
  const log = silentLogger();
  const nats = await startNats(users ? natsAuthorization(BUS_USERS, password) : undefined);
  const auth = (user: string) => (users ? { auth: { user, pass: password(user) } } : {});
  if (users) await provisionBus(nats.url, EVENTS, log, auth(BUS_ADMIN));
  const bus = await connectBus(nats.url, "payment", log, { streams: EVENTS.streams, ...auth("payment") });
  const publisher = await connectBus(nats.url, "inventory", log, { streams: EVENTS.streams, ...auth("inventory") });
  const db = await openDatabase(
    { engine: "sqlite", path: join(dir, "payment.db") },
    migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION, INBOX_PURGE_MIGRATION]),
  );
  const spec = { bus, db, log, catalogue: EVENTS, stream: "INVENTORY", durable: "payment-inventory" } as const;
  return Object.assign(spec, {
    publisher,
    async [Symbol.asyncDispose]() {
      await db.close();
      await bus.close();
      await publisher.close();
      await nats[Symbol.asyncDispose]();
    },
  });
}

/** StockReleased then StockReserved of each of `orders` (choreography), published by inventory. */
function publishReleasedAndReserved(
  parts: { publisher: Parameters<typeof publishEvents>[0] },
  orders: readonly string[],
) {
  return publishEvents(parts.publisher, [
    ...orders.map((o) => event(StockReleasedSchema, o, { reservationId: `res-${o}` })),
    ...orders.map((o) => event(StockReservedSchema, o, { reservationId: `res-${o}` })),
  ]);
}

describe("a consumer's filter widened by an upgrade", () => {
  // An upgrade that gives a consumer a handler more (payment-inventory: StockReserved, then
  // StockReleased too) turns its filter from one type's subject into the mode's wildcard, and
  // pull.ts updated the durable's filter in place. nats-server 2.9 (what `make nats` installs from
  // Debian) takes an update to a wildcard filter from a literal one (or from none: "a durable made
  // before it had a filter is given it at start") as a filter matching nothing: the durable skipped
  // every event from then on, those of the type both versions handle too, silently, restart or not.
  // There it now gets no filter, and the consumer keeps to its own (platform/other-versions.ts).
  // With the bus's users too: payment's own may change only its own durables (bus-access.ts).
  for (const [how, users] of [
    ["", false],
    [", with the bus's NATS users", true],
  ] as const) {
    it(`goes on delivering every event its new filter selects${how}`, async () => {
      using dir = tempDir("shopmesh-skew-");
      await using parts = await consumerParts(dir.path, users);
      const seen = { reserved: 0, released: 0 };
      const reserved = on(StockReservedSchema, async () => {
        seen.reserved++;
      });
      const released = on(StockReleasedSchema, async () => {
        seen.released++;
      });
      const choreography = { ...parts, sagaMode: SagaMode.CHOREOGRAPHY };
      // The older version ran, and stopped; the newer starts on its durable.
      await (await startConsumer({ ...choreography, handlers: [reserved] })).stop();
      const newer = await startConsumer({ ...choreography, handlers: [reserved, released] });
      try {
        const orders = Array.from({ length: 10 }, (_, i) => `ord-widened-${i}`);
        await publishReleasedAndReserved(parts, orders);
        await expect.poll(() => seen, { timeout: 10_000 }).toEqual({ reserved: 10, released: 10 });
      } finally {
        await newer.stop();
      }
    }, 60_000);

    it(`does so when the durable had no filter before${how}`, async () => {
      using dir = tempDir("shopmesh-skew-");
      await using parts = await consumerParts(dir.path, users);
      let reservedSeen = 0;
      const reserved = on(StockReservedSchema, async () => {
        reservedSeen++;
      });
      const handlers = [reserved, on(StockReleasedSchema, async () => {})];
      // Made before consumers had filters (docs/events.md, "Upgrading from subjects without the mode"),
      // and given the choreography's wildcard, as inventory-order, order-inventory... are.
      await (await startConsumer({ ...parts, handlers })).stop();
      const now = await startConsumer({ ...parts, sagaMode: SagaMode.CHOREOGRAPHY, handlers });
      try {
        await publishReleasedAndReserved(parts, ["ord-unfiltered-1", "ord-unfiltered-2"]);
        await expect.poll(() => reservedSeen, { timeout: 10_000 }).toBe(2);
      } finally {
        await now.stop();
      }
    }, 60_000);
  }
});

describe("a consumer's filter widened by an upgrade, on nats-server 2.9, in steady state", () => {
  // 2.9 registers a consumer's filter for the stream's new-message signal once, when the consumer is
  // made (stream.go setConsumerAsLeader; signalSub() never caches its subscription): an update leaves
  // the old filter there. With its filter set to none from one type's subject, the durable is woken
  // only by that type's events: the others waited for the pull's next heartbeat (15 s), for good.
  it("delivers an event of the type it added at once, with none of the old type to wake it", async () => {
    using dir = tempDir("shopmesh-skew-");
    await using parts = await consumerParts(dir.path, false);
    const handled: string[] = [];
    const choreography = { ...parts, sagaMode: SagaMode.CHOREOGRAPHY };
    const reserved = on(StockReservedSchema, async () => {});
    const released = on(StockReleasedSchema, async (e) => {
      handled.push(e.meta?.orderId ?? "");
    });
    await (await startConsumer({ ...choreography, handlers: [reserved] })).stop();
    const newer = await startConsumer({ ...choreography, handlers: [reserved, released] });
    try {
      for (const o of ["ord-steady-1", "ord-steady-2"]) {
        await publishEvents(parts.publisher, [event(StockReleasedSchema, o, { reservationId: `res-${o}` })]);
        await expect.poll(() => handled.includes(o), { timeout: 5_000 }).toBe(true);
      }
    } finally {
      await newer.stop();
    }
  }, 60_000);
});

describe("a consumer's filter widened to none by an earlier start, on nats-server 2.9.10", () => {
  // Each start found the durable's filter (none) not the one it declares, and set none again: an
  // update request that changed nothing, logged as "consumer's filter subject changed", every start.
  it("is left as it is at the next start, no update sent", async () => {
    using dir = tempDir("shopmesh-skew-");
    await using parts = await consumerParts(dir.path, false);
    const choreography = { ...parts, sagaMode: SagaMode.CHOREOGRAPHY };
    const reserved = on(StockReservedSchema, async () => {});
    const handlers = [reserved, on(StockReleasedSchema, async () => {})];
    await (await startConsumer({ ...choreography, handlers: [reserved] })).stop();
    await (await startConsumer({ ...choreography, handlers })).stop(); // widened to none
    // A create or an update, by either API (`…CONSUMER.CREATE.…`, `…CONSUMER.DURABLE.CREATE.…`).
    const updates = parts.publisher.nc.subscribe("$JS.API.CONSUMER.>");
    let sent = 0;
    void (async () => {
      for await (const m of updates) if (m.subject.includes(".CREATE.")) sent++;
    })();
    await parts.publisher.nc.flush();
    const again = await startConsumer({ ...choreography, handlers });
    try {
      await parts.publisher.nc.flush();
      expect(sent).toBe(0);
      expect((await parts.bus.jsm.consumers.info("INVENTORY", parts.durable)).config.filter_subject ?? "").toBe("");
    } finally {
      updates.unsubscribe();
      await again.stop();
    }
  }, 60_000);
});

describe("a consumer's filter dropped by an upgrade", () => {
  // A consumer that handles a type more and no longer one saga mode only declares no filter. pull.ts
  // asked nats.js to update the durable's filter to "", which nats.js names in the request's subject:
  // `…CONSUMER.CREATE.INVENTORY.payment-inventory.`, which no server answers. The update failed ("could
  // not be changed"), the durable kept its one type's filter, and the other type's events were skipped.
  it("delivers every event of the stream after it", async () => {
    using dir = tempDir("shopmesh-skew-");
    await using parts = await consumerParts(dir.path, true);
    const seen = { reserved: 0, released: 0 };
    const reserved = on(StockReservedSchema, async () => {
      seen.reserved++;
    });
    const released = on(StockReleasedSchema, async () => {
      seen.released++;
    });
    await (await startConsumer({ ...parts, sagaMode: SagaMode.CHOREOGRAPHY, handlers: [reserved] })).stop();
    const newer = await startConsumer({ ...parts, handlers: [reserved, released] });
    try {
      await publishReleasedAndReserved(parts, ["ord-dropped-1", "ord-dropped-2"]);
      await expect.poll(() => seen, { timeout: 10_000 }).toEqual({ reserved: 2, released: 2 });
    } finally {
      await newer.stop();
    }
  }, 60_000);
});

describe("a consumer whose newer version handles one more type", () => {
  // A filtered consumer's replicas share its durable, whose filter is the last starter's
  // (platform/pull.ts): a newer replica handling one more type widens it, and the older replicas are
  // then sent that type too. They acknowledged it as a type they have no handler for, so during a
  // rolling upgrade about half of it (one replica in two) was never handled by anyone. An event this
  // replica's own filter would not have selected is another version's: given back for it.
  it("leaves that type's events to the newer replicas while both versions run", async () => {
    using dir = tempDir("shopmesh-skew-");
    await using parts = await consumerParts(dir.path, false);
    const handled = new Set<string>();
    const choreography = { ...parts, sagaMode: SagaMode.CHOREOGRAPHY };
    const reserved = on(StockReservedSchema, async () => {});
    const released = on(StockReleasedSchema, async (e) => {
      handled.add(e.meta?.orderId ?? "");
    });
    // As payment-inventory: one type (StockReserved) in the choreography, so filtered on its subject.
    const older = await startConsumer({ ...choreography, handlers: [reserved] });
    const newer = await startConsumer({ ...choreography, handlers: [reserved, released] });
    try {
      const orders = Array.from({ length: 20 }, (_, i) => `ord-skew-${i}`);
      await publishEvents(
        parts.publisher,
        orders.map((o) => event(StockReleasedSchema, o, { reservationId: `res-${o}` })),
      );
      await expect.poll(() => handled.size, { timeout: 10_000 }).toBe(orders.length);
    } finally {
      await older.stop();
      await newer.stop();
    }
  }, 90_000);
});
