/** Field validators name the field as the proto does. */
import { describe, expect, it } from "vitest";
import { violatedField as field } from "../test/rpc.js";
import { requireId, requireQuantity } from "./validate.js";

describe("requireId", () => {
  it("accepts 1..max of [A-Za-z0-9._:-] not starting with punctuation", () => {
    expect(requireId("ord_1:a.b-c", "order_id")).toBe("ord_1:a.b-c");
    for (const bad of ["", ".x", "a b", "é", "x".repeat(129)])
      expect(field(() => requireId(bad, "order_id"))).toBe("order_id");
    expect(field(() => requireId("x".repeat(65), "card_token", 64))).toBe("card_token");
  });
});

describe("requireQuantity", () => {
  it("accepts integers in range only", () => {
    expect(requireQuantity(3, "quantity")).toBe(3);
    for (const bad of [0, -1, 1.5, 1_000_001, Number.NaN])
      expect(field(() => requireQuantity(bad, "quantity"))).toBe("quantity");
    expect(field(() => requireQuantity(11, "quantity", 1, 10))).toBe("quantity");
  });
});
