/**
 * The inventory service's tables (migrations, in order, written once for
 * both engines) and how stored rows become records: what store.ts reads and
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
} from "../../platform/index.js";
import type { ProductRecord } from "./domain.js";

export const MIGRATIONS = migrations([
  `CREATE TABLE products (
       id          TEXT PRIMARY KEY,
       name        TEXT NOT NULL,
       price_minor INTEGER NOT NULL CHECK (price_minor >= 0),
       currency    TEXT NOT NULL,
       available   INTEGER NOT NULL CHECK (available >= 0),
       reserved    INTEGER NOT NULL CHECK (reserved >= 0),
       updated_at  INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE reservations (
       id              TEXT PRIMARY KEY,
       idempotency_key TEXT NOT NULL UNIQUE,
       fingerprint     TEXT NOT NULL,
       order_id        TEXT NOT NULL,
       status          TEXT NOT NULL CHECK (status IN ('RESERVED', 'RELEASED', 'REJECTED')),
       items           TEXT NOT NULL,  -- JSON [{productId, quantity}]
       total_minor     INTEGER NOT NULL,
       currency        TEXT NOT NULL,
       shortages       TEXT,           -- JSON [{productId, requested, available}] when REJECTED
       created_at      INTEGER NOT NULL,
       updated_at      INTEGER NOT NULL
     ) STRICT;
     CREATE INDEX reservations_order ON reservations (order_id);
     CREATE TABLE restocks (
       idempotency_key TEXT PRIMARY KEY,
       fingerprint     TEXT NOT NULL,
       product_id      TEXT NOT NULL REFERENCES products (id),
       quantity        INTEGER NOT NULL CHECK (quantity > 0),
       created_at      INTEGER NOT NULL
     ) STRICT;`,
  // 2: events (transactional outbox) and choreography consumers (inbox).
  `${OUTBOX_MIGRATION}\n${INBOX_MIGRATION}`,
  // 3: relays claim outbox rows (several replicas).
  OUTBOX_CLAIMS_MIGRATION,
  // 4: consumers count each event's failures across restarts and replicas (the dead-letter limit).
  INBOX_FAILURES_MIGRATION,
  // 5: the relay finds an order's earlier unsent row, and the sent rows to purge, without reading every row.
  OUTBOX_INDEXES_MIGRATION,
  // 6: the inbox forgets an event after INBOX_KEEP_MS (its purge reads by this index).
  INBOX_PURGE_MIGRATION,
  // 7: a restock keeps the stock it left, the answer a repeat gets (none for restocks made before).
  `ALTER TABLE restocks ADD COLUMN available_after INTEGER;
   ALTER TABLE restocks ADD COLUMN reserved_after INTEGER;`,
]);

/** A reservation that holds (or held) stock. */
export interface ReservationRecord {
  readonly id: string;
  readonly orderId: string;
  readonly status: "RESERVED" | "RELEASED";
  readonly items: readonly Line[];
  readonly totalMinor: number;
  readonly currency: string;
  readonly createdAt: number;
}

export interface ProductRow {
  id: string;
  name: string;
  price_minor: number;
  currency: string;
  available: number;
  reserved: number;
}

export interface ReservationRow {
  id: string;
  fingerprint: string;
  order_id: string;
  /** REJECTED rows hold no stock: they replay a rejection (or a voided key) for the same key. */
  status: ReservationRecord["status"] | "REJECTED";
  items: string;
  total_minor: number;
  currency: string;
  shortages: string | null;
  created_at: number;
}

export const toProduct = (r: ProductRow): ProductRecord => ({
  id: r.id,
  name: r.name,
  priceMinor: r.price_minor,
  currency: r.currency,
  available: r.available,
  reserved: r.reserved,
});

/** A RESERVED or RELEASED row as a record. */
export const toReservation = (r: ReservationRow & { status: ReservationRecord["status"] }): ReservationRecord => ({
  id: r.id,
  orderId: r.order_id,
  status: r.status,
  items: JSON.parse(r.items) as Line[],
  totalMinor: r.total_minor,
  currency: r.currency,
  createdAt: r.created_at,
});

export const held = (r: ReservationRow): r is ReservationRow & { status: ReservationRecord["status"] } =>
  r.status !== "REJECTED";
