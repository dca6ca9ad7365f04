/**
 * Inventory persistence. Every mutation is one IMMEDIATE transaction, so it
 * is atomic against other calls in this process and against any other
 * process on the same file; CHECK constraints keep stock non-negative even if
 * a bug slipped past the domain rules.
 */

import { EVENTS } from "../../contracts/events.js";
import type { Line } from "../../contracts/lines.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  StockRejectedSchema,
  StockReleasedSchema,
  StockReservedSchema,
} from "../../gen/shopmesh/inventory/v1/events_pb.js";
import {
  type Db,
  INBOX_MIGRATION,
  keyUse,
  newId,
  OUTBOX_MIGRATION,
  Outbox,
  openDatabase,
  VOIDED,
} from "../../platform/index.js";
import {
  MAX_STOCK,
  type NewProduct,
  type Plan,
  type ProductRecord,
  planReservation,
  type Shortage,
  shortageReason,
} from "./domain.js";

const MIGRATIONS = [
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
];

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

/** Result of {@link InventoryStore.release}. */
export type ReleaseResult =
  | { readonly kind: "released" | "unchanged"; readonly reservation: ReservationRecord }
  | { readonly kind: "not-found" };

/** Result of {@link InventoryStore.cancelByKey}. */
export type CancelResult = { readonly kind: "released" | "voided" | "nothing" };

/** Result of {@link InventoryStore.reserve}. `replayed` is true for a repeat of an earlier key. */
export type ReserveResult =
  | { readonly kind: "reserved"; readonly reservation: ReservationRecord; readonly replayed: boolean }
  | { readonly kind: "rejected"; readonly shortages: readonly Shortage[]; readonly replayed: boolean }
  | { readonly kind: "key-reused" };

/** Result of {@link InventoryStore.restock}. */
export type RestockResult =
  | { readonly kind: "restocked"; readonly product: ProductRecord }
  | { readonly kind: "over-capacity"; readonly product: ProductRecord }
  | { readonly kind: "not-found" }
  | { readonly kind: "key-reused" };

interface ProductRow {
  id: string;
  name: string;
  price_minor: number;
  currency: string;
  available: number;
  reserved: number;
}

interface ReservationRow {
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

const toProduct = (r: ProductRow): ProductRecord => ({
  id: r.id,
  name: r.name,
  priceMinor: r.price_minor,
  currency: r.currency,
  available: r.available,
  reserved: r.reserved,
});

/** A RESERVED or RELEASED row as a record. */
const toReservation = (r: ReservationRow & { status: ReservationRecord["status"] }): ReservationRecord => ({
  id: r.id,
  orderId: r.order_id,
  status: r.status,
  items: JSON.parse(r.items) as Line[],
  totalMinor: r.total_minor,
  currency: r.currency,
  createdAt: r.created_at,
});

const held = (r: ReservationRow): r is ReservationRow & { status: ReservationRecord["status"] } =>
  r.status !== "REJECTED";

/** Inventory tables in one SQLite file, with the outbox its events are committed into. */
export class InventoryStore {
  private readonly q;
  /** Events committed together with the changes they record. */
  readonly outbox: Outbox;

  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
  ) {
    this.outbox = new Outbox(db, "inventory", EVENTS, clock);
    this.q = {
      product: db.prepare<[string], ProductRow>("SELECT * FROM products WHERE id = ?"),
      page: db.prepare<[string, number], ProductRow>("SELECT * FROM products WHERE id > ? ORDER BY id LIMIT ?"),
      count: db.prepare<[], { n: number }>("SELECT COUNT(*) AS n FROM products"),
      insertProduct: db.prepare(
        "INSERT INTO products (id, name, price_minor, currency, available, reserved, updated_at) VALUES (@id, @name, @priceMinor, @currency, @available, 0, @now)",
      ),
      take: db.prepare<[number, number, number, string, number]>(
        "UPDATE products SET available = available - ?, reserved = reserved + ?, updated_at = ? WHERE id = ? AND available >= ?",
      ),
      give: db.prepare<[number, number, number, string]>(
        "UPDATE products SET available = available + ?, reserved = reserved - ?, updated_at = ? WHERE id = ?",
      ),
      add: db.prepare<[number, number, string, number]>(
        "UPDATE products SET available = available + ?, updated_at = ? WHERE id = ? AND available + reserved + ? <= " +
          MAX_STOCK,
      ),
      reservationByKey: db.prepare<[string], ReservationRow>("SELECT * FROM reservations WHERE idempotency_key = ?"),
      reservation: db.prepare<[string], ReservationRow & { status: ReservationRecord["status"] }>(
        "SELECT * FROM reservations WHERE id = ? AND status != 'REJECTED'",
      ),
      insertReservation: db.prepare(
        `INSERT INTO reservations (id, idempotency_key, fingerprint, order_id, status, items, total_minor, currency, shortages, created_at, updated_at)
         VALUES (@id, @key, @fingerprint, @orderId, @status, @items, @totalMinor, @currency, @shortages, @now, @now)`,
      ),
      setReservationStatus: db.prepare<[string, number, string]>(
        "UPDATE reservations SET status = ?, updated_at = ? WHERE id = ?",
      ),
      restockByKey: db.prepare<[string], { fingerprint: string; product_id: string }>(
        "SELECT fingerprint, product_id FROM restocks WHERE idempotency_key = ?",
      ),
      insertRestock: db.prepare<[string, string, string, number, number]>(
        "INSERT INTO restocks (idempotency_key, fingerprint, product_id, quantity, created_at) VALUES (?, ?, ?, ?, ?)",
      ),
    };
  }

  /** Opens (and migrates) the store at `path` (`:memory:` for a private in-memory one). */
  static open(path: string, clock: () => number = Date.now): InventoryStore {
    return new InventoryStore(openDatabase(path, MIGRATIONS), clock);
  }

  /** Loads `products` if the catalogue is empty; returns how many were inserted. */
  seedIfEmpty(products: readonly NewProduct[]): number {
    return this.db
      .transaction(() => {
        if ((this.q.count.get()?.n ?? 0) > 0) return 0;
        const now = this.clock();
        for (const p of products) this.q.insertProduct.run({ ...p, now });
        return products.length;
      })
      .immediate();
  }

  /** One product, or undefined. */
  product(id: string): ProductRecord | undefined {
    const row = this.q.product.get(id);
    return row && toProduct(row);
  }

  /** Up to `limit` products with id greater than `after`, by id. */
  products(after: string, limit: number): ProductRecord[] {
    return this.q.page.all(after, limit).map(toProduct);
  }

  /**
   * Undoes whatever a reservation key did or would do (choreography
   * compensation): releases its reservation, or, when none was made yet,
   * voids the key so a late reservation with it is rejected. Returns what
   * happened.
   */
  cancelByKey(key: string, orderId: string): CancelResult {
    return this.db
      .transaction((): CancelResult => {
        const prior = this.q.reservationByKey.get(key);
        if (!prior) {
          const now = this.clock();
          this.q.insertReservation.run({
            id: newId("res", now),
            key,
            fingerprint: VOIDED,
            orderId,
            status: "REJECTED",
            items: "[]",
            totalMinor: 0,
            currency: "",
            shortages: "[]",
            now,
          });
          return { kind: "voided" };
        }
        if (prior.status !== "RESERVED") return { kind: "nothing" };
        this.release(prior.id);
        return { kind: "released" };
      })
      .immediate();
  }

  /**
   * Reserves all `lines` or none, idempotently by `key`: a repeat with the
   * same fingerprint returns the first outcome (reserved or rejected), a
   * different fingerprint is `key-reused`. Throws what the domain throws
   * (unknown product, mixed currencies) without writing anything.
   */
  reserve(
    key: string,
    fingerprint: string,
    orderId: string,
    lines: readonly Line[],
    sagaMode: SagaMode = SagaMode.ORCHESTRATION,
  ): ReserveResult {
    return this.db
      .transaction((): ReserveResult => {
        const prior = this.q.reservationByKey.get(key);
        switch (keyUse(prior?.fingerprint, fingerprint)) {
          case "voided":
            return { kind: "rejected", shortages: [], replayed: true };
          case "key-reused":
            return { kind: "key-reused" };
          case "replay": {
            const row = prior as ReservationRow;
            if (held(row)) return { kind: "reserved", reservation: toReservation(row), replayed: true };
            return { kind: "rejected", shortages: JSON.parse(row.shortages ?? "[]") as Shortage[], replayed: true };
          }
          case "new":
            break;
        }
        const stock = new Map<string, ProductRecord>();
        for (const l of lines) {
          const row = this.q.product.get(l.productId);
          if (row) stock.set(row.id, toProduct(row));
        }
        const plan: Plan = planReservation(lines, stock);
        const now = this.clock();
        const id = newId("res", now);
        const base = { id, key, fingerprint, orderId, items: JSON.stringify(lines), now };
        if (plan.kind === "short") {
          this.q.insertReservation.run({
            ...base,
            status: "REJECTED",
            totalMinor: 0,
            currency: "",
            shortages: JSON.stringify(plan.shortages),
          });
          this.outbox.add(StockRejectedSchema, orderId, {
            reason: shortageReason(plan.shortages),
            shortages: plan.shortages.map((x) => ({ ...x })),
          });
          return { kind: "rejected", shortages: plan.shortages, replayed: false };
        }
        for (const l of plan.lines) {
          const { changes } = this.q.take.run(l.quantity, l.quantity, now, l.productId, l.quantity);
          // Unreachable while the transaction holds the write lock; kept so a
          // future change cannot silently oversell.
          if (changes !== 1) throw new Error(`stock of ${l.productId} changed inside a reservation transaction`);
        }
        this.q.insertReservation.run({
          ...base,
          status: "RESERVED",
          totalMinor: plan.totalMinor,
          currency: plan.currency,
          shortages: null,
        });
        this.outbox.add(StockReservedSchema, orderId, {
          reservationId: id,
          items: plan.lines.map((l) => ({ ...l })),
          total: { currencyCode: plan.currency, amountMinor: BigInt(plan.totalMinor) },
          sagaMode,
        });
        return {
          kind: "reserved",
          reservation: toReservation({ ...(this.q.reservationByKey.get(key) as ReservationRow), status: "RESERVED" }),
          replayed: false,
        };
      })
      .immediate();
  }

  /**
   * Returns a reservation's units to stock. Releasing a RELEASED reservation
   * changes nothing (`unchanged`).
   */
  release(id: string): ReleaseResult {
    return this.db
      .transaction((): ReleaseResult => {
        const row = this.q.reservation.get(id);
        if (!row) return { kind: "not-found" };
        if (row.status !== "RESERVED") return { kind: "unchanged", reservation: toReservation(row) };
        const r = toReservation(row);
        const now = this.clock();
        for (const l of r.items) this.q.give.run(l.quantity, l.quantity, now, l.productId);
        this.q.setReservationStatus.run("RELEASED", now, id);
        this.outbox.add(StockReleasedSchema, r.orderId, { reservationId: id, items: r.items.map((l) => ({ ...l })) });
        return { kind: "released", reservation: { ...r, status: "RELEASED" } };
      })
      .immediate();
  }

  /**
   * Adds `quantity` units to a product, idempotently by `key`: a repeat with
   * the same fingerprint returns the product, another fingerprint is
   * `key-reused`. Never raises a product above MAX_STOCK (`over-capacity`,
   * nothing written).
   */
  restock(key: string, fingerprint: string, productId: string, quantity: number): RestockResult {
    return this.db
      .transaction((): RestockResult => {
        const prior = this.q.restockByKey.get(key);
        switch (keyUse(prior?.fingerprint, fingerprint)) {
          case "replay":
            return { kind: "restocked", product: this.product(prior?.product_id ?? "") as ProductRecord };
          case "key-reused":
          case "voided":
            return { kind: "key-reused" };
          case "new":
            break;
        }
        const product = this.product(productId);
        if (!product) return { kind: "not-found" };
        const now = this.clock();
        if (this.q.add.run(quantity, now, productId, quantity).changes !== 1) return { kind: "over-capacity", product };
        this.q.insertRestock.run(key, fingerprint, productId, quantity, now);
        return { kind: "restocked", product: this.product(productId) as ProductRecord };
      })
      .immediate();
  }

  /** Closes the database. */
  close(): void {
    this.db.close();
  }
}
