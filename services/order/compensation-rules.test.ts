/** The orchestrator's way back (compensation.ts), without I/O: which failures give a step up, and which cancel with a refund pending. */
import { describe, expect, it } from "vitest";
import { cancelledRefundPending, givenUp } from "./compensation.js";
import type { OrderRecord } from "./domain.js";

const compensating: OrderRecord = {
  id: "ord_1",
  customerId: "alice",
  status: "COMPENSATING",
  reason: "payment declined",
  sagaMode: "ORCHESTRATION",
  items: [{ productId: "p", quantity: 1 }],
  cardToken: "tok_visa",
  totalMinor: 500,
  currency: "USD",
  stock: "done",
  reservationId: "res_1",
  payment: "done",
  paymentId: "pay_1",
  cancelRequested: null,
  traceparent: "",
  createdAt: 0,
  updatedAt: 0,
  version: 0,
};

describe("cancelledRefundPending", () => {
  it("cancels a compensating order whose refund payment cannot take yet, guarded on COMPENSATING", () => {
    const [t, guard] = cancelledRefundPending("refund_payment", compensating, "payment unavailable") ?? [];
    expect(t?.patch.status).toBe("CANCELLED");
    expect(guard).toEqual({ status: "COMPENSATING" });
  });

  it("never for a release of stock: the order stays compensating until its units are back", () => {
    expect(cancelledRefundPending("release_stock", compensating, "inventory unavailable")).toBeUndefined();
  });

  it("never for an order that is not compensating", () => {
    expect(cancelledRefundPending("refund_payment", { ...compensating, status: "PENDING" }, "x")).toBeUndefined();
  });
});

describe("givenUp", () => {
  const late = { since: 0, now: 10_000, budgetMs: 1_000 };

  it("gives up a forward step past its budget, and not before", () => {
    expect(givenUp("charge_payment", "payment unavailable", late, 3, false)).toBeDefined();
    expect(givenUp("charge_payment", "payment unavailable", { ...late, now: 999 }, 3, false)).toBeUndefined();
  });

  it("never gives up a compensation step, however long it fails", () => {
    expect(givenUp("release_stock", "inventory unavailable", late, 30, false)).toBeUndefined();
    expect(givenUp("refund_payment", "payment unavailable", late, 30, false)).toBeUndefined();
  });
});
