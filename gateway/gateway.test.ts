/**
 * The gateway end to end over real sockets: plain HTTP JSON (fetch), Connect
 * streaming over HTTP/1.1 (what a browser does), gRPC and gRPC-Web through
 * `buf curl`; authentication, ownership, authorization, limits, internal
 * RPCs, CORS and composition.
 */
import { Code as ConnectCode, ConnectError, createClient as createConnectClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SignJWT } from "jose";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import type { Role } from "../platform/identity-rule.js";
import { silentLogger } from "../platform/log.js";
import { bufCurl, refusedBut } from "../test/fixtures.js";
import { type System, startSystem, startTestGateway } from "../test/system.js";
import { type GatewayApp, startGateway } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET, loadConfig } from "./config.js";

let sys: System;
let gw: GatewayApp;
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const token = (sub: string, roles: Role[] = ["customer"]) => signDevToken(claims, sub, roles);

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys, {
    RATE_LIMIT_RPS: "2",
    RATE_LIMIT_BURST: "20",
    RATE_LIMIT_IP_BURST: "200",
    MAX_BODY_BYTES: "4096",
    CORS_ORIGINS: "http://app.example",
    UPSTREAM_BREAKER_HALF_OPEN_AFTER_MS: "200",
    UPSTREAM_RETRY_MAX_ATTEMPTS: "2",
  });
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

/** A Connect JSON call with fetch, as any HTTP client would make it. */
async function call(procedure: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${gw.url}/${procedure}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: (text ? JSON.parse(text) : {}) as Record<string, unknown> };
}
const auth = async (sub: string, roles?: Role[]) => ({ authorization: `Bearer ${await token(sub, roles)}` });

let seq = 0;
const key = () => `gw-${++seq}`;

describe("protocols", () => {
  it("places and reads an order with plain HTTP JSON", async () => {
    const h = await auth("alice");
    const placed = await call(
      "shopmesh.order.v1.OrderService/PlaceOrder",
      { idempotencyKey: key(), items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
      h,
    );
    expect(placed.status).toBe(200);
    const id = (placed.json.order as { id: string }).id;
    const done = await sys.settle(id, "alice");
    expect(done.status).toBe(OrderStatus.CONFIRMED);
    const got = await call("shopmesh.order.v1.OrderService/GetOrder", { orderId: id }, h);
    expect(got.json).toMatchObject({ order: { id, status: "ORDER_STATUS_CONFIRMED", customerId: "alice" } });
    expect(got.headers.get("x-request-id")).toMatch(/.+/);
  });

  it("every answer, API or not, success or error, tells a browser not to sniff its type", async () => {
    const h = await auth("alice");
    const answers = [
      await fetch(`${gw.url}/shopmesh.inventory.v1.InventoryService/GetProduct`, {
        method: "POST",
        headers: { "content-type": "application/json", ...h },
        body: JSON.stringify({ productId: "coffee-beans" }),
      }),
      await fetch(`${gw.url}/shopmesh.inventory.v1.InventoryService/GetProduct`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      }),
      await fetch(`${gw.url}/v1/products/coffee-beans`, { headers: h }),
      await fetch(`${gw.url}/v1/products/<img src=x onerror=alert(1)>`, { headers: h }),
      await fetch(`${gw.url}/shopmesh.x.Y/<img src=x onerror=alert(1)>`, { method: "POST", headers: h }),
      await fetch(`${gw.url}/healthz`),
    ];
    expect(answers.map((a) => a.status)).toEqual([200, 401, 200, 400, 404, 200]);
    for (const a of answers) {
      await a.arrayBuffer();
      expect(a.headers.get("x-content-type-options"), a.url).toBe("nosniff");
    }
  });

  it("streams WatchOrder over HTTP/1.1 with the Connect protocol, as a browser would", async () => {
    const h = await auth("alice");
    const client = createConnectClient(OrderService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }));
    await sys.paymentChaos.setFaults({ faults: { latencyMs: 400 } }); // keep the order pending while we watch
    try {
      const { order } = await client.placeOrder(
        { idempotencyKey: key(), items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" },
        { headers: h },
      );
      const seen: OrderStatus[] = [];
      for await (const m of client.watchOrder({ orderId: order?.id ?? "" }, { headers: h, timeoutMs: 10_000 })) {
        seen.push(m.order?.status ?? OrderStatus.UNSPECIFIED);
      }
      expect(seen[0]).toBe(OrderStatus.PENDING);
      expect(seen.at(-1)).toBe(OrderStatus.CONFIRMED);
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });

  it("answers gRPC and gRPC-Web clients (buf curl), HTTP/2 and HTTP/1.1 on the same port", async () => {
    const h = `authorization: ${(await auth("bob")).authorization}`;
    const body = JSON.stringify({
      idempotency_key: key(),
      items: [{ product_id: "paper-filters", quantity: 1 }],
      card_token: "tok_visa",
    });
    const placed = JSON.parse(
      (
        await bufCurl(
          ["--schema", ".", "-H", h, "-d", body, `${gw.url}/shopmesh.order.v1.OrderService/PlaceOrder`],
          "grpc",
        )
      ).stdout,
    ) as { order: { id: string } };
    const got = JSON.parse(
      (
        await bufCurl(
          [
            "--schema",
            ".",
            "-H",
            h,
            "-d",
            JSON.stringify({ order_id: placed.order.id }),
            `${gw.url}/shopmesh.order.v1.OrderService/GetOrder`,
          ],
          "grpcweb",
        )
      ).stdout,
    ) as { order: { id: string; customerId: string } };
    expect(got.order).toMatchObject({ id: placed.order.id, customerId: "bob" });
  });
});

describe("reflection", () => {
  it("describes exactly the public API to grpcurl / buf curl, without a token", async () => {
    const { stdout } = await bufCurl(["--list-methods", gw.url]);
    const methods = stdout.trim().split("\n");
    expect(methods).toContain("shopmesh.order.v1.OrderService/PlaceOrder");
    expect(methods).toContain("shopmesh.gateway.v1.GatewayService/GetOrderDetails");
    expect(methods).toContain("shopmesh.inventory.v1.InventoryService/Restock");
    for (const internal of ["ReserveStock", "ReleaseStock", "ChargePayment", "RefundPayment", "SetFaults"]) {
      expect(
        methods.some((m) => m.endsWith(`/${internal}`)),
        internal,
      ).toBe(false);
    }
    // The schema comes from reflection, not from local files: a call by name works.
    const h = `authorization: ${(await auth("erin")).authorization}`;
    const res = await bufCurl([
      "-H",
      h,
      "-d",
      '{"product_id":"ceramic-mug"}',
      `${gw.url}/shopmesh.inventory.v1.InventoryService/GetProduct`,
    ]);
    expect(JSON.parse(res.stdout)).toMatchObject({ product: { id: "ceramic-mug" } });
  });

  it("answers grpc.reflection.v1alpha as well, for grpcurl releases that know only that", async () => {
    const list = async (protocol: string, what: string) =>
      (await bufCurl([what, "--reflect-protocol", protocol, gw.url])).stdout.trim().split("\n").sort();
    const services = await list("grpc-v1alpha", "--list-services");
    expect(services).toEqual(await list("grpc-v1", "--list-services"));
    expect(services).toContain("shopmesh.order.v1.OrderService");
    expect(services).toContain("grpc.reflection.v1alpha.ServerReflection");
    expect(await list("grpc-v1alpha", "--list-methods")).toEqual(await list("grpc-v1", "--list-methods"));
    // A call described over v1alpha only.
    const h = `authorization: ${(await auth("erin")).authorization}`;
    const res = await bufCurl([
      "--reflect-protocol",
      "grpc-v1alpha",
      "-H",
      h,
      "-d",
      '{"product_id":"ceramic-mug"}',
      `${gw.url}/shopmesh.inventory.v1.InventoryService/GetProduct`,
    ]);
    expect(JSON.parse(res.stdout)).toMatchObject({ product: { id: "ceramic-mug" } });
  });
});

describe("authentication", () => {
  const enc = new TextEncoder();
  const sign = (
    payload: Record<string, unknown>,
    opts: { secret?: string; iss?: string; aud?: string; exp?: string } = {},
  ) =>
    new SignJWT(payload)
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("alice")
      .setIssuer(opts.iss ?? "shopmesh-dev")
      .setAudience(opts.aud ?? "shopmesh")
      .setIssuedAt()
      .setExpirationTime(opts.exp ?? "1h")
      .sign(enc.encode(opts.secret ?? DEV_JWT_SECRET));
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");

  it("refuses every bad token with 401, a generic body, and no upstream effect", async () => {
    const k = key();
    const cases: Record<string, string> = {
      missing: "",
      malformed: "Bearer not.a.jwt",
      "not bearer": `Basic ${Buffer.from("alice:pw").toString("base64")}`,
      expired: `Bearer ${await sign({}, { exp: "-10m" })}`,
      "bad signature": `Bearer ${await sign({}, { secret: "someone-elses-secret" })}`,
      "alg none": `Bearer ${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: "alice", iss: "shopmesh-dev", aud: "shopmesh", exp: 9999999999 })}.`,
      "wrong issuer": `Bearer ${await sign({}, { iss: "evil" })}`,
      "wrong audience": `Bearer ${await sign({}, { aud: "another-api" })}`,
    };
    for (const [name, authorization] of Object.entries(cases)) {
      const res = await call(
        "shopmesh.order.v1.OrderService/PlaceOrder",
        { idempotencyKey: k, items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
        authorization ? { authorization } : {},
      );
      expect(res.status, name).toBe(401);
      expect(res.json, name).toEqual({
        code: "unauthenticated",
        message: "authentication required: a valid bearer token",
      });
      // RFC 9110 §11.6.1: a 401 names the scheme to answer with; RFC 6750 §3.1: an error code only when a
      // bearer token was sent.
      expect(res.headers.get("www-authenticate"), name).toBe(
        authorization.startsWith("Bearer ")
          ? 'Bearer realm="shopmesh", error="invalid_token"'
          : 'Bearer realm="shopmesh"',
      );
    }
    // The REST paths answer the same 401.
    const rest = await fetch(`${gw.url}/v1/orders`);
    expect([rest.status, rest.headers.get("www-authenticate")]).toEqual([401, 'Bearer realm="shopmesh"']);
    // None of them reached the order service: the key is still unused for alice.
    const { json } = await call("shopmesh.order.v1.OrderService/ListOrders", { pageSize: 100 }, await auth("alice"));
    expect(JSON.stringify(json)).not.toContain(k);
  });

  it("ignores a forged identity header, hides other customers' orders, and lets only admins restock", async () => {
    const alice = await auth("alice");
    const placed = await call(
      "shopmesh.order.v1.OrderService/PlaceOrder",
      { idempotencyKey: key(), items: [{ productId: "paper-filters", quantity: 1 }], cardToken: "tok_visa" },
      { ...alice, "x-shopmesh-subject": "mallory", "x-shopmesh-roles": "admin" },
    );
    const order = placed.json.order as { id: string; customerId: string };
    expect(order.customerId).toBe("alice");
    const mallory = await call("shopmesh.order.v1.OrderService/GetOrder", { orderId: order.id }, await auth("mallory"));
    expect(mallory.status).toBe(404);
    const forged = await call(
      "shopmesh.inventory.v1.InventoryService/Restock",
      { idempotencyKey: key(), productId: "paper-filters", quantity: 5 },
      { ...alice, "x-shopmesh-roles": "admin" },
    );
    expect(forged.status).toBe(403);
    expect(forged.json.code).toBe("permission_denied");
    const admin = await call(
      "shopmesh.inventory.v1.InventoryService/Restock",
      { idempotencyKey: key(), productId: "paper-filters", quantity: 5 },
      await auth("ops", ["admin"]),
    );
    expect(admin.status).toBe(200);
  });
});

/** A gateway of its own in front of inventory, with `limits` over the defaults. */
const limitedGateway = (limits: Record<string, string>, log = silentLogger()) =>
  startGateway(
    loadConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", INVENTORY_TARGET: sys.inventory.address, ...limits }),
    log,
  );

describe("limits and surface", () => {
  it("429 with Retry-After above the burst, others unaffected, then recovers", async () => {
    const h = await auth("burst-user");
    const statuses: number[] = [];
    let retryAfter = "";
    for (let i = 0; i < 25; i++) {
      const r = await call("shopmesh.inventory.v1.InventoryService/GetProduct", { productId: "coffee-beans" }, h);
      statuses.push(r.status);
      if (r.status === 429) retryAfter = r.headers.get("retry-after") ?? "";
    }
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThan(0);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
    const other = await call(
      "shopmesh.inventory.v1.InventoryService/GetProduct",
      { productId: "coffee-beans" },
      await auth("calm-user"),
    );
    expect(other.status).toBe(200);
    await new Promise((r) => setTimeout(r, Number(retryAfter) * 1000));
    const again = await call("shopmesh.inventory.v1.InventoryService/GetProduct", { productId: "coffee-beans" }, h);
    expect(again.status).toBe(200);
  });

  it("limits per client IP before authentication; a spoofed X-Forwarded-For does not reset it", async () => {
    const strict = await limitedGateway({ RATE_LIMIT_IP_BURST: "5", RATE_LIMIT_IP_RPS: "1" });
    try {
      const statuses: number[] = [];
      const began = Date.now();
      for (let i = 0; i < 8; i++) {
        const res = await fetch(`${strict.url}/shopmesh.inventory.v1.InventoryService/GetProduct`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-forwarded-for": `203.0.113.${i}` },
          body: '{"product_id":"coffee-beans"}',
        });
        statuses.push(res.status);
      }
      // Five unauthenticated tries (401), then the address is out of tokens whatever the header claims
      // (but for a token a second: a machine paused past a second lets one more through).
      expect(statuses.slice(0, 5)).toEqual([401, 401, 401, 401, 401]);
      expect(statuses.slice(5)).toEqual(refusedBut(statuses.slice(5), 401, began));
    } finally {
      await strict.stop();
    }
  });

  it("limits the plain endpoints (the development sign-in, the OpenAPI document) per client IP too, and counts them", async () => {
    // /dev/token signs a token per request: before, it answered 1,500 in a second from one address.
    const access: Record<string, unknown>[] = [];
    const log = pino({ level: "info" }, { write: (s: string) => void access.push(JSON.parse(s)) });
    const strict = await limitedGateway({ RATE_LIMIT_IP_BURST: "4", RATE_LIMIT_IP_RPS: "1" }, log);
    try {
      const token = () => fetch(`${strict.url}/dev/token`, { method: "POST", body: '{"user":"alice"}' });
      const statuses: number[] = [];
      for (let i = 0; i < 3; i++) statuses.push((await token()).status);
      statuses.push((await fetch(`${strict.url}/openapi.json`)).status);
      expect(statuses).toEqual([200, 200, 200, 200]);
      // The burst is spent; at 1 token a second, at most one of three more at once can find a new one.
      const more = await Promise.all([token(), fetch(`${strict.url}/openapi.json`), token()]);
      const refused = more.filter((r) => r.status === 429);
      expect(refused.length).toBeGreaterThanOrEqual(2);
      expect(refused[0]?.headers.get("retry-after")).toBe("1");
      expect(await refused[0]?.json()).toMatchObject({
        code: 8,
        message: expect.stringContaining("rate limit exceeded"),
      });
      // Probes are not limited: a kubelet must not be refused because a client was.
      expect((await fetch(`${strict.url}/healthz`)).status).toBe(200);
      // Every answer, refusals too, has its access line and RED sample, as every call has: a flood on
      // a plain endpoint shows on the dashboards. Probes have neither.
      // (logged when each answer's stream closes, which may come just after the client has read it)
      await expect.poll(() => access.filter((l) => l.msg === "access").length).toBe(7);
      const lines = access.filter((l) => l.msg === "access");
      expect(lines.filter((l) => l.code === "ResourceExhausted" && l.status === 429)).toHaveLength(refused.length);
      expect(lines[0]).toMatchObject({ procedure: "plain/dev-token", protocol: "http", code: "OK", status: 200 });
      expect(lines[3]).toMatchObject({ procedure: "plain/openapi", code: "OK", ip: "127.0.0.1" });
      const samples = (await strict.telemetry.metrics.httpServer.get()).values.filter(
        (v) => v.metricName === "http_server_duration_seconds_count",
      );
      const count = (procedure: string, code: string) =>
        samples.find((v) => v.labels.procedure === procedure && v.labels.code === code)?.value ?? 0;
      expect(count("plain/dev-token", "OK") + count("plain/openapi", "OK")).toBe(7 - refused.length);
      expect(count("plain/dev-token", "ResourceExhausted") + count("plain/openapi", "ResourceExhausted")).toBe(
        refused.length,
      );
    } finally {
      await strict.stop();
    }
  });

  it("gives back a plain endpoint's call slot however it was answered (GET, HEAD, 304, 405)", async () => {
    const strict = await limitedGateway({ HTTP_MAX_CALLS_PER_IP: "2" });
    try {
      const url = `${strict.url}/openapi.json`;
      const etag = (await fetch(url)).headers.get("etag") ?? "";
      const statuses: number[] = [];
      for (let i = 0; i < 3; i++) {
        statuses.push((await fetch(url, { method: "HEAD" })).status);
        statuses.push((await fetch(url, { headers: { "if-none-match": etag } })).status);
        statuses.push((await fetch(url, { method: "DELETE" })).status);
      }
      // Two slots: a slot kept by any of these would have refused the third round (429).
      expect(statuses).toEqual([200, 304, 405, 200, 304, 405, 200, 304, 405]);
    } finally {
      await strict.stop();
    }
  });

  it("refuses an oversize body with 413 and a clear message", async () => {
    const res = await call(
      "shopmesh.inventory.v1.InventoryService/GetProduct",
      { productId: "x".repeat(10_000) },
      await auth("alice"),
    );
    expect(res.status).toBe(413);
    expect(res.json).toMatchObject({
      code: "resource_exhausted",
      message: expect.stringContaining("exceeds the limit of 4096"),
    });
  });

  it("does not expose internal RPCs", async () => {
    const h = await auth("ops", ["admin"]);
    for (const p of [
      "shopmesh.inventory.v1.InventoryService/ReserveStock",
      "shopmesh.inventory.v1.InventoryService/ReleaseStock",
      "shopmesh.payment.v1.PaymentService/ChargePayment",
      "shopmesh.payment.v1.PaymentService/RefundPayment",
      "shopmesh.chaos.v1.ChaosService/SetFaults",
    ]) {
      const r = await call(p, {}, h);
      expect(r.status, p).toBe(404);
      expect(r.json.code, p).toBe("unimplemented");
    }
  });

  it("answers CORS preflights for allowed origins only", async () => {
    const pre = (origin: string) =>
      fetch(`${gw.url}/shopmesh.order.v1.OrderService/GetOrder`, {
        method: "OPTIONS",
        headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "authorization" },
      });
    const ok = await pre("http://app.example");
    expect(ok.status).toBe(204);
    expect(ok.headers.get("access-control-allow-origin")).toBe("http://app.example");
    expect(ok.headers.get("access-control-allow-headers")).toContain("authorization");
    // A browser posting to a REST route with an Idempotency-Key asks for that header first.
    expect(ok.headers.get("access-control-allow-headers")).toContain("idempotency-key");
    expect((await pre("http://evil.example")).headers.get("access-control-allow-origin")).toBeNull();
  });

  it("maps a bad field to HTTP 400 with the field named in the error details", async () => {
    const r = await call("shopmesh.order.v1.OrderService/ListOrders", { pageSize: 500 }, await auth("alice"));
    expect(r.status).toBe(400);
    expect(JSON.stringify(r.json.details)).toContain('"field":"page_size"');
  });
});

describe("API composition", () => {
  it("returns order, payment, products and notifications in one call", async () => {
    const h = await auth("dora");
    const placed = await call(
      "shopmesh.order.v1.OrderService/PlaceOrder",
      { idempotencyKey: key(), items: [{ productId: "hand-grinder", quantity: 1 }], cardToken: "tok_visa" },
      h,
    );
    const id = (placed.json.order as { id: string }).id;
    await sys.settle(id, "dora");
    const d = await call("shopmesh.gateway.v1.GatewayService/GetOrderDetails", { orderId: id }, h);
    expect(d.status).toBe(200);
    expect(d.json).toMatchObject({
      order: { id, status: "ORDER_STATUS_CONFIRMED" },
      payment: { orderId: id, status: "PAYMENT_STATUS_CAPTURED" },
      products: [{ id: "hand-grinder" }],
    });
    expect(d.json.missing ?? []).toEqual([]);
  });

  it("degrades when payment is down: the order comes back with the payment part marked missing", async () => {
    const h = await auth("dora");
    const placed = await call(
      "shopmesh.order.v1.OrderService/PlaceOrder",
      { idempotencyKey: key(), items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" },
      h,
    );
    const id = (placed.json.order as { id: string }).id;
    await sys.settle(id, "dora");
    await sys.paymentChaos.setFaults({ faults: { down: true } });
    try {
      const d = await call("shopmesh.gateway.v1.GatewayService/GetOrderDetails", { orderId: id }, h);
      expect(d.status).toBe(200);
      expect(d.json).toMatchObject({ order: { id }, missing: [{ part: "payment", code: "UNAVAILABLE" }] });
      expect(d.json.payment).toBeUndefined();
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });

  it("fails the whole call when the order itself is not found", async () => {
    const d = await call(
      "shopmesh.gateway.v1.GatewayService/GetOrderDetails",
      { orderId: "ord_nope" },
      await auth("dora"),
    );
    expect(d.status).toBe(404);
    const e = await createConnectClient(OrderService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }))
      .getOrder({ orderId: "ord_nope" }, { headers: await auth("dora") })
      .catch((err: unknown) => ConnectError.from(err));
    expect((e as ConnectError).code).toBe(ConnectCode.NotFound);
  });
});
