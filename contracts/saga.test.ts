/** The saga's participant keys. */
import { describe, expect, it } from "vitest";
import { stepKey } from "./saga.js";

describe("stepKey", () => {
  it("is the order id and the step, so retries, recovery and choreography reuse one key", () => {
    expect(stepKey("ord_1", "charge_payment")).toBe("ord_1:charge_payment");
    expect(stepKey("ord_1", "reserve_stock")).toBe("ord_1:reserve_stock");
  });
});
