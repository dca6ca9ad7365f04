/**
 * The Connect unary fast path (connect-unary.ts) against the real system,
 * over real HTTP/1.1 and HTTP/2: every answer — success, business error,
 * bad JSON, bad deadline, admin-only refusal, compressed answer — is the
 * one the general path (connect-es's router) gives for the same call,
 * which a gzip-compressed request still takes; deadlines and cancellation
 * reach the upstream call; every call is logged as usual.
 */
import http from "node:http";
import { gzipSync } from "node:zlib";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { GetProductRequestSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { h2Request, h2Session } from "../test/raw.js";
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
  gw = await startTestGateway(sys, { MAX_BODY_BYTES: "4096" }, log);
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

const INVENTORY = "/shopmesh.inventory.v1.InventoryService";
const GET_PRODUCT = `${INVENTORY}/GetProduct`;

interface Answer {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
}

/** One HTTP/1.1 POST; `general` sends the body gzip-compressed, which takes the general path. */
function post(path: string, body: string | Uint8Array, headers: Record<string, string>, general = false) {
  const payload = general ? gzipSync(body) : Buffer.from(body);
  const url = new URL(path, gw.url);
  return new Promise<Answer>((resolve, reject) => {
    const req = http.request(
      url,
      {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "content-length": String(payload.byteLength),
          ...(general ? { "content-encoding": "gzip" } : {}),
          ...headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

/** The same call by the fast path and by the general path: status, content type and body must match. */
async function bothPaths(path: string, body: string | Uint8Array, headers: Record<string, string>) {
  const fast = await post(path, body, headers);
  const general = await post(path, body, headers, true);
  expect(fast.status, `${path} ${String(body)}`).toBe(general.status);
  expect(fast.headers["content-type"]).toBe(general.headers["content-type"]);
  expect(fast.headers["content-encoding"]).toBe(general.headers["content-encoding"]);
  expect(fast.body.toString("latin1")).toBe(general.body.toString("latin1"));
  return fast;
}

const json = (a: Answer) => JSON.parse(a.body.toString("utf8")) as Record<string, unknown>;

describe("Connect unary fast path", () => {
  it("answers JSON and binary calls exactly as the general path, and logs each call", async () => {
    const auth = { authorization: await bearer("alice") };
    const ok = await bothPaths(GET_PRODUCT, JSON.stringify({ productId: "coffee-beans" }), auth);
    expect(ok.status).toBe(200);
    expect((json(ok).product as { id: string }).id).toBe("coffee-beans");
    const bin = toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "coffee-beans" }));
    const proto = await bothPaths(GET_PRODUCT, bin, { ...auth, "content-type": "application/proto" });
    expect(proto.headers["content-type"]).toBe("application/proto");
    const charset = await post(GET_PRODUCT, '{"productId":"coffee-beans"}', {
      ...auth,
      "content-type": "application/json; charset=utf-8",
    });
    expect(charset.body).toEqual(ok.body);
    const access = lines.filter((l) => l.msg === "access" && l.procedure === GET_PRODUCT.slice(1));
    expect(access.some((l) => l.protocol === "connect" && l.code === "OK" && l.principal === "alice")).toBe(true);
  });

  it("answers client mistakes as the general path: bad JSON naming the field, bad deadlines", async () => {
    const auth = { authorization: await bearer("alice") };
    for (const body of ['{"productId": 1', '{"productIdx":"a"}', '{"productId":7}', "", "[]"]) {
      const res = await bothPaths(GET_PRODUCT, body, auth);
      expect(res.status, body).toBe(400);
      expect(json(res).code).toBe("invalid_argument");
    }
    const unknown = await post(GET_PRODUCT, '{"productIdx":"a"}', auth);
    expect(String(json(unknown).message)).toContain("productIdx");
    const badTimeout = await bothPaths(GET_PRODUCT, '{"productId":"coffee-beans"}', {
      ...auth,
      "connect-timeout-ms": "soon",
    });
    expect(json(badTimeout).code).toBe("invalid_argument");
    const junk = await bothPaths(GET_PRODUCT, Buffer.from([0x0a, 0xff, 0xff]), {
      ...auth,
      "content-type": "application/proto",
    });
    expect([junk.status, json(junk).code]).toEqual([400, "invalid_argument"]);
    const strictEnum = await bothPaths(
      "/shopmesh.order.v1.OrderService/PlaceOrder",
      JSON.stringify({ idempotencyKey: "fast-enum", items: [], cardToken: "tok_visa", sagaMode: "SAGA_MODE_BOGUS" }),
      auth,
    );
    expect(strictEnum.status).toBe(400);
  });

  it("names the field of a JSON body that does not decode in a BadRequest detail, on both paths; bad JSON names none", async () => {
    const auth = { authorization: await bearer("alice") };
    const fields = async (path: string, body: string) => {
      const res = await bothPaths(path, body, auth);
      expect(res.status, body).toBe(400);
      const details = (json(res).details ?? []) as { type: string; value: string }[];
      expect(details.map((d) => d.type)).toEqual(details.length ? ["google.rpc.BadRequest"] : []);
      return {
        message: String(json(res).message),
        fields: details.flatMap((d) =>
          fromBinary(BadRequestSchema, base64Decode(d.value)).fieldViolations.map((v) => v.field),
        ),
      };
    };
    const place = "/shopmesh.order.v1.OrderService/PlaceOrder";
    for (const [body, field] of [
      ['{"productIdx":"a"}', "productIdx"],
      ['{"productId":7}', "product_id"],
      ['{"productId":"a","productId":"b"}', "productId"],
      ['{"product_id":"a","productId":"b"}', "product_id"],
    ]) {
      expect(await fields(GET_PRODUCT, body ?? ""), body).toMatchObject({ fields: [field] });
    }
    for (const [body, field] of [
      ['{"items":[{"productId":"a","quantity":99999999999}]}', "items.quantity"],
      ['{"items":[{"productId":"a","unitPrice":1}]}', "items"],
      ['{"sagaMode":"NOPE"}', "saga_mode"],
      ['{"idempotency_key":"a","idempotencyKey":"b"}', "idempotency_key"],
    ]) {
      expect(await fields(place, body ?? ""), body).toMatchObject({ fields: [field] });
    }
    for (const body of ['{"productId": 1', ""]) {
      const bad = await fields(GET_PRODUCT, body);
      expect(bad.fields, body).toEqual([]);
      expect(bad.message, body).toMatch(/^the request body is not valid JSON .*; no field can be named$/);
    }
  });

  it("passes business errors on with their details, and refuses admin-only methods to customers", async () => {
    const alice = { authorization: await bearer("alice") };
    const missing = await bothPaths(GET_PRODUCT, JSON.stringify({ productId: "no-such-product" }), alice);
    expect([missing.status, json(missing).code]).toEqual([404, "not_found"]);
    expect(JSON.stringify(json(missing).details)).toContain("ResourceInfo");
    const restock = JSON.stringify({ idempotencyKey: "fast-json-1", productId: "coffee-beans", quantity: 2 });
    const before = await sys.products.getProduct({ productId: "coffee-beans" });
    const refused = await bothPaths(`${INVENTORY}/Restock`, restock, alice);
    expect([refused.status, json(refused).code]).toEqual([403, "permission_denied"]);
    expect((await sys.products.getProduct({ productId: "coffee-beans" })).product?.available).toBe(
      before.product?.available,
    );
    // The message is read before the role is checked, as connect-es does.
    const both = await bothPaths(`${INVENTORY}/Restock`, '{"nope":1}', alice);
    expect(json(both).code).toBe("invalid_argument");
    const admin = await post(`${INVENTORY}/Restock`, restock, { authorization: await bearer("olga", ["admin"]) });
    expect(admin.status).toBe(200);
  });

  it("compresses a large answer as the general path does, when the client accepts it", async () => {
    const auth = { authorization: await bearer("alice"), "accept-encoding": "br, gzip" };
    const page = await bothPaths(`${INVENTORY}/ListProducts`, JSON.stringify({ pageSize: 100 }), auth);
    expect(page.status).toBe(200);
    const small = await bothPaths(GET_PRODUCT, JSON.stringify({ productId: "coffee-beans" }), auth);
    expect(small.headers["content-encoding"]).toBeUndefined();
  });

  it("over HTTP/2 too, and a body past the limit is 413", async () => {
    const auth = await bearer("alice");
    await using s = await h2Session(gw.url);
    const res = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/json", authorization: auth },
      Buffer.from('{"productId":"coffee-beans"}'),
    );
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString()).product.id).toBe("coffee-beans");
    const big = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/json", authorization: auth },
      Buffer.from(JSON.stringify({ productId: "x".repeat(10_000) })),
    );
    expect(big.status).toBe(413);
  });

  it("carries the deadline upstream (504), and a client that goes away cancels the upstream call", async () => {
    const auth = await bearer("alice");
    await sys.inventoryChaos.setFaults({ faults: { latencyMs: 400 } });
    try {
      const late = await post(GET_PRODUCT, '{"productId":"coffee-beans"}', {
        authorization: auth,
        "connect-timeout-ms": "80",
      });
      expect([late.status, json(late).code]).toEqual([504, "deadline_exceeded"]);

      const cancelled = () => lines.filter((l) => l.msg === "access" && l.code === "Canceled").length;
      const before = cancelled();
      const req = http.request(new URL(GET_PRODUCT, gw.url), {
        method: "POST",
        headers: { "content-type": "application/json", authorization: auth },
      });
      req.on("error", () => {});
      req.end('{"productId":"coffee-beans"}');
      await new Promise((r) => setTimeout(r, 60));
      req.destroy();
      await expect.poll(cancelled, { timeout: 2_000 }).toBe(before + 1);
    } finally {
      await sys.inventoryChaos.setFaults({ faults: {} });
    }
  });
});
