/** The saga's participant keys. */
import { describe, expect, it } from "vitest";
import { requireText } from "../platform/validate.js";
import { MAX_REFUND_REASON, refundReason, stepKey } from "./saga.js";

describe("stepKey", () => {
  it("is the order id and the step, so retries, recovery and choreography reuse one key", () => {
    expect(stepKey("ord_1", "charge_payment")).toBe("ord_1:charge_payment");
    expect(stepKey("ord_1", "reserve_stock")).toBe("ord_1:reserve_stock");
  });
});

describe("refundReason", () => {
  it("is `order <id>: <why>`, cut to what RefundPayment accepts, never through a surrogate pair", () => {
    expect(refundReason("ord_1", "cancelled by customer: x")).toBe("order ord_1: cancelled by customer: x");
    for (const why of ["x".repeat(600), "\u{1F4E6}".repeat(300), `${"x".repeat(485)}\u{1F4E6}\u{1F4E6}`]) {
      const r = refundReason("ord_1", why);
      expect(r.length).toBeLessThanOrEqual(MAX_REFUND_REASON);
      expect(r.endsWith("…")).toBe(true);
      expect(Buffer.from(r).toString(), "no lone surrogate").toBe(r);
    }
  });

  it("is always what RefundPayment accepts: a reason stored with control characters is sent with spaces", () => {
    // Stored before cancel reasons were refused them (or a peer's error text): refused, the refund was retried for ever.
    const r = refundReason("ord_1", "cancelled by customer: two\nlines \u001b[31mred\u009b");
    expect(r).toBe("order ord_1: cancelled by customer: two lines  [31mred ");
    expect(requireText(r, "reason", MAX_REFUND_REASON)).toBe(r);
  });
});
