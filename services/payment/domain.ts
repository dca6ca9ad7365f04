/**
 * Payment rules, free of I/O: what a valid charge, refund or lookup request
 * is, what the simulated card provider answers, what a refund does to a
 * payment in each state, and who may see a payment.
 */

import { MAX_REFUND_REASON, VOIDED_REASON } from "../../contracts/saga.js";
import {
  CURRENCY_CODE,
  FailedPreconditionError,
  type Identity,
  InvalidArgumentError,
  requireId,
  requireIdempotencyKey,
  requireSubject,
  requireText,
} from "../../platform/index.js";

/** Largest charge the simulated provider approves, in minor units; anything above is declined. */
export const PROVIDER_LIMIT_MINOR = 1_000_000;
/** Card token the simulated provider always declines. */
export const TOKEN_DECLINE = "tok_decline";
/** Card token the simulated provider declines for lack of funds. */
export const TOKEN_INSUFFICIENT = "tok_insufficient";
/** Decline reason of a void tombstone: a charge key refunded before any charge happened. */
export { VOIDED_REASON };
/** Longest card token accepted. */
export const MAX_CARD_TOKEN = 256;

/** Status of a stored payment, as written in the `payments.status` column. */
export type PaymentStatusName = "CAPTURED" | "DECLINED" | "REFUNDED";

/**
 * A stored payment. `kind` is "VOID" for a tombstone that reserves a charge
 * key after it was refunded before any charge: such a row is always
 * DECLINED with reason {@link VOIDED_REASON}, amount 0 and no currency.
 */
export interface PaymentRecord {
  readonly id: string;
  readonly kind: "CHARGE" | "VOID";
  readonly orderId: string;
  readonly customerId: string;
  readonly amountMinor: number;
  readonly currency: string;
  readonly status: PaymentStatusName;
  /** Empty unless DECLINED. */
  readonly declineReason: string;
  /** Empty unless REFUNDED (and possibly empty then, when the caller gave none). */
  readonly refundReason: string;
  readonly createdAt: number;
  readonly updatedAt: number;
}

/** A validated charge request. */
export interface ChargeInput {
  readonly idempotencyKey: string;
  readonly orderId: string;
  readonly customerId: string;
  readonly amountMinor: number;
  readonly currency: string;
  readonly cardToken: string;
}

/** What the simulated provider answers for a charge. */
export type Authorization =
  | { readonly status: "CAPTURED" }
  | { readonly status: "DECLINED"; readonly reason: "card declined" | "insufficient funds" | "over limit" };

/**
 * The simulated provider: deterministic so tests and demos choose outcomes.
 * Token rules are checked before the limit, as a real provider checks the
 * card before the amount.
 */
export function authorize(cardToken: string, amountMinor: number): Authorization {
  if (cardToken === TOKEN_DECLINE) return { status: "DECLINED", reason: "card declined" };
  if (cardToken === TOKEN_INSUFFICIENT) return { status: "DECLINED", reason: "insufficient funds" };
  if (amountMinor > PROVIDER_LIMIT_MINOR) return { status: "DECLINED", reason: "over limit" };
  return { status: "CAPTURED" };
}

/** Validates a ChargePayment request; field names follow the proto. */
export function validateCharge(req: {
  idempotencyKey: string;
  orderId: string;
  customerId: string;
  amount?: { amountMinor: bigint; currencyCode: string } | undefined;
  cardToken: string;
}): ChargeInput {
  requireIdempotencyKey(req.idempotencyKey);
  requireId(req.orderId, "order_id");
  requireSubject(req.customerId, "customer_id");
  if (!req.amount) throw new InvalidArgumentError("amount", "is required");
  const { amountMinor, currencyCode } = req.amount;
  if (amountMinor <= 0n) throw new InvalidArgumentError("amount.amount_minor", `must be positive, got ${amountMinor}`);
  // Stored and compared as a JS number; beyond this it would silently lose precision.
  if (amountMinor > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new InvalidArgumentError("amount.amount_minor", `must be at most ${Number.MAX_SAFE_INTEGER}`);
  }
  if (!CURRENCY_CODE.test(currencyCode)) {
    throw new InvalidArgumentError("amount.currency_code", "must be a 3-letter upper-case ISO 4217 code");
  }
  if (req.cardToken === "") throw new InvalidArgumentError("card_token", "must not be empty");
  if (req.cardToken.length > MAX_CARD_TOKEN) {
    throw new InvalidArgumentError("card_token", `must be at most ${MAX_CARD_TOKEN} characters`);
  }
  return {
    idempotencyKey: req.idempotencyKey,
    orderId: req.orderId,
    customerId: req.customerId,
    amountMinor: Number(amountMinor),
    currency: currencyCode,
    cardToken: req.cardToken,
  };
}

/** Which payment a refund names: by its id, or by the key of the charge that made it. */
export type RefundTarget =
  | { readonly by: "id"; readonly paymentId: string }
  | { readonly by: "key"; readonly chargeIdempotencyKey: string };

/** Validates a RefundPayment request: exactly one of payment_id and charge_idempotency_key. */
export function validateRefund(req: { paymentId: string; chargeIdempotencyKey: string; reason: string }): {
  target: RefundTarget;
  reason: string;
} {
  if ((req.paymentId === "") === (req.chargeIdempotencyKey === "")) {
    throw new InvalidArgumentError("payment_id", "exactly one of payment_id and charge_idempotency_key is required");
  }
  requireText(req.reason, "reason", MAX_REFUND_REASON);
  const target: RefundTarget =
    req.paymentId !== ""
      ? { by: "id", paymentId: requireId(req.paymentId, "payment_id") }
      : { by: "key", chargeIdempotencyKey: requireIdempotencyKey(req.chargeIdempotencyKey, "charge_idempotency_key") };
  return { target, reason: req.reason };
}

/**
 * What a refund does to `payment`: "refund" a CAPTURED one, leave a
 * REFUNDED one "unchanged". A DECLINED one is FAILED_PRECONDITION when named
 * by id (nothing was taken, so there is nothing to give back), but
 * "unchanged" when named by charge key: a compensating saga only needs to
 * know no money is held, and a repeated void must stay idempotent.
 */
export function refundAction(payment: PaymentRecord, by: RefundTarget["by"]): "refund" | "unchanged" {
  switch (payment.status) {
    case "CAPTURED":
      return "refund";
    case "REFUNDED":
      return "unchanged";
    case "DECLINED":
      if (by === "key") return "unchanged";
      throw new FailedPreconditionError(`payment ${payment.id} was declined; there is nothing to refund`, [
        { type: "STATUS", subject: `payments/${payment.id}`, description: "payment is DECLINED" },
      ]);
  }
}

/** Which payment a GetPayment request names. */
export type PaymentLookup =
  | { readonly by: "id"; readonly paymentId: string }
  | { readonly by: "order"; readonly orderId: string };

/** Validates a GetPayment request: payment_id or order_id, not both. */
export function validateLookup(req: { paymentId: string; orderId: string }): PaymentLookup {
  if (req.paymentId === "" && req.orderId === "") {
    throw new InvalidArgumentError("payment_id", "is required unless order_id is set");
  }
  // Both set is ambiguous (they could name different payments); refuse rather than guess.
  if (req.paymentId !== "" && req.orderId !== "") {
    throw new InvalidArgumentError("payment_id", "set payment_id or order_id, not both");
  }
  return req.paymentId !== ""
    ? { by: "id", paymentId: requireId(req.paymentId, "payment_id") }
    : { by: "order", orderId: requireId(req.orderId, "order_id") };
}

/**
 * Whether `caller` may see `payment`. No identity means a trusted
 * service-to-service call; admins see everything; a customer sees only
 * their own payments.
 */
export function canSee(caller: Identity | undefined, payment: Pick<PaymentRecord, "customerId">): boolean {
  if (!caller) return true;
  if (caller.roles.includes("admin")) return true;
  return caller.subject === payment.customerId;
}
