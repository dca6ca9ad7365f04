/** The saga state machine, without I/O. */
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  afterCompensation,
  decide,
  failureKind,
  isSettled,
  type OrderRecord,
  onCancelledRefundPending,
  onCharged,
  onDeclined,
  onForwardFailed,
  onRefunded,
  onReserved,
  onRetrying,
  onStarted,
  refundPending,
} from "./domain.js";

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

  it("compensates stock first (it needs only inventory), then payment, including steps whose outcome is unknown", () => {
    const c = (o: Partial<OrderRecord>) => decide(order({ status: "COMPENSATING", ...o }));
    expect(c({ stock: "done", payment: "done" })).toEqual({ kind: "call", step: "release_stock" });
    expect(c({ stock: "attempted", payment: "attempted" })).toEqual({ kind: "call", step: "release_stock" });
    expect(c({ stock: "undone", payment: "done" })).toEqual({ kind: "call", step: "refund_payment" });
    expect(c({ stock: "undone", payment: "attempted" })).toEqual({ kind: "call", step: "refund_payment" });
    expect(c({ stock: "attempted", payment: "none" })).toEqual({ kind: "call", step: "release_stock" });
    expect(c({ stock: "undone", payment: "undone" })).toEqual({ kind: "cancel" });
    expect(c({ stock: "none", payment: "none" })).toEqual({ kind: "cancel" });
  });

  it("is done at terminal states, unless a cancelled order's refund has not landed", () => {
    expect(decide(order({ status: "CONFIRMED" }))).toEqual({ kind: "done" });
    expect(decide(order({ status: "CANCELLED" }))).toEqual({ kind: "done" });
    expect(decide(order({ status: "CANCELLED", payment: "undone" }))).toEqual({ kind: "done" });
    for (const payment of ["done", "attempted"] as const) {
      const o = order({ status: "CANCELLED", stock: "undone", payment });
      expect(decide(o)).toEqual({ kind: "call", step: "refund_payment" });
      expect(refundPending(o)).toBe(true);
      expect(isSettled(o)).toBe(false);
    }
    expect(isSettled(order({ status: "CANCELLED", payment: "undone" }))).toBe(true);
    expect(isSettled(order({ status: "COMPENSATING" }))).toBe(false);
  });
});

describe("transitions", () => {
  it("an attempt that never left the process changes nothing the step had not done before", () => {
    expect(onRetrying("charge_payment", "circuit open", 1, { before: "none" }).patch).toEqual({ payment: "none" });
    expect(onRetrying("charge_payment", "circuit open", 3, { before: "attempted" }).patch).toEqual({});
    expect(onRetrying("charge_payment", "UNAVAILABLE", 2).patch).toEqual({});
    expect(onRetrying("charge_payment", "circuit open", 1, { before: "none" }).log.detail).toBe(
      "circuit open (not sent; will retry)",
    );
  });

  it("cancels with the refund pending, keeping the reason and saying why", () => {
    expect(onCancelledRefundPending("payment unavailable: x", "circuit open")).toEqual({
      patch: { status: "CANCELLED" },
      log: {
        name: "cancel_order",
        status: "SUCCEEDED",
        detail: "payment unavailable: x (refund pending: circuit open)",
        attempt: 1,
      },
    });
  });

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

  it("keeps a compensated step compensated when its success is heard after it, and says it was heard late", () => {
    // Two replicas (or a redelivery): PaymentRefunded applied before the PaymentSucceeded it follows.
    const refunded = order({ status: "CANCELLED", stock: "undone", payment: "undone" });
    const late = afterCompensation(refunded, onCharged("pay_1", 1));
    expect(late.patch).toEqual({ paymentId: "pay_1" });
    expect(late.log).toMatchObject({
      name: "charge_payment",
      status: "SUCCEEDED",
      detail: "payment pay_1 captured (heard after its compensation)",
    });
    expect(refundPending({ ...refunded, ...late.patch })).toBe(false);
    const reserved = afterCompensation(
      refunded,
      onReserved({ reservationId: "res_1", totalMinor: 5, currency: "USD" }, 1),
    );
    expect(reserved.patch).toEqual({ reservationId: "res_1", totalMinor: 5, currency: "USD" });
    // Anything else passes as it was: progress that undoes nothing, and the undo itself heard twice.
    const charging = order({ stock: "done", payment: "attempted" });
    expect(afterCompensation(charging, onCharged("pay_1", 1))).toEqual(onCharged("pay_1", 1));
    const again = onRefunded("payment pay_1 refunded", 2);
    expect(afterCompensation(refunded, again)).toBe(again);
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
