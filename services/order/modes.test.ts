/**
 * Orchestration and choreography side by side: the same scenario table gives
 * the same end states in both saga modes — order status and reason, stock
 * back where it should be, and money taken exactly when confirmed.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import { OrderPlacedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import { OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentFailedSchema } from "../../gen/shopmesh/payment/v1/events_pb.js";
import { connectBus } from "../../platform/bus.js";
import { Code } from "../../platform/errors.js";
import { silentLogger } from "../../platform/log.js";
import { event, publishEvents } from "../../test/events.js";
import { capturedPayments } from "../../test/probes.js";
import { expectRpcError } from "../../test/rpc.js";
import { type System, startSystem } from "../../test/system.js";

let sys: System;
beforeAll(async () => {
  sys = await startSystem();
});
afterAll(async () => {
  await sys[Symbol.asyncDispose]();
});

interface Scenario {
  readonly name: string;
  readonly productId: string;
  readonly quantity: number;
  readonly cardToken: string;
  /** Cancel after stock is reserved, while the (slowed) charge is pending. */
  readonly cancel?: boolean;
  /** The customer's reason for cancelling (default "changed my mind"). */
  readonly cancelReason?: string;
  /** The caller's subject (default `modes-<mode>`). */
  readonly customer?: string;
  readonly expect: { status: OrderStatus; reason: string; stockDelta: number; captured: number };
}

const LONGEST_REASON = `${"\u{1F4E6}".repeat(200)}${"x".repeat(100)}`;

const SCENARIOS: readonly Scenario[] = [
  {
    name: "success",
    productId: "coffee-beans",
    quantity: 2,
    cardToken: "tok_visa",
    expect: { status: OrderStatus.CONFIRMED, reason: "", stockDelta: -2, captured: 1 },
  },
  {
    name: "declined",
    productId: "ceramic-mug",
    quantity: 1,
    cardToken: "tok_decline",
    expect: { status: OrderStatus.CANCELLED, reason: "payment declined: card declined", stockDelta: 0, captured: 0 },
  },
  {
    name: "out of stock",
    productId: "limited-print",
    quantity: 5,
    cardToken: "tok_visa",
    expect: {
      status: OrderStatus.CANCELLED,
      reason: "insufficient stock: limited-print (requested 5, available 1)",
      stockDelta: 0,
      captured: 0,
    },
  },
  {
    name: "cancelled by the customer",
    productId: "paper-filters",
    quantity: 3,
    cardToken: "tok_visa",
    cancel: true,
    expect: {
      status: OrderStatus.CANCELLED,
      reason: "cancelled by customer: changed my mind",
      stockDelta: 0,
      captured: 0,
    },
  },
  {
    // The most a customer may say (500 characters, some of them surrogate pairs): the refund's reason,
    // `order <id>: cancelled by customer: …`, was longer than payment takes; refused, it was taken for
    // done and the money kept.
    name: "cancelled with the longest reason",
    productId: "paper-filters",
    quantity: 1,
    cardToken: "tok_visa",
    cancel: true,
    cancelReason: LONGEST_REASON,
    expect: {
      status: OrderStatus.CANCELLED,
      reason: `cancelled by customer: ${LONGEST_REASON}`,
      stockDelta: 0,
      captured: 0,
    },
  },
  {
    // A subject the identity rule takes but the id rule did not: payment refused to charge it.
    name: "a customer named by an e-mail address",
    productId: "coffee-beans",
    quantity: 1,
    cardToken: "tok_visa",
    customer: "carol@example.com",
    expect: { status: OrderStatus.CONFIRMED, reason: "", stockDelta: -1, captured: 1 },
  },
];

async function available(productId: string): Promise<number> {
  return (await sys.products.getProduct({ productId })).product?.available ?? -1;
}

async function eventually<T>(read: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe.each([
  ["orchestration", SagaMode.ORCHESTRATION],
  ["choreography", SagaMode.CHOREOGRAPHY],
] as const)("%s", (_label, sagaMode) => {
  it.each(SCENARIOS)("$name", async (sc) => {
    const before = await available(sc.productId);
    const customer = sc.customer ?? `modes-${sagaMode}`;
    const who = sys.as(customer);
    if (sc.cancel) await sys.paymentChaos.setFaults({ faults: { latencyMs: 1_500 } });
    try {
      const { order } = await sys.orders.placeOrder(
        {
          idempotencyKey: `${sc.name.replaceAll(" ", "-")}-${sagaMode}`,
          items: [{ productId: sc.productId, quantity: sc.quantity }],
          cardToken: sc.cardToken,
          sagaMode,
        },
        who,
      );
      const id = order?.id ?? "";
      expect(order?.sagaMode).toBe(sagaMode);
      if (sc.cancel) {
        await eventually(
          async () => (await sys.orders.getOrder({ orderId: id }, who)).order?.reservationId ?? "",
          (r) => r !== "",
        );
        await sys.orders.cancelOrder({ orderId: id, reason: sc.cancelReason ?? "changed my mind" }, who);
        await sys.paymentChaos.setFaults({ faults: {} });
      }
      const done = await sys.settle(id, customer);
      expect(done.status).toBe(sc.expect.status);
      expect(done.statusReason).toBe(sc.expect.reason);
      // Compensation in choreography follows the terminal state: wait for it to land.
      expect(
        await eventually(
          () => available(sc.productId),
          (a) => a === before + sc.expect.stockDelta,
        ),
      ).toBe(before + sc.expect.stockDelta);
      expect(await capturedPayments(sys.payment.store.db, id)).toBe(sc.expect.captured);
      // Out of stock: no charge was ever attempted.
      if (sc.name === "out of stock") await expectRpcError(sys.payments.getPayment({ orderId: id }), Code.NOT_FOUND);
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });
});

describe("choreography, a charge that can never be made", () => {
  it("is answered PaymentFailed at once (it was retried ten times, dead-lettered, and its order waited out the step budget)", async () => {
    const bus = await connectBus(sys.nats.url, "modes-test", silentLogger(), { streams: EVENTS.streams });
    try {
      // Order accepts no such customer; a charge for one is refused as invalid however often it is tried.
      const orderId = "ord-never-chargeable";
      const started = Date.now();
      await publishEvents(bus, [
        event(OrderPlacedSchema, orderId, {
          customerId: "not a subject",
          items: [{ productId: "paper-filters", quantity: 1 }],
          cardToken: "tok_visa",
          sagaMode: SagaMode.CHOREOGRAPHY,
        }),
      ]);
      const failed = await eventually(
        async () => {
          const m = await bus.jsm.streams
            .getMessage("PAYMENT", { last_by_subj: "payment.payment.failed.choreography" })
            .catch(() => undefined);
          const e = m && fromBinary(PaymentFailedSchema, m.data);
          return e?.meta?.orderId === orderId ? e : undefined;
        },
        (e) => e !== undefined,
      );
      expect(failed?.reason).toMatch(/^customer_id: /);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await bus.close();
    }
  });
});
