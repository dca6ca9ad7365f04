/**
 * The order service's tables (migrations, in order, written once for both
 * engines) and how a stored row becomes a record: what store.ts reads and
 * writes, kept apart from how it does so.
 */
import type { Line } from "../../contracts/lines.js";
import {
  INBOX_FAILURES_MIGRATION,
  INBOX_MIGRATION,
  INBOX_PURGE_MIGRATION,
  migrations,
  OUTBOX_CLAIMS_MIGRATION,
  OUTBOX_INDEXES_MIGRATION,
  OUTBOX_MIGRATION,
  sql,
} from "../../platform/index.js";
import type { OrderRecord, OrderStatus, SagaMode, StepLogEntry } from "./domain.js";

const ORDERS = `CREATE TABLE orders (
     id               TEXT PRIMARY KEY,
     customer_id      TEXT NOT NULL,
     idempotency_key  TEXT NOT NULL,
     fingerprint      TEXT NOT NULL,
     status           TEXT NOT NULL CHECK (status IN ('PENDING', 'COMPENSATING', 'CONFIRMED', 'CANCELLED')),
     reason           TEXT NOT NULL DEFAULT '',
     saga_mode        TEXT NOT NULL CHECK (saga_mode IN ('ORCHESTRATION', 'CHOREOGRAPHY')),
     items            TEXT NOT NULL,  -- JSON [{productId, quantity}]
     card_token       TEXT NOT NULL,
     total_minor      INTEGER,
     currency         TEXT,
     stock            TEXT NOT NULL DEFAULT 'none' CHECK (stock IN ('none', 'attempted', 'done', 'undone')),
     reservation_id   TEXT NOT NULL DEFAULT '',
     payment          TEXT NOT NULL DEFAULT 'none' CHECK (payment IN ('none', 'attempted', 'done', 'undone')),
     payment_id       TEXT NOT NULL DEFAULT '',
     cancel_requested TEXT,
     created_at       INTEGER NOT NULL,
     updated_at       INTEGER NOT NULL,
     UNIQUE (customer_id, idempotency_key)
   ) STRICT;
   CREATE INDEX orders_customer ON orders (customer_id, created_at DESC, id DESC);
   CREATE INDEX orders_active ON orders (status) WHERE status IN ('PENDING', 'COMPENSATING');
   CREATE TABLE saga_steps (
     order_id TEXT NOT NULL REFERENCES orders (id),
     seq      INTEGER NOT NULL,
     name     TEXT NOT NULL,
     status   TEXT NOT NULL,
     detail   TEXT NOT NULL,
     attempt  INTEGER NOT NULL,
     at       INTEGER NOT NULL,
     PRIMARY KEY (order_id, seq)
   ) STRICT;`;

/**
 * The entries an order's stored step log keeps: its first {@link STEP_LOG_FIRST} and its latest
 * {@link STEP_LOG_KEPT} − {@link STEP_LOG_FIRST} (what an Order message shows), and the first start
 * of each step. A saga retrying for a long time (a refund through a payment outage: compensation has
 * no budget) wrote two rows a retry for as long as it lasted, every one read again by each GetOrder.
 */
export const STEP_LOG_KEPT = 64;
/** The oldest entries an order's stored step log always keeps (see {@link STEP_LOG_KEPT}). */
export const STEP_LOG_FIRST = 16;

/**
 * The entries of a step log that past {@link STEP_LOG_KEPT} may go, short of the latest: neither its
 * first {@link STEP_LOG_FIRST} nor a step's first start (store-writes.ts trimSteps, and migration 9).
 */
export const TRIMMABLE = `seq > ${STEP_LOG_FIRST} AND NOT (status = 'STARTED' AND attempt = 1)`;

/** `log` (oldest first) as an Order message carries it: whole up to {@link STEP_LOG_KEPT} entries, else the first and the latest. */
export function stepWindow<S>(log: readonly S[]): readonly S[] {
  if (log.length <= STEP_LOG_KEPT) return log;
  return [...log.slice(0, STEP_LOG_FIRST), ...log.slice(log.length - (STEP_LOG_KEPT - STEP_LOG_FIRST))];
}

/** Orders whose saga has more to do: running forward or back, or cancelled with a refund still to land. */
export const UNFINISHED = sql`(status IN ('PENDING', 'COMPENSATING')
  OR (status = 'CANCELLED' AND payment IN ('attempted', 'done')))`;

export const MIGRATIONS = migrations([
  ORDERS,
  // 2: events (transactional outbox) and choreography consumers (inbox).
  `${OUTBOX_MIGRATION}\n${INBOX_MIGRATION}`,
  // 3: the trace of the request that placed the order, so a saga resumed after a crash continues it.
  "ALTER TABLE orders ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';",
  // 4: relays claim outbox rows; sagas are driven under a fenced lease (several replicas).
  `${OUTBOX_CLAIMS_MIGRATION}
     ALTER TABLE orders ADD COLUMN owner TEXT NOT NULL DEFAULT '';
     ALTER TABLE orders ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE orders ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE saga_steps ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE orders ADD COLUMN version INTEGER NOT NULL DEFAULT 0;`,
  // 5: a cancelled order whose refund has not landed still has a saga to drive.
  `DROP INDEX orders_active;
   CREATE INDEX orders_active ON orders (status)
     WHERE status IN ('PENDING', 'COMPENSATING') OR (status = 'CANCELLED' AND payment IN ('attempted', 'done'));`,
  // 6: consumers count each event's failures across restarts and replicas (the dead-letter limit).
  INBOX_FAILURES_MIGRATION,
  // 7: the relay finds an order's earlier unsent row, and the sent rows to purge, without reading every row.
  OUTBOX_INDEXES_MIGRATION,
  // 8: the inbox forgets an event after INBOX_KEEP_MS (its purge reads by this index).
  INBOX_PURGE_MIGRATION,
  // 9: a step log that grew before it was bounded is bounded now, not only when its saga writes again
  // (a settled order's never does, and each read of it read every row).
  `DELETE FROM saga_steps
     WHERE seq <= (SELECT MAX(s.seq) FROM saga_steps s WHERE s.order_id = saga_steps.order_id) - ${STEP_LOG_KEPT - STEP_LOG_FIRST}
     AND ${TRIMMABLE};`,
]);

export interface OrderRow {
  id: string;
  customer_id: string;
  fingerprint: string;
  status: OrderStatus;
  reason: string;
  saga_mode: SagaMode;
  items: string;
  card_token: string;
  total_minor: number | null;
  currency: string | null;
  stock: OrderRecord["stock"];
  reservation_id: string;
  payment: OrderRecord["payment"];
  payment_id: string;
  cancel_requested: string | null;
  traceparent: string;
  created_at: number;
  updated_at: number;
  owner: string;
  lease_until: number;
  fence: number;
  version: number;
}

/** A stored step-log entry with its place in the order's log, its time and the fencing token of the owner that wrote it. */
export interface StoredStep extends StepLogEntry {
  /** 1, 2, ... in the order's log. */
  readonly seq: number;
  readonly at: number;
  readonly fence: number;
}

export const toOrder = (r: OrderRow): OrderRecord => ({
  id: r.id,
  customerId: r.customer_id,
  status: r.status,
  reason: r.reason,
  sagaMode: r.saga_mode,
  items: JSON.parse(r.items) as Line[],
  cardToken: r.card_token,
  totalMinor: r.total_minor,
  currency: r.currency,
  stock: r.stock,
  reservationId: r.reservation_id,
  payment: r.payment,
  paymentId: r.payment_id,
  cancelRequested: r.cancel_requested,
  traceparent: r.traceparent,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
  version: r.version,
});
