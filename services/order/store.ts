/**
 * Order persistence, on SQLite or PostgreSQL: orders with their saga state,
 * and the step log. Every change is one serialised transaction that updates
 * the order and appends its step-log entry together, so the log never
 * disagrees with the state, and a crash at any point leaves a state the saga
 * can resume from.
 *
 * Several replicas share the orders: each orchestrated saga is driven by the
 * replica holding its lease (`owner` until `lease_until`), and every saga
 * write names the lease's fencing token (`fence`, raised by every new
 * claim): a replica that was paused or cut off past its lease writes nothing
 * once another has claimed the order. Changes are announced after commit —
 * to this process, and on PostgreSQL to every replica (NOTIFY), so a
 * WatchOrder on any replica follows a saga driven by another.
 */
import { EventEmitter } from "node:events";
import { EVENTS } from "../../contracts/events.js";
import type { Line } from "../../contracts/lines.js";
import { SagaMode as SagaModeEnum } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  OrderCancelledSchema,
  OrderConfirmedSchema,
  OrderPlacedSchema,
  OrderRefundSettledSchema,
} from "../../gen/shopmesh/order/v1/events_pb.js";
import {
  currentTraceparent,
  type Db,
  type DbLocation,
  keyUse,
  type Listening,
  newId,
  Outbox,
  openDatabase,
  sql,
  type Tx,
} from "../../platform/index.js";
import {
  cancellable,
  type OrderPatch,
  type OrderRecord,
  type OrderStatus,
  refundPending,
  type SagaMode,
  type Transition,
} from "./domain.js";
import { MIGRATIONS, type OrderRow, type StoredStep, toOrder } from "./schema.js";

/** The PostgreSQL channel on which every committed order change is announced (payload: "<origin> <order id>"). */
const CHANGED = "shopmesh_order_changed";

/** What placing an order did; `fence` is the lease token when this replica now drives the saga. */
export type PlaceResult =
  | {
      readonly kind: "created";
      /** The order as the placing transaction left it, with its step log. */
      readonly order: OrderRecord;
      readonly steps: readonly StoredStep[];
      readonly fence: number;
    }
  | { readonly kind: "existing"; readonly order: OrderRecord }
  | { readonly kind: "key-reused" };

/** What a cancel request did. */
export type CancelResult =
  | { readonly kind: "requested" | "already-cancelling"; readonly order: OrderRecord }
  | { readonly kind: "not-cancellable"; readonly order: OrderRecord }
  | { readonly kind: "not-found" };

/** What applying a transition did: `skipped` when its guard did not hold, `fenced` when the lease was lost. */
export type ApplyResult =
  | { readonly kind: "applied"; readonly order: OrderRecord; readonly step: StoredStep }
  | { readonly kind: "skipped" }
  | { readonly kind: "fenced" };

/** A saga lease: which replica drives an order, and the fencing token every write of it carries. */
export interface Lease {
  readonly owner: string;
  readonly fence: number;
}

/** Orders whose saga has more to do: running forward or back, or cancelled with a refund still to land. */
const UNFINISHED = sql`(status IN ('PENDING', 'COMPENSATING')
  OR (status = 'CANCELLED' AND payment IN ('attempted', 'done')))`;

/** Orders and saga step logs, with the outbox their events are committed into. */
export class OrderStore {
  private readonly events = new EventEmitter();
  private listening: Listening | undefined;
  /** This store's name in NOTIFY payloads: it hears its own changes at commit, not through the database. */
  private readonly origin = newId("store");
  /** Events committed together with the changes they record. */
  readonly outbox: Outbox;

  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
  ) {
    this.events.setMaxListeners(0);
    this.outbox = new Outbox("order", EVENTS, clock);
  }

  /** Opens (and migrates) the store at `location`; on PostgreSQL, hears changes made by other replicas. */
  static async open(location: DbLocation, clock: () => number = Date.now): Promise<OrderStore> {
    const store = new OrderStore(await openDatabase(location, MIGRATIONS), clock);
    store.listening = await store.db.listen?.(CHANGED, (payload) => void store.heard(payload));
    return store;
  }

  /**
   * Another replica changed an order (or, "*", the connection was lost and
   * some changes may have been missed): re-reads the orders someone here
   * watches, and tells their watchers. Orders nobody here watches cost nothing.
   */
  private async heard(payload: string): Promise<void> {
    const [origin, id = ""] = payload.split(" ");
    if (origin === this.origin) return;
    const watched = (o: string) => this.events.listenerCount(`change:${o}`) > 0;
    // What the change appended to the step log is not known here (undefined): watchers read it.
    const all = () =>
      this.events.eventNames().flatMap((e) => (String(e).startsWith("change:") ? [String(e).slice(7)] : []));
    const ids = payload === "*" ? all() : [id];
    try {
      for (const o of ids.filter(watched)) {
        const order = await this.get(o);
        if (order) this.events.emit(`change:${o}`, order);
      }
    } catch {
      // The database is away; watchers hear of the change on the next one (or "*" after reconnecting).
    }
  }

  /** Subscribes to newly placed orders (after commit, by this replica); returns the unsubscribe function. */
  onPlaced(listener: (order: OrderRecord) => void): () => void {
    this.events.on("placed", listener);
    return () => this.events.off("placed", listener);
  }

  /** Subscribes to orders becoming CONFIRMED or CANCELLED (after commit, by this replica), once each. */
  onTerminal(listener: (order: OrderRecord) => void): () => void {
    this.events.on("terminal", listener);
    return () => this.events.off("terminal", listener);
  }

  /**
   * Subscribes to committed changes of order `id`, by any replica; returns the unsubscribe
   * function. With each change comes the step-log entry it appended: `null` when it appended
   * none, undefined when that is not known here (a change made by another replica).
   */
  onChange(id: string, listener: (order: OrderRecord, step?: StoredStep | null) => void): () => void {
    this.events.on(`change:${id}`, listener);
    return () => this.events.off(`change:${id}`, listener);
  }

  /** Announces `order` (and the step it appended) after `tx` commits: here at once, and to the other replicas through NOTIFY. */
  private async changed(tx: Tx, order: OrderRecord, step: StoredStep | null): Promise<void> {
    if (this.listening) await tx.run(sql`SELECT pg_notify(${CHANGED}, ${`${this.origin} ${order.id}`})`);
    tx.afterCommit(() => this.events.emit(`change:${order.id}`, order, step));
  }

  /** One order, or undefined; in `tx` when given. */
  async get(id: string, tx?: Tx): Promise<OrderRecord | undefined> {
    const row = await (tx ?? this.db).one(sql<OrderRow>`SELECT * FROM orders WHERE id = ${id}`);
    return row && toOrder(row);
  }

  /** The order's step log, oldest first. */
  steps(id: string): Promise<StoredStep[]> {
    return this.db.all(
      sql<StoredStep>`SELECT seq, name, status, detail, attempt, at, fence FROM saga_steps WHERE order_id = ${id} ORDER BY seq`,
    );
  }

  /**
   * Creates a PENDING order, idempotently per customer and key: a repeat with
   * the same fingerprint returns the existing order; another fingerprint is
   * `key-reused`. With `lease`, the new order's saga is leased to
   * `lease.owner` for `lease.ms` (orchestration: this replica drives it).
   * `begin` runs in the same transaction once the order is in (its saga's first step, which
   * commits with it) and returns the order and step log as it leaves them.
   */
  place(
    p: {
      customerId: string;
      key: string;
      fingerprint: string;
      items: readonly Line[];
      cardToken: string;
      sagaMode: SagaMode;
    },
    lease?: { owner: string; ms: number },
    begin?: (
      order: OrderRecord,
      fence: number,
      tx: Tx,
    ) => Promise<{ order: OrderRecord; steps: readonly StoredStep[] }>,
  ): Promise<PlaceResult> {
    return this.db.transaction(async (tx): Promise<PlaceResult> => {
      const prior = await tx.one(
        sql<OrderRow>`SELECT * FROM orders WHERE customer_id = ${p.customerId} AND idempotency_key = ${p.key}`,
      );
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
      const [owner, until, fence] = lease ? [lease.owner, now + lease.ms, 1] : ["", 0, 0];
      const row = await tx.one(sql<OrderRow>`INSERT INTO orders (id, customer_id, idempotency_key, fingerprint, status,
          saga_mode, items, card_token, traceparent, created_at, updated_at, owner, lease_until, fence)
        VALUES (${id}, ${p.customerId}, ${p.key}, ${p.fingerprint}, 'PENDING', ${p.sagaMode}, ${JSON.stringify(p.items)},
          ${p.cardToken}, ${currentTraceparent()}, ${now}, ${now}, ${owner}, ${until}, ${fence})
        RETURNING *`);
      await this.outbox.add(tx, OrderPlacedSchema, id, {
        customerId: p.customerId,
        items: p.items.map((l) => ({ ...l })),
        cardToken: p.cardToken,
        sagaMode: SagaModeEnum[p.sagaMode],
      });
      const order = toOrder(row as OrderRow);
      await this.changed(tx, order, null);
      tx.afterCommit(() => this.events.emit("placed", order));
      const begun = begin ? await begin(order, fence, tx) : { order, steps: [] };
      return { kind: "created", ...begun, fence };
    });
  }

  /**
   * Applies a saga transition atomically (patch + step-log entry), in `tx`
   * when given. With `guard`, applies only while the order is in
   * `guard.status` and (with `noCancel`) no cancel was requested. With
   * `lease`, applies only while the lease still carries that fencing token.
   */
  apply(
    id: string,
    t: Transition,
    opts: { guard?: { status: OrderStatus; noCancel?: boolean }; lease?: Lease; tx?: Tx } = {},
  ): Promise<ApplyResult> {
    return this.db.within(opts.tx, async (tx): Promise<ApplyResult> => {
      const row = await tx.one(sql<OrderRow>`SELECT * FROM orders WHERE id = ${id} ${tx.forUpdate}`);
      if (!row) throw new Error(`order ${id} vanished`);
      const { guard, lease } = opts;
      if (lease && (row.fence !== lease.fence || row.owner !== lease.owner)) return { kind: "fenced" };
      if (guard && (row.status !== guard.status || (guard.noCancel && row.cancel_requested !== null))) {
        return { kind: "skipped" };
      }
      const now = this.clock();
      const q: Required<{ [K in keyof OrderPatch]: OrderPatch[K] | null }> = {
        status: null,
        reason: null,
        totalMinor: null,
        currency: null,
        stock: null,
        reservationId: null,
        payment: null,
        paymentId: null,
        ...t.patch,
      };
      // One statement for every patch: an absent field binds NULL and keeps the column.
      const updated = await tx.one(sql<OrderRow>`UPDATE orders SET
          status = COALESCE(${q.status}, status), reason = COALESCE(${q.reason}, reason),
          total_minor = COALESCE(${q.totalMinor}, total_minor), currency = COALESCE(${q.currency}, currency),
          stock = COALESCE(${q.stock}, stock), reservation_id = COALESCE(${q.reservationId}, reservation_id),
          payment = COALESCE(${q.payment}, payment), payment_id = COALESCE(${q.paymentId}, payment_id),
          updated_at = ${now}, version = version + 1
        WHERE id = ${id}
        RETURNING *`);
      const { name, status, detail, attempt } = t.log;
      const logged = await tx.one(sql<{
        seq: number;
      }>`INSERT INTO saga_steps (order_id, seq, name, status, detail, attempt, at, fence)
        VALUES (${id}, (SELECT COALESCE(MAX(seq), 0) + 1 FROM saga_steps WHERE order_id = ${id}),
          ${name}, ${status}, ${detail}, ${attempt}, ${now}, ${row.fence})
        RETURNING seq`);
      const step: StoredStep = { seq: logged?.seq ?? 0, ...t.log, at: now, fence: row.fence };
      const o = toOrder(updated as OrderRow);
      if (t.patch.status !== undefined && t.patch.status !== row.status && (await this.publishTerminal(tx, o))) {
        tx.afterCommit(() => this.events.emit("terminal", o));
      }
      if (row.status === "CANCELLED" && refundPending(toOrder(row)) && !refundPending(o)) {
        // The refund a cancelled order was waiting for landed.
        await this.outbox.add(tx, OrderRefundSettledSchema, o.id, { customerId: o.customerId, detail: t.log.detail });
      }
      await this.changed(tx, o, step);
      return { kind: "applied", order: o, step };
    });
  }

  /** Announces a terminal order on the bus (inside the transaction that made it terminal); false if not terminal. */
  private async publishTerminal(tx: Tx, o: OrderRecord): Promise<boolean> {
    if (o.status === "CONFIRMED") {
      await this.outbox.add(tx, OrderConfirmedSchema, o.id, {
        customerId: o.customerId,
        total: { currencyCode: o.currency ?? "", amountMinor: BigInt(o.totalMinor ?? 0) },
        paymentId: o.paymentId,
      });
    } else if (o.status === "CANCELLED") {
      await this.outbox.add(tx, OrderCancelledSchema, o.id, {
        customerId: o.customerId,
        reason: o.reason,
        sagaMode: SagaModeEnum[o.sagaMode],
        refundPending: refundPending(o),
      });
    } else {
      return false;
    }
    return true;
  }

  /** Records the customer's wish to cancel, if the order still allows it; in `tx` when given. */
  requestCancel(id: string, reason: string, tx?: Tx): Promise<CancelResult> {
    return this.db.within(tx, async (tx): Promise<CancelResult> => {
      const row = await tx.one(sql<OrderRow>`SELECT * FROM orders WHERE id = ${id} ${tx.forUpdate}`);
      if (!row) return { kind: "not-found" };
      const o = toOrder(row);
      const can = cancellable(o);
      if (can === "no") return { kind: "not-cancellable", order: o };
      if (can === "already-cancelling") return { kind: "already-cancelling", order: o };
      const updated = await tx.one(sql<OrderRow>`UPDATE orders SET cancel_requested = ${reason},
        updated_at = ${this.clock()}, version = version + 1 WHERE id = ${id} RETURNING *`);
      const order = toOrder(updated as OrderRow);
      await this.changed(tx, order, null);
      return { kind: "requested", order };
    });
  }

  /** A page of a customer's orders, newest first, after the cursor (exclusive). */
  async listByCustomer(
    customerId: string,
    after: { createdAt: number; id: string } | undefined,
    limit: number,
  ): Promise<OrderRecord[]> {
    const c = after ?? { createdAt: Number.MAX_SAFE_INTEGER, id: "" };
    const rows = await this.db.all(sql<OrderRow>`SELECT * FROM orders
      WHERE customer_id = ${customerId} AND (created_at < ${c.createdAt} OR (created_at = ${c.createdAt} AND id < ${c.id}))
      ORDER BY created_at DESC, id DESC LIMIT ${limit}`);
    return rows.map(toOrder);
  }

  /** Choreographed orders still PENDING whose last change is older than `before` (epoch ms), oldest first. */
  async stalledChoreography(before: number): Promise<string[]> {
    const rows = await this.db.all(sql<{ id: string }>`SELECT id FROM orders
      WHERE status = 'PENDING' AND saga_mode = 'CHOREOGRAPHY' AND updated_at < ${before}
      ORDER BY updated_at LIMIT 100`);
    return rows.map((r) => r.id);
  }

  /** Ids of orders whose saga (in `mode`, or any) has not finished, oldest first. */
  async activeIds(mode?: SagaMode): Promise<string[]> {
    const rows = await this.db.all(sql<{ id: string }>`SELECT id FROM orders
      WHERE ${UNFINISHED} AND (${mode ?? ""} = '' OR saga_mode = ${mode ?? ""})
      ORDER BY created_at`);
    return rows.map((r) => r.id);
  }

  /**
   * Claims for `owner`, for `ms`, the lease of every unfinished orchestrated
   * saga that no live replica holds (its lease ran out or was given back) —
   * or of every one (`all`: only when no other process can hold any);
   * returns the claimed orders with their new fencing tokens.
   */
  claimSagas(owner: string, ms: number, scope: "expired" | "all"): Promise<{ id: string; fence: number }[]> {
    const now = this.clock();
    return this.db.transaction((tx) =>
      tx.all(sql<{
        id: string;
        fence: number;
      }>`UPDATE orders SET owner = ${owner}, lease_until = ${now + ms}, fence = fence + 1
        WHERE id IN (SELECT id FROM orders
                     WHERE ${UNFINISHED} AND saga_mode = 'ORCHESTRATION'
                       AND (lease_until < ${now} OR ${scope === "all" ? 1 : 0} = 1)
                     ORDER BY created_at LIMIT 1000)
        RETURNING id, fence`),
    );
  }

  /** Extends by `ms` from now the leases `owner` still holds on the sagas `ids`; how many it extended. */
  async renewLeases(owner: string, ids: readonly string[], ms: number): Promise<number> {
    if (ids.length === 0) return 0;
    const among =
      this.db.engine === "postgres"
        ? sql`id = ANY(${[...ids]}::text[])`
        : sql`id IN (SELECT value FROM json_each(${JSON.stringify(ids)}))`;
    return this.db.run(sql`UPDATE orders SET lease_until = ${this.clock() + ms}
      WHERE owner = ${owner} AND ${among} AND ${UNFINISHED}`);
  }

  /** Gives back every lease `owner` holds (a graceful stop), so other replicas adopt those sagas at once. */
  releaseLeases(owner: string): Promise<number> {
    return this.db.run(sql`UPDATE orders SET lease_until = 0 WHERE owner = ${owner} AND ${UNFINISHED}`);
  }

  /** Closes the database (and the change listener). */
  async close(): Promise<void> {
    await this.listening?.close();
    await this.db.close();
  }
}
