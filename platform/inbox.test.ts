/** `on`: a handler per event type, even when several types share one function. */
import { describe, expect, it } from "vitest";
import { OrderConfirmedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { PaymentFailedSchema } from "../gen/shopmesh/payment/v1/events_pb.js";
import { on } from "./inbox.js";

describe("on", () => {
  it("gives `only` to its own type, not to every type sharing the function", () => {
    const shared = async () => {};
    const [, confirmed] = on(OrderConfirmedSchema, shared);
    const [, failed] = on(PaymentFailedSchema, shared, (e) => e.paymentId !== "");
    expect(confirmed.only).toBeUndefined();
    expect(failed.only).toBeTypeOf("function");
  });
});
