/**
 * The choreographed checkout, order's side. No one drives it: inventory
 * reacts to OrderPlaced, payment to StockReserved, and the order service to
 * their outcomes:
 *
 *   OrderPlaced -> StockReserved -> PaymentSucceeded -> CONFIRMED (OrderConfirmed)
 *               -> StockRejected ---------------------> CANCELLED (OrderCancelled)
 *                                -> PaymentFailed ----> CANCELLED (OrderCancelled)
 *
 * OrderCancelled is also the command to compensate: inventory releases the
 * reservation (StockReleased) and payment refunds or voids the charge
 * (PaymentRefunded); the order logs those as they arrive. A customer's cancel
 * cancels at once and lets the same compensation follow. The transitions
 * are the same pure functions the orchestrator uses (domain.ts), so both
 * modes reach the same end states for the same inputs.
 */
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
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
import { type ConsumerSpec, type EventContext, on } from "../../platform/index.js";
import {
  type OrderRecord,
  onCancelled,
  onCharged,
  onCompensate,
  onConfirmed,
  onDeclined,
  onForwardFailed,
  onRefunded,
  onReleased,
  onReserved,
} from "./domain.js";
import type { OrderStore } from "./store.js";

/** Reacts to participants' events for choreographed orders. */
export class Choreography {
  constructor(private readonly store: OrderStore) {}

  /** The order if it is ours and choreographed. */
  private order(orderId: string | undefined): OrderRecord | undefined {
    const o = orderId ? this.store.get(orderId) : undefined;
    return o?.sagaMode === "CHOREOGRAPHY" ? o : undefined;
  }

  /** Ends a still-pending order as CANCELLED with `reason`; OrderCancelled starts the compensation. */
  private cancel(o: OrderRecord, reason: string): void {
    this.store.apply(o.id, onCancelled(reason), { status: "COMPENSATING" });
  }

  /** A customer asked to cancel: cancel now if the order is still pending. */
  cancelRequested(orderId: string): void {
    const o = this.order(orderId);
    if (o?.status !== "PENDING" || o.cancelRequested === null) return;
    const reason = `cancelled by customer${o.cancelRequested ? `: ${o.cancelRequested}` : ""}`;
    if (this.store.apply(o.id, onCompensate(reason), { status: "PENDING" })) this.cancel(o, reason);
  }

  /** The consumers of participants' events. */
  consumers(): ConsumerSpec[] {
    const attempt = (ctx: EventContext) => ctx.deliveryCount;
    return [
      {
        stream: "INVENTORY",
        durable: "order-inventory",
        handlers: [
          on(StockReservedSchema, (e, ctx) => {
            const o = this.order(e.meta?.orderId);
            if (!o || e.sagaMode !== SagaMode.CHOREOGRAPHY) return;
            const total = e.total;
            this.store.apply(
              o.id,
              onReserved(
                {
                  reservationId: e.reservationId,
                  totalMinor: Number(total?.amountMinor ?? 0n),
                  currency: total?.currencyCode ?? "",
                },
                attempt(ctx),
              ),
            );
          }),
          on(StockRejectedSchema, (e, ctx) => {
            const o = this.order(e.meta?.orderId);
            if (o?.status !== "PENDING") return;
            if (
              this.store.apply(o.id, onForwardFailed("reserve_stock", e.reason, true, attempt(ctx)), {
                status: "PENDING",
              })
            ) {
              this.cancel(o, e.reason);
            }
          }),
          on(StockReleasedSchema, (e, ctx) => {
            const o = this.order(e.meta?.orderId);
            if (o) this.store.apply(o.id, onReleased(`reservation ${e.reservationId} released`, attempt(ctx)));
          }),
        ],
      },
      {
        stream: "PAYMENT",
        durable: "order-payment",
        handlers: [
          on(PaymentSucceededSchema, (e, ctx) => {
            const o = this.order(e.meta?.orderId);
            if (!o) return;
            this.store.apply(o.id, onCharged(e.paymentId, attempt(ctx)));
            // A cancel that got here first wins; its OrderCancelled makes payment refund.
            this.store.apply(o.id, onConfirmed(), { status: "PENDING", noCancel: true });
          }),
          on(PaymentFailedSchema, (e, ctx) => {
            const o = this.order(e.meta?.orderId);
            if (o?.status !== "PENDING") return;
            const t = onDeclined(e.paymentId, e.reason || "declined", attempt(ctx));
            if (this.store.apply(o.id, t, { status: "PENDING" })) this.cancel(o, t.patch.reason ?? "payment declined");
          }),
          on(PaymentRefundedSchema, (e, ctx) => {
            const o = this.order(e.meta?.orderId);
            if (o) this.store.apply(o.id, onRefunded(`payment ${e.paymentId} refunded`, attempt(ctx)));
          }),
        ],
      },
    ];
  }
}
