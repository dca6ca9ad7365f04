/**
 * Regression tests for the adversarial review of the front door (issue 10):
 * each `describe` is one finding, reproduced the way the hostile client did
 * it — raw sockets, hand-built frames, forged tokens — against a real
 * gateway in front of the real system.
 */
import { gzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetProductRequestSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { ConfigError } from "../platform/config.js";
import { connectEndStream, envelope, grpcWebTrailers, h1Raw, h2Request, h2Session } from "../test/raw.js";
import { capturedLogger, type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { DEV_JWT_SECRET, loadConfig } from "./config.js";

let sys: System;
let gw: GatewayApp;
/** Every line the gateway logged, parsed. */
const { log, lines } = capturedLogger();
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
/** A validly signed token with whatever roles a hostile client asks for. */
const token = (sub: string, roles: unknown[] = ["customer"]) =>
  new SignJWT({ roles })
    .setProtectedHeader({ alg: "HS256" })
    .setSubject(sub)
    .setIssuer(claims.JWT_ISSUER)
    .setAudience(claims.JWT_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime("10m")
    .sign(new TextEncoder().encode(claims.JWT_SECRET));
const bearer = async (sub: string, roles?: unknown[]) => `Bearer ${await token(sub, roles)}`;

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys, { MAX_BODY_BYTES: "4096" }, log);
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

const GET_PRODUCT = "/shopmesh.inventory.v1.InventoryService/GetProduct";
const productBytes = (id = "coffee-beans") =>
  toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: id }));

async function connectJson(path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${gw.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: (text ? JSON.parse(text) : {}) as Record<string, unknown> };
}

let seq = 0;
const key = () => `hostile-${Date.now().toString(36)}-${++seq}`;

describe("1. one reading of the caller's roles", () => {
  it("refuses tokens whose roles are not exactly known role names", async () => {
    const alice = `Bearer ${await token("alice")}`;
    const placed = await connectJson(
      "/shopmesh.order.v1.OrderService/PlaceOrder",
      { idempotencyKey: key(), items: [{ productId: "paper-filters", quantity: 1 }], cardToken: "tok_visa" },
      { authorization: alice },
    );
    const orderId = (placed.json.order as { id: string }).id;
    for (const roles of [["customer,admin"], [" admin"], ["admin "], ["ADMIN"], ["superuser"], [""]]) {
      const bob = `Bearer ${await token("bob", roles)}`;
      const res = await connectJson("/shopmesh.order.v1.OrderService/GetOrder", { orderId }, { authorization: bob });
      expect(res.status, JSON.stringify(roles)).toBe(401);
      const cancel = await connectJson(
        "/shopmesh.order.v1.OrderService/CancelOrder",
        { orderId },
        { authorization: bob },
      );
      expect(cancel.status, JSON.stringify(roles)).toBe(401);
    }
    // Real admins still are.
    const ops = await connectJson(
      "/shopmesh.order.v1.OrderService/GetOrder",
      { orderId },
      { authorization: await bearer("ops", ["admin"]) },
    );
    expect(ops.status).toBe(200);
  });

  it("a service refuses identity metadata it cannot read one way (spaces, unknown roles, repeated keys)", async () => {
    const { Metadata } = await import("@grpc/grpc-js");
    const { expectRpcError } = await import("../test/rpc.js");
    const { Code } = await import("../platform/errors.js");
    const cases: [string, (md: InstanceType<typeof Metadata>) => void][] = [
      // (Leading and trailing spaces never arrive: HTTP/2 trims field values.)
      ["spaced role", (md) => md.set("x-shopmesh-roles", "customer, admin")],
      ["unknown role", (md) => md.set("x-shopmesh-roles", "customer,root")],
      ["repeated subject", (md) => md.add("x-shopmesh-subject", "alice")],
      ["repeated roles", (md) => md.add("x-shopmesh-roles", "admin")],
      // Not the form the gateway writes (no header for no roles, each role once): both were accepted.
      ["empty roles", (md) => md.set("x-shopmesh-roles", "")],
      ["a role twice", (md) => md.set("x-shopmesh-roles", "admin,admin")],
    ];
    for (const [name, tamper] of cases) {
      const md = new Metadata();
      md.set("x-shopmesh-subject", "bob");
      md.set("x-shopmesh-roles", "customer");
      tamper(md);
      await expectRpcError(sys.orders.listOrders({}, { metadata: md }), Code.UNAUTHENTICATED).catch((err: unknown) => {
        throw new Error(`${name}: ${(err as Error).message}`);
      });
    }
  });
});

describe("3. HTTP/2 clients have their own address", () => {
  it("logs and rate-limits h2c calls by the client's IP", async () => {
    await using s = await h2Session(gw.url);
    const res = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/grpc", te: "trailers", authorization: await bearer("h2") },
      envelope(productBytes()),
    );
    expect(res.grpcStatus).toBe(0);
    const access = lines.filter((l) => l.msg === "access" && l.protocol === "grpc");
    expect(access.length).toBeGreaterThan(0);
    expect(access.at(-1)?.ip).toBe("127.0.0.1");
  });
});

describe("4. client mistakes are client errors", () => {
  it("an undecodable application/proto body is 400 invalid_argument", async () => {
    const res = await fetch(`${gw.url}${GET_PRODUCT}`, {
      method: "POST",
      headers: { "content-type": "application/proto", authorization: await bearer("alice") },
      body: Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { code: string }).code).toBe("invalid_argument");
  });

  it("a Connect GET with bad base64 is 400", async () => {
    const res = await fetch(`${gw.url}${GET_PRODUCT}?connect=v1&encoding=proto&base64=1&message=%25%25%25!!`, {
      headers: { authorization: await bearer("alice") },
    });
    expect(res.status).toBe(400);
  });

  it("malformed gRPC, gRPC-Web and Connect-stream payloads are INVALID_ARGUMENT", async () => {
    const auth = await bearer("alice");
    const junk = Buffer.from([0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    await using s = await h2Session(gw.url);
    const grpc = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/grpc", te: "trailers", authorization: auth },
      envelope(junk),
    );
    expect(grpc.status).toBe(200);
    expect(grpc.grpcStatus).toBe(3);
    // A truncated envelope and a missing message are the client's fault too.
    const truncated = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/grpc", te: "trailers", authorization: auth },
      envelope(productBytes()).subarray(0, 7),
    );
    expect(truncated.grpcStatus).toBe(3);
    const empty = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/grpc", te: "trailers", authorization: auth },
      Buffer.alloc(0),
    );
    expect(empty.grpcStatus).toBe(3);
    const web = await fetch(`${gw.url}${GET_PRODUCT}`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", authorization: auth },
      body: envelope(junk),
    });
    expect(web.status).toBe(200);
    expect(grpcWebTrailers(Buffer.from(await web.arrayBuffer()))["grpc-status"] ?? web.headers.get("grpc-status")).toBe(
      "3",
    );
    const watch = await fetch(`${gw.url}/shopmesh.order.v1.OrderService/WatchOrder`, {
      method: "POST",
      headers: { "content-type": "application/connect+proto", authorization: auth },
      body: envelope(junk),
    });
    expect(connectEndStream(Buffer.from(await watch.arrayBuffer()))?.error?.code).toBe("invalid_argument");
  });

  it("a service behind the gateway answers an undecodable request INVALID_ARGUMENT too", async () => {
    await using s = await h2Session(`http://${sys.inventory.address}`);
    const res = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/grpc", te: "trailers" },
      envelope(Buffer.from([0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01])),
    );
    expect(res.grpcStatus).toBe(3);
  });

  it("an HTTP/1.0 request without a Host header is 400 and the gateway keeps serving", async () => {
    const res = await h1Raw(
      gw.port,
      `POST ${GET_PRODUCT} HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}`,
    );
    expect(res.status).toBe(400);
    const after = await connectJson(GET_PRODUCT, { productId: "coffee-beans" }, { authorization: await bearer("a") });
    expect(after.status).toBe(200);
  });
});

describe("5. absurd deadlines are clamped, not fatal", () => {
  it("grpc-timeout and connect-timeout-ms beyond Node's timer range still answer", async () => {
    const auth = await bearer("alice");
    await using s = await h2Session(gw.url);
    for (const t of ["99999999H", "99999999M", "99999999S"]) {
      const res = await h2Request(
        s,
        {
          ":path": GET_PRODUCT,
          "content-type": "application/grpc",
          te: "trailers",
          "grpc-timeout": t,
          authorization: auth,
        },
        envelope(productBytes()),
      );
      expect(res.grpcStatus, t).toBe(0);
      // gRPC-Web takes the general path, which clamps the value before connect-es reads it.
      const web = await h2Request(
        s,
        { ":path": GET_PRODUCT, "content-type": "application/grpc-web+proto", "grpc-timeout": t, authorization: auth },
        envelope(productBytes()),
      );
      expect(grpcWebTrailers(web.body)["grpc-status"] ?? web.headers["grpc-status"], t).toBe("0");
    }
    const res = await connectJson(
      GET_PRODUCT,
      { productId: "coffee-beans" },
      { authorization: auth, "connect-timeout-ms": "9999999999" },
    );
    expect(res.status).toBe(200);
  });
});

describe("6. unknown methods answer in the caller's protocol", () => {
  it("gRPC gets UNIMPLEMENTED in trailers, gRPC-Web in its framing, Connect a 404", async () => {
    await using s = await h2Session(gw.url);
    const grpc = await h2Request(
      s,
      {
        ":path": "/shopmesh.payment.v1.PaymentService/ChargePayment",
        "content-type": "application/grpc",
        te: "trailers",
      },
      envelope(new Uint8Array()),
    );
    expect(grpc.status).toBe(200);
    expect(String(grpc.headers["content-type"])).toMatch(/^application\/grpc/);
    expect(grpc.grpcStatus).toBe(12);
    const web = await fetch(`${gw.url}/no.such.Service/Method`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto" },
      body: envelope(new Uint8Array()),
    });
    expect(web.status).toBe(200);
    expect(web.headers.get("grpc-status")).toBe("12");
    const connect = await connectJson("/no.such.Service/Method", {});
    expect(connect.status).toBe(404);
    expect(connect.json.code).toBe("unimplemented");
  });
});

describe("7. deadlines and internal addresses", () => {
  it("an expired deadline is DEADLINE_EXCEEDED (504), never CANCELLED", async () => {
    const auth = await bearer("alice");
    await sys.inventoryChaos.setFaults({ faults: { latencyMs: 300 } });
    try {
      const statuses = await Promise.all(
        Array.from({ length: 12 }, () =>
          connectJson(GET_PRODUCT, { productId: "coffee-beans" }, { authorization: auth, "connect-timeout-ms": "60" }),
        ),
      );
      expect(statuses.map((s) => s.status)).toEqual(Array(12).fill(504));
      expect(statuses.map((s) => s.json.code)).toEqual(Array(12).fill("deadline_exceeded"));
    } finally {
      await sys.inventoryChaos.setFaults({ faults: {} });
    }
  });

  it("an unreachable upstream is 503 without its address", async () => {
    const dead = await startTestGateway(sys, { HISTORY_TARGET: "127.0.0.1:1", UPSTREAM_RETRY_MAX_ATTEMPTS: "1" });
    try {
      const res = await fetch(`${dead.url}/shopmesh.history.v1.HistoryService/ListOrderHistory`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: await bearer("alice") },
        body: "{}",
      });
      const text = await res.text();
      expect(res.status).toBe(503);
      expect(text).not.toMatch(/127\.0\.0\.1|:1\b|ECONNREFUSED/);
    } finally {
      await dead.stop();
    }
  });
});

describe("8. load shedding is 429 with Retry-After", () => {
  it("a burst beyond the upstream bulkhead is shed with 429, never 503", async () => {
    const small = await startTestGateway(sys, {
      TRUST_PROXY: "true",
      RATE_LIMIT_IP_BURST: "4",
      RATE_LIMIT_BURST: "4",
      UPSTREAM_BULKHEAD_LIMIT: "2",
      UPSTREAM_BULKHEAD_QUEUE: "2",
    });
    await sys.inventoryChaos.setFaults({ faults: { latencyMs: 300 } });
    try {
      const results = await Promise.all(
        Array.from({ length: 40 }, async (_, i) => {
          const res = await fetch(`${small.url}${GET_PRODUCT}`, {
            method: "POST",
            headers: {
              "content-type": "application/json",
              authorization: await bearer(`burst-${i}`),
              "x-forwarded-for": `198.51.100.${i}`,
            },
            body: '{"productId":"coffee-beans"}',
          });
          await res.arrayBuffer();
          return { status: res.status, retryAfter: res.headers.get("retry-after") };
        }),
      );
      const statuses = new Set(results.map((r) => r.status));
      expect([...statuses].sort()).toEqual([200, 429]);
      for (const r of results.filter((x) => x.status === 429)) expect(Number(r.retryAfter)).toBeGreaterThanOrEqual(1);
    } finally {
      await sys.inventoryChaos.setFaults({ faults: {} });
      await small.stop();
    }
  });

  it("refuses to start with a bulkhead smaller than one client's allowed burst, naming the variables", () => {
    expect(() =>
      loadConfig({ RATE_LIMIT_IP_BURST: "400", UPSTREAM_BULKHEAD_LIMIT: "32", UPSTREAM_BULKHEAD_QUEUE: "64" }),
    ).toThrow(ConfigError);
    try {
      loadConfig({ RATE_LIMIT_IP_BURST: "400", UPSTREAM_BULKHEAD_LIMIT: "32", UPSTREAM_BULKHEAD_QUEUE: "64" });
    } catch (err) {
      expect((err as Error).message).toMatch(/UPSTREAM_BULKHEAD_LIMIT.*UPSTREAM_BULKHEAD_QUEUE.*RATE_LIMIT_IP_BURST/s);
    }
  });
});

describe("9. token lifetimes", () => {
  const enc = new TextEncoder();
  const base = () =>
    new SignJWT({ roles: ["customer"] })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("alice")
      .setIssuer("shopmesh-dev")
      .setAudience("shopmesh");
  const now = Math.floor(Date.now() / 1000);

  it("needs exp and iat, caps the lifetime and allows only small clock skew", async () => {
    const cases: Record<string, string> = {
      "no exp": await base().setIssuedAt().sign(enc.encode(DEV_JWT_SECRET)),
      "no iat": await base().setExpirationTime("10m").sign(enc.encode(DEV_JWT_SECRET)),
      "exp in ten years": await base().setIssuedAt().setExpirationTime("3650d").sign(enc.encode(DEV_JWT_SECRET)),
      "iat a year ahead": await base()
        .setIssuedAt(now + 365 * 86_400)
        .setExpirationTime(now + 365 * 86_400 + 600)
        .sign(enc.encode(DEV_JWT_SECRET)),
    };
    for (const [name, t] of Object.entries(cases)) {
      const res = await connectJson(GET_PRODUCT, { productId: "coffee-beans" }, { authorization: `Bearer ${t}` });
      expect(res.status, name).toBe(401);
    }
    const skewed = await base()
      .setIssuedAt(now + 10)
      .setExpirationTime(now + 600)
      .sign(enc.encode(DEV_JWT_SECRET));
    const ok = await connectJson(GET_PRODUCT, { productId: "coffee-beans" }, { authorization: `Bearer ${skewed}` });
    expect(ok.status).toBe(200);
  });
});

describe("10. oversize bodies are 413 however they arrive", () => {
  it("chunked HTTP/1.1, h2c without content-length, and a gzip bomb", async () => {
    const auth = await bearer("alice");
    const big = JSON.stringify({ productId: "x".repeat(10_000) });
    const hex = Buffer.byteLength(big).toString(16);
    const chunked = await h1Raw(
      gw.port,
      `POST ${GET_PRODUCT} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nauthorization: ${auth}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n${hex}\r\n${big}\r\n0\r\n\r\n`,
    );
    expect(chunked.status).toBe(413);

    await using s = await h2Session(gw.url);
    const h2 = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/json", authorization: auth },
      Buffer.from(big),
    );
    expect(h2.status).toBe(413);

    const bomb = gzipSync(Buffer.from(JSON.stringify({ productId: "y".repeat(2_000_000) })));
    expect(bomb.byteLength).toBeLessThan(4096);
    const res = await fetch(`${gw.url}${GET_PRODUCT}`, {
      method: "POST",
      headers: { "content-type": "application/json", "content-encoding": "gzip", authorization: auth },
      body: bomb,
    });
    expect(res.status).toBe(413);
    // And gRPC keeps its own framing: RESOURCE_EXHAUSTED in trailers.
    const grpc = await h2Request(
      s,
      { ":path": GET_PRODUCT, "content-type": "application/grpc", te: "trailers", authorization: auth },
      envelope(toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "z".repeat(10_000) }))),
    );
    expect(grpc.grpcStatus).toBe(8);
  });
});

describe("11. strict enums and page tokens", () => {
  it("an unknown enum name is 400 naming the problem, not the default", async () => {
    const res = await connectJson(
      "/shopmesh.order.v1.OrderService/PlaceOrder",
      {
        idempotencyKey: key(),
        items: [{ productId: "coffee-beans", quantity: 1 }],
        cardToken: "tok_visa",
        sagaMode: "SAGA_MODE_BOGUS",
      },
      { authorization: await bearer("alice") },
    );
    expect(res.status).toBe(400);
    expect(res.json.code).toBe("invalid_argument");
  });

  it("a made-up page token is 400 on every List RPC", async () => {
    const auth = await bearer("alice");
    const forged = Buffer.from(JSON.stringify({ t: 1, id: "zzz", after: "zzz" })).toString("base64url");
    for (const path of [
      "/shopmesh.order.v1.OrderService/ListOrders",
      "/shopmesh.inventory.v1.InventoryService/ListProducts",
      "/shopmesh.notification.v1.NotificationService/ListNotifications",
      "/shopmesh.history.v1.HistoryService/ListOrderHistory",
    ]) {
      const res = await connectJson(path, { pageToken: forged }, { authorization: auth });
      expect(res.status, path).toBe(400);
    }
    // Real tokens still page.
    const first = await connectJson(
      "/shopmesh.inventory.v1.InventoryService/ListProducts",
      { pageSize: 1 },
      { authorization: auth },
    );
    const next = await connectJson(
      "/shopmesh.inventory.v1.InventoryService/ListProducts",
      { pageSize: 1, pageToken: first.json.nextPageToken },
      { authorization: auth },
    );
    expect(next.status).toBe(200);
    expect((next.json.products as { id: string }[])[0]?.id).not.toBe((first.json.products as { id: string }[])[0]?.id);
  });
});

describe("the system still works after all of the above", () => {
  it("places and confirms an order through the gateway", async () => {
    const res = await connectJson(
      "/shopmesh.order.v1.OrderService/PlaceOrder",
      { idempotencyKey: key(), items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
      { authorization: await bearer("alice") },
    );
    expect(res.status).toBe(200);
    const done = await sys.settle((res.json.order as { id: string }).id, "alice");
    expect(done.status).toBe(OrderStatus.CONFIRMED);
  });
});

describe("13. nothing listens beyond loopback by default", () => {
  it("the gateway binds 127.0.0.1 unless told otherwise; Kubernetes sets 0.0.0.0", () => {
    expect(loadConfig({}).HTTP_HOST).toBe("127.0.0.1");
    expect(loadConfig({}).METRICS_HOST).toBe("127.0.0.1");
  });
});
