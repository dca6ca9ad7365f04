/**
 * A dead letter of a choreographed saga's event, redriven by an operator (`make dlq --redrive`) after
 * its saga ended some other way: the order cancelled by its customer while the event sat in the
 * DLQ, its compensation done. The redrive republishes the event on its subject; it must change none
 * of the invariants the saga settled: no money kept for a cancelled order, no second charge, stock
 * conserved, no order leaving its final state, the history read model agreeing.
 *
 * The letters are made by the real services on real inputs: a trigger in one service's own database
 * refuses the one write its handler needs for one customer's order (as a broken migration or a
 * constraint would), so the handler fails on every delivery and its consumer dead-letters the event
 * after ten failures (about 20 s of backoff). The trigger is dropped (the cause fixed) before the
 * redrive. Each case is a customer and a product of its own, all six run at once.
 */

import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { type Order, OrderStatus, StepStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { connectBus } from "../platform/bus.js";
import { silentLogger } from "../platform/log.js";
import type { Db } from "../platform/sql.js";
import { DEMO_CATALOGUE } from "../services/inventory/catalogue.js";
import { consumerSettled, until } from "./events.js";
import { built, runToEnd } from "./fixtures.js";
import { expectCheckoutInvariants } from "./invariants.js";
import { type System, startSystem } from "./system.js";

// All six cases at once (vitest runs five by default): a case waiting for every consumer to settle
// while a later one's events still fail would wait for that one's letters.
vi.setConfig({ maxConcurrency: 6 });

let sys: System;
beforeAll(async () => {
  // A step budget past the test: each order waits, PENDING, until its customer cancels it once the
  // letter is made. (Cancelled before, its void would have let the failing handler succeed: a late
  // StockReserved or OrderPlaced finds its key voided and does nothing, and is never lettered.)
  sys = await startSystem({ order: { SAGA_STEP_BUDGET_MS: "300000" } });
}, 30_000);
afterAll(async () => {
  await sys?.[Symbol.asyncDispose]();
});

/** Adds a trigger named `name` to `db` (SQLite) that aborts the writes `when` selects; returns its removal. */
async function refuse(db: Db, name: string, on: string, when: string): Promise<() => Promise<void>> {
  await db.run(
    sql.raw(`CREATE TRIGGER ${name} BEFORE ${on} FOR EACH ROW WHEN ${when}
    BEGIN SELECT RAISE(ABORT, 'injected fault: ${name}'); END`),
  );
  return async () => {
    await db.run(sql.raw(`DROP TRIGGER ${name}`));
  };
}

/** Places a choreographed order of one `product` as `customer`, paid with `card`. */
async function place(customer: string, product: string, card = "tok_visa"): Promise<Order> {
  const { order } = await sys.orders.placeOrder(
    {
      idempotencyKey: `redrive-${customer}`,
      items: [{ productId: product, quantity: 1 }],
      cardToken: card,
      sagaMode: SagaMode.CHOREOGRAPHY,
    },
    sys.as(customer),
  );
  if (!order) throw new Error("no order placed");
  return order;
}

const get = async (id: string, customer: string) =>
  (await sys.orders.getOrder({ orderId: id }, sys.as(customer))).order as Order;

/** Cancels the order as its customer, and waits until it is CANCELLED with its refund pending or not, as `pending`. */
async function cancel(id: string, customer: string, pending = false): Promise<Order> {
  await sys.orders.cancelOrder({ orderId: id, reason: "it never came" }, sys.as(customer));
  return until(
    () => get(id, customer),
    (x) => x.status === OrderStatus.CANCELLED && x.refundPending === pending,
    15_000,
  );
}

/** The order's version (raised by every change a client can see). */
const versionOf = async (id: string) =>
  (await sys.order.store.db.one(sql<{ version: number }>`SELECT version FROM orders WHERE id = ${id}`))?.version;

/** The DLQ letter of `durable` for order `orderId`'s event of `type`, within `ms`; its DLQ sequence and ce-id. */
async function letterOf(durable: string, type: string, orderId: string, ms: number) {
  const bus = await connectBus(sys.nats.url, "redrive-saga-test", silentLogger());
  try {
    const find = async () => {
      const { state } = await bus.jsm.streams.info("DLQ");
      for (let seq = state.first_seq; seq <= state.last_seq && seq > 0; seq++) {
        const m = await bus.jsm.streams.getMessage("DLQ", { seq }).catch(() => null);
        if (m?.subject !== `dlq.${durable}` || m.header.get("ce-type") !== type) continue;
        if (!Buffer.from(m.data).toString("latin1").includes(orderId)) continue;
        return { seq, eventId: m.header.get("ce-id"), reason: m.header.get("x-dlq-reason") };
      }
      return undefined;
    };
    const l = await until(find, (x) => x !== undefined, ms);
    if (!l) throw new Error(`no dead letter of ${type} for ${orderId} at ${durable}`);
    return l;
  } finally {
    await bus.close();
  }
}

/** `make dlq ARGS="--redrive <seqs>"` against the system's NATS (no users: anyone may); its output. */
async function redrive(...seqs: number[]): Promise<string> {
  const env = { ...process.env, NATS_URL: sys.nats.url, DATA_DIR: sys.dir, NATS_USER: "", NATS_PASSWORD: "" };
  const r = await runToEnd(process.execPath, [...built("scripts/events.ts"), "--dlq", "--redrive", seqs.join(",")], {
    env,
  });
  expect(r.code, r.out).toBe(0);
  expect(r.out).toContain(`${seqs.length} redriven, 0 skipped`);
  return r.out;
}

/** Waits until every consumer of the three checkout streams has handled all it was given. */
async function settled(): Promise<void> {
  const bus = await connectBus(sys.nats.url, "redrive-saga-settle", silentLogger());
  try {
    for (const [stream, durable] of [
      ["ORDER", "inventory-order"],
      ["ORDER", "payment-order"],
      ["INVENTORY", "payment-inventory"],
      ["INVENTORY", "order-inventory"],
      ["PAYMENT", "order-payment"],
      ["ORDER", "history-order"],
      ["INVENTORY", "history-inventory"],
      ["PAYMENT", "history-payment"],
    ] as const) {
      await consumerSettled(bus, stream, durable, 15_000);
    }
  } finally {
    await bus.close();
  }
}

/** The order's payments (its charge, or the void of its charge key: a void names no order). */
async function paymentsOf(orderId: string) {
  return sys.payment.store.db.all(
    sql<{ kind: string; status: string }>`SELECT kind, status FROM payments
      WHERE order_id = ${orderId} OR idempotency_key = ${`${orderId}:charge_payment`}`,
  );
}

const stockOf = async (product: string) =>
  sys.inventory.store.db.one(
    sql<{ available: number; reserved: number }>`SELECT available, reserved FROM products WHERE id = ${product}`,
  );
const initial = (product: string) => DEMO_CATALOGUE.find((p) => p.id === product)?.available;

/** The history read model's view of `orderId`. */
async function historyOf(customer: string, orderId: string) {
  const views = await sys.history.store.listByCustomer(customer, undefined, 10);
  return views.find((v) => v.orderId === orderId);
}

/** What must hold for a cancelled order once nothing is pending, before and after the redrive. */
async function expectSettledCancel(o: Order, customer: string, product: string) {
  const now = await get(o.id, customer);
  expect(now).toMatchObject({ status: OrderStatus.CANCELLED, refundPending: false });
  expect((await paymentsOf(o.id)).filter((p) => p.status === "CAPTURED")).toEqual([]);
  expect(await stockOf(product)).toEqual({ available: initial(product), reserved: 0 });
  const view = await until(
    () => historyOf(customer, o.id),
    (v) => v?.status === "CANCELLED" && v.refund !== "pending",
  );
  expect(view).toMatchObject({ status: "CANCELLED" });
  expect(view?.refund).not.toBe("pending");
  return { order: now, view };
}

describe.concurrent("a saga event redriven after its order was cancelled and compensated", () => {
  it("order had dead-lettered PaymentSucceeded: the late payment stays refunded, the order settled", async () => {
    const customer = "late-payment";
    const product = "hand-grinder";
    // The order service cannot record this customer's payment: its PaymentSucceeded handler fails.
    const fixed = await refuse(
      sys.order.store.db,
      "fault_late_payment",
      "UPDATE ON orders",
      `OLD.customer_id = '${customer}' AND NEW.payment_id IS NOT OLD.payment_id`,
    );
    const o = await place(customer, product);
    const letter = await letterOf("order-payment", "shopmesh.payment.v1.PaymentSucceeded", o.id, 40_000);
    expect(letter.reason).toContain("injected fault: fault_late_payment");
    // Payment captured and announced it; the order never heard. Its customer cancels it: CANCELLED
    // with its refund pending, and its OrderCancelled makes payment refund the charge, which the order hears.
    expect((await get(o.id, customer)).status).toBe(OrderStatus.PENDING);
    const cancelled = await cancel(o.id, customer);
    expect(cancelled.statusReason).toBe("cancelled by customer: it never came");
    expect(await paymentsOf(o.id)).toEqual([{ kind: "CHARGE", status: "REFUNDED" }]);
    await settled();
    const before = await expectSettledCancel(o, customer, product);
    const version = await versionOf(o.id);
    expect(before.view?.paymentStatus).toBe("REFUNDED");

    await fixed();
    expect(await redrive(letter.seq)).toContain(`DLQ ${letter.seq} redriven to payment.payment.succeeded`);
    // The order service takes the late PaymentSucceeded as a first delivery: the payment stays
    // refunded (set back to captured, the order's refund would be pending for ever, and the order
    // unsettled while the customer has the money back), the entry logged as heard after its compensation.
    const heard = await until(
      () => get(o.id, customer),
      (x) => x.steps.some((s) => s.name === "charge_payment" && s.status === StepStatus.SUCCEEDED),
      15_000,
    );
    await settled();
    const after = await expectSettledCancel(o, customer, product);
    expect(await versionOf(o.id)).toBe((version ?? 0) + 1);
    expect(after.view?.paymentStatus).toBe("REFUNDED");
    expect(await paymentsOf(o.id)).toEqual([{ kind: "CHARGE", status: "REFUNDED" }]);
    expect(heard.steps.at(-1)?.detail).toMatch(/captured \(heard after its compensation\)$/);
  }, 60_000);

  it("payment had dead-lettered StockReserved: the late reservation is not charged, the key stays void", async () => {
    const customer = "late-reservation";
    const product = "pour-over-kettle";
    // Payment cannot record a charge for this customer: its StockReserved handler fails.
    const fixed = await refuse(
      sys.payment.store.db,
      "fault_late_reservation",
      "INSERT ON payments",
      `NEW.customer_id = '${customer}' AND NEW.kind = 'CHARGE'`,
    );
    const o = await place(customer, product);
    const letter = await letterOf("payment-inventory", "shopmesh.inventory.v1.StockReserved", o.id, 40_000);
    expect(letter.reason).toContain("injected fault: fault_late_reservation");
    // No answer from payment: cancelled by its customer, its refund pending until payment voids the key.
    expect((await get(o.id, customer)).status).toBe(OrderStatus.PENDING);
    const cancelled = await cancel(o.id, customer);
    expect(cancelled.statusReason).toBe("cancelled by customer: it never came");
    expect(await paymentsOf(o.id)).toEqual([{ kind: "VOID", status: "DECLINED" }]);
    await settled();
    const before = await expectSettledCancel(o, customer, product);
    const version = await versionOf(o.id);

    await fixed();
    expect(await redrive(letter.seq)).toContain(`DLQ ${letter.seq} redriven to inventory.stock.reserved`);
    await settled();
    // Charged now, the customer would pay for an order cancelled (and told so) long ago.
    const after = await expectSettledCancel(o, customer, product);
    expect(await paymentsOf(o.id)).toEqual([{ kind: "VOID", status: "DECLINED" }]);
    expect(await versionOf(o.id)).toBe(version);
    expect(after.view?.paymentStatus).toBe(before.view?.paymentStatus);
  }, 60_000);

  it("inventory had dead-lettered OrderPlaced: the late order reserves nothing, its stock stays whole", async () => {
    const customer = "late-placement";
    const product = "paper-filters";
    // Inventory cannot hold this product: its OrderPlaced handler fails (its void, later, is no hold).
    const fixed = await refuse(
      sys.inventory.store.db,
      "fault_late_placement",
      "INSERT ON reservations",
      `NEW.status = 'RESERVED' AND NEW.items LIKE '%"${product}"%'`,
    );
    const o = await place(customer, product);
    const letter = await letterOf("inventory-order", "shopmesh.order.v1.OrderPlaced", o.id, 40_000);
    expect(letter.reason).toContain("injected fault: fault_late_placement");
    expect((await get(o.id, customer)).status).toBe(OrderStatus.PENDING);
    const cancelled = await cancel(o.id, customer);
    expect(cancelled.statusReason).toBe("cancelled by customer: it never came");
    await settled();
    await expectSettledCancel(o, customer, product);
    const version = await versionOf(o.id);

    await fixed();
    expect(await redrive(letter.seq)).toContain(`DLQ ${letter.seq} redriven to order.order.placed`);
    await settled();
    // Reserved now, the units would be held for an order cancelled long ago, and nothing would release them.
    await expectSettledCancel(o, customer, product);
    expect(await versionOf(o.id)).toBe(version);
    expect(await paymentsOf(o.id)).toEqual([{ kind: "VOID", status: "DECLINED" }]);
  }, 60_000);

  it("order had dead-lettered a decline: its cancel waits, refund pending, with nothing taken; the redrive settles it", async () => {
    const customer = "late-decline";
    const product = "ceramic-mug";
    const fixed = await refuse(
      sys.order.store.db,
      "fault_late_decline",
      "UPDATE ON orders",
      `OLD.customer_id = '${customer}' AND NEW.payment_id IS NOT OLD.payment_id`,
    );
    const o = await place(customer, product, "tok_decline");
    const letter = await letterOf("order-payment", "shopmesh.payment.v1.PaymentFailed", o.id, 40_000);
    expect(letter.reason).toContain("injected fault: fault_late_decline");
    // Cancelled before the order heard from payment: payment may have charged, for all it knows. Payment
    // answers the OrderCancelled with nothing (its charge was declined, and said so already): the
    // refund stays pending until the letter is redriven, with no money taken and the stock back.
    const cancelled = await cancel(o.id, customer, true);
    expect(cancelled.statusReason).toBe("cancelled by customer: it never came");
    await settled();
    expect(await get(o.id, customer)).toMatchObject({ status: OrderStatus.CANCELLED, refundPending: true });
    expect(await paymentsOf(o.id)).toEqual([{ kind: "CHARGE", status: "DECLINED" }]);
    expect(await stockOf(product)).toEqual({ available: initial(product), reserved: 0 });

    await fixed();
    expect(await redrive(letter.seq)).toContain(`DLQ ${letter.seq} redriven to payment.payment.failed`);
    await until(
      () => get(o.id, customer),
      (x) => !x.refundPending,
      15_000,
    );
    await settled();
    const after = await expectSettledCancel(o, customer, product);
    expect(after.order.steps.at(-1)?.detail).toMatch(/^no charge taken: /);
    expect(after.view).toMatchObject({ paymentStatus: "DECLINED", refund: "settled" });
    expect(await paymentsOf(o.id)).toEqual([{ kind: "CHARGE", status: "DECLINED" }]);
  }, 60_000);

  it("inventory had dead-lettered OrderCancelled: the stock a declined order held comes back at the redrive", async () => {
    const customer = "late-release";
    const product = "coffee-beans";
    const fixed = await refuse(
      sys.inventory.store.db,
      "fault_late_release",
      "UPDATE ON reservations",
      `NEW.status = 'RELEASED' AND NEW.items LIKE '%"${product}"%'`,
    );
    // Declined: the order is cancelled at once, nothing pending, and its OrderCancelled asks for the stock.
    const o = await place(customer, product, "tok_decline");
    const letter = await letterOf("inventory-order", "shopmesh.order.v1.OrderCancelled", o.id, 40_000);
    expect(letter.reason).toContain("injected fault: fault_late_release");
    await settled();
    expect(await get(o.id, customer)).toMatchObject({ status: OrderStatus.CANCELLED, refundPending: false });
    // What the letter leaves until it is redriven: a unit held for a cancelled order.
    expect(await stockOf(product)).toEqual({ available: (initial(product) ?? 0) - 1, reserved: 1 });
    const version = await versionOf(o.id);

    await fixed();
    expect(await redrive(letter.seq)).toContain(`DLQ ${letter.seq} redriven to order.order.cancelled`);
    await until(
      () => stockOf(product),
      (x) => x?.reserved === 0,
      15_000,
    );
    await settled();
    const after = await expectSettledCancel(o, customer, product);
    // The order heard StockReleased: its step log says so, and it stays as it ended.
    expect(after.order.steps.at(-1)).toMatchObject({ name: "release_stock", status: StepStatus.COMPENSATED });
    expect(await versionOf(o.id)).toBe((version ?? 0) + 1);
    expect(await paymentsOf(o.id)).toEqual([{ kind: "CHARGE", status: "DECLINED" }]);
  }, 60_000);

  it("inventory had dead-lettered both OrderPlaced and OrderCancelled: redriven together, no stock stays held", async () => {
    const customer = "late-both";
    const product = "limited-print";
    const fixedPlaced = await refuse(
      sys.inventory.store.db,
      "fault_late_both_placed",
      "INSERT ON reservations",
      `NEW.status = 'RESERVED' AND NEW.items LIKE '%"${product}"%'`,
    );
    const o = await place(customer, product);
    // The void its OrderCancelled writes fails too: inventory letters both of the order's events.
    const fixedCancelled = await refuse(
      sys.inventory.store.db,
      "fault_late_both_cancelled",
      "INSERT ON reservations",
      `NEW.order_id = '${o.id}'`,
    );
    await cancel(o.id, customer);
    const placed = await letterOf("inventory-order", "shopmesh.order.v1.OrderPlaced", o.id, 40_000);
    const cancelled = await letterOf("inventory-order", "shopmesh.order.v1.OrderCancelled", o.id, 40_000);
    await settled();
    await expectSettledCancel(o, customer, product);
    const reservation = () =>
      sys.inventory.store.db.all(
        sql<{ status: string }>`SELECT status FROM reservations WHERE idempotency_key = ${`${o.id}:reserve_stock`}`,
      );
    expect(await reservation()).toEqual([]);

    await fixedPlaced();
    await fixedCancelled();
    // In DLQ order, whichever came first. (The OrderPlaced alone would reserve the last unit for an
    // order cancelled long ago, held until the OrderCancelled's letter is redriven: docs/events.md.)
    await redrive(placed.seq, cancelled.seq);
    await until(
      () => stockOf(product),
      (x) => x?.reserved === 0 && x.available === initial(product),
      15_000,
    );
    await settled();
    await expectSettledCancel(o, customer, product);
    // Both applied: reserved then released, or (the OrderCancelled first) the key voided.
    expect((await reservation()).map((r) => r.status)).toEqual([expect.stringMatching(/^(RELEASED|REJECTED)$/)]);
    expect(await paymentsOf(o.id)).toEqual([{ kind: "VOID", status: "DECLINED" }]);
  }, 60_000);
});

it("the books balance across the six orders once every redrive is handled", async () => {
  await settled();
  await expectCheckoutInvariants({
    order: sys.order.store.db,
    payment: sys.payment.store.db,
    inventory: sys.inventory.store.db,
  });
});
