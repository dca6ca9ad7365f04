/** Order lines: the rule order and inventory share, with fields named as the proto does. */
import { describe, expect, it } from "vitest";
import { violatedField as field } from "../test/rpc.js";
import { validateLines } from "./lines.js";

describe("validateLines", () => {
  it("names the offending field", () => {
    expect(field(() => validateLines([]))).toBe("items");
    expect(field(() => validateLines([{ productId: "a", quantity: 0 }]))).toBe("items[0].quantity");
    expect(field(() => validateLines([{ productId: "a", quantity: 10_001 }]))).toBe("items[0].quantity");
    expect(field(() => validateLines([{ productId: "a b", quantity: 1 }]))).toBe("items[0].product_id");
    expect(
      field(() => validateLines(Array.from({ length: 51 }, (_, i) => ({ productId: `p${i}`, quantity: 1 })))),
    ).toBe("items");
    expect(validateLines([{ productId: "a", quantity: 2 }])).toEqual([{ productId: "a", quantity: 2 }]);
  });
});
