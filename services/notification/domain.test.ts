/** Pure notification rules. */
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { OrderCancelledSchema, OrderConfirmedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import { PaymentRefundedSchema } from "../../gen/shopmesh/payment/v1/events_pb.js";
import { InvalidArgumentError } from "../../platform/errors.js";
import { formatMoney, notificationFor, UnusableEventError, validateListFilter } from "./domain.js";

const meta = { eventId: "evt_1", orderId: "ord-1", source: "test" };

describe("formatMoney", () => {
  it("writes the currency code and the amount with the currency's minor digits", () => {
    expect(formatMoney(1200n, "USD")).toBe("USD 12.00");
    expect(formatMoney(5n, "EUR")).toBe("EUR 0.05");
    expect(formatMoney(0n, "USD")).toBe("USD 0.00");
    expect(formatMoney(5000n, "KRW")).toBe("KRW 5000");
    expect(formatMoney(1234n, "BHD")).toBe("BHD 1.234");
    expect(formatMoney(-250n, "USD")).toBe("USD -2.50");
  });

  it("is exact beyond the double range and falls back to 2 digits for unknown codes", () => {
    expect(formatMoney(9_007_199_254_740_993n, "USD")).toBe("USD 90071992547409.93");
    expect(formatMoney(1200n, "XX")).toBe("XX 12.00");
  });
});

describe("notificationFor", () => {
  it("confirms an order with the amount charged", () => {
    const e = create(OrderConfirmedSchema, {
      meta,
      customerId: "alice",
      total: { currencyCode: "USD", amountMinor: 1200n },
      paymentId: "pay_1",
    });
    expect(notificationFor(e)).toEqual({
      customerId: "alice",
      orderId: "ord-1",
      kind: "ORDER_CONFIRMED",
      message: "Your order ord-1 is confirmed; USD 12.00 was charged.",
    });
    expect(notificationFor(create(OrderConfirmedSchema, { meta, customerId: "alice" })).message).toBe(
      "Your order ord-1 is confirmed.",
    );
  });

  it("tells why an order was cancelled, as one sentence", () => {
    const cancelled = (reason: string) =>
      notificationFor(create(OrderCancelledSchema, { meta, customerId: "bob", reason }));
    expect(cancelled("payment declined: card declined")).toEqual({
      customerId: "bob",
      orderId: "ord-1",
      kind: "ORDER_CANCELLED",
      message: "Your order ord-1 was cancelled: payment declined: card declined.",
    });
    expect(cancelled("out of stock. ").message).toBe("Your order ord-1 was cancelled: out of stock.");
    expect(cancelled("").message).toBe("Your order ord-1 was cancelled.");
  });

  it("tells how much was refunded", () => {
    const e = create(PaymentRefundedSchema, {
      meta,
      customerId: "carol",
      paymentId: "pay_1",
      amount: { currencyCode: "USD", amountMinor: 4250n },
      reason: "order cancelled",
    });
    expect(notificationFor(e)).toEqual({
      customerId: "carol",
      orderId: "ord-1",
      kind: "PAYMENT_REFUNDED",
      message: "USD 42.50 was refunded for your order ord-1.",
    });
  });

  it("refuses what no service sends (a negative amount, an odd currency, a customer no caller can be) and keeps 2,000 characters of a reason", () => {
    const refund = (amountMinor: bigint, currencyCode = "USD", customerId = "carol") =>
      notificationFor(create(PaymentRefundedSchema, { meta, customerId, amount: { amountMinor, currencyCode } }));
    // Before: "USD -9999999999.99 was charged".
    expect(() => refund(-1n)).toThrow(/is negative/);
    expect(() => refund(1n, "usd ")).toThrow(/is not one/);
    expect(() => refund(1n, "USD", "not a subject")).toThrow(UnusableEventError);
    expect(() => refund(1n, "USD", "o".repeat(129))).toThrow(UnusableEventError);
    expect(refund(1n, "USD", "carol@example.com").customerId).toBe("carol@example.com");
    const long = notificationFor(
      create(OrderCancelledSchema, { meta, customerId: "bob", reason: "r".repeat(900_000) }),
    );
    expect(long.message.length).toBeLessThan(2_100);
    // A run of dots that does not end the text: /\.+$/ over the whole took minutes (quadratic).
    const started = performance.now();
    const dots = notificationFor(
      create(OrderCancelledSchema, { meta, customerId: "bob", reason: `${".".repeat(900_000)}x` }),
    );
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(dots.message).toMatch(/^Your order ord-1 was cancelled: \.+…\.$/);
    expect(() =>
      notificationFor(create(OrderConfirmedSchema, { meta: { ...meta, orderId: "o".repeat(129) }, customerId: "bob" })),
    ).toThrow(/order id over 128/);
  });

  it("refuses an event that names no customer or no order", () => {
    expect(() => notificationFor(create(OrderConfirmedSchema, { meta, customerId: "" }))).toThrow(UnusableEventError);
    expect(() => notificationFor(create(OrderCancelledSchema, { customerId: "bob" }))).toThrow(UnusableEventError);
    expect(() =>
      notificationFor(create(PaymentRefundedSchema, { meta: { ...meta, orderId: "" }, customerId: "carol" })),
    ).toThrow(UnusableEventError);
  });
});

describe("validateListFilter", () => {
  it("accepts no order or a valid order id, and names order_id otherwise", () => {
    expect(validateListFilter({ orderId: "" })).toEqual({ orderId: "" });
    expect(validateListFilter({ orderId: "ord_1" })).toEqual({ orderId: "ord_1" });
    for (const orderId of ["a b", "-x", "x".repeat(129)]) {
      try {
        validateListFilter({ orderId });
        expect.unreachable(`accepted ${orderId}`);
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidArgumentError);
        expect((e as InvalidArgumentError).field).toBe("order_id");
      }
    }
  });
});
