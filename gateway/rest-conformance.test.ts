/**
 * google.api.http transcoding of the real system's routes, case by case
 * against the reference: google/api/http.proto's rules, as grpc-gateway
 * (runtime/mux.go, pattern.go, query.go) and Envoy's gRPC-JSON transcoder
 * (grpc-httpjson-transcoding's path_matcher) implement them. Where shopmesh
 * chose otherwise, docs/rest.md says so and the case asserts that choice.
 * Requests go out byte for byte as written (node:http), not normalised by a
 * URL parser.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Role } from "../platform/identity-rule.js";
import { silentLogger } from "../platform/log.js";
import { type H1Answer, h1Request } from "../test/raw.js";
import { type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";

let sys: System;
let gw: GatewayApp;
let alice: Record<string, string>;
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const auth = async (sub: string, roles: Role[] = ["customer"]) => ({
  authorization: `Bearer ${await signDevToken(claims, sub, roles)}`,
});

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys, { RATE_LIMIT_BURST: "400" }, silentLogger());
  alice = await auth("alice");
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

type Answer = H1Answer;

/** `method target` sent as written, with alice's token unless `headers` says otherwise. */
function send(line: string, opts: { headers?: Record<string, string>; body?: string } = {}): Promise<Answer> {
  const [method = "", path = ""] = line.split(" ");
  return h1Request(gw.url, method, path, {
    headers: { ...alice, ...opts.headers },
    ...(opts.body === undefined ? {} : { body: opts.body }),
  });
}

let seq = 0;
const placeOrder = async (extra: Record<string, unknown> = {}) => {
  const r = await send("POST /v1/orders", {
    headers: { "Idempotency-Key": `conf-${process.pid}-${++seq}` },
    body: JSON.stringify({ items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa", ...extra }),
  });
  expect(r.status, r.text).toBe(200);
  return r.json as { id: string; sagaMode?: string };
};

describe("path templates and variables", () => {
  it("a single-segment variable is percent-decoded in full, unreserved and reserved characters alike", async () => {
    // http.proto: {var} is expanded with all but [-_.~0-9a-zA-Z] encoded, and the server reverses it.
    expect(await send("GET /v1/products/coffee%2Dbean%73")).toMatchObject({
      status: 200,
      json: { id: "coffee-beans" },
    });
    // "%2F" is "/" in the value (the service refuses the id), not a segment boundary (no route).
    expect(await send("GET /v1/products/coffee%2Fbeans")).toMatchObject({
      status: 400,
      json: { code: 3, message: expect.stringContaining("product_id") },
    });
  });

  it("an encoded ':' is part of the variable, not a verb", async () => {
    const { id } = await placeOrder();
    // Both references find the verb in the raw path: "%3Awatch" is order "<id>:watch", not a stream.
    const watch = await send(`GET /v1/orders/${id}%3Awatch`);
    expect(watch).toMatchObject({ status: 404, json: { code: 5 } });
    expect(watch.headers["content-type"]).toMatch(/^application\/json/);
    // Nor a cancel: the path is GetOrder's, which takes GET only.
    const cancel = await send(`POST /v1/orders/${id}%3Acancel`, { body: "{}" });
    expect(cancel.status).toBe(405);
    expect(cancel.headers.allow).toBe("GET, HEAD");
    expect((await send(`GET /v1/orders/${id}`)).json.status).not.toBe("ORDER_STATUS_CANCELLED");
  });

  it("a verb no route declares is part of the last segment's value", async () => {
    // grpc-gateway: a template without a verb takes the whole segment; Envoy: an unregistered verb is path.
    expect(await send("GET /v1/products/coffee-beans:frobnicate")).toMatchObject({
      status: 404,
      json: { code: 5, message: expect.stringContaining("coffee-beans:frobnicate") },
    });
    // A known verb takes the segment before it (`a:b:cancel` is order "a:b"), as grpc-gateway's suffix match.
    expect(await send("POST /v1/orders/a:b:cancel", { body: "{}" })).toMatchObject({ status: 404, json: { code: 5 } });
  });

  it("a trailing slash or an empty segment is no route (404): shopmesh's choice, see docs/rest.md", async () => {
    // Envoy drops trailing empty segments (/v1/products/ is ListProducts); grpc-gateway lets `*` bind ""
    // (GetProduct with an empty id). Neither is the URL the client was given: 404 says so.
    for (const line of [
      "GET /v1/products/",
      "GET /v1/products/coffee-beans/",
      "GET /v1//products",
      "GET /v1/orders//details",
    ]) {
      expect(await send(line), line).toMatchObject({
        status: 404,
        json: { code: 5, message: expect.stringMatching(/^no route/) },
      });
    }
  });

  it("an additional binding is a route of its own, with response_body answering that field", async () => {
    const { id } = await placeOrder();
    let byOrder = await send(`GET /v1/orders/${id}/payment`);
    for (let i = 0; i < 100 && byOrder.status === 404; i++) {
      await new Promise((r) => setTimeout(r, 50));
      byOrder = await send(`GET /v1/orders/${id}/payment`);
    }
    expect(byOrder.status, byOrder.text).toBe(200);
    expect(byOrder.json).toMatchObject({ orderId: id });
    expect(byOrder.json.payment).toBeUndefined();
    const byId = await send(`GET /v1/payments/${byOrder.json.id}`);
    expect(byId).toMatchObject({ status: 200, json: byOrder.json });
  });
});

describe("query parameters", () => {
  it("fields by proto or JSON name; '+' is a space and %2B a plus, as in a form", async () => {
    for (const q of ["page_size=1", "pageSize=1", "page_size=%2B1", "page%5Fsize=1"]) {
      const r = await send(`GET /v1/products?${q}`);
      expect(r.status, q).toBe(200);
      expect(r.json.products, q).toHaveLength(1);
    }
    expect(await send("GET /v1/products?page_size=+1")).toMatchObject({
      status: 400,
      json: { message: 'page_size: " 1" is not a valid int32' },
    });
  });

  it("a singular field given twice, without a value, or bound by the path is 400 naming it", async () => {
    for (const [q, field] of [
      ["GET /v1/products?page_size=1&page_size=2", "page_size"], // grpc-gateway: "too many values"
      ["GET /v1/products?page_size=1&pageSize=1", "pageSize"],
      ["GET /v1/products?page_size", "page_size"], // grpc-gateway parses "" as the int32: refused
      ["GET /v1/products?page_size=", "page_size"],
      ["GET /v1/products/coffee-beans?product_id=mug", "product_id"], // grpc-gateway ignores it: documented
    ] as const) {
      const r = await send(q);
      expect(r.status, q).toBe(400);
      expect(r.json.details?.[0]?.fieldViolations?.[0]?.field, q).toBe(field);
    }
  });

  it("a query value or name that is not percent-encoded UTF-8 is 400 naming it, as a path variable is", async () => {
    // grpc-gateway refuses a malformed escape (url.ParseQuery); URLSearchParams would read "%zz" as
    // text and %FF as U+FFFD, a value the client never sent.
    for (const [q, field] of [
      ["order_id=%FF", "order_id"],
      ["order_id=ord_%E0%A4%A", "order_id"],
      ["page_token=%zz", "page_token"],
      ["page_size=1&order%ZZid=x", "order%ZZid"],
    ] as const) {
      const r = await send(`GET /v1/notifications?${q}`);
      expect(r.status, q).toBe(400);
      expect(r.json.message, q).toBe(`${field}: is not valid percent-encoded UTF-8 in the query`);
      // Shaped as the service's own refusal below: the field, and a description that is why alone.
      expect(r.json.details?.[0]?.fieldViolations, q).toEqual([
        { field, description: "is not valid percent-encoded UTF-8 in the query" },
      ]);
    }
    // An escaped '%' is one: the service, not the transcoder, refuses an id with it.
    const service = (await send("GET /v1/notifications?order_id=ord_1%25")).json;
    expect(service.message).toMatch(/^order_id: must/);
    expect(service.details?.[0]?.fieldViolations).toEqual([
      { field: "order_id", description: service.message.slice("order_id: ".length) },
    ]);
  });

  it('body "*" leaves nothing to the query (http.proto); a route without a body takes none', async () => {
    const r = await send("POST /v1/orders?card_token=tok_visa", {
      headers: { "Idempotency-Key": `conf-${process.pid}-q` },
      body: JSON.stringify({ items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" }),
    });
    expect(r).toMatchObject({ status: 400, json: { code: 3 } });
    expect(await send("GET /v1/products", { body: "{}" })).toMatchObject({ status: 400, json: { code: 3 } });
  });
});

describe("bodies", () => {
  it('body "*": proto and JSON names, enums by name or number; the path fills in its variable', async () => {
    const byName = await placeOrder({ sagaMode: "SAGA_MODE_CHOREOGRAPHY" });
    expect(byName.sagaMode).toBe("SAGA_MODE_CHOREOGRAPHY");
    const byNumber = await placeOrder({ saga_mode: 2 });
    expect(byNumber.sagaMode).toBe("SAGA_MODE_CHOREOGRAPHY");
    // No body at all on a body "*" route: the request is what the path says (grpc-gateway reads EOF as {}).
    const cancelled = await send(`POST /v1/orders/${byName.id}:cancel`);
    // Cancelled, or already settled by the saga (FAILED_PRECONDITION): either way the request was read.
    expect(cancelled.status === 200 ? cancelled.json.id : cancelled.json.code, cancelled.text).toBe(
      cancelled.status === 200 ? byName.id : 9,
    );
    // The path's value in the body too must agree with it.
    expect(await send(`POST /v1/orders/${byNumber.id}:cancel`, { body: '{"orderId":"other"}' })).toMatchObject({
      status: 400,
      json: { details: [{ fieldViolations: [{ field: "order_id" }] }] },
    });
  });
});

describe("methods", () => {
  it("404 for a path no route has; 405 with Allow for a method the path does not take; HEAD on unary GETs", async () => {
    expect(await send("GET /v1/productz")).toMatchObject({ status: 404, json: { code: 5 } });
    for (const method of ["PUT", "PATCH", "DELETE", "POST"]) {
      const r = await send(`${method} /v1/products/coffee-beans`, { body: "{}" });
      expect(r.status, method).toBe(405);
      // RFC 9110 §15.5.6: Allow lists the methods the resource supports, HEAD with the GET it answers.
      expect(r.headers.allow, method).toBe("GET, HEAD");
    }
    const head = await send("HEAD /v1/products/coffee-beans");
    expect(head.status).toBe(200);
    expect(head.text).toBe("");
    const { id } = await placeOrder();
    const watchHead = await send(`HEAD /v1/orders/${id}:watch`);
    expect(watchHead.status).toBe(405);
    expect(watchHead.headers.allow).toBe("GET");
  });
});
