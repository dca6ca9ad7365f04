/**
 * The history service against a real nats-server and a real database:
 * events of several orders and customers, published stream by stream in an
 * order that puts payment news before the orders they belong to, end up as
 * each customer's order history over real gRPC.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { HistoryService, type OrderHistoryEntry } from "../../gen/shopmesh/history/v1/history_pb.js";
import {
  StockRejectedSchema,
  StockReleasedSchema,
  StockReservedSchema,
} from "../../gen/shopmesh/inventory/v1/events_pb.js";
import {
  OrderCancelledSchema,
  OrderConfirmedSchema,
  OrderPlacedSchema,
} from "../../gen/shopmesh/order/v1/events_pb.js";
import { OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../../gen/shopmesh/payment/v1/events_pb.js";
import { PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { type Bus, connectBus } from "../../platform/bus.js";
import { Code } from "../../platform/errors.js";
import type { Client } from "../../platform/grpc-client.js";
import { identityMetadata } from "../../platform/identity.js";
import type { Role } from "../../platform/identity-rule.js";
import { silentLogger } from "../../platform/log.js";
import { consumerSettled, event, publishEvents } from "../../test/events.js";
import { startNats, type TestNats } from "../../test/nats.js";
import { expectRpcError } from "../../test/rpc.js";
import { type ServiceUnderTest, startServiceUnderTest } from "../../test/system.js";
import { type HistoryApp, startHistory } from "./app.js";
import { loadConfig } from "./config.js";

const log = silentLogger();
let nats: TestNats;
let bus: Bus;
let sut: ServiceUnderTest<HistoryApp, typeof HistoryService>;
let app: HistoryApp;
let history: Client<typeof HistoryService>;

beforeAll(async () => {
  nats = await startNats();
  bus = await connectBus(nats.url, "history-test", log, { streams: EVENTS.streams });
  sut = await startServiceUnderTest("history", HistoryService, (env) => startHistory(loadConfig(env), log), nats.url);
  ({ app, client: history } = sut);
});

afterAll(async () => {
  // Whatever started: a failed start must not hide its error behind this one, nor leave NATS running.
  await sut?.[Symbol.asyncDispose]();
  await bus?.close();
  await nats?.[Symbol.asyncDispose]();
});

const as = (subject: string, roles: Role[] = ["customer"]) => ({ metadata: identityMetadata({ subject, roles }) });
const usd = (amountMinor: bigint) => ({ currencyCode: "USD", amountMinor });
const T0 = Date.UTC(2026, 0, 1, 12);
const at = (s: number) => T0 + s * 1000;

async function settled(): Promise<void> {
  for (const [stream, durable] of [
    ["ORDER", "history-order"],
    ["INVENTORY", "history-inventory"],
    ["PAYMENT", "history-payment"],
  ] as const) {
    await consumerSettled(bus, stream, durable);
  }
}

async function listAll(subject: string, pageSize = 0): Promise<OrderHistoryEntry[]> {
  const all: OrderHistoryEntry[] = [];
  let pageToken = "";
  do {
    const page = await history.listOrderHistory({ pageSize, pageToken }, as(subject));
    all.push(...page.entries);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

const lines = [{ productId: "coffee-beans", quantity: 2 }];

describe("ListOrderHistory", () => {
  beforeAll(async () => {
    // Each stream is published whole before the next, payments first: the view
    // hears of payments and stock before it hears of most orders.
    await publishEvents(bus, [
      event(PaymentSucceededSchema, "ord-h1", { paymentId: "pay_h1", customerId: "ana", amount: usd(2400n) }, at(2)),
      event(PaymentFailedSchema, "ord-h3", { paymentId: "pay_h3", customerId: "ben", reason: "card declined" }, at(22)),
      event(PaymentSucceededSchema, "ord-h4", { paymentId: "pay_h4", customerId: "ben", amount: usd(900n) }, at(32)),
      event(PaymentRefundedSchema, "ord-h4", { paymentId: "pay_h4", customerId: "ben", amount: usd(900n) }, at(35)),
    ]);
    await publishEvents(bus, [
      event(StockReservedSchema, "ord-h1", { reservationId: "res_h1", items: lines, total: usd(2400n) }, at(1)),
      event(StockRejectedSchema, "ord-h2", { reason: "out of stock" }, at(11)),
      event(StockReservedSchema, "ord-h3", { reservationId: "res_h3", items: lines, total: usd(1500n) }, at(21)),
      event(StockReleasedSchema, "ord-h3", { reservationId: "res_h3", items: lines }, at(23)),
      event(StockReservedSchema, "ord-h4", { reservationId: "res_h4", items: lines, total: usd(900n) }, at(31)),
      event(StockReleasedSchema, "ord-h4", { reservationId: "res_h4", items: lines }, at(36)),
      // No order event ever names this order's owner.
      event(StockReservedSchema, "ord-h5", { reservationId: "res_h5", items: lines, total: usd(100n) }, at(41)),
    ]);
    await publishEvents(bus, [
      event(OrderPlacedSchema, "ord-h1", { customerId: "ana", items: lines }, at(0)),
      event(OrderConfirmedSchema, "ord-h1", { customerId: "ana", total: usd(2400n), paymentId: "pay_h1" }, at(3)),
      event(OrderPlacedSchema, "ord-h2", { customerId: "ana", items: lines }, at(10)),
      event(OrderCancelledSchema, "ord-h2", { customerId: "ana", reason: "out of stock: coffee-beans" }, at(12)),
      event(OrderPlacedSchema, "ord-h3", { customerId: "ben", items: lines }, at(20)),
      event(OrderCancelledSchema, "ord-h3", { customerId: "ben", reason: "payment declined" }, at(24)),
      event(OrderPlacedSchema, "ord-h4", { customerId: "ben", items: lines }, at(30)),
      event(OrderCancelledSchema, "ord-h4", { customerId: "ben", reason: "customer asked" }, at(34)),
    ]);
    await settled();
  });

  it("shows each order's latest status, payment, total and last event, most recently changed first", async () => {
    const ana = await listAll("ana");
    expect(ana.map((e) => e.orderId)).toEqual(["ord-h2", "ord-h1"]);
    expect(ana[1]).toMatchObject({
      orderId: "ord-h1",
      customerId: "ana",
      status: OrderStatus.CONFIRMED,
      items: [{ productId: "coffee-beans", quantity: 2 }],
      total: { currencyCode: "USD", amountMinor: 2400n },
      paymentStatus: PaymentStatus.CAPTURED,
      reason: "",
      lastEventType: "shopmesh.order.v1.OrderConfirmed",
    });
    expect(Number(ana[1]?.lastEventAt?.seconds) * 1000).toBe(at(3));
    expect(ana[0]).toMatchObject({
      status: OrderStatus.CANCELLED,
      paymentStatus: PaymentStatus.UNSPECIFIED,
      reason: "out of stock: coffee-beans",
      lastEventType: "shopmesh.order.v1.OrderCancelled",
    });
    expect(ana[0]?.total).toBeUndefined();

    const ben = await listAll("ben");
    expect(ben.map((e) => e.orderId)).toEqual(["ord-h4", "ord-h3"]);
    expect(ben[0]).toMatchObject({
      status: OrderStatus.CANCELLED,
      total: { amountMinor: 900n },
      paymentStatus: PaymentStatus.REFUNDED,
      reason: "customer asked",
      lastEventType: "shopmesh.inventory.v1.StockReleased",
    });
    expect(ben[1]).toMatchObject({
      status: OrderStatus.CANCELLED,
      total: { amountMinor: 1500n },
      paymentStatus: PaymentStatus.DECLINED,
      reason: "payment declined",
      lastEventType: "shopmesh.order.v1.OrderCancelled",
    });
  });

  it("keeps an order whose owner is unknown out of every listing", async () => {
    expect((await app.store.all()).find((v) => v.orderId === "ord-h5")).toMatchObject({
      customerId: null,
      status: null,
      total: { amountMinor: 100 },
    });
    for (const who of ["ana", "ben", "ops"]) {
      expect((await listAll(who)).map((e) => e.orderId)).not.toContain("ord-h5");
    }
  });

  it("shows nobody else's orders, admins included, and needs an identity", async () => {
    expect(await listAll("carl")).toEqual([]);
    expect((await history.listOrderHistory({}, as("ops", ["admin"]))).entries).toEqual([]);
    await expectRpcError(history.listOrderHistory({}), Code.UNAUTHENTICATED);
  });

  it("pages without gaps or repeats, and rejects bad page sizes and tokens", async () => {
    const first = await history.listOrderHistory({ pageSize: 1 }, as("ben"));
    expect(first.entries.map((e) => e.orderId)).toEqual(["ord-h4"]);
    const second = await history.listOrderHistory({ pageSize: 1, pageToken: first.nextPageToken }, as("ben"));
    expect(second.entries.map((e) => e.orderId)).toEqual(["ord-h3"]);
    expect(second.nextPageToken).toBe("");
    expect((await history.listOrderHistory({ pageSize: 2 }, as("ben"))).nextPageToken).toBe("");
    await expectRpcError(history.listOrderHistory({ pageSize: 101 }, as("ben")), Code.INVALID_ARGUMENT, "page_size");
    await expectRpcError(
      history.listOrderHistory({ pageToken: "garbage" }, as("ben")),
      Code.INVALID_ARGUMENT,
      "page_token",
    );
  });

  it("moves an order to the front when a newer event about it arrives", async () => {
    await publishEvents(bus, [
      event(PaymentRefundedSchema, "ord-h1", { paymentId: "pay_h1", customerId: "ana", amount: usd(2400n) }, at(50)),
    ]);
    await settled();
    const ana = await listAll("ana");
    expect(ana.map((e) => e.orderId)).toEqual(["ord-h1", "ord-h2"]);
    // A refund does not un-confirm the order; it only changes the payment.
    expect(ana[0]).toMatchObject({
      status: OrderStatus.CONFIRMED,
      paymentStatus: PaymentStatus.REFUNDED,
      lastEventType: "shopmesh.payment.v1.PaymentRefunded",
    });
  });
});
