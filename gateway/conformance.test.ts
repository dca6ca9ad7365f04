/**
 * The reference cases of the protocols, translated onto shopmesh's own
 * methods and checked on the wire: connectrpc/conformance's server suites
 * (internal/app/connectconformance/testsuites/data/*.yaml: "Unexpected
 * Requests", "Connect/gRPC/gRPC-Web Unexpected Requests", "Proto
 * Sub-Format Requests", "Connect with GET", "Timeouts"), and the client
 * suites' view of what the gateway answers (a conforming client refuses an
 * answer whose codec is not the one it asked for: "unexpected-codec",
 * "unexpected-stream-codec" → INTERNAL). Where shopmesh answers otherwise on
 * purpose (INVALID_ARGUMENT, not INTERNAL or UNIMPLEMENTED, for a malformed
 * request; 415 for an unknown compression) docs/security.md says so and the
 * case asserts shopmesh's answer. Real gateway, real services.
 */
import http from "node:http";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetProductRequestSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService, WatchOrderRequestSchema } from "../gen/shopmesh/order/v1/order_pb.js";
import { connectEndStream, envelope, grpcWebTrailers, h2Request, h2Session } from "../test/raw.js";
import { type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";

let sys: System;
let gw: GatewayApp;
let auth: { authorization: string };
let orderId: string;
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };

const GET_PRODUCT = "/shopmesh.inventory.v1.InventoryService/GetProduct";
const WATCH_ORDER = "/shopmesh.order.v1.OrderService/WatchOrder";
const PLACE_ORDER = "/shopmesh.order.v1.OrderService/PlaceOrder";
const UNKNOWN = "/connectrpc.conformance.v1.UnknownService/UnknownMethod";

interface Answer {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
}

/** One HTTP/1.1 request on a connection of its own. */
function h1(method: string, path: string, headers: Record<string, string>, body?: Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const all = body ? { "content-length": String(body.length), ...headers } : headers;
    const req = http.request(new URL(path, gw.url), { method, headers: all, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

const productBin = () =>
  Buffer.from(toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: "coffee-beans" })));
const watchBin = () => Buffer.from(toBinary(WatchOrderRequestSchema, create(WatchOrderRequestSchema, { orderId })));

beforeAll(async () => {
  sys = await startSystem();
  const limits = { RATE_LIMIT_RPS: "100000", RATE_LIMIT_BURST: "1000", RATE_LIMIT_IP_RPS: "100000" };
  gw = await startTestGateway(sys, limits);
  auth = { authorization: `Bearer ${await signDevToken(claims, "alice", ["customer"])}` };
  const order = {
    idempotencyKey: "conformance-1",
    items: [{ productId: "coffee-beans", quantity: 1 }],
    cardToken: "tok_visa",
  };
  const placed = await h1(
    "POST",
    PLACE_ORDER,
    { ...auth, "content-type": "application/json" },
    Buffer.from(JSON.stringify(order)),
  );
  orderId = (JSON.parse(placed.body.toString()) as { order: { id: string } }).order.id;
}, 60_000);
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

describe("a refusal answers in the codec the request asked for (client suites: unexpected-codec, unexpected-stream-codec)", () => {
  it("Connect streaming: application/connect+proto in, application/connect+proto out, for every refusal before the handler", async () => {
    const cases = [
      { path: WATCH_ORDER, headers: {}, code: "unauthenticated" }, // no token
      { path: UNKNOWN, headers: auth, code: "unimplemented" },
    ];
    for (const codec of ["proto", "json"]) {
      const body = codec === "proto" ? watchBin() : Buffer.from(JSON.stringify({ orderId }));
      for (const c of cases) {
        const a = await h1(
          "POST",
          c.path,
          { ...c.headers, "content-type": `application/connect+${codec}` },
          envelope(body),
        );
        expect([a.status, a.headers["content-type"]], `${codec} ${c.path}`).toEqual([
          200,
          `application/connect+${codec}`,
        ]);
        // The end-stream message is JSON whatever the codec (Connect protocol: EndStreamResponse).
        expect(a.body[0]).toBe(2);
        expect(connectEndStream(a.body)?.error?.code).toBe(c.code);
      }
    }
    // The same over h2c.
    await using s = await h2Session(gw.url);
    const h2 = await h2Request(
      s,
      { ":path": WATCH_ORDER, "content-type": "application/connect+proto" },
      envelope(watchBin()),
    );
    expect([h2.status, h2.headers["content-type"]]).toEqual([200, "application/connect+proto"]);
  });

  it("a connect-es client in binary mode reads the refusal's code (it read INTERNAL 'unsupported content type')", async () => {
    for (const httpVersion of ["1.1", "2"] as const) {
      const client = createClient(
        OrderService,
        createConnectTransport({ baseUrl: gw.url, httpVersion, useBinaryFormat: true }),
      );
      const err = await (async () => {
        for await (const _ of client.watchOrder({ orderId })) {
          // no token: nothing arrives
        }
      })().then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect([err?.code, err?.rawMessage], httpVersion).toEqual([
        Code.Unauthenticated,
        "authentication required: a valid bearer token",
      ]);
    }
  });

  it("gRPC and gRPC-Web: a +json request's refusal is +json, as its answer is", async () => {
    const json = Buffer.from(JSON.stringify({ productId: "coffee-beans" }));
    await using s = await h2Session(gw.url);
    for (const protocol of ["grpc", "grpc-web"]) {
      const type = `application/${protocol}+json`;
      const served = await h2Request(
        s,
        { ":path": GET_PRODUCT, "content-type": type, te: "trailers", ...auth },
        envelope(json),
      );
      expect(served.headers["content-type"], `${protocol} served`).toBe(type);
      for (const [path, headers, code] of [
        [GET_PRODUCT, {}, "16"],
        [UNKNOWN, auth, "12"],
      ] as const) {
        const a = await h2Request(
          s,
          { ":path": path, "content-type": type, te: "trailers", ...headers },
          envelope(json),
        );
        expect([a.status, a.headers["content-type"], a.headers["grpc-status"]], `${protocol} ${path}`).toEqual([
          200,
          type,
          code,
        ]);
      }
    }
  });
});

/** The status a gRPC or gRPC-Web answer ends with: from its trailers, its headers (trailers-only) or its body's trailer frame. */
function grpcOutcome(a: {
  status: number;
  headers: Record<string, unknown>;
  trailers?: Record<string, unknown>;
  body: Buffer;
}) {
  const status = a.trailers?.["grpc-status"] ?? a.headers["grpc-status"] ?? grpcWebTrailers(a.body)["grpc-status"];
  return status === undefined ? `HTTP ${a.status}` : `${a.status} grpc-status ${String(status)}`;
}

describe("the server suites' unexpected requests, on GetProduct (unary) and WatchOrder (server stream)", () => {
  // [suite case, method path, HTTP method, content type, extra headers, body, what shopmesh answers]
  type Case = readonly [string, string, string, string, Record<string, string>, () => Buffer, string];
  const two = (b: () => Buffer) => () => Buffer.concat([envelope(b()), envelope(b())]);
  const none = () => Buffer.alloc(0);
  const enveloped =
    (b: () => Buffer, flags = 0) =>
    () =>
      envelope(b(), flags);

  it("Connect (connect_server_unexpected.yaml, server_unexpected.yaml)", async () => {
    const proto = "application/proto";
    const stream = "application/connect+proto";
    const cases: Case[] = [
      ["unexpected-content-type", GET_PRODUCT, "POST", "image/jpeg", {}, () => Buffer.from("12345678"), "415"],
      ["unexpected-verb", GET_PRODUCT, "DELETE", proto, {}, productBin, "405"],
      ["unexpected-uri", UNKNOWN, "POST", proto, {}, productBin, "404 unimplemented"],
      ["unexpected-codec", GET_PRODUCT, "POST", "application/foo", {}, productBin, "415"],
      // Suite: UNIMPLEMENTED (the body's code); shopmesh answers it with 415 (docs/security.md).
      [
        "unexpected-compression",
        GET_PRODUCT,
        "POST",
        proto,
        { "content-encoding": "foo" },
        productBin,
        "415 unimplemented",
      ],
      // Suite: UNIMPLEMENTED and INTERNAL; through the gateway a malformed request is INVALID_ARGUMENT (docs/security.md).
      ["server-stream/no-request", WATCH_ORDER, "POST", stream, {}, none, "200 invalid_argument"],
      ["server-stream/multiple-requests", WATCH_ORDER, "POST", stream, {}, two(watchBin), "200 invalid_argument"],
      [
        "unexpected-compressed-message",
        WATCH_ORDER,
        "POST",
        stream,
        { "connect-content-encoding": "identity" },
        enveloped(watchBin, 1),
        "200 invalid_argument",
      ],
    ];
    for (const [name, path, method, type, extra, body, expected] of cases) {
      const a = await h1(
        method,
        path,
        { ...auth, "content-type": type, "connect-protocol-version": "1", ...extra },
        body(),
      );
      const text = a.body.toString("utf8");
      const code =
        a.headers["content-type"] === stream
          ? connectEndStream(a.body)?.error?.code
          : text
            ? (JSON.parse(text) as { code: string }).code
            : "";
      expect(`${a.status} ${code}`.trim(), name).toBe(expected);
      if (code) expect(a.headers["content-type"], name).toBe(type === stream ? stream : "application/json");
    }
  });

  it("gRPC over h2c and gRPC-Web over HTTP/1.1 (grpc_server_unexpected.yaml, grpc_web_server_unexpected.yaml, *_proto_subformat.yaml)", async () => {
    await using s = await h2Session(gw.url);
    for (const protocol of ["grpc", "grpc-web"] as const) {
      const type = `application/${protocol}`;
      const cases: Case[] = [
        ["with-proto-sub-format", GET_PRODUCT, "POST", `${type}+proto`, {}, enveloped(productBin), "200 grpc-status 0"],
        ["without-proto-sub-format", GET_PRODUCT, "POST", type, {}, enveloped(productBin), "200 grpc-status 0"],
        // Suite: UNKNOWN, INTERNAL or UNIMPLEMENTED; a client reads 405 and 415 as UNKNOWN (http-grpc-status-mapping.md).
        ["unexpected-verb", GET_PRODUCT, "DELETE", type, {}, enveloped(productBin), "HTTP 405"],
        ["unexpected-codec", GET_PRODUCT, "POST", `${type}+foo`, {}, enveloped(productBin), "HTTP 415"],
        ["unexpected-uri", UNKNOWN, "POST", type, {}, enveloped(productBin), "200 grpc-status 12"],
        [
          "unexpected-compression",
          GET_PRODUCT,
          "POST",
          type,
          { "grpc-encoding": "foo" },
          enveloped(productBin),
          "200 grpc-status 12",
        ],
        // Suite: UNIMPLEMENTED and INTERNAL; INVALID_ARGUMENT through the gateway (docs/security.md).
        ["unary/no-request", GET_PRODUCT, "POST", type, {}, none, "200 grpc-status 3"],
        ["unary/multiple-requests", GET_PRODUCT, "POST", type, {}, two(productBin), "200 grpc-status 3"],
        ["server-stream/no-request", WATCH_ORDER, "POST", type, {}, none, "200 grpc-status 3"],
        ["server-stream/multiple-requests", WATCH_ORDER, "POST", type, {}, two(watchBin), "200 grpc-status 3"],
        [
          "unexpected-compressed-message",
          GET_PRODUCT,
          "POST",
          `${type}+proto`,
          { "grpc-encoding": "identity" },
          enveloped(productBin, 1),
          "200 grpc-status 3",
        ],
      ];
      for (const [name, path, method, contentType, extra, body, expected] of cases) {
        const headers = { ...auth, "content-type": contentType, ...extra };
        const a: Parameters<typeof grpcOutcome>[0] =
          protocol === "grpc"
            ? await h2Request(s, { ":method": method, ":path": path, te: "trailers", ...headers }, body())
            : await h1(method, path, headers, body());
        expect(grpcOutcome(a), `${protocol} ${name}`).toBe(expected);
        if (name === "unexpected-compression") {
          // gRPC compression.md: the refusal lists what the server takes.
          const accept = a.trailers?.["grpc-accept-encoding"] ?? grpcWebTrailers(a.body)["grpc-accept-encoding"];
          expect(accept, protocol).toBe("gzip,br");
        }
      }
    }
  });
});

describe("a request message's flags (PROTOCOL-HTTP2.md: Compressed-Flag → 0 / 1; grpc-go and grpc-java refuse others)", () => {
  it("a message flagged other than 0 or 1 is refused on every path and protocol, not served as if it were 0", async () => {
    await using s = await h2Session(gw.url);
    for (const flags of [0x02, 0x80]) {
      const hex = `0x${flags.toString(16).padStart(2, "0")}`;
      // The gRPC passthrough; the general path (a declared request compression takes it there); gRPC-Web.
      const grpc = { ":path": GET_PRODUCT, "content-type": "application/grpc", te: "trailers", ...auth };
      const fast = await h2Request(s, grpc, envelope(productBin(), flags));
      const general = await h2Request(s, { ...grpc, "grpc-encoding": "gzip" }, envelope(productBin(), flags));
      const web = await h1(
        "POST",
        GET_PRODUCT,
        { ...auth, "content-type": "application/grpc-web+proto" },
        envelope(productBin(), flags),
      );
      for (const [name, a] of [
        ["grpc", fast],
        ["grpc general", general],
        ["grpc-web", web],
      ] as const) {
        expect(grpcOutcome(a), `${name} ${hex}`).toBe("200 grpc-status 3");
      }
      expect(fast.grpcMessage).toBe(`protocol error: the request body holds a message flagged ${hex}, not 0 or 1`);
      expect(general.grpcMessage).toBe(fast.grpcMessage);
    }
    // A Connect stream's request: 0x02 (end of stream) is the server's flag, 0x80 no flag at all.
    for (const flags of [0x02, 0x80]) {
      const a = await h1(
        "POST",
        WATCH_ORDER,
        { ...auth, "content-type": "application/connect+proto" },
        envelope(watchBin(), flags),
      );
      expect(connectEndStream(a.body)?.error?.code, `connect ${flags}`).toBe("invalid_argument");
    }
  });
});

describe("a method an RPC does not take (connect_server_unexpected.yaml unexpected-verb; RFC 9110 §15.5.6)", () => {
  it("is 405 with Allow naming the methods it takes, on every protocol (connect-es sent no Allow)", async () => {
    const cases = [
      ["connect DELETE", "DELETE", GET_PRODUCT, "application/proto", "POST, GET, HEAD"],
      ["connect PUT", "PUT", WATCH_ORDER, "application/connect+proto", "POST"],
      ["grpc-web DELETE", "DELETE", GET_PRODUCT, "application/grpc-web", "POST, GET, HEAD"],
    ] as const;
    for (const [name, method, path, type, allow] of cases) {
      const a = await h1(method, path, { ...auth, "content-type": type }, envelope(productBin()));
      expect([a.status, a.headers.allow], name).toEqual([405, allow]);
    }
    // Connect GET on a method with side effects (only NO_SIDE_EFFECTS methods take GET), or on a stream
    // (the Connect protocol has GET for unary calls only: connect-es said 415, though a GET has no content).
    for (const path of [PLACE_ORDER, WATCH_ORDER]) {
      const get = await h1("GET", `${path}?encoding=json&message=%7B%7D`, auth);
      expect([get.status, get.headers.allow], path).toEqual([405, "POST"]);
    }
    await using s = await h2Session(gw.url);
    const grpc = await h2Request(
      s,
      { ":method": "DELETE", ":path": GET_PRODUCT, "content-type": "application/grpc", ...auth },
      envelope(productBin()),
    );
    expect([grpc.status, grpc.headers.allow]).toEqual([405, "POST, GET, HEAD"]);
  });
});

describe("HEAD where a Connect GET answers (RFC 9110 §9.3.2: GET without the content)", () => {
  it("has the GET's status and headers and no body, over HTTP/1.1 and h2c", async () => {
    const query = `${GET_PRODUCT}?encoding=json&message=${encodeURIComponent('{"productId":"coffee-beans"}')}`;
    const get = await h1("GET", query, auth);
    const head = await h1("HEAD", query, auth);
    expect([head.status, head.headers["content-type"], head.body.length]).toEqual([
      200,
      get.headers["content-type"],
      0,
    ]);
    expect(head.headers["content-length"]).toBe(get.headers["content-length"]);
    await using s = await h2Session(gw.url);
    const h2 = await h2Request(s, { ":method": "HEAD", ":path": query, ...auth });
    expect([h2.status, h2.headers["content-type"], h2.body.length]).toEqual([200, "application/json", 0]);
    // A method with side effects takes no GET, so no HEAD either.
    const place = await h1("HEAD", `${PLACE_ORDER}?encoding=json&message=%7B%7D`, auth);
    expect([place.status, place.headers.allow]).toEqual([405, "POST"]);
  });

  it("refuses what the GET refuses with the GET's status: a message not in base64 (was 500), a field of the wrong type", async () => {
    const cases = [
      `${GET_PRODUCT}?encoding=proto&base64=1&message=%21%21%21`,
      `${GET_PRODUCT}?encoding=json&message=${encodeURIComponent('{"productId":1}')}`,
    ];
    for (const query of cases) {
      const get = await h1("GET", query, auth);
      const head = await h1("HEAD", query, auth);
      expect([head.status, head.body.length], query).toEqual([get.status, 0]);
      expect(get.status, query).toBe(400);
    }
  });
});

describe("a service's own gRPC port (grpc_server_unexpected.yaml, timeouts.yaml), where grpc-js answers", () => {
  const identity = { "x-shopmesh-subject": "alice", "x-shopmesh-roles": "customer" };
  const call = async (headers: Record<string, string>, body: Buffer) => {
    const s = await h2Session(`http://${sys.inventory.address}`);
    try {
      const base = { ":path": GET_PRODUCT, "content-type": "application/grpc", te: "trailers", ...identity };
      return await h2Request(s, { ...base, ...headers }, body);
    } finally {
      await s[Symbol.asyncDispose]();
    }
  };

  it("a deadline already spent (grpc-timeout 0) is DEADLINE_EXCEEDED, as at the gateway, not served without one", async () => {
    // Under a millisecond is spent too: grpc-js reads it as 0 ms (its timer then races the handler).
    for (const t of ["0n", "0m", "0S", "1n", "999999n", "999u"]) {
      expect((await call({ "grpc-timeout": t }, envelope(productBin()))).grpcStatus, t).toBe(4);
    }
    expect((await call({ "grpc-timeout": "1S" }, envelope(productBin()))).grpcStatus).toBe(0);
  });

  it("another method than POST, or a codec other than proto, is refused, not served as a proto POST", async () => {
    const cases = [
      ["unexpected-verb", { ":method": "DELETE" }],
      ["unexpected-codec", { "content-type": "application/grpc+foo" }],
      ["unexpected-codec json", { "content-type": "application/grpc+json" }],
    ] as const;
    for (const [name, headers] of cases) {
      const a = await call(headers, envelope(productBin()));
      // Suite: UNKNOWN, INTERNAL or UNIMPLEMENTED; the method or codec is not implemented here.
      expect([a.status, a.grpcStatus, a.body.length], name).toEqual([200, 12, 0]);
    }
    expect((await call({ "content-type": "application/grpc+proto" }, envelope(productBin()))).grpcStatus).toBe(0);
  });
});
