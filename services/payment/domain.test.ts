/** Pure payment rules. */
import { describe, expect, it } from "vitest";
import { FailedPreconditionError } from "../../platform/errors.js";
import { violatedField } from "../../test/rpc.js";
import {
  authorize,
  canSee,
  type PaymentRecord,
  PROVIDER_LIMIT_MINOR,
  refundAction,
  validateCharge,
  validateLookup,
  validateRefund,
} from "./domain.js";

const field = violatedField;

describe("authorize (the simulated provider)", () => {
  it("declines the test tokens with their reasons", () => {
    expect(authorize("tok_decline", 100)).toEqual({ status: "DECLINED", reason: "card declined" });
    expect(authorize("tok_insufficient", 100)).toEqual({ status: "DECLINED", reason: "insufficient funds" });
  });

  it("declines above the limit and approves at it", () => {
    expect(authorize("tok_visa", PROVIDER_LIMIT_MINOR + 1)).toEqual({ status: "DECLINED", reason: "over limit" });
    expect(authorize("tok_visa", PROVIDER_LIMIT_MINOR)).toEqual({ status: "CAPTURED" });
  });

  it("approves any other token, and checks the card before the amount", () => {
    expect(authorize("tok_visa", 1)).toEqual({ status: "CAPTURED" });
    expect(authorize("anything-else", 2500)).toEqual({ status: "CAPTURED" });
    expect(authorize("tok_decline", PROVIDER_LIMIT_MINOR + 1)).toMatchObject({ reason: "card declined" });
  });
});

describe("validateCharge", () => {
  const ok = {
    idempotencyKey: "k1",
    orderId: "ord-1",
    customerId: "cus-1",
    amount: { amountMinor: 2500n, currencyCode: "USD" },
    cardToken: "tok_visa",
  };

  it("returns the charge with the amount as a number", () => {
    expect(validateCharge(ok)).toEqual({
      idempotencyKey: "k1",
      orderId: "ord-1",
      customerId: "cus-1",
      amountMinor: 2500,
      currency: "USD",
      cardToken: "tok_visa",
    });
  });

  it("names the offending field", () => {
    expect(field(() => validateCharge({ ...ok, idempotencyKey: "" }))).toBe("idempotency_key");
    expect(field(() => validateCharge({ ...ok, orderId: "" }))).toBe("order_id");
    expect(field(() => validateCharge({ ...ok, customerId: "a b" }))).toBe("customer_id");
    expect(field(() => validateCharge({ ...ok, amount: undefined }))).toBe("amount");
    expect(field(() => validateCharge({ ...ok, amount: { amountMinor: 0n, currencyCode: "USD" } }))).toBe(
      "amount.amount_minor",
    );
    expect(field(() => validateCharge({ ...ok, amount: { amountMinor: -1n, currencyCode: "USD" } }))).toBe(
      "amount.amount_minor",
    );
    const unsafe = BigInt(Number.MAX_SAFE_INTEGER) + 1n;
    expect(field(() => validateCharge({ ...ok, amount: { amountMinor: unsafe, currencyCode: "USD" } }))).toBe(
      "amount.amount_minor",
    );
    for (const currencyCode of ["", "usd", "US", "USDX", "U5D"]) {
      expect(field(() => validateCharge({ ...ok, amount: { amountMinor: 1n, currencyCode } }))).toBe(
        "amount.currency_code",
      );
    }
    expect(field(() => validateCharge({ ...ok, cardToken: "" }))).toBe("card_token");
    expect(field(() => validateCharge({ ...ok, cardToken: "t".repeat(257) }))).toBe("card_token");
  });
});

describe("validateRefund", () => {
  it("needs exactly one of payment_id and charge_idempotency_key", () => {
    expect(field(() => validateRefund({ paymentId: "", chargeIdempotencyKey: "", reason: "" }))).toBe("payment_id");
    expect(field(() => validateRefund({ paymentId: "pay_1", chargeIdempotencyKey: "k", reason: "" }))).toBe(
      "payment_id",
    );
    expect(field(() => validateRefund({ paymentId: "pay 1", chargeIdempotencyKey: "", reason: "" }))).toBe(
      "payment_id",
    );
    expect(field(() => validateRefund({ paymentId: "", chargeIdempotencyKey: "a b", reason: "" }))).toBe(
      "charge_idempotency_key",
    );
    expect(field(() => validateRefund({ paymentId: "pay_1", chargeIdempotencyKey: "", reason: "x".repeat(501) }))).toBe(
      "reason",
    );
    expect(validateRefund({ paymentId: "pay_1", chargeIdempotencyKey: "", reason: "r" })).toEqual({
      target: { by: "id", paymentId: "pay_1" },
      reason: "r",
    });
    expect(validateRefund({ paymentId: "", chargeIdempotencyKey: "saga:charge", reason: "" }).target).toEqual({
      by: "key",
      chargeIdempotencyKey: "saga:charge",
    });
  });
});

describe("refundAction", () => {
  const payment = (status: PaymentRecord["status"]): PaymentRecord => ({
    id: "pay_1",
    kind: "CHARGE",
    orderId: "ord-1",
    customerId: "cus-1",
    amountMinor: 100,
    currency: "USD",
    status,
    declineReason: status === "DECLINED" ? "card declined" : "",
    refundReason: "",
    createdAt: 0,
    updatedAt: 0,
  });

  it("refunds CAPTURED and leaves REFUNDED unchanged, by id or by key", () => {
    for (const by of ["id", "key"] as const) {
      expect(refundAction(payment("CAPTURED"), by)).toBe("refund");
      expect(refundAction(payment("REFUNDED"), by)).toBe("unchanged");
    }
  });

  it("refuses a DECLINED payment by id but leaves it unchanged by key", () => {
    expect(() => refundAction(payment("DECLINED"), "id")).toThrow(FailedPreconditionError);
    expect(refundAction(payment("DECLINED"), "key")).toBe("unchanged");
  });
});

describe("validateLookup", () => {
  it("takes payment_id or order_id, never neither nor both", () => {
    expect(validateLookup({ paymentId: "pay_1", orderId: "" })).toEqual({ by: "id", paymentId: "pay_1" });
    expect(validateLookup({ paymentId: "", orderId: "ord-1" })).toEqual({ by: "order", orderId: "ord-1" });
    expect(field(() => validateLookup({ paymentId: "", orderId: "" }))).toBe("payment_id");
    expect(field(() => validateLookup({ paymentId: "pay_1", orderId: "ord-1" }))).toBe("payment_id");
    expect(field(() => validateLookup({ paymentId: "", orderId: "o d" }))).toBe("order_id");
  });
});

describe("canSee", () => {
  it("lets service calls, admins and the owner see a payment; nobody else", () => {
    const p = { customerId: "cus-1" };
    expect(canSee(undefined, p)).toBe(true);
    expect(canSee({ subject: "cus-1", roles: ["customer"] }, p)).toBe(true);
    expect(canSee({ subject: "ops", roles: ["admin"] }, p)).toBe(true);
    expect(canSee({ subject: "cus-2", roles: ["customer"] }, p)).toBe(false);
    expect(canSee({ subject: "cus-2", roles: [] }, p)).toBe(false);
  });
});
