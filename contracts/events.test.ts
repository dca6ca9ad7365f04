/** The catalogue puts every event on the subject and stream it has always had: the wire does not move. */
import { describe, expect, it } from "vitest";
import { EVENTS } from "./events.js";

describe("EVENTS", () => {
  it("names each event's subject and stream by the one rule", () => {
    expect(Object.fromEntries(EVENTS.kinds.map((k) => [k.typeName, `${k.stream} ${k.subject}`]))).toEqual({
      "shopmesh.order.v1.OrderPlaced": "ORDER order.order.placed",
      "shopmesh.order.v1.OrderConfirmed": "ORDER order.order.confirmed",
      "shopmesh.order.v1.OrderCancelled": "ORDER order.order.cancelled",
      "shopmesh.order.v1.OrderRefundSettled": "ORDER order.order.refund_settled",
      "shopmesh.inventory.v1.StockReserved": "INVENTORY inventory.stock.reserved",
      "shopmesh.inventory.v1.StockRejected": "INVENTORY inventory.stock.rejected",
      "shopmesh.inventory.v1.StockReleased": "INVENTORY inventory.stock.released",
      "shopmesh.payment.v1.PaymentSucceeded": "PAYMENT payment.payment.succeeded",
      "shopmesh.payment.v1.PaymentFailed": "PAYMENT payment.payment.failed",
      "shopmesh.payment.v1.PaymentRefunded": "PAYMENT payment.payment.refunded",
    });
    expect(EVENTS.streams).toEqual([
      { name: "ORDER", subjects: ["order.>"] },
      { name: "INVENTORY", subjects: ["inventory.>"] },
      { name: "PAYMENT", subjects: ["payment.>"] },
      { name: "DLQ", subjects: ["dlq.>"] },
    ]);
    expect(EVENTS.kind("shopmesh.order.v1.Order")).toBeUndefined();
    expect(EVENTS.registry.getMessage("shopmesh.payment.v1.PaymentFailed")?.typeName).toBe(
      "shopmesh.payment.v1.PaymentFailed",
    );
  });
});
