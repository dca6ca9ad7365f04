/**
 * The checkout saga's contract between order and its participants: the
 * idempotency key of each participant call. The orchestrator sends it with
 * ReserveStock / ChargePayment (and voids by it on compensation); in
 * choreography, inventory and payment derive the same key from the order's
 * events. So one order is reserved and charged at most once, whichever way
 * its saga runs.
 */

import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { clipText, withoutControls } from "../platform/validate.js";

/** The saga steps that take effect at a participant. */
export type KeyedStep = "reserve_stock" | "charge_payment";

/** The idempotency key of `step` for order `orderId`: `<order id>:<step>`. */
export function stepKey(orderId: string, step: KeyedStep): string {
  return `${orderId}:${step}`;
}

/**
 * The decline reason of a charge key voided before any charge (RefundPayment by charge key, or a
 * choreographed OrderCancelled): no money was, or will be, taken with it. In choreography payment
 * announces the void as a PaymentFailed with this reason — it is not a decline of the customer's card.
 */
export const VOIDED_REASON = "voided";

/** Longest reason RefundPayment accepts (payment refuses a longer one: INVALID_ARGUMENT). */
export const MAX_REFUND_REASON = 500;

/**
 * The reason order `orderId`'s refund is sent with, in both saga modes: `order <id>: <why>`, cut to
 * {@link MAX_REFUND_REASON} and with any control character a space — what RefundPayment accepts
 * (a customer's cancel reason may itself be 500 characters long, and one stored before control
 * characters were refused may hold them: sent as it was, payment refused it and the money stayed
 * taken).
 */
export function refundReason(orderId: string, why: string): string {
  return clipText(withoutControls(`order ${orderId}: ${why}`), MAX_REFUND_REASON);
}

/**
 * Whether an event belongs to a choreographed saga: inventory and payment act on the order's
 * events only then (an orchestrated order's steps come over gRPC), so the others are
 * acknowledged without a transaction (`on(..., choreographed)`).
 */
export function choreographed(e: { readonly sagaMode: SagaMode }): boolean {
  return e.sagaMode === SagaMode.CHOREOGRAPHY;
}
