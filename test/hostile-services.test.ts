/**
 * A hostile review of the services (2026-12-04): what a customer's request, carried unchanged by the
 * gateway, makes a service store and show back — an order's step log, a cancel's reason. Each failed
 * before its fix.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StepStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { Code } from "../platform/errors.js";
import { expectRpcError } from "./rpc.js";
import { type System, startSystem } from "./system.js";

let sys: System;
beforeAll(async () => {
  sys = await startSystem({ order: { SAGA_STEP_BUDGET_MS: "3000" } });
}, 60_000);
afterAll(async () => {
  await sys?.[Symbol.asyncDispose]();
});

let n = 0;
const key = () => `hostile2-${Date.now()}-${n++}`;

async function place(subject: string) {
  const { order } = await sys.orders.placeOrder(
    { idempotencyKey: key(), items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" },
    sys.as(subject),
  );
  if (!order) throw new Error("no order");
  return order;
}

describe("a cancel reason with invisible characters", () => {
  // docs/security.md promises a cancel's reason refuses "the invisible characters that make two texts
  // look alike"; platform/validate.ts's CONTROL list misses whole classes of them (Unicode Cf and fillers).
  const invisible: Record<string, string> = {
    "tag characters (U+E0000 block: hidden ASCII, 'ASCII smuggling')": "refund ok\u{E0020}\u{E0070}\u{E0061}\u{E0079}",
    "soft hyphen U+00AD": "pay\u00ADpal",
    "Hangul filler U+3164": "a\u3164b",
    "Hangul choseong filler U+115F": "a\u115Fb",
    "Mongolian vowel separator U+180E": "a\u180Eb",
    "interlinear annotation controls U+FFF9..U+FFFB": "shown\uFFF9\uFFFAhidden\uFFFB",
    "musical symbol format controls U+1D173": "a\u{1D173}b",
    "combining grapheme joiner U+034F": "a\u034Fb",
  };
  for (const [what, reason] of Object.entries(invisible)) {
    it(`is refused INVALID_ARGUMENT: ${what}`, async () => {
      const order = await place("mallory");
      await expectRpcError(
        sys.orders.cancelOrder({ orderId: order.id, reason }, sys.as("mallory")),
        Code.INVALID_ARGUMENT,
        "reason",
      );
    });
  }
});

describe("the step log a customer reads", () => {
  it("never names an internal address (host:port of a payment instance) when payment is away", async () => {
    await sys.payment.stop();
    const order = await place("alice");
    // The first charge attempt meets the stopped instance; the breaker then opens.
    await expect
      .poll(
        async () =>
          (await sys.orders.getOrder({ orderId: order.id }, sys.as("alice"))).order?.steps.filter(
            (s) => s.name === "charge_payment" && s.status === StepStatus.FAILED,
          ).length ?? 0,
        { timeout: 10_000 },
      )
      .toBeGreaterThan(0);
    const { order: seen } = await sys.orders.getOrder({ orderId: order.id }, sys.as("alice"));
    const shown = [seen?.statusReason ?? "", ...(seen?.steps.map((s) => s.detail) ?? [])];
    // What GetOrder/WatchOrder answer goes through the gateway unchanged and is drawn by the web shop.
    expect(shown.filter((d) => /\b\d{1,3}(\.\d{1,3}){3}:\d+\b|\[[0-9a-f:]+\]:\d+/i.test(d))).toEqual([]);
  }, 30_000);
});
