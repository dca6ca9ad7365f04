/**
 * The statements on inventory's rows that more than one of store.ts's operations takes: a product
 * read locked or not, a reservation found by its key or written. Every function runs in the
 * transaction (or on the database) it is given; what a call does with the rows is store.ts's.
 */
import type { Line } from "../../contracts/lines.js";
import { type Db, sql, type Tx } from "../../platform/index.js";
import type { ProductRecord } from "./domain.js";
import { type ProductRow, type ReservationRow, toProduct } from "./schema.js";

/** `lines` by product id: the order every transaction here takes product rows in. */
export const byProduct = (lines: readonly Line[]): Line[] =>
  [...lines].sort((a, b) => (a.productId < b.productId ? -1 : a.productId > b.productId ? 1 : 0));

/** One product, or undefined. */
export async function productIn(q: Db | Tx, id: string): Promise<ProductRecord | undefined> {
  const row = await q.one(sql<ProductRow>`SELECT * FROM products WHERE id = ${id}`);
  return row && toProduct(row);
}

/**
 * The products `ids` names (those that exist), locked for this transaction in the one order every
 * transaction here locks products in — by id — so no two ever wait for each other in a cycle.
 */
export async function lockedProducts(tx: Tx, ids: Iterable<string>): Promise<Map<string, ProductRecord>> {
  const stock = new Map<string, ProductRecord>();
  for (const id of [...new Set(ids)].sort()) {
    const row = await tx.one(sql<ProductRow>`SELECT * FROM products WHERE id = ${id} ${tx.forUpdate}`);
    if (row) stock.set(row.id, toProduct(row));
  }
  return stock;
}

/** The products `ids` names (those that exist), as last committed: no lock taken. */
export async function unlockedProducts(tx: Tx, ids: readonly string[]): Promise<Map<string, ProductRecord>> {
  const rows = await tx.all(sql<ProductRow>`SELECT * FROM products WHERE id IN (${sql.join(ids)})`);
  return new Map(rows.map((r) => [r.id, toProduct(r)]));
}

/** The product ids of the reservations made with `keys` that still hold stock. */
export async function heldProductIds(tx: Tx, keys: readonly string[]): Promise<string[]> {
  if (keys.length === 0) return [];
  const held = await tx.all(sql<Pick<ReservationRow, "items">>`SELECT items FROM reservations
    WHERE status = 'RESERVED' AND idempotency_key IN (${sql.join(keys)})`);
  return held.flatMap((r) => (JSON.parse(r.items) as Line[]).map((l) => l.productId));
}

/** The reservation made with `key`, locked for this transaction. */
export function reservationByKey(tx: Tx, key: string): Promise<ReservationRow | undefined> {
  return tx.one(sql<ReservationRow>`SELECT * FROM reservations WHERE idempotency_key = ${key} ${tx.forUpdate}`);
}

/** A new reservation row (`items` and `shortages` as JSON). */
export interface NewReservation {
  readonly id: string;
  readonly key: string;
  readonly fingerprint: string;
  readonly orderId: string;
  readonly status: ReservationRow["status"];
  readonly items: string;
  readonly totalMinor: number;
  readonly currency: string;
  readonly shortages: string | null;
  readonly now: number;
}

export function insertReservation(tx: Tx, r: NewReservation): Promise<number> {
  return tx.run(sql`INSERT INTO reservations (id, idempotency_key, fingerprint, order_id, status, items, total_minor,
      currency, shortages, created_at, updated_at)
    VALUES (${r.id}, ${r.key}, ${r.fingerprint}, ${r.orderId}, ${r.status}, ${r.items}, ${r.totalMinor},
      ${r.currency}, ${r.shortages}, ${r.now}, ${r.now})`);
}
