/**
 * A hostile client of idempotency keys (2026-12-06, helper hc), through the real gateway in front of
 * the real system: the key as the IETF draft the REST docs cite writes it, the same key over REST,
 * Connect and gRPC, and keys malformed in the header. Exactly one order (one restock) per key and
 * customer, every caller the same answer or a typed 400.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { type System, startSystem, startTestGateway } from "./system.js";

const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };

let sys: System;
let gw: GatewayApp;
const token: Record<string, string> = {};

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys);
  for (const who of ["alice", "bob"]) token[who] = await signDevToken(claims, who, ["customer"]);
  token.root = await signDevToken(claims, "root", ["admin"]);
}, 60_000);
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

type Json = Record<string, unknown>;
interface Answer {
  readonly status: number;
  readonly body: Json;
}

async function post(who: string, path: string, body: Json, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(`${gw.url}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token[who]}`, "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : {}) as Json };
}
const short = (a: Answer) => `${a.status} ${JSON.stringify(a.body).slice(0, 300)}`;
/** The field a 400 names (REST's google.rpc.Status, or Connect's). */
const violated = (a: Answer) =>
  ((a.body.details as { fieldViolations?: { field: string }[] }[] | undefined)?.[0]?.fieldViolations ?? [])[0]?.field;

let n = 0;
const fresh = () => `hc-${Date.now().toString(36)}-${n++}`;
const order = { items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" };
const viaRest = (who: string, header: string, body: Json = order) =>
  post(who, "/v1/orders", body, { "idempotency-key": header });
const viaConnect = (who: string, key: string) =>
  post(who, "/shopmesh.order.v1.OrderService/PlaceOrder", { ...order, idempotencyKey: key });

describe("the Idempotency-Key header as draft-ietf-httpapi-idempotency-key-header writes it (an sf-string, quoted)", () => {
  it("is the key inside the quotes: REST quoted and bare, Connect and gRPC with that key make one order", async () => {
    const key = fresh();
    const quoted = await viaRest("alice", `"${key}"`);
    expect(quoted.status, short(quoted)).toBe(200);
    const bare = await viaRest("alice", key);
    const connect = await viaConnect("alice", key);
    const grpc = await sys.orders.placeOrder({ ...order, idempotencyKey: key }, sys.as("alice"));
    expect([bare.body.id, (connect.body.order as Json | undefined)?.id, grpc.order?.id]).toEqual([
      quoted.body.id,
      quoted.body.id,
      quoted.body.id,
    ]);
    // The body may say the key too: the header's, unquoted, agrees with it.
    const both = await viaRest("alice", `"${key}"`, { ...order, idempotencyKey: key });
    expect([both.status, both.body.id]).toEqual([200, quoted.body.id]);
    // Another body under it is the reused key it is, however the header is written.
    const other = await viaRest("alice", `"${key}"`, { ...order, items: [{ productId: "ceramic-mug", quantity: 2 }] });
    expect([other.status, other.body.code]).toEqual([409, 6]);
  });

  it("unescapes \\\" and \\\\, and the key is still the caller's: bob's same quoted key is his own order", async () => {
    const key = `${fresh()}"q\\b`;
    const quoted = await viaRest("alice", `"${key.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`);
    expect(quoted.status, short(quoted)).toBe(200);
    const connect = await viaConnect("alice", key);
    expect((connect.body.order as Json | undefined)?.id).toBe(quoted.body.id);
    const bob = await viaRest("bob", `"${key.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`);
    expect(bob.status, short(bob)).toBe(200);
    expect([bob.body.customerId, bob.body.id === quoted.body.id]).toEqual(["bob", false]);
  });

  it("a malformed sf-string is a 400 naming idempotency_key, never a key of its own", async () => {
    const key = fresh();
    for (const header of [`"${key}`, `"${key}\\x"`, `"${key}"x"`, `"${key}";a=1`, `""`, `"${key}\\"`]) {
      const r = await viaRest("alice", header);
      expect([r.status, r.body.code, violated(r)], `${header}: ${short(r)}`).toEqual([400, 3, "idempotency_key"]);
    }
  });

  it("Restock: a quoted key and the bare one add the units once", async () => {
    const key = fresh();
    const restock = (header: string) =>
      post("root", "/v1/products/paper-filters:restock", { quantity: 7 }, { "idempotency-key": header });
    const first = await restock(`"${key}"`);
    expect(first.status, short(first)).toBe(200);
    const again = await restock(key);
    expect([again.status, again.body.available]).toEqual([200, first.body.available]);
    const product = (await sys.products.getProduct({ productId: "paper-filters" })).product;
    expect(product?.available).toBe(first.body.available);
  });
});
