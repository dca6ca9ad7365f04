/**
 * A hostile (or careless) HTTP client against the REST routes: odd paths,
 * queries and bodies, Idempotency-Key edge cases, method tricks, slow and
 * vanishing clients, and the same bad input over REST and over Connect.
 *
 * The first describe holds the defects found: each test asserts the correct
 * behaviour and fails until the defect is fixed. The second holds compact
 * checks of behaviour that is right and that gateway/rest-http.test.ts does
 * not already cover.
 */
import { once } from "node:events";
import http from "node:http";
import http2 from "node:http2";
import { gzipSync } from "node:zlib";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import type { Role } from "../platform/identity-rule.js";
import { silentLogger } from "../platform/log.js";
import { type H1Answer, h1Raw, h1Request, h2Request, h2Session, rawConnect } from "../test/raw.js";
import { type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";

let sys: System;
let gw: GatewayApp;
/** Every access line the gateway logged. */
const access: Record<string, unknown>[] = [];
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const auth = async (sub: string, roles: Role[] = ["customer"]) => ({
  authorization: `Bearer ${await signDevToken(claims, sub, roles)}`,
});
const MAX_CALLS_PER_IP = 6;

beforeAll(async () => {
  sys = await startSystem();
  const log = pino(
    { level: "info" },
    {
      write: (s: string) => {
        const line = JSON.parse(s) as Record<string, unknown>;
        if (line.msg === "access") access.push(line);
      },
    },
  );
  gw = await startTestGateway(
    sys,
    {
      MAX_BODY_BYTES: "4096",
      RATE_LIMIT_BURST: "400",
      HTTP_HEADERS_TIMEOUT_MS: "1000",
      HTTP_REQUEST_TIMEOUT_MS: "1500",
      HTTP_STREAM_IDLE_TIMEOUT_MS: "3000",
      HTTP_MAX_CALLS_PER_IP: String(MAX_CALLS_PER_IP),
    },
    log,
  );
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

type Answer = H1Answer;

/** One HTTP/1.1 request with the path sent verbatim, to the gateway unless `url` says otherwise. */
const rest = (
  method: string,
  path: string,
  opts: { headers?: Record<string, string | string[]>; body?: string | Buffer; url?: string } = {},
): Promise<Answer> => h1Request(opts.url ?? gw.url, method, path, opts);

let seq = 0;
const key = () => `hr-${process.pid}-${++seq}`;
const orderBody = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa", ...extra });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Places an order that stays PENDING for about `ms` (the payment step is slowed down). */
async function pendingOrder(headers: Record<string, string>, ms = 2500): Promise<string> {
  await sys.paymentChaos.setFaults({ faults: { latencyMs: ms } });
  const placed = await rest("POST", "/v1/orders", {
    headers: { ...headers, "Idempotency-Key": key() },
    body: orderBody(),
  });
  expect(placed.status).toBe(200);
  return placed.json.id as string;
}

/** Waits until an access line for `procedure` appears after index `from`. */
async function accessLine(from: number, procedure: string, ms = 1500) {
  const deadline = Date.now() + ms;
  for (;;) {
    const line = access.slice(from).find((l) => String(l.procedure).endsWith(procedure));
    if (line || Date.now() > deadline) return line;
    await sleep(25);
  }
}

describe("defects", () => {
  it("a REST server stream gets its access line (and RED sample) when it ends, like any other call", async () => {
    const h = await auth("alice");
    const placed = await rest("POST", "/v1/orders", { headers: { ...h, "Idempotency-Key": key() }, body: orderBody() });
    await sys.settle(placed.json.id, "alice");
    const before = access.length;
    const watch = await rest("GET", `/v1/orders/${placed.json.id}:watch`, { headers: h });
    expect(watch.status).toBe(200);
    // The watch is over (one line, CONFIRMED, then the end of the answer): the gateway must say so.
    expect(await accessLine(before, "OrderService/WatchOrder")).toMatchObject({ protocol: "rest", code: "OK" });

    const missing = access.length;
    expect((await rest("GET", "/v1/orders/ord_nope:watch", { headers: h })).status).toBe(404);
    expect(await accessLine(missing, "OrderService/WatchOrder")).toMatchObject({ protocol: "rest", code: "NotFound" });
  });

  it("HEAD on a watch answers at once (405, Allow: GET) instead of hanging until the order settles", async () => {
    const h = await auth("alice");
    const id = await pendingOrder(h);
    try {
      const started = Date.now();
      const outcome = await new Promise<{ status: number; allow: string | undefined } | string>((resolve) => {
        const req = http.request(`${gw.url}/v1/orders/${id}:watch`, { method: "HEAD", headers: h, agent: false });
        const timer = setTimeout(() => {
          req.destroy();
          resolve(`no answer within ${Date.now() - started} ms`);
        }, 1000);
        req.on("response", (res) => {
          clearTimeout(timer);
          res.resume();
          req.destroy();
          resolve({ status: res.statusCode ?? 0, allow: res.headers.allow });
        });
        req.on("error", (err) => {
          clearTimeout(timer);
          resolve(String(err));
        });
        req.end();
      });
      // A stream has no end to describe: HEAD is for answers that do (the unary GET routes).
      expect(outcome).toEqual({ status: 405, allow: "GET" });
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });

  it("a client leaving a server stream is Canceled on every protocol, not Aborted (a conflict's code)", async () => {
    const h = await auth("alice");
    const id = await pendingOrder(h, 5000);
    const json = Buffer.from(JSON.stringify({ orderId: id }));
    const proto = Buffer.concat([Buffer.from([0x0a, id.length]), Buffer.from(id)]);
    const envelope = (m: Buffer) => Buffer.concat([Buffer.from([0, 0, 0, 0, m.length]), m]);
    const watch = "/shopmesh.order.v1.OrderService/WatchOrder";
    try {
      for (const [name, type, body, h2] of [
        ["connect+json", "application/connect+json", json, false],
        ["connect+proto", "application/connect+proto", proto, false],
        ["grpc-web", "application/grpc-web+proto", proto, false],
        ["connect+json over h2c", "application/connect+json", json, true],
        ["grpc-web over h2c", "application/grpc-web+proto", proto, true],
      ] as const) {
        const requestId = `leave-${key()}`;
        const headers = { ...h, "content-type": type, "x-request-id": requestId };
        if (h2) {
          const session = http2.connect(gw.url);
          session.on("error", () => {});
          const stream = session.request({ ":method": "POST", ":path": watch, ...headers });
          stream.on("error", () => {});
          stream.resume();
          stream.end(envelope(body));
          await once(stream, "response");
          stream.close(http2.constants.NGHTTP2_CANCEL);
          session.close();
        } else {
          const req = http.request(`${gw.url}${watch}`, { method: "POST", headers, agent: false });
          req.on("error", () => {});
          req.end(envelope(body));
          const [res] = (await once(req, "response")) as [http.IncomingMessage];
          res.resume();
          req.destroy();
        }
        await expect
          .poll(() => access.find((l) => l.request_id === requestId), { message: name })
          .toMatchObject({ procedure: expect.stringMatching(/WatchOrder$/), code: "Canceled" });
      }
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });

  it("one principal holds at most HTTP_MAX_STREAMS_PER_PRINCIPAL watches, from any address; another is not held back", async () => {
    const h = await auth("alice");
    const id = await pendingOrder(h, 5000);
    const capped = await startTestGateway(sys, { HTTP_MAX_STREAMS_PER_PRINCIPAL: "3" }, silentLogger());
    const open: http.ClientRequest[] = [];
    /** Starts a watch of `id` as `headers`; its status once the answer begins. */
    const watch = async (headers: Record<string, string>) => {
      const req = http.request(`${capped.url}/v1/orders/${id}:watch`, { headers, agent: false });
      req.on("error", () => {});
      req.end();
      open.push(req);
      const [res] = (await once(req, "response")) as [http.IncomingMessage];
      let body = "";
      res.on("data", (c: Buffer) => {
        body += c.toString();
      });
      if (res.statusCode !== 200) await once(res, "end");
      return { status: res.statusCode, retryAfter: res.headers["retry-after"], body: () => body };
    };
    try {
      for (let i = 0; i < 3; i++) expect((await watch(h)).status).toBe(200);
      const refused = await watch(h);
      expect({ status: refused.status, retryAfter: refused.retryAfter }).toEqual({ status: 429, retryAfter: "1" });
      expect(refused.body()).toContain("too many streams in progress (principal)");
      // Another customer is not held back by alice's watches (the order is not theirs to see).
      expect((await watch(await auth("bob"))).status).toBe(404);
      // A watch that ends gives its slot back.
      open[0]?.destroy();
      await expect.poll(async () => (await watch(h)).status, { timeout: 5_000 }).toBe(200);
    } finally {
      for (const req of open) req.destroy();
      await sys.paymentChaos.setFaults({ faults: {} });
      await capped.stop();
    }
  });

  it("a watch shed by the upstream is 429 with Retry-After, as a shed unary call is, not 413", async () => {
    const h = await auth("alice");
    const placed = await rest("POST", "/v1/orders", { headers: { ...h, "Idempotency-Key": key() }, body: orderBody() });
    await sys.settle(placed.json.id, "alice");
    // A gateway of its own: the injected failures must not open the main gateway's breakers.
    const shed = await startTestGateway(sys, {}, silentLogger());
    const channel = createChannel(sys.order.address);
    const orderChaos = createClient(ChaosService, channel);
    try {
      await orderChaos.setFaults({ faults: { errorRate: 1, errorCode: 8 } }); // RESOURCE_EXHAUSTED
      const watch = await rest("GET", `/v1/orders/${placed.json.id}:watch`, { headers: h, url: shed.url });
      const unary = await rest("GET", `/v1/orders/${placed.json.id}`, { headers: h, url: shed.url });
      expect(unary.status).toBe(429);
      expect(unary.headers["retry-after"]).toBeDefined();
      expect({ status: watch.status, retryAfter: watch.headers["retry-after"] }).toEqual({
        status: 429,
        retryAfter: expect.any(String),
      });
    } finally {
      await orderChaos.setFaults({ faults: {} });
      channel.close();
      await shed.stop();
    }
  });

  it("the query is everything after the first '?': a '?' inside it does not cut the rest off", async () => {
    const h = await auth("alice");
    // page_size is "1?page_size=junk", not 1 with the rest silently dropped.
    const r = await rest("GET", "/v1/products?page_size=1?page_size=junk", { headers: h });
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ code: 3, message: expect.stringContaining("page_size") });
  });

  it.each([
    ["the same name twice", "/v1/products?page_size=1&page_size=2"],
    ["the proto and the JSON name", "/v1/products?page_size=1&pageSize=3"],
  ])("a singular field given twice in the query (%s) is 400, not 'the last one wins'", async (_what, path) => {
    const r = await rest("GET", path, { headers: await auth("alice") });
    expect(r.status).toBe(400);
    expect(r.json).toMatchObject({ code: 3, message: expect.stringMatching(/page_?[sS]ize/) });
  });

  it("a REST query is not checked as a Connect GET: `base64=1&message=...` is 400 naming the unknown field", async () => {
    const r = await rest("GET", "/v1/products?base64=1&message=!!!", { headers: await auth("alice") });
    // Today: "the message query parameter is not valid base64" (refusal() in dispatch.ts reads every GET as Connect's).
    expect(r).toMatchObject({ status: 400, json: { code: 3, message: expect.stringContaining("is not a field") } });
  });

  it("malformed percent-encoding in a path variable is 400 naming the field, not 404 'no route'", async () => {
    const h = await auth("alice");
    for (const path of ["/v1/products/%E0%A4%A", "/v1/products/%ED%A0%80", "/v1/products/%"]) {
      const r = await rest("GET", path, { headers: h });
      expect({ path, status: r.status, code: r.json?.code }).toEqual({ path, status: 400, code: 3 });
      expect(r.json.message).toContain("product_id");
    }
  });

  it("a Host that is not one host[:port] is 400 on every path (RFC 9112 §3.2), not served nor 500", async () => {
    const { authorization } = await auth("alice");
    // Two Host lines (Node keeps the first, a proxy in front may read the last), userinfo, a space.
    for (const host of [
      "host: a b",
      "host: a@b:80",
      "host: localhost\r\nhost: b",
      "host: localhost\r\nHost: localhost",
    ])
      for (const [target, extra] of [
        ["/v1/products", ""],
        [
          "/shopmesh.inventory.v1.InventoryService/ListProducts",
          "content-type: application/json\r\ncontent-length: 2\r\n",
        ],
        ["/openapi.json", ""],
      ] as const) {
        const body = extra ? "{}" : "";
        const r = await h1Raw(
          gw.port,
          `${extra ? "POST" : "GET"} ${target} HTTP/1.1\r\n${host}\r\nauthorization: ${authorization}\r\n${extra}connection: close\r\n\r\n${body}`,
        );
        expect({ host, target, status: r.status }).toEqual({ host, target, status: 400 });
      }
    const ok = await h1Raw(
      gw.port,
      `GET /v1/products HTTP/1.1\r\nhost: [::1]:8080\r\nauthorization: ${authorization}\r\nconnection: close\r\n\r\n`,
    );
    expect(ok.status).toBe(200);
    // HTTP/2: an :authority with userinfo, or a Host naming another authority (RFC 9113 §8.3.1).
    await using session = await h2Session(gw.url);
    for (const extra of [
      { ":authority": "u@localhost" },
      { ":authority": `localhost:${gw.port}`, host: "elsewhere" },
    ]) {
      // Node 24's nghttp2 refuses the userinfo itself, as RFC 9113 §8.1.1 has a malformed request refused:
      // the stream reset PROTOCOL_ERROR before the gateway sees it. Either way, not served.
      const status = await h2Request(session, { ":method": "GET", ":path": "/v1/products", authorization, ...extra })
        .then((r) => r.status)
        .catch((err: Error) => (/NGHTTP2_PROTOCOL_ERROR/.test(err.message) ? 400 : err.message));
      expect({ extra, status }).toEqual({ extra, status: 400 });
    }
    const fine = await h2Request(session, { ":method": "GET", ":path": "/v1/products", authorization });
    expect(fine.status).toBe(200);
  });

  it("with the public development key, a Host that is not a loopback name is 400 on every path: a DNS-rebinding page gets nothing, not even a token", async () => {
    const { authorization } = await auth("alice");
    const get = (host: string, target: string) =>
      h1Raw(
        gw.port,
        `GET ${target} HTTP/1.1\r\nhost: ${host}\r\nauthorization: ${authorization}\r\nconnection: close\r\n\r\n`,
      );
    const signIn = (host: string) =>
      h1Raw(
        gw.port,
        `POST /dev/token HTTP/1.1\r\nhost: ${host}\r\ncontent-type: application/json\r\ncontent-length: 19\r\nconnection: close\r\n\r\n{"user":"operator"}`,
      );
    for (const host of ["evil.example:8080", "evil.example", "127.0.0.1.evil.example", "localhost.evil.example:80"]) {
      for (const target of ["/v1/products", "/openapi.json"]) {
        const r = await get(host, target);
        expect({ host, target, status: r.status }).toEqual({ host, target, status: 400 });
      }
      const connect = await h1Raw(
        gw.port,
        `POST /shopmesh.inventory.v1.InventoryService/ListProducts HTTP/1.1\r\nhost: ${host}\r\nauthorization: ${authorization}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}`,
      );
      expect({ host, status: connect.status }).toEqual({ host, status: 400 });
      const token = await signIn(host);
      expect({ host, status: token.status }).toEqual({ host, status: 400 });
      expect(token.raw).toContain("answers only requests to localhost, 127.0.0.1 or [::1]");
      expect(token.raw).not.toContain('token"');
    }
    for (const host of ["localhost:8080", "LOCALHOST", "127.0.0.1", "127.0.0.2:1", "[::1]", "shop.localhost:8080"]) {
      expect({ host, status: (await get(host, "/v1/products")).status }).toEqual({ host, status: 200 });
      expect({ host, status: (await signIn(host)).status }).toEqual({ host, status: 200 });
    }
    await using session = await h2Session(gw.url);
    const r = await h2Request(session, {
      ":method": "GET",
      ":path": "/v1/products",
      ":authority": "evil.example:8080",
      authorization,
    });
    expect(r.status).toBe(400);
  });

  it("a JSON body that starts with a byte order mark gets the same answer over REST as over Connect", async () => {
    const h = await auth("alice");
    const bom = Buffer.from([0xef, 0xbb, 0xbf]);
    const connect = await rest("POST", "/shopmesh.order.v1.OrderService/PlaceOrder", {
      headers: { ...h, "content-type": "application/json" },
      body: Buffer.concat([bom, Buffer.from(orderBody({ idempotencyKey: key() }))]),
    });
    const viaRest = await rest("POST", "/v1/orders", {
      headers: { ...h, "Idempotency-Key": key() },
      body: Buffer.concat([bom, Buffer.from(orderBody())]),
    });
    expect(connect.status).toBe(200);
    expect(viaRest.status).toBe(connect.status);
  });

  it("a gzip body (Content-Encoding: gzip) is decompressed as over Connect, or refused 415 — not 'not valid JSON'", async () => {
    const h = await auth("alice");
    const gz = (s: string) => gzipSync(Buffer.from(s));
    const connect = await rest("POST", "/shopmesh.order.v1.OrderService/PlaceOrder", {
      headers: { ...h, "content-type": "application/json", "content-encoding": "gzip" },
      body: gz(orderBody({ idempotencyKey: key() })),
    });
    expect(connect.status).toBe(200);
    const viaRest = await rest("POST", "/v1/orders", {
      headers: { ...h, "Idempotency-Key": key(), "content-encoding": "gzip" },
      body: gz(orderBody()),
    });
    expect([200, 415]).toContain(viaRest.status);
  });

  it("a body that is not UTF-8 is 400, not stored with U+FFFD in place of the client's bytes", async () => {
    const h = await auth("alice");
    try {
      const id = await pendingOrder(h);
      // "José" in Latin-1: 0xE9 is not UTF-8.
      const body = Buffer.concat([Buffer.from('{"reason":"Jos'), Buffer.from([0xe9]), Buffer.from('"}')]);
      const r = await rest("POST", `/v1/orders/${id}:cancel`, { headers: h, body });
      const stored = await rest("GET", `/v1/orders/${id}`, { headers: h });
      expect({ status: r.status, code: r.json?.code }).toEqual({ status: 400, code: 3 });
      expect(stored.json.statusReason ?? "").not.toContain("\uFFFD");
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });

  it("an Idempotency-Key header and another key in the body under its proto name is 400, whatever else the body says", async () => {
    const h = await auth("alice");
    const header = key();
    // Without `"idempotencyKey": ""` this is refused ("the header and the body disagree"); with it, accepted.
    const r = await rest("POST", "/v1/orders", {
      headers: { ...h, "Idempotency-Key": header },
      body: orderBody({ idempotencyKey: "", idempotency_key: "someone-elses-key" }),
    });
    expect(r.status).toBe(400);
    expect(r.json.message).toContain("idempotency_key");
  });

  it("a percent-encoded literal segment is routed the same way wherever it stands", async () => {
    const h = await auth("alice");
    const first = await rest("GET", "/%76%31/products", { headers: h }); // "v1" encoded
    const second = await rest("GET", "/v1/%70roducts", { headers: h }); // "products" encoded
    // Literals are matched as sent: both are the REST namespace's 404 (a proxy routing on the raw
    // path and the gateway read it the same way).
    expect(first.status).toBe(second.status);
    if (first.status !== 200) expect(typeof first.json?.code).toBe("number");
  });
});

describe("behaviour that is right", () => {
  it("query values: overflow, floats, NaN, empty and unknown names are 400 naming the parameter", async () => {
    const h = await auth("alice");
    for (const [query, name] of [
      ["page_size=99999999999999999999", "page_size"],
      ["page_size=-1", "page_size"],
      ["page_size=1.5", "page_size"],
      ["page_size=NaN", "page_size"],
      ["page_size=", "page_size"],
      ["page_size", "page_size"],
      ["page_size.x=1", "page_size.x"],
      ["__proto__=1", "__proto__"],
      ["constructor.prototype=1", "constructor.prototype"],
      ["customerId=bob", "customerId"],
    ]) {
      const r = await rest("GET", `/v1/products?${query}`, { headers: h });
      expect({ query, status: r.status, code: r.json?.code }).toEqual({ query, status: 400, code: 3 });
      expect(r.json.message, query).toContain(name);
    }
    // Path and query both naming the payment: refused by the service, naming the field.
    const both = await rest("GET", "/v1/payments/pay_x?order_id=ord_y", { headers: h });
    expect(both).toMatchObject({ status: 400, json: { code: 3, message: expect.stringContaining("payment_id") } });
  });

  it("bodies: huge numbers, deep nesting, __proto__, a second copy of a path field, identity fields", async () => {
    const h = await auth("alice");
    const post = (body: string, path = "/v1/orders") =>
      rest("POST", path, { headers: { ...h, "Idempotency-Key": key() }, body });
    for (const [body, says] of [
      ['{"items":[{"productId":"coffee-beans","quantity":1e400}],"cardToken":"tok_visa"}', "quantity"],
      ['{"items":[{"productId":"coffee-beans","quantity":2147483648}],"cardToken":"tok_visa"}', "quantity"],
      [`{"items":${"[".repeat(1500)}${"]".repeat(1500)}}`, "LineItem"],
      // An element that is not an object is named by its field (it was "LineItem: 1").
      ['{"items":[1],"cardToken":"tok_visa"}', "items: each element must be a LineItem object, got 1"],
      ['{"items":[[]],"cardToken":"tok_visa"}', "items: each element must be a LineItem object"],
      [orderBody().replace('"cardToken"', '"__proto__":{"admin":true},"cardToken"'), "__proto__"],
      [orderBody({ customerId: "bob" }), "customerId"],
    ] as const) {
      const r = await post(body);
      expect({ says, status: r.status, code: r.json?.code }).toEqual({ says, status: 400, code: 3 });
      expect(r.json.message).toContain(says);
    }
    for (const body of ['{"order_id":"B"}', '{"orderId":"A","order_id":"B"}']) {
      const r = await post(body, "/v1/orders/A:cancel");
      expect(r, body).toMatchObject({ status: 400, json: { code: 3, message: expect.stringContaining("order_id") } });
    }
    // A body on a route without one, even a JSON "{}".
    const get = await rest("GET", "/v1/products/coffee-beans", { headers: h, body: "{}" });
    expect(get).toMatchObject({ status: 400, json: { code: 3 } });
  });

  it("Connect JSON names the field as REST does, on the fast path and the general one (it said `cannot decode message shopmesh.common.v1.LineItem from JSON: 1`)", async () => {
    const h = await auth("alice");
    const url = `${gw.url}/shopmesh.order.v1.OrderService/PlaceOrder`;
    for (const [body, field, says] of [
      ['{"items":[1],"cardToken":"tok_visa"}', "items", "items: each element must be a LineItem object, got 1"],
      [
        '{"items":[{"productId":"coffee-beans","quantity":"a"}],"cardToken":"tok_visa"}',
        "items.quantity",
        'items.quantity: expected number (int32), got "a"',
      ],
      ['{"cardToken":5}', "card_token", "card_token: expected string, got 5"],
    ] as const) {
      for (const gzip of [false, true]) {
        const r = await fetch(url, {
          method: "POST",
          headers: { ...h, "content-type": "application/json", ...(gzip ? { "content-encoding": "gzip" } : {}) },
          body: gzip ? gzipSync(body) : body,
        });
        expect({ body, gzip, status: r.status, json: await r.json() }).toEqual({
          body,
          gzip,
          status: 400,
          json: {
            code: "invalid_argument",
            message: says,
            details: [
              expect.objectContaining({
                type: "google.rpc.BadRequest",
                debug: { fieldViolations: [{ field, description: says.slice(field.length + 2) }] },
              }),
            ],
          },
        });
      }
    }
  });

  it("identity comes from the token only: identity headers and body fields are not the caller", async () => {
    const alice = await auth("alice");
    const forged = { ...alice, "x-shopmesh-subject": "bob", "x-shopmesh-roles": "admin" };
    const restock = await rest("POST", "/v1/products/paper-filters:restock", {
      headers: { ...forged, "Idempotency-Key": key() },
      body: '{"quantity":1}',
    });
    expect(restock).toMatchObject({ status: 403, json: { code: 7 } });
    const placed = await rest("POST", "/v1/orders", {
      headers: { ...forged, "Idempotency-Key": key() },
      body: orderBody(),
    });
    expect(placed.json.customerId).toBe("alice");
    // Internal RPCs have no route, whatever the method.
    for (const [method, path] of [
      ["POST", "/v1/reservations"],
      ["GET", "/v1/payments/x:refund"],
      ["POST", "/v1/payments"],
    ] as const) {
      expect([404, 405], path).toContain((await rest(method, path, { headers: alice })).status);
    }
  });

  it("Idempotency-Key: empty, 10 KB, non-ASCII or repeated is 400 naming idempotency_key; on a GET it is ignored", async () => {
    const h = await auth("alice");
    // "ключ" as its UTF-8 bytes on the wire.
    for (const value of ["", "k".repeat(10_000), Buffer.from("ключ").toString("latin1"), ["dup-a", "dup-b"]]) {
      const r = await rest("POST", "/v1/orders", { headers: { ...h, "Idempotency-Key": value }, body: orderBody() });
      expect(r.status).toBe(400);
      expect(r.json.details[0].fieldViolations[0].field).toBe("idempotency_key");
    }
    expect((await rest("GET", "/v1/products/coffee-beans", { headers: { ...h, "Idempotency-Key": "x" } })).status).toBe(
      200,
    );
  });

  it("a query or path value refused by the transcoder names its field in the details too, as a service does", async () => {
    const h = await auth("alice");
    for (const [path, field] of [
      ["/v1/orders?bogus=1", "bogus"],
      ["/v1/orders?page_size=1&page_size=2", "page_size"],
      ["/v1/orders?page_size.x=1", "page_size.x"],
    ] as const) {
      const r = await rest("GET", path, { headers: h });
      expect({ path, status: r.status }).toEqual({ path, status: 400 });
      expect(r.json.details?.[0]?.fieldViolations?.[0]?.field, path).toBe(field);
    }
  });

  it("method tricks and odd paths: no override, 405 with Allow, 404 for slashes, 400 for ids that are no ids", async () => {
    const h = await auth("alice");
    const override = await rest("POST", "/v1/orders/ord_1", { headers: { ...h, "X-HTTP-Method-Override": "GET" } });
    expect(override).toMatchObject({ status: 405, headers: { allow: "GET, HEAD" } });
    const options = await rest("OPTIONS", "/v1/orders", { headers: h });
    expect(options).toMatchObject({ status: 405, headers: { allow: "POST, GET, HEAD" } });
    const preflight = await rest("OPTIONS", "/v1/orders", {
      headers: { origin: "http://localhost:3000", "access-control-request-method": "POST" },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers["access-control-allow-headers"]).toContain("idempotency-key");
    expect((await rest("POST", "/v1/orders/x:watch", { headers: h })).headers.allow).toBe("GET");
    for (const path of [
      "/v1/products/",
      "/v1/products/coffee-beans/",
      "/v1/orders/../products",
      "/V1/products",
      "/v1/products:restock",
      "/v1/orders:watch",
    ]) {
      expect((await rest("GET", path, { headers: h })).status, path).toBe(404);
    }
    for (const path of ["/v1/orders/..", "/v1/orders/a%2Fb/details", "/v1/orders/a%00b"]) {
      const r = await rest("GET", path, { headers: h });
      expect(r, path).toMatchObject({ status: 400, json: { code: 3, message: expect.stringContaining("order_id") } });
    }
  });

  it("a REST body that never finishes is cut at the request timeout and gives its call slot back", async () => {
    const { authorization } = await auth("alice");
    const slow = await Promise.all(
      Array.from({ length: MAX_CALLS_PER_IP }, async (_, i) => {
        const c = await rawConnect(gw.port);
        await c.write(
          `POST /v1/orders HTTP/1.1\r\nhost: localhost\r\nauthorization: ${authorization}\r\nidempotency-key: slow-${i}\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{"ite\r\n`,
        );
        return c;
      }),
    );
    await sleep(100);
    const h = { authorization };
    expect((await rest("GET", "/v1/products?page_size=1", { headers: h })).status).toBe(429);
    const cut = await Promise.race([Promise.all(slow.map((c) => c.closed)), sleep(5000).then(() => "held")]);
    expect(cut).not.toBe("held");
    expect((await rest("GET", "/v1/products?page_size=1", { headers: h })).status).toBe(200);
  });

  it("a watcher that goes away mid-stream ends the upstream watch", async () => {
    const h = await auth("alice");
    try {
      const id = await pendingOrder(h);
      type Feed = { events: { listenerCount(e: string): number } };
      const events = (sys.order.store as unknown as { changes: Feed }).changes.events;
      const before = events.listenerCount(`change:${id}`);
      const abort = new AbortController();
      const res = await fetch(`${gw.url}/v1/orders/${id}:watch`, { headers: h, signal: abort.signal });
      const reader = res.body?.getReader();
      await reader?.read(); // the current state
      expect(events.listenerCount(`change:${id}`)).toBe(before + 1);
      abort.abort();
      const deadline = Date.now() + 2000;
      while (events.listenerCount(`change:${id}`) > before && Date.now() < deadline) await sleep(25);
      expect(events.listenerCount(`change:${id}`)).toBe(before);
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });

  it("a client that leaves right after its POST: the retry with the same key is the one order", async () => {
    const who = `gone-${process.pid}`;
    const h = await auth(who);
    const k = key();
    await new Promise<void>((resolve) => {
      const req = http.request(`${gw.url}/v1/orders`, {
        method: "POST",
        headers: { ...h, "Idempotency-Key": k },
        agent: false,
      });
      req.on("error", () => resolve());
      req.end(orderBody(), () => {
        req.destroy();
        resolve();
      });
    });
    await sleep(200);
    const retry = await rest("POST", "/v1/orders", { headers: { ...h, "Idempotency-Key": k }, body: orderBody() });
    expect(retry.status).toBe(200);
    const mine = await rest("GET", "/v1/orders", { headers: h });
    expect(mine.json.orders.map((o: { id: string }) => o.id)).toEqual([retry.json.id]);
  });

  it("the request id: echoed, logged with protocol rest; a malformed one is replaced", async () => {
    const h = await auth("alice");
    const before = access.length;
    const ok = await rest("GET", "/v1/products?page_size=1", { headers: { ...h, "x-request-id": "hostile-rest-1" } });
    expect(ok.headers["x-request-id"]).toBe("hostile-rest-1");
    expect(await accessLine(before, "InventoryService/ListProducts")).toMatchObject({
      protocol: "rest",
      code: "OK",
      principal: "alice",
      request_id: "hostile-rest-1",
    });
    const bad = await rest("GET", "/v1/products?page_size=1", { headers: { ...h, "x-request-id": "a b\u00e9" } });
    expect(bad.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
  });
});
