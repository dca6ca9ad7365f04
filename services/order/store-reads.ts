/** The order store's reads: one order, its step log, a customer's orders, and the sagas still to drive. */
import { type Queries, sql } from "../../platform/index.js";
import type { OrderRecord, SagaMode } from "./domain.js";
import { type OrderRow, type StoredStep, toOrder, UNFINISHED } from "./schema.js";

/** One order, or undefined. */
export async function readOrder(q: Queries, id: string): Promise<OrderRecord | undefined> {
  const row = await q.one(sql<OrderRow>`SELECT * FROM orders WHERE id = ${id}`);
  return row && toOrder(row);
}

/** The order's step log, oldest first. */
export function readSteps(q: Queries, id: string): Promise<StoredStep[]> {
  return q.all(
    sql<StoredStep>`SELECT seq, name, status, detail, attempt, at, fence FROM saga_steps WHERE order_id = ${id} ORDER BY seq`,
  );
}

/** A page of a customer's orders, newest first, after the cursor (exclusive). */
export async function ordersOfCustomer(
  q: Queries,
  customerId: string,
  after: { createdAt: number; id: string } | undefined,
  limit: number,
): Promise<OrderRecord[]> {
  const c = after ?? { createdAt: Number.MAX_SAFE_INTEGER, id: "" };
  const rows = await q.all(sql<OrderRow>`SELECT * FROM orders
    WHERE customer_id = ${customerId} AND (created_at < ${c.createdAt} OR (created_at = ${c.createdAt} AND id < ${c.id}))
    ORDER BY created_at DESC, id DESC LIMIT ${limit}`);
  return rows.map(toOrder);
}

/** Choreographed orders still PENDING whose last change is older than `before` (epoch ms), oldest first. */
export async function stalledChoreography(q: Queries, before: number): Promise<string[]> {
  const rows = await q.all(sql<{ id: string }>`SELECT id FROM orders
    WHERE status = 'PENDING' AND saga_mode = 'CHOREOGRAPHY' AND updated_at < ${before}
    ORDER BY updated_at LIMIT 100`);
  return rows.map((r) => r.id);
}

/** Ids of orders whose saga (in `mode`, or any) has not finished, oldest first. */
export async function activeIds(q: Queries, mode?: SagaMode): Promise<string[]> {
  const rows = await q.all(sql<{ id: string }>`SELECT id FROM orders
    WHERE ${UNFINISHED} AND (${mode ?? ""} = '' OR saga_mode = ${mode ?? ""})
    ORDER BY created_at`);
  return rows.map((r) => r.id);
}
