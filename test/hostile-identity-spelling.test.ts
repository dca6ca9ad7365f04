/**
 * One caller, one spelling (docs/security.md, "Identity is read one way"), checked for real
 * (2026-12-06) on every protocol the gateway speaks: a token whose `sub` names alice another way —
 * padded, another case, NFC or NFD, a homoglyph, a character Node writes into a header as another
 * (U+0161 goes out as "a"), a control character, a list, very long, not a string, or written twice —
 * is refused (401 / UNAUTHENTICATED) or is somebody else, who reads and changes nothing of alice's.
 * Never a 5xx, never alice. Then a service's own port, sent the same spellings as metadata, and the
 * identity headers a client writes itself in any spelling (test/hostile-identity.test.ts has the plain
 * ones on streams and composed reads); the unit rules are gateway/auth.test.ts's.
 */
import { createHmac } from "node:crypto";
import type http2 from "node:http2";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { GatewayService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { HistoryService } from "../gen/shopmesh/history/v1/history_pb.js";
import { NotificationService } from "../gen/shopmesh/notification/v1/notification_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { h2Request, h2Session } from "./raw.js";
import { type System, startSystem, startTestGateway } from "./system.js";

/** A token signed with the development key over `claims` exactly as written (JSON text: repeats kept). */
function rawToken(claims: string): string {
  const part = (s: string) => Buffer.from(s, "utf8").toString("base64url");
  const signed = `${part('{"alg":"HS256","typ":"JWT"}')}.${part(claims)}`;
  return `${signed}.${createHmac("sha256", DEV_JWT_SECRET).update(signed).digest("base64url")}`;
}
const now = () => Math.floor(Date.now() / 1000);
const std = () => `"iss":"shopmesh-dev","aud":"shopmesh","iat":${now()},"exp":${now() + 600}`;
/** A token whose `sub` is `sub` (any JSON value), with `extra` members after the standard ones. */
const withSub = (sub: unknown, extra = "") => rawToken(`{"sub":${JSON.stringify(sub)},${std()}${extra}}`);

/** `sub` spellings of alice (or of a user) that no layer may read as anyone: each is refused. */
const REFUSED: Array<[string, string]> = [
  ["leading space", withSub(" alice")],
  ["trailing space", withSub("alice ")],
  ["NUL", withSub("alice\u0000")],
  ["line feed", withSub("alice\n")],
  ["tab", withSub("alice\t")],
  ["zero-width space", withSub("al\u200bice")],
  ["Cyrillic a", withSub("\u0430lice")],
  ["s caron, which Node writes into a header as 'a'", withSub("\u0161lice")],
  ["fullwidth", withSub("\uff41lice")],
  ["NFC", withSub("jos\u00e9")],
  ["NFD", withSub("jose\u0301")],
  ["comma", withSub("alice,bob")],
  ["semicolon", withSub("alice;bob")],
  ["129 characters", withSub("a".repeat(129))],
  ["8,000 characters", withSub("a".repeat(8000))],
  ["empty", withSub("")],
  ["number", withSub(42)],
  ["array", withSub(["alice"])],
  ["object", withSub({ id: "alice" })],
  ["null", withSub(null)],
  ["true", withSub(true)],
  // RFC 7519 §4: a parser MUST reject repeated claim names or take the last. jose (the gateway)
  // takes the last; a JSON reader that takes the first (the ingress's, a log's, an auditor's) names
  // another caller — the same split as two Authorization headers, refused the same way.
  ["sub twice, alice last", rawToken(`{"sub":"mallory",${std()},"sub":"alice"}`)],
  ["sub twice, alice first", rawToken(`{"sub":"alice",${std()},"sub":"mallory"}`)],
  ["sub twice, the same", rawToken(`{"sub":"alice",${std()},"sub":"alice"}`)],
  ["sub twice, once escaped", rawToken(`{"sub":"mallory",${std()},"s\\u0075b":"alice"}`)],
  ["roles twice, admin last", rawToken(`{"sub":"bob",${std()},"roles":["customer"],"roles":["admin"]}`)],
  ["roles not strings", withSub("bob", ',"roles":[["admin"]]')],
  ["roles an object", withSub("bob", ',"roles":{"0":"admin","length":1}')],
  ["roles null", withSub("bob", ',"roles":null')],
];

/** Valid subjects that are not alice's: somebody else, who sees nothing of hers. */
const OTHERS: Array<[string, string]> = [
  ["Alice", withSub("Alice")],
  ["ALICE", withSub("ALICE")],
  ["alice.", withSub("alice.")],
  [".alice", withSub(".alice")],
  ["alice@", withSub("alice@")],
  ["alice:", withSub("alice:")],
  ["alic", withSub("alic")],
  // Admin only as `roles` spells it: another claim's admin is a customer's token.
  ["bob, role: admin", withSub("bob", ',"role":"admin"')],
  ["bob, Roles: [admin]", withSub("bob", ',"Roles":["admin"]')],
  ["bob, scope: admin", withSub("bob", ',"scope":"admin"')],
];

const transports: Array<[string, (url: string) => Transport]> = [
  ["Connect HTTP/1.1", (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1" })],
  ["Connect HTTP/2", (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2" })],
  // Reads without side effects as GET (the query carries the message), through connect-unary.ts.
  ["Connect GET", (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "1.1", useHttpGet: true })],
  ["gRPC", (baseUrl) => createGrpcTransport({ baseUrl })],
  ["gRPC-Web HTTP/1.1", (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" })],
  ["gRPC-Web HTTP/2", (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: "2" })],
];

let sys: System;
let gw: GatewayApp;
let orderId = "";

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys, { RATE_LIMIT_RPS: "100000", RATE_LIMIT_BURST: "400", RATE_LIMIT_IP_RPS: "100000" });
  const placed = await sys.orders.placeOrder(
    { idempotencyKey: "spelling-1", items: [{ productId: "paper-filters", quantity: 1 }], cardToken: "tok_visa" },
    sys.as("alice"),
  );
  orderId = placed.order?.id ?? "";
  await sys.settle(orderId, "alice");
  // History and notifications follow the order's events: wait until alice reads hers, so that
  // another spelling reading none is the rule's doing, not a projection's lag.
  const t = createConnectTransport({ baseUrl: gw.url, httpVersion: "2" });
  for (let i = 0; i < 100; i++) {
    const seen = await asCaller(t, withSub("alice"));
    if (seen.history === "1" && seen.notifications !== "0") return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("alice's history and notifications did not arrive");
});
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

/** Every call that reads or changes something of alice's, as `token`: each one's code, or what it saw. */
async function asCaller(t: Transport, token: string): Promise<Record<string, string>> {
  const headers = { authorization: `Bearer ${token}` };
  const code = (p: Promise<unknown>) =>
    p.then(
      () => "OK",
      (e: unknown) => Code[ConnectError.from(e).code] ?? "?",
    );
  const count = (p: Promise<{ orders?: unknown[]; notifications?: unknown[]; entries?: unknown[] }>) =>
    p.then(
      (r) => (r.orders ?? r.notifications ?? r.entries ?? []).length.toString(),
      (e: unknown) => Code[ConnectError.from(e).code] ?? "?",
    );
  const orders = createClient(OrderService, t);
  // Ended once read: a Connect or gRPC-Web stream left by a return from its loop stays open on the
  // gateway, whose stop then waited out its grace (10 s) for it.
  const watch = async () => {
    const done = new AbortController();
    try {
      for await (const u of orders.watchOrder({ orderId }, { headers, timeoutMs: 5_000, signal: done.signal }))
        if (u.order) return;
    } finally {
      done.abort();
    }
  };
  return {
    getOrder: await code(orders.getOrder({ orderId }, { headers })),
    watchOrder: await code(watch()),
    cancelOrder: await code(orders.cancelOrder({ orderId, reason: "not mine" }, { headers })),
    getPayment: await code(createClient(PaymentService, t).getPayment({ orderId }, { headers })),
    details: await code(createClient(GatewayService, t).getOrderDetails({ orderId }, { headers })),
    listOrders: await count(orders.listOrders({}, { headers })),
    notifications: await count(createClient(NotificationService, t).listNotifications({ orderId }, { headers })),
    history: await count(createClient(HistoryService, t).listOrderHistory({}, { headers })),
  };
}

/** The same calls over REST (HTTP/1.1): each one's HTTP status. */
async function overRest(token: string): Promise<Record<string, number>> {
  const call = async (method: string, path: string, body?: string) =>
    (
      await fetch(`${gw.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
        ...(body ? { body } : {}),
      })
    ).status;
  return {
    getOrder: await call("GET", `/v1/orders/${orderId}`),
    watchOrder: await call("GET", `/v1/orders/${orderId}:watch`),
    cancelOrder: await call("POST", `/v1/orders/${orderId}:cancel`, "{}"),
    details: await call("GET", `/v1/orders/${orderId}/details`),
    listOrders: await call("GET", "/v1/orders"),
    notifications: await call("GET", `/v1/notifications?orderId=${orderId}`),
    history: await call("GET", "/v1/history"),
  };
}

const every = <T>(keys: readonly string[], value: T) => Object.fromEntries(keys.map((k) => [k, value]));
const CALLS = [
  "getOrder",
  "watchOrder",
  "cancelOrder",
  "getPayment",
  "details",
  "listOrders",
  "notifications",
  "history",
];
const REST_CALLS = ["getOrder", "watchOrder", "cancelOrder", "details", "listOrders", "notifications", "history"];

describe("a token's sub, spelt another way, is nobody or somebody else: never alice, never a 5xx", () => {
  it.each(transports)("%s", async (_name, transport) => {
    const t = transport(gw.url);
    // The harness can tell: alice herself reads all of it (she cancels nothing: it is settled).
    expect(await asCaller(t, withSub("alice"))).toMatchObject({
      getOrder: "OK",
      watchOrder: "OK",
      getPayment: "OK",
      details: "OK",
      listOrders: "1",
      history: "1",
    });
    expect(Number((await asCaller(t, withSub("alice"))).notifications)).toBeGreaterThan(0);
    for (const [name, token] of REFUSED) {
      expect(await asCaller(t, token), name).toEqual(every(CALLS, "Unauthenticated"));
    }
    for (const [name, token] of OTHERS) {
      expect(await asCaller(t, token), name).toEqual({
        ...every(["getOrder", "watchOrder", "cancelOrder", "getPayment", "details"], "NotFound"),
        ...every(["listOrders", "notifications", "history"], "0"),
      });
    }
  });

  it("REST", async () => {
    expect(await overRest(withSub("alice"))).toMatchObject({
      getOrder: 200,
      watchOrder: 200,
      details: 200,
      listOrders: 200,
    });
    for (const [name, token] of REFUSED) expect(await overRest(token), name).toEqual(every(REST_CALLS, 401));
    for (const [name, token] of OTHERS) {
      expect(await overRest(token), name).toEqual({
        ...every(["getOrder", "watchOrder", "cancelOrder", "details"], 404),
        ...every(["listOrders", "notifications", "history"], 200),
      });
    }
  });
});

describe("a service's own port reads its identity metadata one way too", () => {
  /** A unary gRPC call to `address` whose message is `field` = orderId; its grpc-status. */
  const caller = async (address: string, path: string, field: number) => {
    const s = await h2Session(`http://${address}`);
    const id = Buffer.from(orderId);
    const message = Buffer.concat([Buffer.from([(field << 3) | 2, id.length]), id]);
    const body = Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]);
    const call = async (identity: http2.OutgoingHttpHeaders) =>
      (await h2Request(s, { ":path": path, "content-type": "application/grpc", te: "trailers", ...identity }, body))
        .grpcStatus;
    return Object.assign(call, { [Symbol.asyncDispose]: () => s[Symbol.asyncDispose]() });
  };
  const refused: http2.OutgoingHttpHeaders[] = [
    { "x-shopmesh-subject": "jos\u00e9" }, // latin1 on the wire
    { "x-shopmesh-subject": "alice,bob" },
    { "x-shopmesh-subject": "alice;bob" },
    { "x-shopmesh-subject": ["alice", "alice"] },
    { "x-shopmesh-subject": ["alice", "bob"] },
    { "x-shopmesh-subject": "a".repeat(129) },
    { "x-shopmesh-subject": "alice", "x-shopmesh-roles": "Customer" },
    { "x-shopmesh-subject": "alice", "x-shopmesh-roles": ["customer", "admin"] },
    { "x-shopmesh-roles": "admin" },
    // Values grpc-js will not keep (it logs them and drops the entry): the call had an identity,
    // malformed, not none — which payment took for a trusted service's call and showed alice's payment.
    { "x-shopmesh-subject": "jos\u00e9", "x-shopmesh-roles": "customer" },
    { "x-shopmesh-subject": ["alice", "jos\u00e9"] },
    { "x-shopmesh-subject": "alice\u00a0" },
    { "x-shopmesh-subject": "alice", "x-shopmesh-roles": "admin\u00e9" },
    // A -bin key is another key, never how identity is written: not alice's in base64, not none.
    { "x-shopmesh-subject-bin": Buffer.from("alice").toString("base64") },
    { "x-shopmesh-roles-bin": Buffer.from("admin").toString("base64") },
  ];

  it("order: refuses a subject or roles spelt another way (UNAUTHENTICATED), and Alice is not alice", async () => {
    await using getOrder = await caller(sys.order.address, "/shopmesh.order.v1.OrderService/GetOrder", 1);
    expect(await getOrder({ "x-shopmesh-subject": "alice", "x-shopmesh-roles": "customer" })).toBe(0);
    expect(await getOrder({ "x-shopmesh-subject": "Alice", "x-shopmesh-roles": "customer" })).toBe(5);
    for (const identity of refused) expect(await getOrder(identity), JSON.stringify(identity)).toBe(16);
  });

  it("payment, which takes a call with no identity for a trusted service's: a malformed one is no such call", async () => {
    await using getPayment = await caller(sys.payment.address, "/shopmesh.payment.v1.PaymentService/GetPayment", 2);
    expect(await getPayment({ "x-shopmesh-subject": "alice", "x-shopmesh-roles": "customer" })).toBe(0);
    expect(await getPayment({ "x-shopmesh-subject": "Alice", "x-shopmesh-roles": "customer" })).toBe(5);
    for (const identity of refused) expect(await getPayment(identity), JSON.stringify(identity)).toBe(16);
  });
});

describe("identity headers a client writes itself, however spelt, are dropped", () => {
  /** What a client may add in the hope a layer behind the gateway believes it: names in any case, -bin, twice. */
  const forged: Array<[string, string]> = [
    ["X-Shopmesh-Subject", "alice"],
    ["X-SHOPMESH-ROLES", "admin"],
    ["x-shopmesh-subject", "alice"],
    ["x-shopmesh-subject", "alice"],
    ["x-shopmesh-subject-bin", Buffer.from("alice").toString("base64")],
    ["x-shopmesh-roles-bin", Buffer.from("admin").toString("base64")],
    ["x-user-id", "alice"],
  ];
  const mallory = () => withSub("mallory");

  it("over HTTP/1.1 (Connect, REST) and HTTP/2 (gRPC): mallory is mallory, a call without a token nobody", async () => {
    const h1 = async (path: string, token?: string, body: unknown = { orderId }) => {
      const headers = new Headers(token ? { authorization: `Bearer ${token}` } : {});
      for (const [k, v] of forged) headers.append(k, v);
      headers.set("content-type", "application/json");
      return (await fetch(`${gw.url}${path}`, { method: "POST", headers, body: JSON.stringify(body) })).status;
    };
    expect(await h1("/shopmesh.order.v1.OrderService/GetOrder", mallory())).toBe(404);
    expect(await h1("/shopmesh.order.v1.OrderService/GetOrder")).toBe(401);
    expect(await h1(`/v1/orders/${orderId}:cancel`, mallory())).toBe(404);
    expect(await h1(`/v1/products/paper-filters:restock`, mallory(), { idempotencyKey: "forged-1", quantity: 1 })).toBe(
      403,
    );

    await using s = await h2Session(gw.url);
    const id = Buffer.from(orderId);
    const message = Buffer.concat([Buffer.from([0x0a, id.length]), id]);
    const grpc = async (token?: string) =>
      (
        await h2Request(
          s,
          {
            ":path": "/shopmesh.order.v1.OrderService/GetOrder",
            "content-type": "application/grpc",
            te: "trailers",
            ...(token ? { authorization: `Bearer ${token}` } : {}),
            "x-shopmesh-subject": ["alice", "alice"],
            "x-shopmesh-roles": "admin",
            "x-shopmesh-subject-bin": Buffer.from("alice").toString("base64"),
            "x-user-id": "alice",
          },
          Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]),
        )
      ).grpcStatus;
    expect(await grpc(mallory())).toBe(5);
    expect(await grpc()).toBe(16);
  });
});
