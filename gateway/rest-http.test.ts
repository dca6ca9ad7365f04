/**
 * The REST routes of the real system over real HTTP: the annotated paths in
 * front of the real services, with the same authentication, ownership,
 * limits and errors as every other protocol; the Idempotency-Key header;
 * WatchOrder as newline-delimited JSON; and what a hostile client sends.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GatewayService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import type { Role } from "../platform/identity-rule.js";
import { silentLogger } from "../platform/log.js";
import { ROOT } from "../test/fixtures.js";
import { h2Request, h2Session } from "../test/raw.js";
import { type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";
import { RestRouter } from "./rest.js";
import { ROUTES } from "./routes.js";

let sys: System;
let gw: GatewayApp;
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const auth = async (sub: string, roles: Role[] = ["customer"]) => ({
  authorization: `Bearer ${await signDevToken(claims, sub, roles)}`,
});

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys, { MAX_BODY_BYTES: "4096", RATE_LIMIT_BURST: "400" }, silentLogger());
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

interface Answer {
  status: number;
  headers: Headers;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: JSON answers are checked field by field
  json: any;
}

async function rest(
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  const res = await fetch(`${gw.url}${path}`, { method, headers: opts.headers, body: opts.body });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

let seq = 0;
const key = () => `rest-${process.pid}-${++seq}`;
const order = (card = "tok_visa", quantity = 1) =>
  JSON.stringify({ items: [{ productId: "coffee-beans", quantity }], cardToken: card });

/** Reads `path` as newline-delimited JSON until the stream ends. */
async function ndjson(path: string, headers: Record<string, string>) {
  const res = await fetch(`${gw.url}${path}`, { headers });
  const lines = (await res.text()).split("\n").filter((l) => l !== "");
  return { status: res.status, type: res.headers.get("content-type"), lines: lines.map((l) => JSON.parse(l)) };
}

describe("REST routes", () => {
  it("GET /v1/products and /v1/products/{product_id}: the catalogue, one product as the answer itself", async () => {
    const h = await auth("alice");
    const list = await rest("GET", "/v1/products?page_size=2", { headers: h });
    expect(list.status).toBe(200);
    expect(list.json.products).toHaveLength(2);
    expect(list.json.nextPageToken).toBeTruthy();
    const next = await rest("GET", `/v1/products?pageToken=${encodeURIComponent(list.json.nextPageToken)}`, {
      headers: h,
    });
    expect(next.json.products[0].id).not.toBe(list.json.products[0].id);
    const one = await rest("GET", "/v1/products/coffee-beans", { headers: h });
    expect(one).toMatchObject({ status: 200, json: { id: "coffee-beans", unitPrice: { currencyCode: "USD" } } });
    expect(one.headers.get("content-type")).toBe("application/json");
  });

  it("POST /v1/orders with Idempotency-Key: a repeat is the same order, the key with another body is 409", async () => {
    const h = { ...(await auth("alice")), "Idempotency-Key": key() };
    const first = await rest("POST", "/v1/orders", { headers: h, body: order() });
    expect(first).toMatchObject({ status: 200, json: { status: "ORDER_STATUS_PENDING", customerId: "alice" } });
    const again = await rest("POST", "/v1/orders", { headers: h, body: order() });
    expect(again.json.id).toBe(first.json.id);
    const other = await rest("POST", "/v1/orders", { headers: h, body: order("tok_visa", 2) });
    expect(other.status).toBe(409);
    expect(other.json).toMatchObject({ code: 6, message: expect.stringContaining("already used") });
    // The header is the request's key: the same key in the body is the same request.
    const inBody = await rest("POST", "/v1/orders", {
      headers: await auth("alice"),
      body: JSON.stringify({ ...JSON.parse(order()), idempotencyKey: h["Idempotency-Key"] }),
    });
    expect(inBody.json.id).toBe(first.json.id);
  });

  it("GET /v1/orders/{order_id}:watch streams the saga as JSON lines until it ends", async () => {
    const h = await auth("alice");
    const placed = await rest("POST", "/v1/orders", { headers: { ...h, "Idempotency-Key": key() }, body: order() });
    const watch = await ndjson(`/v1/orders/${placed.json.id}:watch`, h);
    expect(watch.status).toBe(200);
    expect(watch.type).toBe("application/x-ndjson");
    expect(watch.lines.length).toBeGreaterThanOrEqual(1);
    for (const l of watch.lines) expect(l.result.id).toBe(placed.json.id);
    expect(watch.lines.at(-1).result.status).toBe("ORDER_STATUS_CONFIRMED");
    const got = await rest("GET", `/v1/orders/${placed.json.id}`, { headers: h });
    expect(got.json.steps.map((s: { name: string }) => s.name)).toContain("charge_payment");
  });

  it("a declined card: the order ends CANCELLED with its reason; its payment by order", async () => {
    const h = await auth("alice");
    const placed = await rest("POST", "/v1/orders", {
      headers: { ...h, "Idempotency-Key": key() },
      body: order("tok_decline"),
    });
    const watch = await ndjson(`/v1/orders/${placed.json.id}:watch`, h);
    expect(watch.lines.at(-1).result).toMatchObject({
      status: "ORDER_STATUS_CANCELLED",
      statusReason: expect.stringContaining("declined"),
    });
    const payment = await rest("GET", `/v1/orders/${placed.json.id}/payment`, { headers: h });
    expect(payment).toMatchObject({
      status: 200,
      json: { orderId: placed.json.id, status: "PAYMENT_STATUS_DECLINED" },
    });
    const byId = await rest("GET", `/v1/payments/${payment.json.id}`, { headers: h });
    expect(byId.json.id).toBe(payment.json.id);
  });

  it("POST /v1/orders/{order_id}:cancel, GET /v1/orders (paged), details, history and notifications", async () => {
    const h = await auth("carol");
    const placed = await rest("POST", "/v1/orders", { headers: { ...h, "Idempotency-Key": key() }, body: order() });
    await ndjson(`/v1/orders/${placed.json.id}:watch`, h);
    const cancel = await rest("POST", `/v1/orders/${placed.json.id}:cancel`, {
      headers: h,
      body: '{"reason":"changed my mind"}',
    });
    // Confirmed already: cancelling is a failed precondition, 400 as grpc-gateway maps it.
    expect(cancel).toMatchObject({ status: 400, json: { code: 9 } });
    const mine = await rest("GET", "/v1/orders?page_size=1", { headers: h });
    expect(mine.json.orders[0].id).toBe(placed.json.id);
    const details = await rest("GET", `/v1/orders/${placed.json.id}/details`, { headers: h });
    expect(details.json.order.id).toBe(placed.json.id);
    for (const path of ["/v1/history", `/v1/notifications?order_id=${placed.json.id}`]) {
      expect((await rest("GET", path, { headers: h })).status, path).toBe(200);
    }
  });

  it("answers over cleartext HTTP/2 as over HTTP/1.1", async () => {
    const h = await auth("alice");
    await using s = await h2Session(gw.url);
    const one = await h2Request(s, { ":method": "GET", ":path": "/v1/products/coffee-beans", ...h });
    expect(one.status).toBe(200);
    expect(JSON.parse(one.body.toString())).toMatchObject({ id: "coffee-beans" });
    const placed = await h2Request(s, { ":path": "/v1/orders", "idempotency-key": key(), ...h }, Buffer.from(order()));
    const id = JSON.parse(placed.body.toString()).id;
    const watch = await h2Request(s, { ":method": "GET", ":path": `/v1/orders/${id}:watch`, ...h });
    const lines = watch.body
      .toString()
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines.at(-1).result.status).toBe("ORDER_STATUS_CONFIRMED");
  });

  it("admin only: POST /v1/products/{product_id}:restock", async () => {
    const body = JSON.stringify({ quantity: 5 });
    const customer = await rest("POST", "/v1/products/paper-filters:restock", {
      headers: { ...(await auth("alice")), "Idempotency-Key": key() },
      body,
    });
    expect(customer).toMatchObject({ status: 403, json: { code: 7 } });
    const admin = await rest("POST", "/v1/products/paper-filters:restock", {
      headers: { ...(await auth("ops", ["admin"])), "Idempotency-Key": key() },
      body,
    });
    expect(admin).toMatchObject({ status: 200, json: { id: "paper-filters" } });
    // The path's field repeated in the body, under either of its JSON names: the same value is one
    // field (it was "set multiple times" under its proto name), another value is refused.
    const ops = await auth("ops", ["admin"]);
    for (const name of ["product_id", "productId"]) {
      const again = await rest("POST", "/v1/products/paper-filters:restock", {
        headers: { ...ops, "Idempotency-Key": key() },
        body: JSON.stringify({ quantity: 1, [name]: "paper-filters" }),
      });
      expect(again, name).toMatchObject({ status: 200, json: { id: "paper-filters" } });
      const other = await rest("POST", "/v1/products/paper-filters:restock", {
        headers: { ...ops, "Idempotency-Key": key() },
        body: JSON.stringify({ quantity: 1, [name]: "ceramic-mug" }),
      });
      expect(other, name).toMatchObject({
        status: 400,
        json: { message: expect.stringContaining("product_id: the body says") },
      });
    }
  });
});

describe("REST errors", () => {
  it("no token is 401, another customer's order is 404, an unknown path 404 and a wrong method 405", async () => {
    expect(await rest("GET", "/v1/products/coffee-beans")).toMatchObject({ status: 401, json: { code: 16 } });
    const placed = await rest("POST", "/v1/orders", {
      headers: { ...(await auth("alice")), "Idempotency-Key": key() },
      body: order(),
    });
    const bob = await auth("bob");
    expect(await rest("GET", `/v1/orders/${placed.json.id}`, { headers: bob })).toMatchObject({
      status: 404,
      json: { code: 5 },
    });
    expect((await ndjson(`/v1/orders/${placed.json.id}:watch`, bob)).status).toBe(404);
    expect(await rest("GET", "/v1/reservations", { headers: bob })).toMatchObject({ status: 404, json: { code: 5 } });
    // No order id before the verb: the cancel route's, refused naming the field (not order ":cancel", 405).
    expect(await rest("POST", "/v1/orders/:cancel", { headers: bob, body: "{}" })).toMatchObject({
      status: 400,
      json: { code: 3, message: "order_id: must not be empty" },
    });
    const wrong = await rest("DELETE", "/v1/orders", { headers: bob });
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get("allow")).toBe("POST, GET, HEAD");
  });

  // The field is named in the message and, as in every other INVALID_ARGUMENT, in a BadRequest detail;
  // a body that is no JSON (or no object) has no field to name, and its message says so.
  it.each([
    ["malformed JSON", "{bad", "the request body is not valid JSON", undefined],
    ["a field that does not exist", '{"itemz":[]}', '"itemz" is unknown', "itemz"],
    [
      "a field that does not exist in a line",
      '{"items":[{"productId":"coffee-beans","quantity":1,"unitPrice":1}]}',
      'items: key "unitPrice" is unknown',
      "items",
    ],
    ["a field of the wrong type", '{"items":"many"}', "items", "items"],
    ["a line's field of the wrong type", '{"items":[{"productId":"a","quantity":"x"}]}', "quantity", "items.quantity"],
    [
      "a value out of its type's range",
      '{"items":[{"productId":"a","quantity":99999999999}]}',
      "out of range",
      "items.quantity",
    ],
    ["an enum value that is not one", '{"sagaMode":"NOPE"}', "is not a SagaMode value", "saga_mode"],
    ["an array body", "[1,2]", "must be a JSON object", undefined],
    ["no items", '{"cardToken":"tok_visa"}', "items", "items"],
    // JSON.parse keeps the last; a proxy in front may have read the first (here: which card is charged).
    [
      "a key given twice",
      '{"items":[{"productId":"coffee-beans","quantity":1}],"cardToken":"tok_visa","cardToken":"tok_decline"}',
      'the object key "cardToken" twice',
      "cardToken",
    ],
    [
      "a nested key given twice",
      '{"items":[{"productId":"coffee-beans","productId":"mug","quantity":1}]}',
      '"productId" twice',
      "productId",
    ],
    [
      "a field given twice in its two spellings",
      '{"items":[{"productId":"coffee-beans","quantity":1}],"card_token":"tok_visa","cardToken":"tok_decline"}',
      "card_token: set multiple times",
      "card_token",
    ],
  ])("%s is 400 naming what is wrong", async (_what, body, message, field) => {
    const r = await rest("POST", "/v1/orders", {
      headers: { ...(await auth("alice")), "Idempotency-Key": key() },
      body,
    });
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ code: 3, message: expect.stringContaining(message) });
    if (field === undefined) {
      expect(r.json.details).toEqual([]);
      expect(r.json.message).toContain("no field can be named");
    } else {
      expect(r.json.details).toEqual([
        {
          "@type": "type.googleapis.com/google.rpc.BadRequest",
          fieldViolations: [{ field, description: expect.stringMatching(/\S/) }],
        },
      ]);
    }
  });

  it("the idempotency key given in both spellings without the header is 400 naming it in a BadRequest detail", async () => {
    const body = JSON.stringify({ ...JSON.parse(order()), idempotency_key: key(), idempotencyKey: key() });
    const r = await rest("POST", "/v1/orders", { headers: await auth("alice"), body });
    expect(r.status).toBe(400);
    expect(r.json.details?.[0]?.fieldViolations?.[0]?.field).toBe("idempotency_key");
  });

  it("field violations travel as google.rpc.BadRequest details", async () => {
    const r = await rest("POST", "/v1/orders", { headers: await auth("alice"), body: order() });
    expect(r.status).toBe(400);
    expect(r.json.details).toContainEqual({
      "@type": "type.googleapis.com/google.rpc.BadRequest",
      fieldViolations: [expect.objectContaining({ field: "idempotency_key" })],
    });
  });

  it("a key in the header and another in the body is 400; a query parameter the route does not have is 400", async () => {
    const h = { ...(await auth("alice")), "Idempotency-Key": key() };
    const both = await rest("POST", "/v1/orders", {
      headers: h,
      body: JSON.stringify({ ...JSON.parse(order()), idempotencyKey: "other" }),
    });
    expect(both).toMatchObject({ status: 400, json: { message: expect.stringContaining("Idempotency-Key") } });
    const q = await rest("GET", "/v1/orders?customer_id=bob", { headers: h });
    expect(q).toMatchObject({ status: 400, json: { message: expect.stringContaining("customer_id") } });
  });

  it("a body over the limit is 413 before it is read to the end; a hostile path is a 4xx, never a 5xx", async () => {
    const h = await auth("alice");
    const big = await rest("POST", "/v1/orders", { headers: h, body: `{"cardToken":"${"x".repeat(10_000)}"}` });
    expect(big.status).toBe(413);
    for (const path of [
      "/v1/orders/%E0%A4%A",
      "/v1/orders/..%2F..%2Fetc%2Fpasswd",
      "/v1/orders/a%00b",
      `/v1/orders/${"x".repeat(5000)}`,
      "/v1/products/coffee-beans?page_size=1&page_size=2",
      "/v1//orders",
      "/v1/orders/x:",
    ]) {
      const r = await rest("GET", path, { headers: h });
      expect(r.status, path).toBeGreaterThanOrEqual(400);
      expect(r.status, path).toBeLessThan(500);
      expect(typeof r.json?.code, path).toBe("number");
    }
  });

  it("HEAD answers like GET without a body; a client that leaves mid-stream does not upset the gateway", async () => {
    const h = await auth("alice");
    const head = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.request(`${gw.url}/v1/products/coffee-beans`, { method: "HEAD", headers: h }, resolve);
      req.once("error", reject);
      req.end();
    });
    expect(head.statusCode).toBe(200);
    const placed = await rest("POST", "/v1/orders", { headers: { ...h, "Idempotency-Key": key() }, body: order() });
    const abort = new AbortController();
    const res = await fetch(`${gw.url}/v1/orders/${placed.json.id}:watch`, { headers: h, signal: abort.signal });
    abort.abort();
    await res.body?.cancel().catch(() => {});
    expect((await rest("GET", `/v1/orders/${placed.json.id}`, { headers: h })).status).toBe(200);
  });
});

describe("docs/rest.md", () => {
  it("lists exactly the REST routes the gateway serves", () => {
    const publicMethods = [
      ...ROUTES.flatMap((r) => r.service.methods.filter((m) => r.methods.includes(m.name))),
      ...GatewayService.methods,
    ];
    const served = new RestRouter(publicMethods).routes.map(
      (r) => `${r.httpMethod} ${r.template} ${r.method.parent.name}.${r.method.name}`,
    );
    const doc = readFileSync(join(ROOT, "docs", "rest.md"), "utf8");
    const documented = [...doc.matchAll(/^\| `(\w+) ([^`]+)` \| (\w+\.\w+)/gm)].map((m) => `${m[1]} ${m[2]} ${m[3]}`);
    expect(documented.sort()).toEqual(served.sort());
  });
});
