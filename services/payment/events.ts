/**
 * Payment's part in the choreographed checkout (its own events are written
 * by the store, in the same transactions as the payments they record):
 *
 * - OrderPlaced (choreography) -> remember who pays and with which card (forgotten once the charge is
 *   attempted or OrderCancelled voids its key: kept, every order's row stayed for ever);
 * - StockReserved (choreography) -> charge the reserved total ->
 *   PaymentSucceeded or PaymentFailed (also for a charge that can never be
 *   made: an invalid request, which has no payment id);
 * - OrderCancelled (choreography) -> refund the charge (PaymentRefunded), or,
 *   when none was made yet, void its key so a late StockReserved can never
 *   charge (PaymentFailed "voided" when the order waits to hear: its
 *   refund_pending).
 *
 * The charge key is `<order id>:charge_payment`, the same key the
 * orchestrator uses.
 */
import { create } from "@bufbuild/protobuf";
import { byOrder } from "../../contracts/events.js";
import { choreographed, refundReason, stepKey } from "../../contracts/saga.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import { StockReservedSchema } from "../../gen/shopmesh/inventory/v1/events_pb.js";
import { OrderCancelledSchema, OrderPlacedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import { PaymentFailedSchema } from "../../gen/shopmesh/payment/v1/events_pb.js";
import { ChargePaymentRequestSchema } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import {
  type ConsumerSpec,
  on,
  requestFingerprint,
  ServiceError,
  UnprocessableEventError,
} from "../../platform/index.js";
import { VOIDED_REASON, validateCharge } from "./domain.js";
import type { PaymentStore } from "./store.js";

/** Payment's consumers. */
export function paymentConsumers(store: PaymentStore): ConsumerSpec[] {
  return [
    {
      stream: "ORDER",
      durable: "payment-order",
      sagaMode: SagaMode.CHOREOGRAPHY,
      lockKey: byOrder,
      handlers: [
        on(
          OrderPlacedSchema,
          async (e, _ctx, tx) => {
            const orderId = e.meta?.orderId ?? "";
            const chargeKey = stepKey(orderId, "charge_payment");
            await store.rememberChoreographyOrder(tx, orderId, e.customerId, e.cardToken, chargeKey);
          },
          choreographed,
        ),
        on(
          OrderCancelledSchema,
          async (e, _ctx, tx) => {
            const orderId = e.meta?.orderId ?? "";
            const r = await store.refund(
              { by: "key", chargeIdempotencyKey: stepKey(orderId, "charge_payment") },
              refundReason(orderId, e.reason),
              SagaMode.CHOREOGRAPHY,
              tx,
            );
            await store.forgetChoreographyOrder(tx, orderId);
            // No charge was made, and now none can be: an order cancelled before it heard from payment
            // (its refund pending until payment answers) learns that nothing was taken.
            if (r.kind === "voided" && e.refundPending) {
              await store.outbox.add(
                tx,
                PaymentFailedSchema,
                { orderId, sagaMode: SagaMode.CHOREOGRAPHY },
                { paymentId: r.payment.id, customerId: e.customerId, reason: VOIDED_REASON },
              );
            }
          },
          choreographed,
        ),
      ],
    },
    {
      stream: "INVENTORY",
      durable: "payment-inventory",
      sagaMode: SagaMode.CHOREOGRAPHY,
      lockKey: byOrder,
      handlers: [
        on(
          StockReservedSchema,
          async (e, _ctx, tx) => {
            const orderId = e.meta?.orderId ?? "";
            const chargeKey = stepKey(orderId, "charge_payment");
            const payer = await store.choreographyOrder(tx, orderId);
            if (!payer) {
              // Forgotten since OrderCancelled voided the key: as a voided key would answer, nothing to charge.
              if (await store.chargeKeyUsed(tx, chargeKey)) return;
              // Streams are ordered only within themselves: OrderPlaced may still be on its way.
              throw new Error(`OrderPlaced of ${orderId} not seen yet`);
            }
            const req = create(ChargePaymentRequestSchema, {
              idempotencyKey: chargeKey,
              orderId,
              customerId: payer.customerId,
              amount: e.total,
              cardToken: payer.cardToken,
            });
            let input: ReturnType<typeof validateCharge>;
            try {
              input = validateCharge(req);
            } catch (err) {
              // A charge that can never be made (retried, it failed ten times, then the order waited out
              // its step budget as "payment unavailable"): an outcome the saga must hear about.
              if (!(err instanceof ServiceError)) throw err;
              await store.outbox.add(
                tx,
                PaymentFailedSchema,
                { orderId, sagaMode: SagaMode.CHOREOGRAPHY },
                {
                  paymentId: "",
                  customerId: payer.customerId,
                  reason: err.message,
                },
              );
              await store.forgetChoreographyOrder(tx, orderId);
              return;
            }
            const r = await store.charge(
              requestFingerprint(ChargePaymentRequestSchema, req),
              input,
              SagaMode.CHOREOGRAPHY,
              tx,
            );
            // Charged or declined: never read again. After the payment's row, as OrderCancelled forgets it
            // (on PostgreSQL the two can run at once on two replicas: one lock order, no deadlock).
            await store.forgetChoreographyOrder(tx, orderId);
            if (r.kind === "key-reused") {
              throw new UnprocessableEventError(`charge key of order ${orderId} reused with another amount`);
            }
          },
          choreographed,
        ),
      ],
    },
  ];
}
