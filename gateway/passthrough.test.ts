/**
 * The gRPC fast path (passthrough.ts) against the real system, with
 * hand-built HTTP/2 requests: the same answer bytes as the general path,
 * errors with their details, admin-only methods, the gateway's identity
 * (never the client's headers), deadlines and cancellation carried
 * upstream, malformed frames refused as the client's error, and a
 * compressed request still served (by the general path).
 */
import { gzipSync } from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import {
  GetProductRequestSchema,
  GetProductResponseSchema,
  RestockRequestSchema,
} from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { GetOrderRequestSchema } from "../gen/shopmesh/order/v1/order_pb.js";
import { envelope, h2Request, h2Session } from "../test/raw.js";
import { capturedLogger, type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";

let sys: System;
let gw: GatewayApp;
const { log, lines } = capturedLogger();
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const bearer = async (sub: string, roles: ("customer" | "admin")[] = ["customer"]) =>
  `Bearer ${await signDevToken(claims, sub, roles)}`;

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys, {}, log);
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

const GET_PRODUCT = "/shopmesh.inventory.v1.InventoryService/GetProduct";
const grpcHeaders = (path: string, authorization: string, extra: Record<string, string> = {}) => ({
  ":path": path,
  "content-type": "application/grpc",
  te: "trailers",
  authorization,
  ...extra,
});
const product = (id: string) =>
  envelope(toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: id })));

describe("gRPC fast path", () => {
  it("answers the gateway's own refusals and upstream errors as Trailers-Only: one HEADERS frame ending the stream", async () => {
    // grpc-core (Python, C++, Ruby, PHP clients) reads headers followed by an empty DATA frame
    // that ends the stream as a stream without a status: "UNKNOWN: Stream removed".
    const auth = await bearer("alice");
    await using s = await h2Session(gw.url);
    const cases = [
      { headers: grpcHeaders(GET_PRODUCT, ""), code: 16 },
      { headers: grpcHeaders("/shopmesh.inventory.v1.InventoryService/ReserveStock", auth), code: 12 },
      { headers: grpcHeaders("/no.such.Service/Method", auth), code: 12 },
      { headers: grpcHeaders(GET_PRODUCT, auth), body: product("no-such-product"), code: 5 },
      { headers: grpcHeaders(GET_PRODUCT, auth), body: product(""), code: 3 },
    ];
    for (const c of cases) {
      const r = await h2Request(s, c.headers, c.body ?? envelope(new Uint8Array()));
      expect(r.grpcStatus, c.headers[":path"]).toBe(c.code);
      expect(r.trailersOnly, `${c.headers[":path"]} → ${c.code}`).toBe(true);
    }
  });

  it("answers with the bytes the general path gives, and every call is logged as usual", async () => {
    const auth = await bearer("alice");
    await using s = await h2Session(gw.url);
    const fast = await h2Request(s, grpcHeaders(GET_PRODUCT, auth), product("coffee-beans"));
    expect(fast.grpcStatus).toBe(0);
    expect(fast.headers["content-type"]).toBe("application/grpc");
    // The same call as compressed Connect binary takes the general path (decode, call, encode).
    const general = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/proto", "content-encoding": "gzip", authorization: auth },
      gzipSync(toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "coffee-beans" }))),
    );
    expect(general.status).toBe(200);
    expect(fast.body.subarray(5)).toEqual(general.body);
    expect(fast.body.readUInt32BE(1)).toBe(fast.body.byteLength - 5);
    expect(fromBinary(GetProductResponseSchema, fast.body.subarray(5)).product?.id).toBe("coffee-beans");
    const access = lines.filter((l) => l.msg === "access" && l.procedure === GET_PRODUCT.slice(1));
    expect(access.some((l) => l.protocol === "grpc" && l.code === "OK" && l.principal === "alice")).toBe(true);
  });

  it("takes gRPC with media-type parameters as the services do (grpc-js reads them as gRPC), not a bare 415", async () => {
    const auth = await bearer("alice");
    await using s = await h2Session(gw.url);
    for (const type of ["application/grpc; charset=utf-8", "application/grpc+proto;charset=utf-8"]) {
      const r = await h2Request(s, grpcHeaders(GET_PRODUCT, auth, { "content-type": type }), product("coffee-beans"));
      expect({ type, status: r.status, grpc: r.grpcStatus }).toEqual({ type, status: 200, grpc: 0 });
    }
  });

  it("passes a business error on with its message and details", async () => {
    await using s = await h2Session(gw.url);
    const res = await h2Request(s, grpcHeaders(GET_PRODUCT, await bearer("alice")), product("no-such-product"));
    expect(res.grpcStatus).toBe(5);
    expect(res.grpcMessage).toContain("no-such-product");
    const bin = String(res.trailers["grpc-status-details-bin"] ?? res.headers["grpc-status-details-bin"] ?? "");
    const status = fromBinary(StatusSchema, Buffer.from(bin, "base64"));
    expect(status.code).toBe(5);
    expect(status.details.map((d) => d.typeUrl)).toContain("type.googleapis.com/google.rpc.ResourceInfo");
  });

  it("refuses an admin-only method to a customer without calling it", async () => {
    const restock = envelope(
      toBinary(
        RestockRequestSchema,
        create(RestockRequestSchema, { idempotencyKey: "fast-1", productId: "coffee-beans", quantity: 5 }),
      ),
    );
    const before = await sys.products.getProduct({ productId: "coffee-beans" });
    await using s = await h2Session(gw.url);
    const path = "/shopmesh.inventory.v1.InventoryService/Restock";
    const refused = await h2Request(s, grpcHeaders(path, await bearer("alice")), restock);
    expect(refused.grpcStatus).toBe(7);
    expect((await sys.products.getProduct({ productId: "coffee-beans" })).product?.available).toBe(
      before.product?.available,
    );
    const done = await h2Request(s, grpcHeaders(path, await bearer("olga", ["admin"])), restock);
    expect(done.grpcStatus).toBe(0);
    expect((await sys.products.getProduct({ productId: "coffee-beans" })).product?.available).toBe(
      (before.product?.available ?? 0) + 5,
    );
  });

  it("sends the identity from the token, never the client's identity headers", async () => {
    const { order } = await sys.orders.placeOrder(
      {
        idempotencyKey: `fast-bob-${Date.now()}`,
        items: [{ productId: "ceramic-mug", quantity: 1 }],
        cardToken: "tok_visa",
      },
      sys.as("bob"),
    );
    await using s = await h2Session(gw.url);
    const get = envelope(toBinary(GetOrderRequestSchema, create(GetOrderRequestSchema, { orderId: order?.id ?? "" })));
    const path = "/shopmesh.order.v1.OrderService/GetOrder";
    const forged = await h2Request(
      s,
      grpcHeaders(path, await bearer("alice"), { "x-user-id": "bob", "x-user-roles": "admin" }),
      get,
    );
    expect(forged.grpcStatus).toBe(5);
    expect((await h2Request(s, grpcHeaders(path, await bearer("bob")), get)).grpcStatus).toBe(0);
  });

  it("carries the client's deadline upstream, and a cancel ends the upstream call", async () => {
    const auth = await bearer("alice");
    await sys.inventoryChaos.setFaults({ faults: { latencyMs: 2_000 } });
    try {
      await using s = await h2Session(gw.url);
      const started = performance.now();
      const late = await h2Request(
        s,
        grpcHeaders(GET_PRODUCT, auth, { "grpc-timeout": "80m" }),
        product("coffee-beans"),
      );
      expect(late.grpcStatus).toBe(4);
      expect(performance.now() - started).toBeLessThan(1_000); // not the upstream's 2 s

      const cancelledBefore = lines.filter((l) => l.msg === "access" && l.code === "Canceled").length;
      const req = s.request({ ":method": "POST", ...grpcHeaders(GET_PRODUCT, auth) });
      req.on("error", () => {});
      req.end(product("coffee-beans"));
      await new Promise((r) => setTimeout(r, 60));
      req.close(0x8); // RST_STREAM CANCEL
      await expect
        .poll(() => lines.filter((l) => l.msg === "access" && l.code === "Canceled").length, { timeout: 2_000 })
        .toBe(cancelledBefore + 1);
    } finally {
      await sys.inventoryChaos.setFaults({ faults: {} });
    }
  });

  it("refuses malformed frames as the client's error and serves a compressed request by the general path", async () => {
    const auth = await bearer("alice");
    await using s = await h2Session(gw.url);
    const one = product("coffee-beans");
    const short = Buffer.concat([one.subarray(0, 5), one.subarray(5, 8)]);
    const ended = await h2Request(s, grpcHeaders(GET_PRODUCT, auth), short);
    expect([ended.grpcStatus, ended.grpcMessage]).toEqual([
      3,
      "protocol error: the request body ended inside its message",
    ]);
    const two = await h2Request(s, grpcHeaders(GET_PRODUCT, auth), Buffer.concat([one, one]));
    expect(two.grpcStatus).toBe(3);
    const flagged = await h2Request(s, grpcHeaders(GET_PRODUCT, auth), envelope(one.subarray(5), 1));
    expect(flagged.grpcStatus).toBe(3);
    const gz = envelope(gzipSync(one.subarray(5)), 1);
    const compressed = await h2Request(s, grpcHeaders(GET_PRODUCT, auth, { "grpc-encoding": "gzip" }), gz);
    expect(compressed.grpcStatus).toBe(0);
  });
});
