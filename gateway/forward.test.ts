/** What a client reads of an upstream failure: business answers intact, infrastructure ones fixed. */
import { Code, ConnectError } from "@connectrpc/connect";
import { Metadata } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { Code as GrpcCode, InvalidArgumentError, RpcError, toStatusObject } from "../platform/errors.js";
import { toConnectError } from "./forward.js";

const rpc = (code: GrpcCode, message: string, metadata = new Metadata()) => new RpcError(code, message, metadata);

describe("toConnectError", () => {
  it("keeps a business answer's code, message and field violations", () => {
    const st = toStatusObject(new InvalidArgumentError("items[0].quantity", "must be between 1 and 10000"));
    const e = toConnectError(rpc(st.code, st.details, st.metadata), "order");
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toBe("items[0].quantity: must be between 1 and 10000");
    expect(e.findDetails(BadRequestSchema)[0]?.fieldViolations[0]?.field).toBe("items[0].quantity");
    expect(toConnectError(rpc(GrpcCode.NOT_FOUND, 'order "x" not found'), "order").rawMessage).toBe(
      'order "x" not found',
    );
  });

  it("replaces infrastructure messages, which can name internal addresses", () => {
    const e = toConnectError(rpc(GrpcCode.UNAVAILABLE, "connect ECONNREFUSED 10.0.3.7:50052"), "payment");
    expect(e.code).toBe(Code.Unavailable);
    expect(e.rawMessage).toBe("payment is unavailable; retry later");
    expect(e.cause).toBeInstanceOf(RpcError);
    for (const code of [GrpcCode.INTERNAL, GrpcCode.UNKNOWN, GrpcCode.DEADLINE_EXCEEDED, GrpcCode.DATA_LOSS]) {
      expect(toConnectError(rpc(code, "at 10.1.2.3:9"), "order").rawMessage).not.toContain("10.1.2.3");
    }
  });

  it("sheds with a Retry-After", () => {
    const e = toConnectError(rpc(GrpcCode.RESOURCE_EXHAUSTED, "inventory: bulkhead full, call shed"), "inventory");
    expect(e.code).toBe(Code.ResourceExhausted);
    expect(e.metadata.get("retry-after")).toBe("1");
  });

  it("answers the client's own deadline, not the CANCELLED the upstream call saw", () => {
    const ac = new AbortController();
    ac.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
    const e = toConnectError(rpc(GrpcCode.CANCELLED, "call cancelled by the caller"), "order", ac.signal);
    expect(e.code).toBe(Code.DeadlineExceeded);
  });

  it("never shows a non-RPC error", () => {
    const e = toConnectError(new Error("SELECT * FROM orders failed"), "order");
    expect(e.code).toBe(Code.Internal);
    expect(e.rawMessage).toBe("internal error");
  });

  it("maps the gateway's own validation like a service's", () => {
    const e = toConnectError(new InvalidArgumentError("order_id", "must not be empty"), "gateway");
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.findDetails(BadRequestSchema)).toHaveLength(1);
  });
});
