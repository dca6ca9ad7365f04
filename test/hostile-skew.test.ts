/**
 * A version-skew round (2026-12-05): what a process of version N meets on the wire from processes of
 * version N+1 during a rolling upgrade (docs/events.md, "Adding an event type, and rolling upgrades")
 * — events, gRPC answers and requests carrying fields, enum values and types it does not know. A
 * newer participant is stood in for by a server on the same contract answering what its newer
 * version would (an enum number this version has no name for); the order service under test is a
 * real process. Each `describe` is one finding; each test failed on the code it was written against.
 */
import { describe, expect, it } from "vitest";
import { InventoryService, ReservationStatus } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService, PaymentStatus } from "../gen/shopmesh/payment/v1/payment_pb.js";
import {
  bind,
  createChannel,
  createClient,
  identityMetadata,
  type RunningServer,
  type ServiceImpl,
  silentLogger,
  startGrpcServer,
} from "../platform/index.js";
import { TestDatabases } from "./db.js";
import { type ServiceProcess, spawnService, tempDir } from "./fixtures.js";

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
