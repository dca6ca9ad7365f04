/**
 * The choreographed checkout, order's side. No one drives it: inventory
 * reacts to OrderPlaced, payment to StockReserved, and the order service to
 * their outcomes:
 *
 *   OrderPlaced -> StockReserved + PaymentSucceeded --> CONFIRMED (OrderConfirmed)
 *               -> StockRejected ---------------------> CANCELLED (OrderCancelled)
 *                                -> PaymentFailed ----> CANCELLED (OrderCancelled)
 *
 * The two streams are consumed independently, so PaymentSucceeded may be
 * handled before StockReserved: the order confirms when it has heard both,
 * whichever came last (each handler locks the order, so exactly one sees both).
 *
 * OrderCancelled is also the command to compensate: inventory releases the
 * reservation (StockReleased) and payment refunds the charge
 * (PaymentRefunded) or, cancelled before it charged, voids the charge's key
 * (PaymentFailed "voided" only when the order waits to hear, its refund
 * pending; none after a StockRejected); the order logs those as they arrive. A customer's cancel
 * cancels at once and lets the same compensation follow. The transitions
 * are the same pure functions the orchestrator uses (domain.ts), so both
 * modes reach the same end states for the same inputs.
 */
import { byOrder } from "../../contracts/events.js";
import { choreographed } from "../../contracts/saga.js";
import { SagaMode as SagaModeEnum } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  StockRejectedSchema,
  StockReleasedSchema,
  StockReservedSchema,
} from "../../gen/shopmesh/inventory/v1/events_pb.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../../gen/shopmesh/payment/v1/events_pb.js";
import { type ConsumerSpec, type EventContext, on, type Tx } from "../../platform/index.js";
import type { Guard } from "./compensation.js";
import {
  type OrderRecord,
  type OrderStatus,
  onCancelled,
  onCancelledBeforePayment,
  onCharged,
  onCompensate,
  onConfirmed,
  onDeclined,
  onForwardFailed,
  onRefunded,
  onReleased,
  onReserved,
  type SagaMode,
  type Transition,
} from "./domain.js";
import type { OrderStore } from "./store.js";

/** Saga modes remembered before the memory is cleared (and refilled from the database as needed). */
const MODES_KEPT = 10_000;

/** Reacts to participants' events for choreographed orders. */
export class Choreography {
  /** Saga modes of recent orders (a mode never changes): most events are filtered without a read. */
  private readonly modes = new Map<string, SagaMode>();

  constructor(private readonly store: OrderStore) {
    store.onPlaced((o) => this.remember(o.id, o.sagaMode));
  }

  private remember(orderId: string, mode: SagaMode): void {
    if (this.modes.size >= MODES_KEPT) this.modes.clear();
    this.modes.set(orderId, mode);
  }

  /** Whether the event's order is ours and choreographed. */
  private async isChoreographed(e: { meta?: { orderId: string } }): Promise<boolean> {
    const id = e.meta?.orderId;
    if (!id) return false;
    let mode = this.modes.get(id);
    if (!mode) {
      mode = (await this.store.get(id))?.sagaMode;
      if (!mode) return false;
      this.remember(id, mode);
    }
    return mode === "CHOREOGRAPHY";
  }

  /** The order if it is ours and choreographed, read in `tx`. */
  private async order(orderId: string | undefined, tx: Tx): Promise<OrderRecord | undefined> {
    const o = orderId ? await this.store.get(orderId, tx) : undefined;
    return o?.sagaMode === "CHOREOGRAPHY" ? o : undefined;
  }

  /** Applies `t` to `o` in `tx` while `o` is in `status`; true when it did. */
  private async applyIf(o: OrderRecord, t: Transition, status: OrderStatus, tx: Tx): Promise<boolean> {
    return (await this.store.apply(o.id, t, { guard: { status }, tx })).kind === "applied";
  }

  /** Applies `t` in `tx`, then confirms the order if it now has both its stock and its payment. */
  private async progress(o: OrderRecord, t: Transition, tx: Tx): Promise<void> {
    const r = await this.store.apply(o.id, t, { tx });
    if (r.kind !== "applied") return;
    const { status, stock, payment, cancelRequested } = r.order;
    // A cancel that got here first wins; its OrderCancelled makes payment refund.
    if (status === "PENDING" && stock === "done" && payment === "done" && cancelRequested === null) {
      await this.store.apply(o.id, onConfirmed(), { guard: { status: "PENDING", noCancel: true }, tx });
    }
  }

  /** Ends a still-pending order as CANCELLED with `reason` (after onCompensate applied); OrderCancelled starts the compensation. */
  private async cancel(o: OrderRecord, reason: string, tx: Tx): Promise<void> {
    await this.applyIf(o, onCancelled(reason), "COMPENSATING", tx);
  }

  /**
   * Turns a still-pending order (in `guard`) to CANCELLED with `reason` before its outcome is known:
   * whatever payment has not answered yet, it may still charge, so the order waits for its word with
   * the refund pending ({@link onCancelledBeforePayment}). True when it did.
   */
  private async giveUp(o: OrderRecord, reason: string, guard: Guard, tx: Tx): Promise<boolean> {
    const r = await this.store.apply(o.id, onCompensate(reason), { guard, tx });
    if (r.kind !== "applied") return false;
    // The row is locked since the apply above: its payment is as payment last told it.
    const t = r.order.payment === "none" ? onCancelledBeforePayment(reason) : onCancelled(reason);
    await this.applyIf(r.order, t, "COMPENSATING", tx);
    return true;
  }

  /** A customer asked to cancel (recorded in `tx`): cancel now if the order is still pending. */
  cancelRequested(orderId: string, tx: Tx): Promise<void> {
    return this.store.db.within(tx, async (tx) => {
      const o = await this.order(orderId, tx);
      if (o?.status !== "PENDING" || o.cancelRequested === null) return;
      const reason = `cancelled by customer${o.cancelRequested ? `: ${o.cancelRequested}` : ""}`;
      await this.giveUp(o, reason, { status: "PENDING" }, tx);
    });
  }

  /**
   * The choreographed saga's step budget: an order that made no progress for `budgetMs` (a
   * participant is out, its events waiting) is cancelled, so stock is not held for as long as the
   * outage lasts. Its OrderCancelled makes inventory release the reservation and payment refund
   * the charge or void its key (a charge arriving later is refused). Time this process stood still
   * (`stalledSince`: frozen, stalled) is left out: the events that came meanwhile wait unread, and
   * no participant was late. `local`: now, in this process's clock. Returns how many it cancelled.
   */
  async expire(budgetMs: number, local: number, stalledSince: (since: number) => number = () => 0): Promise<number> {
    let cancelled = 0;
    // In the clock updated_at is written in: another replica's, compared with this one's, was ahead
    // by their difference, and a replica ten seconds fast cancelled the others' orders that long early.
    const now = await this.store.sharedNow();
    for (const id of await this.store.stalledChoreography(now - budgetMs)) {
      await this.store.db.transaction(async (tx) => {
        const o = await this.order(id, tx);
        // The stall clock is this process's.
        if (o?.status !== "PENDING" || now - o.updatedAt - stalledSince(o.updatedAt + local - now) < budgetMs) return;
        const who = o.stock === "done" ? "payment" : "inventory";
        const reason = `${who} unavailable: no answer within the ${budgetMs} ms step budget`;
        // Still stale once locked: an event that made progress since the read keeps the order going.
        if (await this.giveUp(o, reason, { status: "PENDING", staleBefore: now - budgetMs }, tx)) cancelled++;
      });
    }
    return cancelled;
  }

  /** The consumers of participants' events. */
  consumers(): ConsumerSpec[] {
    const attempt = (ctx: EventContext) => ctx.deliveryCount;
    // Events of orchestrated orders need no transaction here (the mode of an order never changes).
    const ours = (e: { meta?: { orderId: string } }) => this.isChoreographed(e);
    return [
      {
        stream: "INVENTORY",
        durable: "order-inventory",
        sagaMode: SagaModeEnum.CHOREOGRAPHY,
        lockKey: byOrder,
        handlers: [
          on(
            StockReservedSchema,
            async (e, ctx, tx) => {
              const o = await this.order(e.meta?.orderId, tx);
              if (!o) return;
              const total = e.total;
              const reservation = {
                reservationId: e.reservationId,
                totalMinor: Number(total?.amountMinor ?? 0n),
                currency: total?.currencyCode ?? "",
              };
              await this.progress(o, onReserved(reservation, attempt(ctx)), tx);
            },
            choreographed,
          ),
          on(
            StockRejectedSchema,
            async (e, ctx, tx) => {
              const o = await this.order(e.meta?.orderId, tx);
              if (o?.status !== "PENDING") return;
              if (
                await this.applyIf(o, onForwardFailed("reserve_stock", e.reason, true, attempt(ctx)), "PENDING", tx)
              ) {
                await this.cancel(o, e.reason, tx);
              }
            },
            ours,
          ),
          on(
            StockReleasedSchema,
            async (e, ctx, tx) => {
              const o = await this.order(e.meta?.orderId, tx);
              if (o)
                await this.store.apply(o.id, onReleased(`reservation ${e.reservationId} released`, attempt(ctx)), {
                  tx,
                });
            },
            ours,
          ),
        ],
      },
      {
        stream: "PAYMENT",
        durable: "order-payment",
        sagaMode: SagaModeEnum.CHOREOGRAPHY,
        lockKey: byOrder,
        handlers: [
          on(
            PaymentSucceededSchema,
            async (e, ctx, tx) => {
              const o = await this.order(e.meta?.orderId, tx);
              if (o) await this.progress(o, onCharged(e.paymentId, attempt(ctx)), tx);
            },
            ours,
          ),
          on(
            PaymentFailedSchema,
            async (e, ctx, tx) => {
              let o = await this.order(e.meta?.orderId, tx);
              if (o?.status === "PENDING") {
                const t = onDeclined(e.paymentId, e.reason || "declined", attempt(ctx));
                if (await this.applyIf(o, t, "PENDING", tx)) {
                  await this.cancel(o, t.patch.reason ?? "payment declined", tx);
                  return;
                }
                // A cancel committed while the guard waited for its lock (held now): read what it left.
                o = await this.order(o.id, tx);
              }
              if (o?.status === "CANCELLED" && o.payment === "attempted") {
                // Cancelled before payment answered: it declined the charge, or voided its key. Nothing taken.
                const t = onRefunded(`no charge taken: ${e.reason || "declined"}`, attempt(ctx));
                await this.applyIf(o, t, "CANCELLED", tx);
              }
            },
            ours,
          ),
          on(
            PaymentRefundedSchema,
            async (e, ctx, tx) => {
              const o = await this.order(e.meta?.orderId, tx);
              if (o) await this.store.apply(o.id, onRefunded(`payment ${e.paymentId} refunded`, attempt(ctx)), { tx });
            },
            ours,
          ),
        ],
      },
    ];
  }
}
