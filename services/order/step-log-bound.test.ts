/**
 * An order's stored step log stays bounded however long its saga retries: a refund retried through a
 * long payment outage (compensation has no budget: it is retried until it lands) wrote two rows a
 * retry for as long as the outage lasted — 34,560 a day at the default 5 s backoff, every one read
 * again by each GetOrder, WatchOrder and ListOrders page, and by the saga loop at each start.
 * Real inventory, payment and order servers; the retries made fast (a few ms) so the test's seconds
 * stand for hours.
 */

import { sql } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Order, OrderStatus, StepStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { capturedLogger, type System, startSystem } from "../../test/system.js";
import { MAX_STEPS_SHOWN } from "./api.js";
import { STEP_LOG_KEPT } from "./schema.js";

let sys: System;
const captured = capturedLogger();
beforeAll(async () => {
  sys = await startSystem(
    {
      order: {
        SAGA_STEP_BUDGET_MS: "300",
        SAGA_RETRY_BASE_MS: "1",
        SAGA_RETRY_MAX_MS: "4",
        PAYMENT_RETRY_MAX_ATTEMPTS: "1",
      },
    },
    { log: captured.log },
  );
});
afterAll(async () => {
  await sys[Symbol.asyncDispose]();
});

const get = async (id: string) => (await sys.orders.getOrder({ orderId: id }, sys.as("ria"))).order as Order;
async function until(id: string, done: (o: Order) => boolean, ms = 20_000): Promise<Order> {
  for (const end = Date.now() + ms; ; ) {
    const o = await get(id);
    if (done(o) || Date.now() > end) return o;
    await new Promise((r) => setTimeout(r, 50));
  }
}
const rows = async (id: string) =>
  (await sys.order.store.db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM saga_steps WHERE order_id = ${id}`))?.n ??
  0;
const lastSeq = async (id: string) =>
  (await sys.order.store.db.one(sql<{ s: number }>`SELECT MAX(seq) AS s FROM saga_steps WHERE order_id = ${id}`))?.s ??
  0;

it("a refund retried through a long payment outage keeps a bounded step log, and the answer still counts every entry", async () => {
  await sys.paymentChaos.setFaults({ faults: { down: true } });
  let id = "";
  try {
    const { order } = await sys.orders.placeOrder(
      { idempotencyKey: "bound-1", items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
      sys.as("ria"),
    );
    id = order?.id ?? "";
    const cancelled = await until(id, (o) => o.status === OrderStatus.CANCELLED && o.refundPending);
    expect(cancelled).toMatchObject({ status: OrderStatus.CANCELLED, refundPending: true });
    // The refund is retried every few ms: wait until the log has passed its bound many times over.
    for (const end = Date.now() + 20_000; (await lastSeq(id)) < 10 * STEP_LOG_KEPT && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const written = await lastSeq(id);
    expect(written).toBeGreaterThanOrEqual(10 * STEP_LOG_KEPT);
    // At most the first and latest entries are kept, and each step's first start (the budget's origin).
    expect(await rows(id)).toBeLessThanOrEqual(STEP_LOG_KEPT + 6);
    const o = await get(id);
    expect(o.steps).toHaveLength(MAX_STEPS_SHOWN);
    // The answer counts what it leaves out of every entry ever written, kept or not.
    expect(o.steps.length + o.stepsOmitted).toBeGreaterThanOrEqual(written);
    expect(o.steps[0]).toMatchObject({ name: "reserve_stock", status: StepStatus.STARTED });
    const pruned = captured.lines.filter((l) => String(l.msg).startsWith("saga step log"));
    expect(pruned).toHaveLength(1);
    expect(pruned[0]).toMatchObject({ orderId: id });
  } finally {
    await sys.paymentChaos.setFaults({ faults: {} });
  }
  // Payment back: the refund lands, the log ends with it, still bounded.
  const settled = await until(id, (o) => !o.refundPending);
  expect(settled).toMatchObject({ status: OrderStatus.CANCELLED, refundPending: false });
  expect(settled.steps.at(-1)).toMatchObject({ name: "refund_payment", status: StepStatus.COMPENSATED });
  expect(await rows(id)).toBeLessThanOrEqual(STEP_LOG_KEPT + 6);
  // Attempt numbers go on from where they were, the pruned starts notwithstanding.
  const refunds = settled.steps.filter((s) => s.name === "refund_payment" && s.status === StepStatus.STARTED);
  expect(refunds.at(-1)?.attempt).toBeGreaterThan(STEP_LOG_KEPT);
}, 60_000);
