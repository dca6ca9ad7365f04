/**
 * Notification persistence: the notifications sent, and the inbox of the
 * event consumers that send them. A notification is recorded inside the
 * consumer's transaction, beside the inbox row; the UNIQUE event id is a
 * second guard, so even an event that somehow got past the inbox (say, an
 * inbox emptied by hand) never notifies twice.
 */
import { type Db, INBOX_MIGRATION, newId, openDatabase } from "../../platform/index.js";
import type { NotificationDraft, NotificationKindName, NotificationRecord } from "./domain.js";

const MIGRATIONS = [
  `CREATE TABLE notifications (
     id          TEXT PRIMARY KEY,
     event_id    TEXT NOT NULL UNIQUE,
     customer_id TEXT NOT NULL,
     order_id    TEXT NOT NULL,
     kind        TEXT NOT NULL CHECK (kind IN ('ORDER_CONFIRMED', 'ORDER_CANCELLED', 'PAYMENT_REFUNDED')),
     message     TEXT NOT NULL,
     sent_at     INTEGER NOT NULL
   ) STRICT;
   CREATE INDEX notifications_customer ON notifications (customer_id, sent_at DESC, id DESC);
   CREATE INDEX notifications_customer_order ON notifications (customer_id, order_id, sent_at DESC, id DESC);`,
  INBOX_MIGRATION,
];

interface NotificationRow {
  id: string;
  event_id: string;
  customer_id: string;
  order_id: string;
  kind: NotificationKindName;
  message: string;
  sent_at: number;
}

const toNotification = (r: NotificationRow): NotificationRecord => ({
  id: r.id,
  eventId: r.event_id,
  customerId: r.customer_id,
  orderId: r.order_id,
  kind: r.kind,
  message: r.message,
  sentAt: r.sent_at,
});

/** Result of {@link NotificationStore.record}. */
export type RecordResult =
  | { readonly kind: "sent"; readonly notification: NotificationRecord }
  | { readonly kind: "duplicate" };

/** A position in a newest-first listing: after the row with this time and id. */
export interface NotificationCursor {
  readonly sentAt: number;
  readonly id: string;
}

/** The notifications table (and the consumers' inbox) in one SQLite file. */
export class NotificationStore {
  private readonly q;

  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
  ) {
    this.q = {
      insert: db.prepare(
        `INSERT INTO notifications (id, event_id, customer_id, order_id, kind, message, sent_at)
         VALUES (@id, @eventId, @customerId, @orderId, @kind, @message, @sentAt)
         ON CONFLICT (event_id) DO NOTHING`,
      ),
      byId: db.prepare<[string], NotificationRow>("SELECT * FROM notifications WHERE id = ?"),
      byEvent: db.prepare<[string], NotificationRow>("SELECT * FROM notifications WHERE event_id = ?"),
      page: db.prepare<
        { customerId: string; orderId: string; sentAt: number; id: string; limit: number },
        NotificationRow
      >(
        `SELECT * FROM notifications
         WHERE customer_id = @customerId AND (@orderId = '' OR order_id = @orderId)
           AND (sent_at < @sentAt OR (sent_at = @sentAt AND id < @id))
         ORDER BY sent_at DESC, id DESC LIMIT @limit`,
      ),
    };
  }

  /** Opens (and migrates) the store at `path` (`:memory:` for a private in-memory one). */
  static open(path: string, clock: () => number = Date.now): NotificationStore {
    return new NotificationStore(openDatabase(path, MIGRATIONS), clock);
  }

  /**
   * Records `draft` as sent now because of event `eventId` (`duplicate`
   * when that event already has a notification). Runs in the caller's
   * transaction when there is one (the consumer's).
   */
  record(eventId: string, draft: NotificationDraft): RecordResult {
    return this.db
      .transaction((): RecordResult => {
        const now = this.clock();
        const id = newId("ntf", now);
        const { changes } = this.q.insert.run({ id, eventId, ...draft, sentAt: now });
        if (changes !== 1) return { kind: "duplicate" };
        return { kind: "sent", notification: toNotification(this.q.byId.get(id) as NotificationRow) };
      })
      .immediate();
  }

  /**
   * Up to `limit` notifications of `customerId` (only about `orderId` unless
   * it is ""), newest first, after `cursor` (from the start when undefined).
   */
  listByCustomer(
    customerId: string,
    orderId: string,
    cursor: NotificationCursor | undefined,
    limit: number,
  ): NotificationRecord[] {
    const c = cursor ?? { sentAt: Number.MAX_SAFE_INTEGER, id: "" };
    return this.q.page.all({ customerId, orderId, sentAt: c.sentAt, id: c.id, limit }).map(toNotification);
  }

  /** Closes the database. */
  close(): void {
    this.db.close();
  }
}
