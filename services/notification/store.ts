/**
 * Notification persistence (SQLite or PostgreSQL): the notifications sent, and the inbox of the
 * event consumers that send them. A notification is recorded inside the
 * consumer's transaction, beside the inbox row; the UNIQUE event id is a
 * second guard, so even an event that somehow got past the inbox (say, an
 * inbox emptied by hand) never notifies twice.
 */
import {
  type Db,
  type DbLocation,
  INBOX_FAILURES_MIGRATION,
  INBOX_MIGRATION,
  INBOX_PURGE_MIGRATION,
  type Logger,
  migrations,
  newId,
  openDatabase,
  sql,
  type Tx,
} from "../../platform/index.js";
import type { NotificationDraft, NotificationKindName, NotificationRecord } from "./domain.js";

const NOTIFICATIONS = `CREATE TABLE notifications (
     id          TEXT PRIMARY KEY,
     event_id    TEXT NOT NULL UNIQUE,
     customer_id TEXT NOT NULL,
     order_id    TEXT NOT NULL,
     kind        TEXT NOT NULL CHECK (kind IN ('ORDER_CONFIRMED', 'ORDER_CANCELLED', 'PAYMENT_REFUNDED')),
     message     TEXT NOT NULL,
     sent_at     INTEGER NOT NULL
   ) STRICT;
   CREATE INDEX notifications_customer ON notifications (customer_id, sent_at DESC, id DESC);
   CREATE INDEX notifications_customer_order ON notifications (customer_id, order_id, sent_at DESC, id DESC);`;

/** The notifications' and inbox's tables, in order (both engines). */
export const MIGRATIONS = migrations([
  NOTIFICATIONS,
  INBOX_MIGRATION,
  // 3: consumers count each event's failures across restarts and replicas (the dead-letter limit).
  INBOX_FAILURES_MIGRATION,
  // 4: the inbox forgets an event after INBOX_KEEP_MS (its purge reads by this index).
  INBOX_PURGE_MIGRATION,
]);

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

/** The notifications table (and the consumers' inbox). */
export class NotificationStore {
  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
  ) {}

  /** Opens (and migrates) the store at `location`. */
  static async open(location: DbLocation, clock: () => number = Date.now, log?: Logger): Promise<NotificationStore> {
    return new NotificationStore(await openDatabase(location, MIGRATIONS, log), clock);
  }

  /**
   * Records `draft` as sent now because of event `eventId` (`duplicate`
   * when that event already has a notification), in `tx` when given (the
   * consumer's).
   */
  record(eventId: string, draft: NotificationDraft, tx?: Tx): Promise<RecordResult> {
    return this.db.within(tx, async (tx): Promise<RecordResult> => {
      const now = this.clock();
      const id = newId("ntf", now);
      const changes =
        await tx.run(sql`INSERT INTO notifications (id, event_id, customer_id, order_id, kind, message, sent_at)
        VALUES (${id}, ${eventId}, ${draft.customerId}, ${draft.orderId}, ${draft.kind}, ${draft.message}, ${now})
        ON CONFLICT (event_id) DO NOTHING`);
      if (changes !== 1) return { kind: "duplicate" };
      return { kind: "sent", notification: { id, eventId, ...draft, sentAt: now } };
    });
  }

  /**
   * Up to `limit` notifications of `customerId` (only about `orderId` unless
   * it is ""), newest first, after `cursor` (from the start when undefined).
   */
  async listByCustomer(
    customerId: string,
    orderId: string,
    cursor: NotificationCursor | undefined,
    limit: number,
  ): Promise<NotificationRecord[]> {
    const c = cursor ?? { sentAt: Number.MAX_SAFE_INTEGER, id: "" };
    const rows = await this.db.all(sql<NotificationRow>`SELECT * FROM notifications
      WHERE customer_id = ${customerId} AND (${orderId} = '' OR order_id = ${orderId})
        AND (sent_at < ${c.sentAt} OR (sent_at = ${c.sentAt} AND id < ${c.id}))
      ORDER BY sent_at DESC, id DESC LIMIT ${limit}`);
    return rows.map(toNotification);
  }

  /** Closes the database. */
  close(): Promise<void> {
    return this.db.close();
  }
}
