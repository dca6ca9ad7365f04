/**
 * History persistence (SQLite or PostgreSQL): the denormalised order view and the inbox of the
 * consumers that build it. A fact is applied by reading the order's row,
 * merging with the pure {@link project}, and writing the row back, inside
 * the consumer's transaction (or the rebuild's), so the view and the inbox
 * always agree about which events are in.
 */
import type { Line } from "../../contracts/lines.js";
import {
  type Db,
  type DbLocation,
  INBOX_FAILURES_MIGRATION,
  INBOX_MIGRATION,
  INBOX_PURGE_MIGRATION,
  type Logger,
  migrations,
  openDatabase,
  sql,
  type Tx,
} from "../../platform/index.js";
import {
  EARLIEST_TIMESTAMP_MS,
  type Fact,
  LATEST_TIMESTAMP_MS,
  type OrderStatusName,
  type OrderView,
  type PaymentStatusName,
  project,
  type RefundName,
} from "./domain.js";

const VIEW = `CREATE TABLE order_history (
     order_id        TEXT PRIMARY KEY,
     customer_id     TEXT,           -- NULL until an event names the owner
     status          TEXT CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),  -- NULL before any order event
     items           TEXT NOT NULL,  -- JSON [{productId, quantity}], [] before OrderPlaced
     total_minor     INTEGER,
     currency        TEXT,
     payment_status  TEXT CHECK (payment_status IN ('DECLINED', 'CAPTURED', 'REFUNDED')),  -- NULL: none yet
     reason          TEXT NOT NULL,
     last_event_at   INTEGER NOT NULL,
     last_event_type TEXT NOT NULL,
     last_event_id   TEXT NOT NULL,
     CHECK ((total_minor IS NULL) = (currency IS NULL))
   ) STRICT;
   CREATE INDEX order_history_customer ON order_history (customer_id, last_event_at DESC, order_id DESC);`;

/** The view's and inbox's tables, in order (both engines). */
export const MIGRATIONS = migrations([
  VIEW,
  INBOX_MIGRATION,
  // 3: where a cancelled order's refund stands (OrderCancelled's refund_pending, OrderRefundSettled).
  "ALTER TABLE order_history ADD COLUMN refund TEXT NOT NULL DEFAULT 'none' CHECK (refund IN ('none', 'pending', 'settled'));",
  // 4: consumers count each event's failures across restarts and replicas (the dead-letter limit).
  INBOX_FAILURES_MIGRATION,
  // 5: the inbox forgets an event after INBOX_KEEP_MS (its purge reads by this index).
  INBOX_PURGE_MIGRATION,
  // 6: an order listed at a time a Timestamp's JSON form cannot hold, by a version before factOf
  // bounded event times, made its customer's whole history answer 500 on REST and Connect.
  `UPDATE order_history
     SET last_event_at = CASE WHEN last_event_at < ${EARLIEST_TIMESTAMP_MS} THEN ${EARLIEST_TIMESTAMP_MS} ELSE ${LATEST_TIMESTAMP_MS} END
     WHERE last_event_at < ${EARLIEST_TIMESTAMP_MS} OR last_event_at > ${LATEST_TIMESTAMP_MS};`,
]);

interface ViewRow {
  order_id: string;
  customer_id: string | null;
  status: OrderStatusName | null;
  items: string;
  total_minor: number | null;
  currency: string | null;
  payment_status: PaymentStatusName | null;
  reason: string;
  refund: RefundName;
  last_event_at: number;
  last_event_type: string;
  last_event_id: string;
}

const toView = (r: ViewRow): OrderView => ({
  orderId: r.order_id,
  customerId: r.customer_id,
  status: r.status,
  items: JSON.parse(r.items) as Line[],
  total: r.total_minor === null || r.currency === null ? null : { amountMinor: r.total_minor, currency: r.currency },
  paymentStatus: r.payment_status,
  reason: r.reason,
  refund: r.refund,
  lastEventAt: r.last_event_at,
  lastEventType: r.last_event_type,
  lastEventId: r.last_event_id,
});

const toRow = (v: OrderView): ViewRow => ({
  order_id: v.orderId,
  customer_id: v.customerId,
  status: v.status,
  items: JSON.stringify(v.items),
  total_minor: v.total?.amountMinor ?? null,
  currency: v.total?.currency ?? null,
  payment_status: v.paymentStatus,
  reason: v.reason,
  refund: v.refund,
  last_event_at: v.lastEventAt,
  last_event_type: v.lastEventType,
  last_event_id: v.lastEventId,
});

/** A position in a most-recently-changed-first listing: after this row. */
export interface HistoryCursor {
  readonly lastEventAt: number;
  readonly orderId: string;
}

/** The advisory lock of the view in `schema` (PostgreSQL): shared by every history service, a rebuild's alone (rebuild-aside.ts). */
export const rebuildLockKey = (schema: string) => `shopmesh.rebuild.${schema}`;

/** The order view (and the consumers' inbox). */
export class HistoryStore {
  private constructor(
    /** The service's database (also used by its event consumers and the rebuild). */
    readonly db: Db,
    /** PostgreSQL: the rebuild lock each write takes shared, for its transaction. */
    private readonly rebuildKey: string | undefined,
  ) {}

  /** Opens (and migrates) the store at `location`. */
  static async open(location: DbLocation, log?: Logger): Promise<HistoryStore> {
    const key = location.engine === "postgres" ? rebuildLockKey(location.schema) : undefined;
    return new HistoryStore(await openDatabase(location, MIGRATIONS, log), key);
  }

  /**
   * Merges `fact` into its order's view, creating the row on the first
   * event about the order, in `tx` when given (the consumer's or the
   * rebuild's), in its own transaction otherwise.
   */
  apply(fact: Fact, tx?: Tx): Promise<OrderView> {
    return this.db.within(tx, async (tx) => {
      // The service's session lock (rebuild-aside.ts) is gone with its connection; this one is not:
      // a write while a rebuild holds the view fails as unavailable and is retried after its swap.
      if (this.rebuildKey) {
        const held = await tx.one(
          sql<{ ok: boolean }>`SELECT pg_try_advisory_xact_lock_shared(hashtext(${this.rebuildKey})) AS ok`,
        );
        if (!held?.ok) throw Object.assign(new Error("the history view is being rebuilt"), { code: "55P03" });
      }
      const read = () =>
        tx.one(sql<ViewRow>`SELECT * FROM order_history WHERE order_id = ${fact.orderId} ${tx.forUpdate}`);
      let row = await read();
      if (!row) {
        const v = toRow(project(undefined, fact));
        // Two first events of one order on two replicas: the second insert waits for the first's
        // transaction, then inserts nothing, and its event is merged into the row the first wrote.
        const inserted = await tx.run(sql`INSERT INTO order_history (order_id, customer_id, status, items,
            total_minor, currency, payment_status, reason, refund, last_event_at, last_event_type, last_event_id)
          VALUES (${v.order_id}, ${v.customer_id}, ${v.status}, ${v.items}, ${v.total_minor}, ${v.currency},
            ${v.payment_status}, ${v.reason}, ${v.refund}, ${v.last_event_at}, ${v.last_event_type}, ${v.last_event_id})
          ON CONFLICT (order_id) DO NOTHING`);
        if (inserted === 1) return toView(v);
        row = await read();
        if (!row) throw new Error(`history row of order ${fact.orderId} neither inserted nor found`);
      }
      const v = toRow(project(toView(row), fact));
      await tx.run(sql`UPDATE order_history SET customer_id = ${v.customer_id}, status = ${v.status},
          items = ${v.items}, total_minor = ${v.total_minor}, currency = ${v.currency},
          payment_status = ${v.payment_status}, reason = ${v.reason}, refund = ${v.refund},
          last_event_at = ${v.last_event_at},
          last_event_type = ${v.last_event_type}, last_event_id = ${v.last_event_id}
        WHERE order_id = ${v.order_id}`);
      return toView(v);
    });
  }

  /** Every view, by order id (for checks and comparisons). */
  async all(): Promise<OrderView[]> {
    return (await this.db.all(sql<ViewRow>`SELECT * FROM order_history ORDER BY order_id`)).map(toView);
  }

  /** Up to `limit` views after order id `after`, by order id: a view read a page at a time. */
  async page(after: string, limit: number): Promise<OrderView[]> {
    return (
      await this.db.all(
        sql<ViewRow>`SELECT * FROM order_history WHERE order_id > ${after} ORDER BY order_id LIMIT ${limit}`,
      )
    ).map(toView);
  }

  /** The views of the orders `ids` that the view holds. */
  async some(ids: readonly string[]): Promise<OrderView[]> {
    if (ids.length === 0) return [];
    return (await this.db.all(sql<ViewRow>`SELECT * FROM order_history WHERE order_id IN (${sql.join(ids)})`)).map(
      toView,
    );
  }

  /** How many orders the view holds. */
  async count(): Promise<number> {
    const row = await this.db.one(sql<{ n: number | string }>`SELECT COUNT(*) AS n FROM order_history`);
    return Number(row?.n ?? 0);
  }

  /**
   * Up to `limit` views owned by `customerId`, most recently changed first,
   * after `cursor` (from the start when undefined). Views whose owner is not
   * known yet are never listed.
   */
  async listByCustomer(customerId: string, cursor: HistoryCursor | undefined, limit: number): Promise<OrderView[]> {
    const c = cursor ?? { lastEventAt: Number.MAX_SAFE_INTEGER, orderId: "" };
    const rows = await this.db.all(sql<ViewRow>`SELECT * FROM order_history
      WHERE customer_id = ${customerId} AND (last_event_at < ${c.lastEventAt} OR (last_event_at = ${c.lastEventAt} AND order_id < ${c.orderId}))
      ORDER BY last_event_at DESC, order_id DESC LIMIT ${limit}`);
    return rows.map(toView);
  }

  /** Empties the view and the inbox (and the failures counted), in one transaction (the start of a rebuild). */
  reset(): Promise<{ views: number; inbox: number }> {
    return this.db.transaction(async (tx) => {
      await tx.run(sql`DELETE FROM inbox_failures`);
      return { views: await tx.run(sql`DELETE FROM order_history`), inbox: await tx.run(sql`DELETE FROM inbox`) };
    });
  }

  /** Closes the database. */
  close(): Promise<void> {
    return this.db.close();
  }
}
