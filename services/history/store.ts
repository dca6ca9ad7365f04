/**
 * History persistence: the denormalised order view and the inbox of the
 * consumers that build it. A fact is applied by reading the order's row,
 * merging with the pure {@link project}, and writing the row back, inside
 * the consumer's transaction (or the rebuild's), so the view and the inbox
 * always agree about which events are in.
 */
import type { Line } from "../../contracts/lines.js";
import { type Db, INBOX_MIGRATION, openDatabase } from "../../platform/index.js";
import { type Fact, type OrderStatusName, type OrderView, type PaymentStatusName, project } from "./domain.js";

const MIGRATIONS = [
  `CREATE TABLE order_history (
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
   CREATE INDEX order_history_customer ON order_history (customer_id, last_event_at DESC, order_id DESC);`,
  INBOX_MIGRATION,
];

interface ViewRow {
  order_id: string;
  customer_id: string | null;
  status: OrderStatusName | null;
  items: string;
  total_minor: number | null;
  currency: string | null;
  payment_status: PaymentStatusName | null;
  reason: string;
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
  last_event_at: v.lastEventAt,
  last_event_type: v.lastEventType,
  last_event_id: v.lastEventId,
});

/** A position in a most-recently-changed-first listing: after this row. */
export interface HistoryCursor {
  readonly lastEventAt: number;
  readonly orderId: string;
}

/** The order view (and the consumers' inbox) in one SQLite file. */
export class HistoryStore {
  private readonly q;

  private constructor(
    /** The service's database (also used by its event consumers and the rebuild). */
    readonly db: Db,
  ) {
    this.q = {
      view: db.prepare<[string], ViewRow>("SELECT * FROM order_history WHERE order_id = ?"),
      upsert: db.prepare<[ViewRow]>(
        `INSERT INTO order_history (order_id, customer_id, status, items, total_minor, currency, payment_status,
                                    reason, last_event_at, last_event_type, last_event_id)
         VALUES (@order_id, @customer_id, @status, @items, @total_minor, @currency, @payment_status,
                 @reason, @last_event_at, @last_event_type, @last_event_id)
         ON CONFLICT (order_id) DO UPDATE SET
           customer_id = excluded.customer_id, status = excluded.status, items = excluded.items,
           total_minor = excluded.total_minor, currency = excluded.currency,
           payment_status = excluded.payment_status, reason = excluded.reason,
           last_event_at = excluded.last_event_at, last_event_type = excluded.last_event_type,
           last_event_id = excluded.last_event_id`,
      ),
      page: db.prepare<[string, number, number, string, number], ViewRow>(
        `SELECT * FROM order_history
         WHERE customer_id = ? AND (last_event_at < ? OR (last_event_at = ? AND order_id < ?))
         ORDER BY last_event_at DESC, order_id DESC LIMIT ?`,
      ),
      all: db.prepare<[], ViewRow>("SELECT * FROM order_history ORDER BY order_id"),
      clearViews: db.prepare("DELETE FROM order_history"),
      clearInbox: db.prepare("DELETE FROM inbox"),
    };
  }

  /** Opens (and migrates) the store at `path` (`:memory:` for a private in-memory one). */
  static open(path: string): HistoryStore {
    return new HistoryStore(openDatabase(path, MIGRATIONS));
  }

  /**
   * Merges `fact` into its order's view, creating the row on the first
   * event about the order. Runs in the caller's transaction when there is
   * one (the consumer's), in its own otherwise.
   */
  apply(fact: Fact): OrderView {
    return this.db
      .transaction(() => {
        const row = this.q.view.get(fact.orderId);
        const next = project(row && toView(row), fact);
        this.q.upsert.run(toRow(next));
        return next;
      })
      .immediate();
  }

  /** Every view, by order id (for checks and comparisons). */
  all(): OrderView[] {
    return this.q.all.all().map(toView);
  }

  /**
   * Up to `limit` views owned by `customerId`, most recently changed first,
   * after `cursor` (from the start when undefined). Views whose owner is not
   * known yet are never listed.
   */
  listByCustomer(customerId: string, cursor: HistoryCursor | undefined, limit: number): OrderView[] {
    const c = cursor ?? { lastEventAt: Number.MAX_SAFE_INTEGER, orderId: "" };
    return this.q.page.all(customerId, c.lastEventAt, c.lastEventAt, c.orderId, limit).map(toView);
  }

  /** Empties the view and the inbox, in one transaction (the start of a rebuild). */
  reset(): { views: number; inbox: number } {
    return this.db
      .transaction(() => ({
        views: this.q.clearViews.run().changes,
        inbox: this.q.clearInbox.run().changes,
      }))
      .immediate();
  }

  /** Closes the database. */
  close(): void {
    this.db.close();
  }
}
