/**
 * Compensation during a payment outage, across real inventory, payment and
 * order servers: a charge that never left the order service (its breaker
 * open) needs no refund, so the order ends CANCELLED with nothing pending
 * while payment is still down; one that may have reached payment is
 * cancelled with its refund pending, watched until the refund lands, and
 * announced by OrderRefundSettled.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { sql } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import { type Order, OrderStatus, StepStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { connectBus } from "../../platform/bus.js";
import { silentLogger } from "../../platform/log.js";
import { consumerSettled } from "../../test/events.js";
import { capturedPayments } from "../../test/probes.js";
import { type System, startSystem } from "../../test/system.js";
import { DEMO_CATALOGUE } from "../inventory/catalogue.js";

let sys: System;
beforeAll(async () => {
  sys = await startSystem({
    order: {
      SAGA_STEP_BUDGET_MS: "1000",
      PAYMENT_BREAKER_CONSECUTIVE_FAILURES: "2",
      // Long enough that the breaker stays open for a whole step budget and the next order's charge,
      // on a loaded machine too: no probe goes out meanwhile.
      PAYMENT_BREAKER_HALF_OPEN_AFTER_MS: "10000",
      PAYMENT_RETRY_MAX_ATTEMPTS: "1",
    },
  });
});
afterAll(async () => {
  await sys[Symbol.asyncDispose]();
});

let seq = 0;
const place = async (subject: string, sagaMode = SagaMode.ORCHESTRATION) => {
  const { order } = await sys.orders.placeOrder(
    {
      idempotencyKey: `comp-${++seq}`,
      items: [{ productId: "coffee-beans", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode,
    },
    sys.as(subject),
  );
  return order as Order;
};
const get = async (id: string, subject: string) =>
  (await sys.orders.getOrder({ orderId: id }, sys.as(subject))).order as Order;
async function until(id: string, subject: string, done: (o: Order) => boolean, ms = 15_000): Promise<Order> {
  for (const end = Date.now() + ms; ; ) {
    const o = await get(id, subject);
    if (done(o) || Date.now() > end) return o;
    await new Promise((r) => setTimeout(r, 50));
  }
}
/** Follows `id` (WatchOrder) until `done` holds or the stream ends; the last state seen. */
async function watchUntil(id: string, subject: string, done: (o: Order) => boolean, ms = 15_000): Promise<Order> {
  let last: Order | undefined;
  for await (const { order } of sys.orders.watchOrder({ orderId: id }, { ...sys.as(subject), timeoutMs: ms })) {
    last = order;
    if (last && done(last)) break;
  }
  if (!last) throw new Error(`no state of order ${id}`);
  return last;
}
/** The ORDER stream's events on `subject`, decoded, once at least `min` are there (relayed after their commit). */
async function streamed(subject: string, min: number): Promise<{ orderId: string; refundPending?: boolean }[]> {
  const bus = await connectBus(sys.nats.url, "compensation-test", silentLogger());
  try {
    for (const end = Date.now() + 10_000; ; ) {
      const info = await bus.jsm.streams.info("ORDER");
      const out: { orderId: string; refundPending?: boolean }[] = [];
      for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
        const m = await bus.jsm.streams.getMessage("ORDER", { seq }).catch(() => null);
        const kind = m?.subject.startsWith(`${subject}.`) ? EVENTS.kind(m.header.get("ce-type")) : undefined;
        if (!m || !kind) continue;
        const e = fromBinary(kind.schema, m.data) as { meta?: { orderId: string }; refundPending?: boolean };
        out.push({ orderId: e.meta?.orderId ?? "", refundPending: e.refundPending });
      }
      if (out.length >= min || Date.now() > end) return out;
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await bus.close();
  }
}
const steps = (o: Order) => o.steps.map((s) => `${s.name}:${StepStatus[s.status]}:${s.detail}`);

it("payment down: a charge that may have been sent is refunded later; one never sent needs nothing", async () => {
  await sys.paymentChaos.setFaults({ faults: { down: true } });
  try {
    // The first order's charges reach payment (and fail): its breaker opens; the refund is pending.
    const first = await place("kim");
    const cancelled = await until(first.id, "kim", (o) => o.status === OrderStatus.CANCELLED);
    expect(cancelled).toMatchObject({ status: OrderStatus.CANCELLED, refundPending: true });
    expect(sys.order.payment.state().breaker).toBe("open");

    // The breaker is still open: the second order's charge never leaves the order service.
    const second = await place("lee");
    const done = await until(second.id, "lee", (o) => o.status === OrderStatus.CANCELLED);
    expect(done.status).toBe(OrderStatus.CANCELLED);
    expect(done.refundPending, steps(done).join("\n")).toBe(false);
    expect(
      steps(done).some((s) => s.startsWith("charge_payment:FAILED:") && s.includes("(not sent; will retry)")),
    ).toBe(true);
    expect(steps(done).some((s) => s.startsWith("refund_payment"))).toBe(false);
    // Meanwhile the first one's watch stays open: its refund has not landed.
    const watch = (async () => {
      const seen: Order[] = [];
      for await (const { order } of sys.orders.watchOrder({ orderId: first.id }, sys.as("kim")))
        if (order) seen.push(order);
      return seen;
    })();
    await new Promise((r) => setTimeout(r, 300));
    await sys.paymentChaos.setFaults({ faults: {} });
    // Payment back: after the breaker's pause the refund goes out, lands, and the watch ends.
    const seen = await watch;
    expect(seen.at(-1)).toMatchObject({ status: OrderStatus.CANCELLED, refundPending: false });
    expect(seen[0]?.refundPending).toBe(true);
    const settled = (await streamed("order.order.refund_settled", 1)).filter((e) => e.orderId === first.id);
    expect(settled).toHaveLength(1);
    const cancelledEvents = (await streamed("order.order.cancelled", 2)).filter((e) =>
      [first.id, second.id].includes(e.orderId),
    );
    expect(cancelledEvents.map((e) => [e.orderId === first.id ? "first" : "second", e.refundPending]).sort()).toEqual([
      ["first", true],
      ["second", false],
    ]);
  } finally {
    await sys.paymentChaos.setFaults({ faults: {} });
  }
}, 40_000);

it("choreography, payment down: the order is cancelled after the step budget and its stock released; no charge stays", async () => {
  const stock = async () => (await sys.products.getProduct({ productId: "coffee-beans" })).product;
  const before = await stock();
  await sys.paymentChaos.setFaults({ faults: { down: true } });
  let id = "";
  try {
    const placed = await place("mia", SagaMode.CHOREOGRAPHY);
    id = placed.id;
    // StockReserved waits at payment; after a second with no progress the order gives up.
    const done = await until(id, "mia", (o) => o.status === OrderStatus.CANCELLED);
    expect(done.status).toBe(OrderStatus.CANCELLED);
    expect(done.statusReason).toMatch(/^payment unavailable: no answer within the 1000 ms step budget/);
    // Its OrderCancelled made inventory release the reservation, payment still down.
    for (let i = 0; i < 100 && (await stock())?.reserved !== before?.reserved; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(await stock()).toMatchObject({ available: before?.available, reserved: before?.reserved });
  } finally {
    await sys.paymentChaos.setFaults({ faults: {} });
  }
  // Payment back: whichever of StockReserved and OrderCancelled it handles first, no money stays taken
  // once it has handled both (they are redelivered after its outage, on two consumers).
  const bus = await connectBus(sys.nats.url, "compensation-test", silentLogger());
  try {
    await consumerSettled(bus, "INVENTORY", "payment-inventory");
    await consumerSettled(bus, "ORDER", "payment-order");
  } finally {
    await bus.close();
  }
  const final = await until(id, "mia", (o) => !o.refundPending, 10_000);
  expect(final).toMatchObject({ status: OrderStatus.CANCELLED, refundPending: false });
  expect(await capturedPayments(sys.payment.store.db, id)).toBe(0);
}, 30_000);

it("payment down while 40 orders come in, both saga modes: each ends CANCELLED within the step budget and a few seconds, stock back at once; once payment returns every refund lands and the books balance", async () => {
  await sys.paymentChaos.setFaults({ faults: { down: true } });
  const ended = new Map<string, number>(); // order id -> ms from its placing answered to a customer-visible end
  try {
    // Each order is followed from the moment it is placed (WatchOrder, not polling: 40 pollers were a
    // load of their own), so its time to the end is its own, not the time to place the 39 others.
    await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        await new Promise((r) => setTimeout(r, i * 50));
        const subject = `out-${i % 5}`;
        const { id } = await place(subject, i % 2 ? SagaMode.CHOREOGRAPHY : SagaMode.ORCHESTRATION);
        // From the answer: the budget runs from the saga's start, and PlaceOrder's own latency under
        // 40 callers on a loaded machine took 0.5 s more than the bound allows (7,558 ms, once in three).
        const at = Date.now();
        const o = await watchUntil(id, subject, (x) => x.status === OrderStatus.CANCELLED);
        expect(o.status, id).toBe(OrderStatus.CANCELLED);
        ended.set(id, Date.now() - at);
      }),
    );
    // Customer-visible within the 1 s budget plus the sweep and a few seconds, payment still down.
    expect(Math.max(...ended.values())).toBeLessThan(1_000 + 6_000);
    // Stock held = what confirmed orders hold: nothing for the cancelled ones, payment still down.
    const held = new Map<string, number>();
    for (const o of await sys.order.store.db.all(
      sql<{ items: string }>`SELECT items FROM orders WHERE status = 'CONFIRMED'`,
    )) {
      for (const l of JSON.parse(o.items) as { productId: string; quantity: number }[]) {
        held.set(l.productId, (held.get(l.productId) ?? 0) + l.quantity);
      }
    }
    // Orchestration releases before it cancels; choreography's release follows its OrderCancelled.
    const extra = async () =>
      (
        await sys.inventory.store.db.all(sql<{ id: string; reserved: number }>`SELECT id, reserved FROM products`)
      ).filter((r) => r.reserved !== (held.get(r.id) ?? 0));
    for (let i = 0; i < 100 && (await extra()).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await extra(), "no stock held for a cancelled order, payment still down").toEqual([]);
  } finally {
    await sys.paymentChaos.setFaults({ faults: {} });
  }
  // Payment back: every pending refund lands (after the breaker's pause), nothing stays unsettled.
  const pending = async () =>
    (
      await sys.order.store.db.all(sql<{ id: string }>`SELECT id FROM orders
      WHERE status NOT IN ('CONFIRMED', 'CANCELLED') OR (status = 'CANCELLED' AND payment IN ('attempted', 'done'))`)
    ).length;
  for (let i = 0; i < 200 && (await pending()) > 0; i++) await new Promise((r) => setTimeout(r, 100));
  expect(await pending(), "every order settled, no refund pending").toBe(0);
  // The books: a capture for each confirmed order and none for a cancelled one; stock conserved.
  const orders = await sys.order.store.db.all(sql<{ id: string; status: string }>`SELECT id, status FROM orders`);
  const captured = await sys.payment.store.db.all(sql<{ order_id: string; n: number }>`SELECT order_id, COUNT(*) AS n
    FROM payments WHERE status = 'CAPTURED' GROUP BY order_id`);
  expect(captured.filter((c) => c.n !== 1)).toEqual([]);
  expect(new Set(captured.map((c) => c.order_id))).toEqual(
    new Set(orders.filter((o) => o.status === "CONFIRMED").map((o) => o.id)),
  );
  const stock = await sys.inventory.store.db.all(sql<{ id: string; available: number; reserved: number }>`
    SELECT id, available, reserved FROM products`);
  for (const p of DEMO_CATALOGUE) {
    const s = stock.find((x) => x.id === p.id);
    expect(s && s.available + s.reserved, p.id).toBe(p.available);
  }
}, 60_000);
