/** Field validation names the field as the proto does. */
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "./errors.js";
import { decodePageToken, encodePageToken, pageSize, validateLines } from "./validate.js";

const field = (f: () => unknown) => {
  try {
    f();
  } catch (e) {
    return e instanceof InvalidArgumentError ? e.field : `not InvalidArgumentError: ${e}`;
  }
  return "no error";
};

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

describe("paging", () => {
  it("defaults page size 0, rejects out of range, round-trips tokens and rejects foreign ones", () => {
    expect(pageSize(0)).toBe(20);
    expect(pageSize(100)).toBe(100);
    expect(field(() => pageSize(101))).toBe("page_size");
    expect(field(() => pageSize(-1))).toBe("page_size");
    expect(decodePageToken(encodePageToken({ after: "x" }), ["after"])).toEqual({ after: "x" });
    expect(decodePageToken("", ["after"])).toBeUndefined();
    expect(field(() => decodePageToken("bm9wZQ", ["after"]))).toBe("page_token");
  });
});
