/** The one idempotency rule every store applies. */
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { GetProductRequestSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { InvalidArgumentError } from "./errors.js";
import { keyUse, requestFingerprint, requireIdempotencyKey, VOIDED } from "./idempotency.js";

describe("keyUse", () => {
  it("tells a first use, a retry, a different request and a voided key apart", () => {
    expect(keyUse(undefined, "f1")).toBe("new");
    expect(keyUse("f1", "f1")).toBe("replay");
    expect(keyUse("f1", "f2")).toBe("key-reused");
    expect(keyUse(VOIDED, "f1")).toBe("voided");
    expect(keyUse(null, "f1")).toBe("voided");
  });
});

describe("requestFingerprint", () => {
  it("is equal for equal requests and differs for different ones", () => {
    const a = requestFingerprint(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "a" }));
    const a2 = requestFingerprint(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "a" }));
    const b = requestFingerprint(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "b" }));
    expect(a).toBe(a2);
    expect(a).not.toBe(b);
    expect(a).not.toBe(VOIDED);
  });
});

describe("requireIdempotencyKey", () => {
  it("accepts 1..128 printable characters and names the field otherwise", () => {
    expect(requireIdempotencyKey("k-1:x")).toBe("k-1:x");
    for (const bad of ["", "a b", "x".repeat(129), "é"]) {
      expect(() => requireIdempotencyKey(bad, "key")).toThrow(InvalidArgumentError);
    }
  });
});
