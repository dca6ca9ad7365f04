/**
 * The REST fast path (serveRestUnary in rest-serve.ts) against the real
 * system over real HTTP: every answer — success, business error with its
 * details, each kind of bad request, admin-only refusal, body past the
 * limit — is byte for byte the one a gateway with FAST_PATHS=false gives
 * (connect-es's handler); the deadline reaches the upstream call, and a
 * client that goes away cancels it and is logged so.
 */
import http from "node:http";
import { gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { h2Request, h2Session } from "../test/raw.js";
import { capturedLogger, type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";

let sys: System;
let fast: GatewayApp;
let general: GatewayApp;
const { log, lines } = capturedLogger();
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const bearer = async (sub: string, roles: ("customer" | "admin")[] = ["customer"]) => ({
  authorization: `Bearer ${await signDevToken(claims, sub, roles)}`,
});

beforeAll(async () => {
  sys = await startSystem();
  const env = { MAX_BODY_BYTES: "4096", RATE_LIMIT_BURST: "400" };
  fast = await startTestGateway(sys, env, log);
  general = await startTestGateway(sys, { ...env, FAST_PATHS: "false" });
});
afterAll(async () => {
  await fast?.stop();
  await general?.stop();
  await sys[Symbol.asyncDispose]();
});

interface Answer {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
}

/** One HTTP/1.1 request; a body sent without Content-Length when `chunked`. */
function send(
  gw: GatewayApp,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: Buffer | string,
  chunked = false,
): Promise<Answer> {
  const payload = body === undefined ? undefined : Buffer.from(body);
  const length = payload && !chunked ? { "content-length": String(payload.byteLength) } : {};
  return new Promise((resolve, reject) => {
    const req = http.request(new URL(path, gw.url), { method, headers: { ...length, ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (chunked && payload) req.write(payload);
    req.end(chunked ? undefined : payload);
  });
}

/** The same request to both gateways: status, content type, Retry-After and body must match. */
async function bothPaths(method: string, path: string, headers: Record<string, string>, body?: Buffer | string) {
  const f = await send(fast, method, path, headers, body);
  const g = await send(general, method, path, headers, body);
  const what = `${method} ${path} ${String(body ?? "")}`;
  expect(f.status, what).toBe(g.status);
  expect(f.headers["content-type"], what).toBe(g.headers["content-type"]);
  expect(f.headers["retry-after"], what).toBe(g.headers["retry-after"]);
  expect(f.body.toString("utf8"), what).toBe(g.body.toString("utf8"));
  return { ...f, json: JSON.parse(f.body.toString("utf8")) as Record<string, unknown> };
}

describe("REST fast path", () => {
  it("answers reads exactly as the general path, and logs each call", async () => {
    const alice = await bearer("alice");
    const one = await bothPaths("GET", "/v1/products/coffee-beans", alice);
    expect([one.status, one.json.id]).toEqual([200, "coffee-beans"]);
    const page = await bothPaths("GET", "/v1/products?page_size=2", alice);
    expect(page.json.products).toHaveLength(2);
    const missing = await bothPaths("GET", "/v1/products/no-such-product", alice);
    expect([missing.status, missing.json.code]).toEqual([404, 5]);
    expect(JSON.stringify(missing.json.details)).toContain("ResourceInfo");
    const access = lines.filter(
      (l) => l.msg === "access" && l.procedure === "shopmesh.inventory.v1.InventoryService/GetProduct",
    );
    expect(access.some((l) => l.protocol === "rest" && l.code === "OK" && l.principal === "alice")).toBe(true);
    expect(access.some((l) => l.protocol === "rest" && l.code === "NotFound")).toBe(true);
  });

  it("answers every kind of bad request as the general path, naming the field", async () => {
    const alice = await bearer("alice");
    for (const path of ["/v1/products?page_size=abc", "/v1/products?nope=1", "/v1/products?page_size=1&page_size=2"]) {
      const a = await bothPaths("GET", path, alice);
      expect([a.status, a.json.code], path).toEqual([400, 3]);
    }
    const withBody = await bothPaths("GET", "/v1/products/coffee-beans", alice, '{"a":1}');
    expect(withBody.status).toBe(400);
    const badTimeout = await bothPaths("GET", "/v1/products/coffee-beans", { ...alice, "connect-timeout-ms": "soon" });
    expect(badTimeout.status).toBe(400);
    // A deadline already passed: no upstream call, and connect-es's words for it.
    const passed = await bothPaths("GET", "/v1/products/coffee-beans", { ...alice, "connect-timeout-ms": "0" });
    expect([passed.status, passed.json.message]).toEqual([504, "the operation timed out"]);
    const bodies: (string | Buffer)[] = [
      "{",
      "[]",
      '{"nope":1}',
      '{"cardToken":"a","cardToken":"b"}',
      '{"items":[],"cardToken":"tok_visa","sagaMode":"SAGA_MODE_BOGUS"}',
      '{"items":"x"}',
      Buffer.from([0x7b, 0xff, 0x7d]),
    ];
    for (const body of bodies) {
      const a = await bothPaths("POST", "/v1/orders", { ...alice, "content-type": "application/json" }, body);
      expect([a.status, a.json.code], String(body)).toEqual([400, 3]);
    }
    const unknown = await send(fast, "POST", "/v1/orders", alice, '{"nope":1}');
    expect(String(JSON.parse(unknown.body.toString()).message)).toContain("nope");
    const disagree = await bothPaths(
      "POST",
      "/v1/orders",
      { ...alice, "idempotency-key": "rest-fast-a" },
      JSON.stringify({ idempotencyKey: "rest-fast-b", items: [{ productId: "coffee-beans", quantity: 1 }] }),
    );
    expect(disagree.status).toBe(400);
    const gzip = { ...alice, "content-encoding": "gzip" };
    const notGzip = await bothPaths("POST", "/v1/orders", gzip, "{}");
    expect(notGzip.status).toBe(400);
  });

  it("places an order from a gzip body, and refuses admin-only methods to customers after reading the body", async () => {
    const alice = await bearer("alice");
    const order = JSON.stringify({ items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" });
    const headers = { ...alice, "idempotency-key": `rest-fast-${process.pid}`, "content-encoding": "gzip" };
    const placed = await send(fast, "POST", "/v1/orders", headers, gzipSync(order));
    expect(placed.status).toBe(200);
    const id = JSON.parse(placed.body.toString()).id as string;
    expect(id).toMatch(/^ord_/);
    const again = await send(fast, "POST", "/v1/orders", headers, gzipSync(order));
    expect(JSON.parse(again.body.toString()).id).toBe(id);
    const other = await bothPaths("GET", `/v1/orders/${id}`, await bearer("mallory"));
    expect(other.status).toBe(404);

    const before = await sys.products.getProduct({ productId: "coffee-beans" });
    const restock = JSON.stringify({ idempotencyKey: "rest-fast-restock", quantity: 2 });
    const refused = await bothPaths("POST", "/v1/products/coffee-beans:restock", alice, restock);
    expect([refused.status, refused.json.code]).toEqual([403, 7]);
    const badFirst = await bothPaths("POST", "/v1/products/coffee-beans:restock", alice, '{"nope":1}');
    expect(badFirst.status).toBe(400);
    expect((await sys.products.getProduct({ productId: "coffee-beans" })).product?.available).toBe(
      before.product?.available,
    );
    const admin = await send(
      fast,
      "POST",
      "/v1/products/coffee-beans:restock",
      await bearer("olga", ["admin"]),
      restock,
    );
    expect(admin.status).toBe(200);
  });

  it("refuses a body past the limit with 413, declared or not, and answers over HTTP/2 too", async () => {
    const alice = await bearer("alice");
    const big = JSON.stringify({ items: [], cardToken: "x".repeat(10_000) });
    const declared = await bothPaths("POST", "/v1/orders", alice, big);
    expect(declared.status).toBe(413);
    for (const gw of [fast, general]) {
      const chunked = await send(gw, "POST", "/v1/orders", alice, big, true);
      expect(chunked.status).toBe(413);
    }
    await using s = await h2Session(fast.url);
    const res = await h2Request(s, { ":method": "GET", ":path": "/v1/products/coffee-beans", ...alice });
    expect(res.status).toBe(200);
    const h1 = await send(fast, "GET", "/v1/products/coffee-beans", alice);
    expect(res.body.toString()).toBe(h1.body.toString());
  });

  it("carries the deadline upstream (504, in connect-es's words on both paths), and logs a client that goes away Canceled", async () => {
    const alice = await bearer("alice");
    await sys.inventoryChaos.setFaults({ faults: { latencyMs: 400 } });
    try {
      // The upstream call's own deadline is the same instant: whichever timer fires first, the client's words.
      for (const gw of [fast, fast, fast, general, general, general]) {
        const late = await send(gw, "GET", "/v1/products/coffee-beans", { ...alice, "connect-timeout-ms": "80" });
        expect([late.status, JSON.parse(late.body.toString())]).toEqual([
          504,
          { code: 4, message: "the operation timed out", details: [] },
        ]);
      }

      const cancelled = () => lines.filter((l) => l.msg === "access" && l.code === "Canceled").length;
      const before = cancelled();
      const req = http.request(new URL("/v1/products/coffee-beans", fast.url), { headers: alice });
      req.on("error", () => {});
      req.end();
      await new Promise((r) => setTimeout(r, 60));
      req.destroy();
      await expect.poll(cancelled, { timeout: 2_000 }).toBe(before + 1);
    } finally {
      await sys.inventoryChaos.setFaults({ faults: {} });
    }
  });
});
