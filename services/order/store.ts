/**
 * Order persistence: orders with their saga state, and the step log. Every
 * change is one IMMEDIATE transaction that updates the order and appends its
 * step-log entry together, so the log never disagrees with the state, and a
 * crash at any point leaves a state the saga can resume from.
 */
import { EventEmitter } from "node:events";
import { EVENTS } from "../../contracts/events.js";
import type { Line } from "../../contracts/lines.js";
import { SagaMode as SagaModeEnum } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  OrderCancelledSchema,
  OrderConfirmedSchema,
  OrderPlacedSchema,
} from "../../gen/shopmesh/order/v1/events_pb.js";
import {
  currentTraceparent,
  type Db,
  INBOX_MIGRATION,
  keyUse,
  newId,
  OUTBOX_MIGRATION,
  Outbox,
  openDatabase,
} from "../../platform/index.js";
import {
  cancellable,
  type OrderPatch,
  type OrderRecord,
  type OrderStatus,
  type SagaMode,
  type StepLogEntry,
  type Transition,
} from "./domain.js";

const MIGRATIONS = [
  `CREATE TABLE orders (
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
   ) STRICT;`,
  // 2: events (transactional outbox) and choreography consumers (inbox).
  `${OUTBOX_MIGRATION}\n${INBOX_MIGRATION}`,
  // 3: the trace of the request that placed the order, so a saga resumed after a crash continues it.
  "ALTER TABLE orders ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';",
];

interface OrderRow {
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
}

/** A stored step-log entry with its time. */
export interface StoredStep extends StepLogEntry {
  readonly at: number;
}

const toOrder = (r: OrderRow): OrderRecord => ({
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
});

const NO_PATCH: Record<keyof Required<OrderPatch>, null> = {
  status: null,
  reason: null,
  totalMinor: null,
  currency: null,
  stock: null,
  reservationId: null,
  payment: null,
  paymentId: null,
};

/** What placing an order did. */
export type PlaceResult =
  | { readonly kind: "created" | "existing"; readonly order: OrderRecord }
  | { readonly kind: "key-reused" };

/** What a cancel request did. */
export type CancelResult =
  | { readonly kind: "requested" | "already-cancelling"; readonly order: OrderRecord }
  | { readonly kind: "not-cancellable"; readonly order: OrderRecord }
  | { readonly kind: "not-found" };

/**
 * Orders and saga step logs in one SQLite file, with the outbox its events
 * are committed into. Emits `change(order)` after every commit.
 */
export class OrderStore {
  private readonly q;
  private readonly events = new EventEmitter();
  /** Events committed together with the changes they record. */
  readonly outbox: Outbox;

  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
  ) {
    this.events.setMaxListeners(0);
    this.outbox = new Outbox(db, "order", EVENTS, clock);
    this.q = {
      get: db.prepare<[string], OrderRow>("SELECT * FROM orders WHERE id = ?"),
      byKey: db.prepare<[string, string], OrderRow>(
        "SELECT * FROM orders WHERE customer_id = ? AND idempotency_key = ?",
      ),
      insert: db.prepare(
        `INSERT INTO orders (id, customer_id, idempotency_key, fingerprint, status, saga_mode, items, card_token, traceparent, created_at, updated_at)
         VALUES (@id, @customerId, @key, @fingerprint, 'PENDING', @sagaMode, @items, @cardToken, @traceparent, @now, @now)`,
      ),
      steps: db.prepare<[string], StoredStep>(
        "SELECT name, status, detail, attempt, at FROM saga_steps WHERE order_id = ? ORDER BY seq",
      ),
      addStep: db.prepare<[StepLogEntry & { id: string; at: number }]>(
        `INSERT INTO saga_steps (order_id, seq, name, status, detail, attempt, at)
         VALUES (@id, (SELECT COALESCE(MAX(seq), 0) + 1 FROM saga_steps WHERE order_id = @id), @name, @status, @detail, @attempt, @at)`,
      ),
      // One statement for every patch: an absent field binds NULL and keeps the column.
      patch: db.prepare(
        `UPDATE orders SET
           status = COALESCE(@status, status), reason = COALESCE(@reason, reason),
           total_minor = COALESCE(@totalMinor, total_minor), currency = COALESCE(@currency, currency),
           stock = COALESCE(@stock, stock), reservation_id = COALESCE(@reservationId, reservation_id),
           payment = COALESCE(@payment, payment), payment_id = COALESCE(@paymentId, payment_id),
           updated_at = @now
         WHERE id = @id`,
      ),
      page: db.prepare<[string, number, number, string, number], OrderRow>(
        `SELECT * FROM orders WHERE customer_id = ? AND (created_at < ? OR (created_at = ? AND id < ?))
         ORDER BY created_at DESC, id DESC LIMIT ?`,
      ),
      active: db.prepare<[string], { id: string }>(
        "SELECT id FROM orders WHERE status IN ('PENDING', 'COMPENSATING') AND saga_mode = ? ORDER BY created_at",
      ),
      requestCancel: db.prepare<[string, number, string]>(
        "UPDATE orders SET cancel_requested = ?, updated_at = ? WHERE id = ?",
      ),
    };
  }

  /** Opens (and migrates) the store at `path`. */
  static open(path: string, clock: () => number = Date.now): OrderStore {
    return new OrderStore(openDatabase(path, MIGRATIONS), clock);
  }

  /** Subscribes to newly placed orders (after commit); returns the unsubscribe function. */
  onPlaced(listener: (order: OrderRecord) => void): () => void {
    this.events.on("placed", listener);
    return () => this.events.off("placed", listener);
  }

  /** Subscribes to orders becoming CONFIRMED or CANCELLED (after commit), once each. */
  onTerminal(listener: (order: OrderRecord) => void): () => void {
    this.events.on("terminal", listener);
    return () => this.events.off("terminal", listener);
  }

  /** Subscribes to committed changes; returns the unsubscribe function. */
  onChange(listener: (order: OrderRecord) => void): () => void {
    this.events.on("change", listener);
    return () => this.events.off("change", listener);
  }

  /** Tells watchers after the surrounding transaction (if any) has committed. */
  private changed(order: OrderRecord): void {
    queueMicrotask(() => this.events.emit("change", order));
  }

  /** One order, or undefined. */
  get(id: string): OrderRecord | undefined {
    const row = this.q.get.get(id);
    return row && toOrder(row);
  }

  /** The order's step log, oldest first. */
  steps(id: string): StoredStep[] {
    return this.q.steps.all(id);
  }

  /**
   * Creates a PENDING order, idempotently per customer and key: a repeat with
   * the same fingerprint returns the existing order; another fingerprint is
   * `key-reused`.
   */
  place(p: {
    customerId: string;
    key: string;
    fingerprint: string;
    items: readonly Line[];
    cardToken: string;
    sagaMode: SagaMode;
  }): PlaceResult {
    const result = this.db
      .transaction((): PlaceResult => {
        const prior = this.q.byKey.get(p.customerId, p.key);
        switch (keyUse(prior?.fingerprint, p.fingerprint)) {
          case "replay":
            return { kind: "existing", order: toOrder(prior as OrderRow) };
          case "key-reused":
          case "voided": // order keys are never voided
            return { kind: "key-reused" };
          case "new":
            break;
        }
        const now = this.clock();
        const id = newId("ord", now);
        this.q.insert.run({ ...p, id, now, items: JSON.stringify(p.items), traceparent: currentTraceparent() });
        this.outbox.add(OrderPlacedSchema, id, {
          customerId: p.customerId,
          items: p.items.map((l) => ({ ...l })),
          cardToken: p.cardToken,
          sagaMode: SagaModeEnum[p.sagaMode],
        });
        return { kind: "created", order: toOrder(this.q.get.get(id) as OrderRow) };
      })
      .immediate();
    if (result.kind === "created") {
      this.changed(result.order);
      const placed = result.order;
      queueMicrotask(() => this.events.emit("placed", placed));
    }
    return result;
  }

  /**
   * Applies a saga transition atomically (patch + step-log entry). With
   * `guard`, applies only while the order is in `guard.status` and (with
   * `noCancel`) no cancel was requested; returns whether it applied.
   */
  apply(id: string, t: Transition, guard?: { status: OrderStatus; noCancel?: boolean }): boolean {
    const applied = this.db
      .transaction((): OrderRecord | false => {
        const row = this.q.get.get(id);
        if (!row) throw new Error(`order ${id} vanished`);
        if (guard && (row.status !== guard.status || (guard.noCancel && row.cancel_requested !== null))) return false;
        const now = this.clock();
        this.q.patch.run({ ...NO_PATCH, ...t.patch, id, now });
        this.q.addStep.run({ ...t.log, id, at: now });
        const o = toOrder(this.q.get.get(id) as OrderRow);
        if (t.patch.status !== undefined && t.patch.status !== row.status && this.publishTerminal(o)) {
          queueMicrotask(() => this.events.emit("terminal", o));
        }
        return o;
      })
      .immediate();
    if (!applied) return false;
    this.changed(applied);
    return true;
  }

  /** Announces a terminal order on the bus (inside the transaction that made it terminal); false if not terminal. */
  private publishTerminal(o: OrderRecord): boolean {
    if (o.status === "CONFIRMED") {
      this.outbox.add(OrderConfirmedSchema, o.id, {
        customerId: o.customerId,
        total: { currencyCode: o.currency ?? "", amountMinor: BigInt(o.totalMinor ?? 0) },
        paymentId: o.paymentId,
      });
    } else if (o.status === "CANCELLED") {
      this.outbox.add(OrderCancelledSchema, o.id, {
        customerId: o.customerId,
        reason: o.reason,
        sagaMode: SagaModeEnum[o.sagaMode],
      });
    } else {
      return false;
    }
    return true;
  }

  /** Records the customer's wish to cancel, if the order still allows it. */
  requestCancel(id: string, reason: string): CancelResult {
    const result = this.db
      .transaction((): CancelResult => {
        const row = this.q.get.get(id);
        if (!row) return { kind: "not-found" };
        const o = toOrder(row);
        const can = cancellable(o);
        if (can === "no") return { kind: "not-cancellable", order: o };
        if (can === "already-cancelling") return { kind: "already-cancelling", order: o };
        this.q.requestCancel.run(reason, this.clock(), id);
        return { kind: "requested", order: toOrder(this.q.get.get(id) as OrderRow) };
      })
      .immediate();
    if (result.kind === "requested") this.changed(result.order);
    return result;
  }

  /** A page of a customer's orders, newest first, after the cursor (exclusive). */
  listByCustomer(
    customerId: string,
    after: { createdAt: number; id: string } | undefined,
    limit: number,
  ): OrderRecord[] {
    const c = after ?? { createdAt: Number.MAX_SAFE_INTEGER, id: "" };
    return this.q.page.all(customerId, c.createdAt, c.createdAt, c.id, limit).map(toOrder);
  }

  /** Ids of orders whose saga in `mode` has not finished, oldest first. */
  activeIds(mode: SagaMode): string[] {
    return this.q.active.all(mode).map((r) => r.id);
  }

  /** Closes the database. */
  close(): void {
    this.db.close();
  }
}
