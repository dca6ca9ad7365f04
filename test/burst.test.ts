/**
 * Event-driven data sharing at volume: after a burst of 200 orders (both
 * saga modes, a mix of outcomes), the history read model equals the order
 * service's truth, and notifications match terminal orders one to one.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { HistoryService, type OrderHistoryEntry } from "../gen/shopmesh/history/v1/history_pb.js";
import { NotificationKind, NotificationService } from "../gen/shopmesh/notification/v1/notification_pb.js";
import { type Order, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentStatus } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { type System, startSystem } from "./system.js";

const ORDERS = 200;
const big = (_: string, v: unknown) => (typeof v === "bigint" ? String(v) : v);
const CUSTOMERS = ["ann", "ben", "cat", "dan"];
let sys: System;

beforeAll(async () => {
  sys = await startSystem();
});
afterAll(async () => {
  await sys[Symbol.asyncDispose]();
});

async function eventually<T>(read: () => Promise<T>, ok: (v: T) => boolean, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("burst of 200 orders", () => {
  // Generous: 200 sagas on a 2-core machine while other test files run beside it.
  it("history equals the order service's truth; notifications equal terminal orders one to one", {
    timeout: 120_000,
  }, async () => {
    const products = ["coffee-beans", "ceramic-mug", "paper-filters", "limited-print", "pour-over-kettle"];
    const placed = await Promise.all(
      Array.from({ length: ORDERS }, async (_, i) => {
        const customer = CUSTOMERS[i % CUSTOMERS.length] as string;
        const { order } = await sys.orders.placeOrder(
          {
            idempotencyKey: `burst-${i}`,
            items: [{ productId: products[i % products.length] as string, quantity: 1 }],
            cardToken: i % 9 === 0 ? "tok_decline" : "tok_visa",
            sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
          },
          sys.as(customer),
        );
        return { id: order?.id ?? "", customer };
      }),
    );
    const truth = new Map<string, Order>();
    await Promise.all(placed.map(async (p) => truth.set(p.id, await sys.settle(p.id, p.customer, 60_000))));
    const statuses = [...truth.values()].map((o) => o.status);
    expect(statuses.every((s) => s === OrderStatus.CONFIRMED || s === OrderStatus.CANCELLED)).toBe(true);
    expect(statuses.filter((s) => s === OrderStatus.CONFIRMED).length).toBeGreaterThan(100);
    expect(statuses.filter((s) => s === OrderStatus.CANCELLED).length).toBeGreaterThan(10);

    const history = createClient(HistoryService, createChannel(sys.history.address));
    const notifications = createClient(NotificationService, createChannel(sys.notification.address));

    const allHistory = async () => {
      const out: OrderHistoryEntry[] = [];
      for (const c of CUSTOMERS) {
        let pageToken = "";
        do {
          const page = await history.listOrderHistory({ pageSize: 100, pageToken }, sys.as(c));
          out.push(...page.entries);
          pageToken = page.nextPageToken;
        } while (pageToken);
      }
      return out;
    };
    const expectedPayment = async (o: Order) => {
      const p = await sys.payment.store.latestForOrder(o.id);
      return p ? PaymentStatus[p.status] : PaymentStatus.UNSPECIFIED;
    };
    const row = (e: OrderHistoryEntry) => ({
      id: e.orderId,
      status: e.status,
      customer: e.customerId,
      items: e.items.map((i) => `${i.productId}x${i.quantity}`),
      total: e.total?.amountMinor,
      payment: e.paymentStatus,
    });
    const truthRow = async (o: Order) => ({
      id: o.id,
      status: o.status,
      customer: o.customerId,
      items: o.items.map((i) => `${i.productId}x${i.quantity}`),
      total: o.total?.amountMinor,
      payment: await expectedPayment(o),
    });
    // The order service's truth as it stands once every event reached it: in choreography a
    // StockReserved can reach order after the PaymentFailed it caused, and still add the total.
    const current = async () => {
      const orders = await Promise.all(
        placed.map(async (p) => (await sys.orders.getOrder({ orderId: p.id }, sys.as(p.customer))).order as Order),
      );
      return (await Promise.all(orders.map(truthRow))).sort((a, b) => a.id.localeCompare(b.id));
    };
    const actual = async () => (await allHistory()).map(row).sort((a, b) => a.id.localeCompare(b.id));
    const same = async () => {
      const [view, expected] = await Promise.all([actual(), current()]);
      return { view, expected };
    };
    const { view, expected } = await eventually(
      same,
      ({ view, expected }) => JSON.stringify(view, big) === JSON.stringify(expected, big),
    );
    expect(view).toEqual(expected);

    const terminalNotices = async () => {
      const byOrder = new Map<string, number>();
      for (const c of CUSTOMERS) {
        let pageToken = "";
        do {
          const page = await notifications.listNotifications({ pageSize: 100, pageToken }, sys.as(c));
          for (const n of page.notifications) {
            if (n.kind === NotificationKind.ORDER_CONFIRMED || n.kind === NotificationKind.ORDER_CANCELLED) {
              byOrder.set(n.orderId, (byOrder.get(n.orderId) ?? 0) + 1);
            }
          }
          pageToken = page.nextPageToken;
        } while (pageToken);
      }
      return byOrder;
    };
    const notices = await eventually(terminalNotices, (m) => m.size === ORDERS);
    expect(new Set(notices.keys())).toEqual(new Set(truth.keys()));
    expect([...notices.values()].every((n) => n === 1)).toBe(true);
  });
});
