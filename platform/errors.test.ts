/** Errors across the wire: statuses as the gRPC spec means them, details any client can read, no internals. */
import { Metadata } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import {
  Code,
  FailedPreconditionError,
  IdempotencyKeyReusedError,
  InvalidArgumentError,
  NotFoundError,
  RpcError,
  ServiceError,
  toStatusObject,
} from "./errors.js";

/** What a client decodes from the status a server would send for `err`. */
function roundTrip(err: unknown): RpcError {
  const st = toStatusObject(err);
  return new RpcError(st.code, st.details, st.metadata ?? new Metadata());
}

describe("toStatusObject", () => {
  it("keeps each error's code and message, with google.rpc details in grpc-status-details-bin", () => {
    const bad = roundTrip(new InvalidArgumentError("items[1].quantity", "must be between 1 and 10000"));
    expect(bad.code).toBe(Code.INVALID_ARGUMENT);
    expect(bad.fieldViolations).toEqual([
      expect.objectContaining({ field: "items[1].quantity", description: "must be between 1 and 10000" }),
    ]);
    expect(roundTrip(new NotFoundError("order", "o1")).codeName).toBe("NOT_FOUND");
    expect(
      roundTrip(new FailedPreconditionError("no", [{ type: "T", subject: "s", description: "d" }])).details,
    ).toHaveLength(1);
    expect(roundTrip(new IdempotencyKeyReusedError("k")).codeName).toBe("ALREADY_EXISTS");
    expect(roundTrip(new ServiceError(Code.PERMISSION_DENIED, "admins only")).message).toBe("admins only");
  });

  it("turns anything else into INTERNAL with a message that says nothing", () => {
    for (const err of [new Error("SQLITE_CONSTRAINT: CHECK failed"), "a string", undefined, { code: 3 }]) {
      const st = toStatusObject(err);
      expect(st.code).toBe(Code.INTERNAL);
      expect(st.details).toBe("internal error");
    }
  });
});

describe("RpcError", () => {
  it("skips detail types it does not know and reads none from a bare status", () => {
    expect(new RpcError(Code.UNAVAILABLE, "down", new Metadata()).details).toEqual([]);
    expect(new RpcError(Code.UNAVAILABLE, "down", new Metadata()).codeName).toBe("UNAVAILABLE");
  });
});
