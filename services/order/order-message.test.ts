/** What an Order message carries of a long step log: bounded, the first entries and the latest, the rest counted. */
import { describe, expect, it } from "vitest";
import { MAX_STEPS_SHOWN, orderMessage } from "./api.js";
import type { OrderRecord } from "./domain.js";
import type { StoredStep } from "./schema.js";

const order: OrderRecord = {
  id: "ord_1",
  customerId: "alice",
  status: "CANCELLED",
  reason: "payment unavailable",
  sagaMode: "ORCHESTRATION",
  items: [{ productId: "p", quantity: 1 }],
  cardToken: "tok_visa",
  totalMinor: 100,
  currency: "USD",
  stock: "undone",
  reservationId: "res_1",
  payment: "attempted",
  paymentId: "",
  cancelRequested: null,
  traceparent: "",
  createdAt: 0,
  updatedAt: 0,
  version: 3,
};
/** A log of `n` entries: a refund retried through an outage, STARTED and FAILED by turns. */
const log = (n: number): StoredStep[] =>
  Array.from({ length: n }, (_, i) => ({
    seq: i + 1,
    name: "refund_payment",
    status: i % 2 ? "FAILED" : "STARTED",
    detail: `attempt ${(i >> 1) + 1}`,
    attempt: (i >> 1) + 1,
    at: i * 1000,
    fence: 1,
  }));

describe("orderMessage", () => {
  it("carries a short log whole", () => {
    const m = orderMessage(order, log(MAX_STEPS_SHOWN));
    expect(m.steps).toHaveLength(MAX_STEPS_SHOWN);
    expect(m.stepsOmitted).toBe(0);
  });

  it("carries the first 16 and the latest 48 entries of a long one, and counts what it leaves out", () => {
    // Two entries every ~5 s: a day's outage, which a ListOrders page of 100 such orders once made 500.
    const m = orderMessage(order, log(34_560));
    expect(m.steps).toHaveLength(MAX_STEPS_SHOWN);
    expect(m.stepsOmitted).toBe(34_560 - MAX_STEPS_SHOWN);
    const details = (m.steps ?? []).map((s) => s.detail);
    expect(details.slice(0, 2)).toEqual(["attempt 1", "attempt 1"]);
    expect(details.at(15)).toBe("attempt 8");
    expect(details.at(16)).toBe(`attempt ${(34_560 - 48) / 2 + 1}`);
    expect(details.at(-1)).toBe("attempt 17280");
  });
});
