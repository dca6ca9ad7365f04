/**
 * The order store's writes. Every change is one serialised transaction that updates the order
 * and appends its step-log entry together (dropping older ones from a long log: trimSteps), so the
 * log never disagrees with the state, and a crash at any point leaves a state the saga can resume
 * from; the events a change publishes commit in the same transaction (the outbox), and its
 * announcement follows the commit (changes.ts).
 */
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
  keyUse,
  type Logger,
  newId,
  type Outbox,
  sharedNow,
  sql,
  type Tx,
} from "../../platform/index.js";
import type { OrderChanges } from "./changes.js";
import type { Guard } from "./compensation.js";
import {
  afterCompensation,
  cancellable,
  type OrderPatch,
  type OrderRecord,
  refundPending,
  type SagaMode,
  type Transition,
} from "./domain.js";
import type { Lease } from "./leases.js";
import { type OrderRow, STEP_LOG_FIRST, STEP_LOG_KEPT, type StoredStep, TRIMMABLE, toOrder } from "./schema.js";

/** What the writes work with: the database, the outbox their events go into, the clock, the change feed. */
export interface Writer {
  readonly db: Db;
  readonly outbox: Outbox;
  readonly clock: () => number;
  readonly changes: OrderChanges;
  /** Where a step log's first trim is said (schema.ts, {@link STEP_LOG_KEPT}). */
  readonly log?: Logger;
}

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

/** An order to place. */
export interface NewOrder {
  readonly customerId: string;
  readonly key: string;
  readonly fingerprint: string;
  readonly items: readonly Line[];
  readonly cardToken: string;
  readonly sagaMode: SagaMode;
}

/** Starts a placed order's saga in the transaction that places it (see {@link placeOrder}). */
export type Begin = (
  order: OrderRecord,
  fence: number,
  tx: Tx,
) => Promise<{ order: OrderRecord; steps: readonly StoredStep[] }>;

/**
 * Creates a PENDING order, idempotently per customer and key: a repeat with
 * the same fingerprint returns the existing order; another fingerprint is
 * `key-reused`. With `lease`, the new order's saga is leased to
 * `lease.owner` for `lease.ms` (orchestration: this replica drives it).
 * `begin` runs in the same transaction once the order is in (its saga's first step, which
 * commits with it) and returns the order and step log as it leaves them.
 */
export function placeOrder(
  w: Writer,
  p: NewOrder,
  lease?: { owner: string; ms: number },
  begin?: Begin,
): Promise<PlaceResult> {
  return w.db.transaction(async (tx): Promise<PlaceResult> => {
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
    const now = w.clock();
    const id = newId("ord", now);
    // Times other replicas compare with their "now" (the lease's end, the step budget's start), in
    // the clock they all read (platform/shared-clock.ts).
    const at = sharedNow(tx.engine, now);
    const [owner, until, fence] = lease ? [lease.owner, sql`${at} + ${lease.ms}`, 1] : ["", sql`${0}`, 0];
    const row = await tx.one(sql<OrderRow>`INSERT INTO orders (id, customer_id, idempotency_key, fingerprint, status,
        saga_mode, items, card_token, traceparent, created_at, updated_at, owner, lease_until, fence)
      VALUES (${id}, ${p.customerId}, ${p.key}, ${p.fingerprint}, 'PENDING', ${p.sagaMode}, ${JSON.stringify(p.items)},
        ${p.cardToken}, ${currentTraceparent()}, ${at}, ${at}, ${owner}, ${until}, ${fence})
      RETURNING *`);
    await w.outbox.add(
      tx,
      OrderPlacedSchema,
      { orderId: id, sagaMode: SagaModeEnum[p.sagaMode] },
      {
        customerId: p.customerId,
        items: p.items.map((l) => ({ ...l })),
        cardToken: p.cardToken,
        sagaMode: SagaModeEnum[p.sagaMode],
      },
    );
    const order = toOrder(row as OrderRow);
    await w.changes.changed(tx, order, null);
    w.changes.placed(tx, order);
    const begun = begin ? await begin(order, fence, tx) : { order, steps: [] };
    return { kind: "created", ...begun, fence };
  });
}

/**
 * Applies a saga transition atomically (patch + step-log entry), in `tx`
 * when given. With `guard`, applies only while the order is in
 * `guard.status`, (with `noCancel`) no cancel was requested and (with
 * `staleBefore`) it has not changed since. With
 * `lease`, applies only while the lease still carries that fencing token.
 * A step once compensated stays so, whatever is heard of it later
 * ({@link afterCompensation}).
 */
export function applyTransition(
  w: Writer,
  id: string,
  asked: Transition,
  opts: { guard?: Guard; lease?: Lease; tx?: Tx } = {},
): Promise<ApplyResult> {
  return w.db.within(opts.tx, async (tx): Promise<ApplyResult> => {
    const row = await tx.one(sql<OrderRow>`SELECT * FROM orders WHERE id = ${id} ${tx.forUpdate}`);
    if (!row) throw new Error(`order ${id} vanished`);
    const { guard, lease } = opts;
    if (lease && (row.fence !== lease.fence || row.owner !== lease.owner)) return { kind: "fenced" };
    if (
      guard &&
      (row.status !== guard.status ||
        (guard.noCancel && row.cancel_requested !== null) ||
        row.updated_at >= (guard.staleBefore ?? Number.POSITIVE_INFINITY))
    ) {
      return { kind: "skipped" };
    }
    const before = toOrder(row);
    const t = afterCompensation(before, asked);
    const now = w.clock();
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
        updated_at = ${sharedNow(tx.engine, now)}, version = version + 1
      WHERE id = ${id}
      RETURNING *`);
    const { name, status, detail, attempt } = t.log;
    // Dated in the shared clock too: a replica adopting the saga runs its step's budget from here.
    const logged = await tx.one(sql<{
      seq: number;
      at: number;
    }>`INSERT INTO saga_steps (order_id, seq, name, status, detail, attempt, at, fence)
      VALUES (${id}, (SELECT COALESCE(MAX(seq), 0) + 1 FROM saga_steps WHERE order_id = ${id}),
        ${name}, ${status}, ${detail}, ${attempt}, ${sharedNow(tx.engine, now)}, ${row.fence})
      RETURNING seq, at`);
    const step: StoredStep = { seq: logged?.seq ?? 0, ...t.log, at: logged?.at ?? now, fence: row.fence };
    await trimSteps(w, tx, id, step.seq);
    const o = toOrder(updated as OrderRow);
    if (t.patch.status !== undefined && t.patch.status !== row.status && (await publishTerminal(w, tx, o))) {
      w.changes.terminal(tx, o);
    }
    if (row.status === "CANCELLED" && refundPending(before) && !refundPending(o)) {
      // The refund a cancelled order was waiting for landed.
      await w.outbox.add(tx, OrderRefundSettledSchema, about(o), { customerId: o.customerId, detail: t.log.detail });
    }
    await w.changes.changed(tx, o, step);
    return { kind: "applied", order: o, step };
  });
}

/**
 * Once entry `seq` has taken order `id`'s step log past {@link STEP_LOG_KEPT} entries, drops those
 * between its first {@link STEP_LOG_FIRST} and its latest, but for each step's first start (where a
 * step's budget runs from, step-log.ts): a saga retrying for days (a refund through a payment outage)
 * kept two rows a retry. The entries keep their numbers, so the log still says how many there were.
 * Said once per order, when it first happens.
 */
async function trimSteps(w: Writer, tx: Tx, id: string, seq: number): Promise<void> {
  if (seq <= STEP_LOG_KEPT) return;
  await tx.run(sql`DELETE FROM saga_steps WHERE order_id = ${id}
      AND seq <= ${seq - (STEP_LOG_KEPT - STEP_LOG_FIRST)} AND ${sql.raw(TRIMMABLE)}`);
  if (seq === STEP_LOG_KEPT + 1) {
    tx.afterCommit(() =>
      w.log?.info(
        { orderId: id, first: STEP_LOG_FIRST, latest: STEP_LOG_KEPT - STEP_LOG_FIRST },
        "saga step log past its bound: entries between the first and the latest are dropped from now on (each step's first start kept)",
      ),
    );
  }
}

/** What an event about `o` says it is about: the order, and the saga mode it is driven in. */
const about = (o: OrderRecord) => ({ orderId: o.id, sagaMode: SagaModeEnum[o.sagaMode] });

/** Announces a terminal order on the bus (inside the transaction that made it terminal); false if not terminal. */
async function publishTerminal(w: Writer, tx: Tx, o: OrderRecord): Promise<boolean> {
  if (o.status === "CONFIRMED") {
    await w.outbox.add(tx, OrderConfirmedSchema, about(o), {
      customerId: o.customerId,
      total: { currencyCode: o.currency ?? "", amountMinor: BigInt(o.totalMinor ?? 0) },
      paymentId: o.paymentId,
    });
  } else if (o.status === "CANCELLED") {
    await w.outbox.add(tx, OrderCancelledSchema, about(o), {
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
export function requestCancel(w: Writer, id: string, reason: string, tx?: Tx): Promise<CancelResult> {
  return w.db.within(tx, async (tx): Promise<CancelResult> => {
    const row = await tx.one(sql<OrderRow>`SELECT * FROM orders WHERE id = ${id} ${tx.forUpdate}`);
    if (!row) return { kind: "not-found" };
    const o = toOrder(row);
    const can = cancellable(o);
    if (can === "no") return { kind: "not-cancellable", order: o };
    if (can === "already-cancelling") return { kind: "already-cancelling", order: o };
    const updated = await tx.one(sql<OrderRow>`UPDATE orders SET cancel_requested = ${reason},
      updated_at = ${sharedNow(tx.engine, w.clock())}, version = version + 1 WHERE id = ${id} RETURNING *`);
    const order = toOrder(updated as OrderRow);
    await w.changes.changed(tx, order, null);
    return { kind: "requested", order };
  });
}
