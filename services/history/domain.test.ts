/** The order-history projection: each event's fact, each merge rule, and convergence in any order. */
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import {
  StockRejectedSchema,
  StockReleasedSchema,
  StockReservedSchema,
} from "../../gen/shopmesh/inventory/v1/events_pb.js";
import {
  OrderCancelledSchema,
  OrderConfirmedSchema,
  OrderPlacedSchema,
  OrderRefundSettledSchema,
} from "../../gen/shopmesh/order/v1/events_pb.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../../gen/shopmesh/payment/v1/events_pb.js";
import { type Fact, factOf, type OrderView, project, UnusableEventError } from "./domain.js";

const ORDER = "ord-1";
const T0 = Date.UTC(2026, 0, 1);
const meta = (eventId: string, at: number, orderId = ORDER) => ({
  eventId,
  orderId,
  source: "test",
  occurredAt: timestampFromMs(at),
});
const usd = (amountMinor: bigint) => ({ currencyCode: "USD", amountMinor });
const items = [
  { productId: "coffee-beans", quantity: 2 },
  { productId: "ceramic-mug", quantity: 1 },
];

/** One fact per event type, as the events of one order would say them, at T0 + `offset` s. */
const facts = {
  placed: (offset = 0) =>
    factOf(
      create(OrderPlacedSchema, { meta: meta("e-placed", T0 + offset * 1000), customerId: "ana", items }),
      "e-placed",
    ),
  reserved: (offset = 1) =>
    factOf(
      create(StockReservedSchema, {
        meta: meta("e-reserved", T0 + offset * 1000),
        reservationId: "r",
        total: usd(3000n),
      }),
      "e-reserved",
    ),
  rejected: (offset = 1) =>
    factOf(
      create(StockRejectedSchema, { meta: meta("e-rejected", T0 + offset * 1000), reason: "short" }),
      "e-rejected",
    ),
  succeeded: (offset = 2) =>
    factOf(
      create(PaymentSucceededSchema, {
        meta: meta("e-succeeded", T0 + offset * 1000),
        paymentId: "p",
        customerId: "ana",
        amount: usd(3000n),
      }),
      "e-succeeded",
    ),
  failed: (offset = 2) =>
    factOf(
      create(PaymentFailedSchema, {
        meta: meta("e-failed", T0 + offset * 1000),
        customerId: "ana",
        reason: "declined",
      }),
      "e-failed",
    ),
  confirmed: (offset = 3) =>
    factOf(
      create(OrderConfirmedSchema, {
        meta: meta("e-confirmed", T0 + offset * 1000),
        customerId: "ana",
        total: usd(2900n),
        paymentId: "p",
      }),
      "e-confirmed",
    ),
  refunded: (offset = 4) =>
    factOf(
      create(PaymentRefundedSchema, {
        meta: meta("e-refunded", T0 + offset * 1000),
        customerId: "ana",
        amount: usd(3000n),
      }),
      "e-refunded",
    ),
  released: (offset = 5) =>
    factOf(
      create(StockReleasedSchema, { meta: meta("e-released", T0 + offset * 1000), reservationId: "r" }),
      "e-released",
    ),
  cancelled: (offset = 6) =>
    factOf(
      create(OrderCancelledSchema, {
        meta: meta("e-cancelled", T0 + offset * 1000),
        customerId: "ana",
        reason: "customer asked",
      }),
      "e-cancelled",
    ),
  cancelledRefundPending: (offset = 6) =>
    factOf(
      create(OrderCancelledSchema, {
        meta: meta("e-cancelled", T0 + offset * 1000),
        customerId: "ana",
        reason: "payment unavailable",
        refundPending: true,
      }),
      "e-cancelled",
    ),
  refundSettled: (offset = 9) =>
    factOf(
      create(OrderRefundSettledSchema, {
        meta: meta("e-settled", T0 + offset * 1000),
        customerId: "ana",
        detail: "no charge happened (key voided)",
      }),
      "e-settled",
    ),
};

const fold = (fs: readonly Fact[], from?: OrderView) => fs.reduce<OrderView | undefined>(project, from) as OrderView;

function* permutations<T>(xs: readonly T[]): Generator<T[]> {
  if (xs.length <= 1) {
    yield [...xs];
    return;
  }
  for (let i = 0; i < xs.length; i++) {
    const rest = [...xs.slice(0, i), ...xs.slice(i + 1)];
    for (const p of permutations(rest)) yield [xs[i] as T, ...p];
  }
}

describe("factOf", () => {
  it("says what each event type says about its order", () => {
    expect(facts.placed()).toEqual({
      eventId: "e-placed",
      type: "shopmesh.order.v1.OrderPlaced",
      orderId: ORDER,
      occurredAt: T0,
      customerId: "ana",
      items,
      status: "PENDING",
    });
    expect(facts.reserved()).toMatchObject({ reservedTotal: { amountMinor: 3000, currency: "USD" } });
    expect(facts.reserved()).not.toHaveProperty("customerId");
    expect(facts.confirmed()).toMatchObject({
      status: "CONFIRMED",
      customerId: "ana",
      chargedTotal: { amountMinor: 2900, currency: "USD" },
    });
    expect(facts.cancelled()).toMatchObject({ status: "CANCELLED", reason: "customer asked", customerId: "ana" });
    expect(facts.succeeded()).toMatchObject({ paymentStatus: "CAPTURED", customerId: "ana" });
    expect(facts.failed()).toMatchObject({ paymentStatus: "DECLINED", customerId: "ana" });
    expect(facts.refunded()).toMatchObject({ paymentStatus: "REFUNDED", customerId: "ana" });
    expect(Object.keys(facts.rejected()).sort()).toEqual(["eventId", "occurredAt", "orderId", "type"]);
    expect(facts.released().type).toBe("shopmesh.inventory.v1.StockReleased");
  });

  it("ignores an empty customer and a total without currency", () => {
    const f = factOf(create(OrderConfirmedSchema, { meta: meta("e", T0), customerId: "", total: usd(0n) }), "e");
    expect(f.customerId).toBeUndefined();
    expect(
      factOf(create(OrderConfirmedSchema, { meta: meta("e", T0), customerId: "a" }), "e").chargedTotal,
    ).toBeUndefined();
    expect(
      factOf(create(OrderConfirmedSchema, { meta: meta("e", T0), total: { currencyCode: "", amountMinor: 5n } }), "e")
        .chargedTotal,
    ).toBeUndefined();
  });

  it("refuses what no service sends (a hostile publisher's): an order id over 128, a customer no caller can be, more lines than an order takes; takes a time past a day ahead as that, and one before year 1 as year 1; keeps 2,000 characters of a reason", () => {
    const now = T0 + 60_000;
    const at = (ms: number) => create(OrderPlacedSchema, { meta: meta("e", ms), customerId: "a" });
    expect(factOf(at(now + 3_600_000), "e", now).occurredAt).toBe(now + 3_600_000); // clocks drift
    expect(factOf(at(now + 25 * 3_600_000), "e", now).occurredAt).toBe(now + 24 * 3_600_000);
    expect(factOf(at(1e16), "e", now).occurredAt).toBe(now + 24 * 3_600_000);
    // Nor before year 1, which a Timestamp's JSON form cannot hold (the history answered 500).
    const year1 = Date.parse("0001-01-01T00:00:00Z");
    expect(factOf(at(year1), "e", now).occurredAt).toBe(year1);
    expect(factOf(at(year1 - 1), "e", now).occurredAt).toBe(year1);
    const farBack = create(OrderPlacedSchema, { meta: { ...meta("e", T0), occurredAt: { seconds: -(2n ** 63n) } } });
    expect(factOf(farBack, "e", now).occurredAt).toBe(year1);
    const lines = (n: number, productId = "p") =>
      Array.from({ length: n }, (_, i) => ({ productId: `${productId}${i}`, quantity: 1 }));
    const placedWith = (items: { productId: string; quantity: number }[]) =>
      factOf(create(OrderPlacedSchema, { meta: meta("e", T0), customerId: "a", items }), "e", now);
    expect(placedWith(lines(50)).items).toHaveLength(50);
    expect(() => placedWith(lines(51))).toThrow(/items no order can have/);
    expect(() => placedWith(lines(1, "p".repeat(129)))).toThrow(/items no order can have/);
    expect(() => factOf(create(OrderPlacedSchema, { meta: meta("e", T0, "o".repeat(129)) }), "e", now)).toThrow(
      /order id over 128/,
    );
    for (const customerId of ["not a subject", "x".repeat(129), "a\u0000"]) {
      expect(() => factOf(create(OrderPlacedSchema, { meta: meta("e", T0), customerId }), "e", now)).toThrow(
        /is not one/,
      );
    }
    const cancelled = factOf(
      create(OrderCancelledSchema, {
        meta: meta("e", T0),
        customerId: "alice@example.com",
        reason: "r".repeat(900_000),
      }),
      "e",
      now,
    );
    expect(cancelled.reason).toHaveLength(2_000);
  });

  it("refuses an event without order id or time, or with an amount out of range", () => {
    expect(() => factOf(create(OrderPlacedSchema, { customerId: "a" }), "e")).toThrow(UnusableEventError);
    expect(() => factOf(create(OrderPlacedSchema, { meta: { ...meta("e", T0), orderId: "" } }), "e")).toThrow(
      UnusableEventError,
    );
    expect(() => factOf(create(OrderPlacedSchema, { meta: { eventId: "e", orderId: ORDER } }), "e")).toThrow(
      UnusableEventError,
    );
    expect(() => factOf(create(StockReservedSchema, { meta: meta("e", T0), total: usd(-1n) }), "e")).toThrow(
      UnusableEventError,
    );
    // A currency no service writes (a forged 900 KB one made the customer's listing too large to answer).
    const total = { currencyCode: "U".repeat(900_000), amountMinor: 1n };
    expect(() => factOf(create(StockReservedSchema, { meta: meta("e", T0), total }), "e")).toThrow(/currency/);
    expect(() =>
      factOf(
        create(StockReservedSchema, { meta: meta("e", T0), total: usd(BigInt(Number.MAX_SAFE_INTEGER) + 1n) }),
        "e",
      ),
    ).toThrow(UnusableEventError);
  });
});

describe("project", () => {
  it("creates the view from any first event, knowing only what that event says", () => {
    expect(project(undefined, facts.succeeded())).toEqual({
      orderId: ORDER,
      customerId: "ana",
      status: null,
      items: [],
      total: null,
      paymentStatus: "CAPTURED",
      reason: "",
      refund: "none",
      lastEventAt: T0 + 2000,
      lastEventType: "shopmesh.payment.v1.PaymentSucceeded",
      lastEventId: "e-succeeded",
    });
    expect(project(undefined, facts.reserved())).toMatchObject({
      customerId: null,
      status: null,
      total: { amountMinor: 3000, currency: "USD" },
    });
  });

  it("shows a cancelled order's refund pending until it settles, in either order and applied twice", () => {
    expect(fold([facts.placed(), facts.cancelledRefundPending()]).refund).toBe("pending");
    expect(fold([facts.cancelled()]).refund).toBe("none");
    for (const fs of [
      [facts.cancelledRefundPending(), facts.refundSettled()],
      [facts.refundSettled(), facts.cancelledRefundPending()],
      [facts.cancelledRefundPending(), facts.refundSettled(), facts.cancelledRefundPending(), facts.refundSettled()],
    ]) {
      expect(fold(fs)).toMatchObject({ status: "CANCELLED", reason: "payment unavailable", refund: "settled" });
    }
  });

  it("sets PENDING only before any status, and never goes back from a terminal one", () => {
    expect(fold([facts.placed()]).status).toBe("PENDING");
    expect(fold([facts.confirmed(), facts.placed()]).status).toBe("CONFIRMED");
    expect(fold([facts.cancelled(), facts.placed()])).toMatchObject({ status: "CANCELLED", reason: "customer asked" });
    // OrderPlaced still brings the items, even late.
    expect(fold([facts.confirmed(), facts.placed()]).items).toEqual(items);
  });

  it("prefers the charged total to the reserved one, whichever comes first", () => {
    const charged = { amountMinor: 2900, currency: "USD" };
    expect(fold([facts.reserved(), facts.confirmed()]).total).toEqual(charged);
    expect(fold([facts.confirmed(), facts.reserved()]).total).toEqual(charged);
    expect(fold([facts.placed(), facts.reserved()]).total).toEqual({ amountMinor: 3000, currency: "USD" });
  });

  it("ranks payment outcomes: a refund is final, a capture beats a decline", () => {
    expect(fold([facts.failed()]).paymentStatus).toBe("DECLINED");
    expect(fold([facts.succeeded(), facts.failed()]).paymentStatus).toBe("CAPTURED");
    expect(fold([facts.failed(), facts.succeeded()]).paymentStatus).toBe("CAPTURED");
    expect(fold([facts.refunded(), facts.succeeded()]).paymentStatus).toBe("REFUNDED");
    expect(fold([facts.refunded(), facts.failed()]).paymentStatus).toBe("REFUNDED");
    expect(fold([facts.placed()]).paymentStatus).toBeNull();
  });

  it("keeps the latest event by time, whatever the arrival order, ties broken by event id", () => {
    const late = facts.released(9);
    const v = fold([late, facts.placed(), facts.cancelled(6)]);
    expect(v).toMatchObject({
      lastEventAt: T0 + 9000,
      lastEventType: "shopmesh.inventory.v1.StockReleased",
      lastEventId: "e-released",
    });
    const a = facts.succeeded(5);
    const b = facts.refunded(5);
    expect(fold([a, b]).lastEventId).toBe("e-succeeded");
    expect(fold([b, a]).lastEventId).toBe("e-succeeded");
  });

  it("is idempotent: applying a fact again changes nothing", () => {
    const once = fold([facts.placed(), facts.reserved(), facts.succeeded()]);
    for (const f of [facts.placed(), facts.reserved(), facts.succeeded()]) expect(project(once, f)).toEqual(once);
  });

  it("refuses a fact about another order", () => {
    const other = factOf(create(OrderPlacedSchema, { meta: meta("x", T0, "ord-2") }), "x");
    expect(() => project(fold([facts.placed()]), other)).toThrow(/ord-2/);
  });
});

describe("convergence", () => {
  const scenarios: Record<string, { facts: Fact[]; expected: Partial<OrderView> }> = {
    confirmed: {
      facts: [facts.placed(), facts.reserved(), facts.succeeded(), facts.confirmed()],
      expected: {
        customerId: "ana",
        status: "CONFIRMED",
        items,
        total: { amountMinor: 2900, currency: "USD" },
        paymentStatus: "CAPTURED",
        reason: "",
        lastEventType: "shopmesh.order.v1.OrderConfirmed",
      },
    },
    "declined and cancelled": {
      facts: [facts.placed(), facts.reserved(), facts.failed(), facts.released(3), facts.cancelled(4)],
      expected: {
        status: "CANCELLED",
        total: { amountMinor: 3000, currency: "USD" },
        paymentStatus: "DECLINED",
        reason: "customer asked",
        lastEventType: "shopmesh.order.v1.OrderCancelled",
      },
    },
    "captured, then cancelled and refunded": {
      facts: [
        facts.placed(),
        facts.reserved(),
        facts.succeeded(),
        facts.refunded(),
        facts.released(),
        facts.cancelled(),
      ],
      expected: { status: "CANCELLED", paymentStatus: "REFUNDED", lastEventId: "e-cancelled" },
    },
    "rejected, with equal timestamps": {
      facts: [facts.placed(1), facts.rejected(1), facts.cancelled(1)],
      expected: { status: "CANCELLED", total: null, paymentStatus: null, lastEventId: "e-rejected" },
    },
  };

  for (const [name, s] of Object.entries(scenarios)) {
    it(`${name}: every arrival order, with a redelivery, gives the same view`, () => {
      const reference = fold(s.facts);
      expect(reference).toMatchObject(s.expected);
      let n = 0;
      for (const order of permutations(s.facts)) {
        expect(fold(order), order.map((f) => f.type).join(" > ")).toEqual(reference);
        // A redelivered event on top of any order changes nothing.
        expect(fold([...order, order[0] as Fact])).toEqual(reference);
        n++;
      }
      expect(n).toBe([...Array(s.facts.length).keys()].reduce((p, i) => p * (i + 1), 1));
    });
  }
});
