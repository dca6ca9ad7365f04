/**
 * The checkout saga's contract between order and its participants: the
 * idempotency key of each participant call. The orchestrator sends it with
 * ReserveStock / ChargePayment (and voids by it on compensation); in
 * choreography, inventory and payment derive the same key from the order's
 * events. So one order is reserved and charged at most once, whichever way
 * its saga runs.
 */

/** The saga steps that take effect at a participant. */
export type KeyedStep = "reserve_stock" | "charge_payment";

/** The idempotency key of `step` for order `orderId`: `<order id>:<step>`. */
export function stepKey(orderId: string, step: KeyedStep): string {
  return `${orderId}:${step}`;
}
