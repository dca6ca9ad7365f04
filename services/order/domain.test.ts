/** The saga state machine, without I/O. */
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { decide, failureKind, type OrderRecord, onDeclined, onForwardFailed, onStarted } from "./domain.js";

const order = (o: Partial<OrderRecord> = {}): OrderRecord => ({
  id: "ord_1",
  customerId: "alice",
  status: "PENDING",
  reason: "",
  sagaMode: "ORCHESTRATION",
  items: [{ productId: "p", quantity: 1 }],
  cardToken: "tok_visa",
  totalMinor: null,
  currency: null,
  stock: "none",
  reservationId: "",
  payment: "none",
  paymentId: "",
  cancelRequested: null,
  traceparent: "",
  createdAt: 0,
  updatedAt: 0,
  version: 0,
  ...o,
});

describe("decide", () => {
  it("runs forward: reserve, then charge, then confirm", () => {
    expect(decide(order())).toEqual({ kind: "call", step: "reserve_stock" });
    expect(decide(order({ stock: "attempted" }))).toEqual({ kind: "call", step: "reserve_stock" });
    expect(decide(order({ stock: "done" }))).toEqual({ kind: "call", step: "charge_payment" });
    expect(decide(order({ stock: "done", payment: "attempted" }))).toEqual({ kind: "call", step: "charge_payment" });
    expect(decide(order({ stock: "done", payment: "done" }))).toEqual({ kind: "confirm" });
  });

  it("turns around on a customer cancel, naming the reason", () => {
    expect(decide(order({ stock: "done", cancelRequested: "too slow" }))).toEqual({
      kind: "compensate",
      reason: "cancelled by customer: too slow",
    });
    expect(decide(order({ cancelRequested: "" }))).toEqual({ kind: "compensate", reason: "cancelled by customer" });
  });

  it("compensates in reverse, including steps whose outcome is unknown", () => {
    const c = (o: Partial<OrderRecord>) => decide(order({ status: "COMPENSATING", ...o }));
    expect(c({ stock: "done", payment: "done" })).toEqual({ kind: "call", step: "refund_payment" });
    expect(c({ stock: "done", payment: "attempted" })).toEqual({ kind: "call", step: "refund_payment" });
    expect(c({ stock: "done", payment: "undone" })).toEqual({ kind: "call", step: "release_stock" });
    expect(c({ stock: "attempted", payment: "none" })).toEqual({ kind: "call", step: "release_stock" });
    expect(c({ stock: "undone", payment: "undone" })).toEqual({ kind: "cancel" });
    expect(c({ stock: "none", payment: "none" })).toEqual({ kind: "cancel" });
  });

  it("is done at terminal states", () => {
    expect(decide(order({ status: "CONFIRMED" }))).toEqual({ kind: "done" });
    expect(decide(order({ status: "CANCELLED" }))).toEqual({ kind: "done" });
  });
});

describe("transitions", () => {
  it("marks a forward step attempted before its call, and only the first time", () => {
    expect(onStarted(order(), "reserve_stock", 1).patch).toEqual({ stock: "attempted" });
    expect(onStarted(order({ stock: "done" }), "charge_payment", 1).patch).toEqual({ payment: "attempted" });
    expect(onStarted(order({ stock: "attempted" }), "reserve_stock", 2).patch).toEqual({});
    expect(onStarted(order({ status: "COMPENSATING" }), "release_stock", 1).patch).toEqual({});
  });

  it("after a definite refusal the step took no effect; after a give-up it may have", () => {
    expect(onForwardFailed("reserve_stock", "out of stock", true, 1).patch).toEqual({
      status: "COMPENSATING",
      reason: "out of stock",
      stock: "none",
    });
    expect(onForwardFailed("charge_payment", "payment unavailable", false, 7).patch).toEqual({
      status: "COMPENSATING",
      reason: "payment unavailable",
    });
    expect(onDeclined("pay_1", "card declined", 1).patch).toMatchObject({ payment: "none", status: "COMPENSATING" });
  });

  it("classifies business refusals as definite and the rest as transient", () => {
    for (const c of [status.INVALID_ARGUMENT, status.FAILED_PRECONDITION, status.NOT_FOUND, status.ALREADY_EXISTS]) {
      expect(failureKind(c)).toBe("definite");
    }
    for (const c of [status.UNAVAILABLE, status.DEADLINE_EXCEEDED, status.INTERNAL, status.CANCELLED, status.UNKNOWN]) {
      expect(failureKind(c)).toBe("transient");
    }
  });
});
