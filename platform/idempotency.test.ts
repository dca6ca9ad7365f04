/** The one idempotency rule every store applies. */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { GetProductRequestSchema, ReserveStockRequestSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { PlaceOrderRequestSchema } from "../gen/shopmesh/order/v1/order_pb.js";
import { ChargePaymentRequestSchema } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { InvalidArgumentError } from "./errors.js";
import { keepsUnknownFields, keyUse, requestFingerprint, requireIdempotencyKey, VOIDED } from "./idempotency.js";

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

describe("keepsUnknownFields", () => {
  it("holds for the requests fingerprinted under a key, and no other", () => {
    for (const schema of [PlaceOrderRequestSchema, ReserveStockRequestSchema, ChargePaymentRequestSchema]) {
      expect(keepsUnknownFields(schema), schema.typeName).toBe(true);
    }
    expect(keepsUnknownFields(GetProductRequestSchema)).toBe(false);
  });

  it("makes the fingerprint of a request differ by the fields its service does not know", () => {
    const known = toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "a" }));
    const read = (extra: number) =>
      fromBinary(GetProductRequestSchema, new Uint8Array([...known, 15 << 3, extra]), { readUnknownFields: true });
    const fingerprint = (extra: number) => requestFingerprint(GetProductRequestSchema, read(extra));
    expect(fingerprint(1)).toBe(fingerprint(1));
    expect(fingerprint(1)).not.toBe(fingerprint(2));
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
