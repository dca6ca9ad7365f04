/**
 * gRPC-Web's text form (PROTOCOL-WEB.md: `application/grpc-web-text`, base64 both ways), which
 * Google's grpc-web client uses by default and needs for server streaming, through a real gateway
 * in front of the real services: answers, streams as they happen, request bodies cut anywhere,
 * and every refusal as gRPC-Web binary gets it. The checklist is Envoy's grpc_web filter tests.
 */
import http from "node:http";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetProductRequestSchema, GetProductResponseSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderStatus, WatchOrderRequestSchema, WatchOrderResponseSchema } from "../gen/shopmesh/order/v1/order_pb.js";
import { envelope, grpcWebTrailers, h2Request, h2Session } from "../test/raw.js";
import { capturedLogger, type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";

let sys: System;
let gw: GatewayApp;
let auth: { authorization: string };
const { log, lines } = capturedLogger();
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const MAX_BODY = 4096;

const GET_PRODUCT = "/shopmesh.inventory.v1.InventoryService/GetProduct";
const WATCH_ORDER = "/shopmesh.order.v1.OrderService/WatchOrder";
const PLACE_ORDER = "/shopmesh.order.v1.OrderService/PlaceOrder";
const TEXT = { "content-type": "application/grpc-web-text", accept: "application/grpc-web-text" };
const BINARY = { "content-type": "application/grpc-web+proto" };

const product = (id = "coffee-beans") =>
  envelope(toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId: id })));
const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64");

/** A base64 stream as a client reads it: each 4-character group on its own (padding may end any group). */
function unbase64(text: string): Buffer {
  expect(text.length % 4, "whole 4-character groups").toBe(0);
  const groups: Buffer[] = [];
  for (let at = 0; at < text.length; at += 4) groups.push(Buffer.from(text.slice(at, at + 4), "base64"));
  return Buffer.concat(groups);
}

/** The payloads of the data frames (flag 0) of a gRPC-Web body. */
function dataFrames(body: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at + 5 <= body.length; at += 5 + body.readUInt32BE(at + 1)) {
    if (body[at] === 0) out.push(body.subarray(at + 5, at + 5 + body.readUInt32BE(at + 1)));
  }
  return out;
}

/** The flags of the last frame of a gRPC-Web body. */
function lastFlags(body: Buffer): number | undefined {
  let flags: number | undefined;
  for (let at = 0; at + 5 <= body.length; at += 5 + body.readUInt32BE(at + 1)) flags = body[at];
  return flags;
}

interface Answer {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
  /** The answer's pieces, as each arrived. */
  readonly pieces: string[];
}

/**
 * One HTTP/1.1 POST on a connection of its own. `body` as one buffer (with its length declared) or as
 * pieces written one at a time, a few ms apart, chunked (so they arrive as separate reads). `onPiece`
 * hears each piece of the answer as it arrives.
 */
function post(
  path: string,
  headers: Record<string, string>,
  body: Buffer | string[],
  onPiece?: (text: string) => void,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const declared = Array.isArray(body) ? {} : { "content-length": String(body.length) };
    const req = http.request(
      new URL(path, gw.url),
      { method: "POST", headers: { ...declared, ...headers }, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        const pieces: string[] = [];
        res.on("data", (c: Buffer) => {
          chunks.push(c);
          pieces.push(c.toString("latin1"));
          onPiece?.(c.toString("latin1"));
        });
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), pieces }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (!Array.isArray(body)) {
      req.end(body);
      return;
    }
    req.flushHeaders();
    req.once("socket", (s) => s.setNoDelay(true));
    void (async () => {
      for (const piece of body) {
        req.write(piece);
        await new Promise((r) => setTimeout(r, 5));
      }
      req.end();
    })();
  });
}

/** A trailer of a gRPC-Web answer: from its trailer frame (decoded from text when it is text), or its headers. */
function trailer(a: Answer, name = "grpc-status"): string | undefined {
  const text = String(a.headers["content-type"] ?? "").startsWith("application/grpc-web-text");
  const body = text ? unbase64(a.body.toString("latin1")) : a.body;
  return grpcWebTrailers(body)[name] ?? (a.headers[name] as string | undefined);
}
const grpcStatus = (a: Answer) => trailer(a);

beforeAll(async () => {
  sys = await startSystem();
  const limits = { RATE_LIMIT_RPS: "100000", RATE_LIMIT_BURST: "1000", RATE_LIMIT_IP_RPS: "100000" };
  gw = await startTestGateway(sys, { ...limits, MAX_BODY_BYTES: String(MAX_BODY) }, log);
  auth = { authorization: `Bearer ${await signDevToken(claims, "alice", ["customer"])}` };
}, 60_000);
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

describe("gRPC-Web text: answers (Envoy grpc_web_filter_test: Unary, text request and text accept)", () => {
  it("answers GetProduct in base64, the message and then grpc-status 0 in the trailer frame", async () => {
    for (const type of ["application/grpc-web-text", "application/grpc-web-text+proto"]) {
      const a = await post(GET_PRODUCT, { ...auth, ...TEXT, "content-type": type }, Buffer.from(b64(product())));
      expect([a.status, a.headers["content-type"]], type).toEqual([200, "application/grpc-web-text+proto"]);
      const body = unbase64(a.body.toString("latin1"));
      const [message] = dataFrames(body);
      expect(fromBinary(GetProductResponseSchema, message ?? new Uint8Array()).product?.id).toBe("coffee-beans");
      expect(grpcWebTrailers(body)["grpc-status"]).toBe("0");
      // The trailer frame (0x80) is the last frame of the base64 stream.
      expect(lastFlags(body)).toBe(0x80);
    }
    const access = lines.filter(
      (l) => l.msg === "access" && l.procedure === "shopmesh.inventory.v1.InventoryService/GetProduct",
    );
    expect(access.at(-1)).toMatchObject({ protocol: "grpc-web", code: "OK" });
    // The same over h2c.
    await using session = await h2Session(gw.url);
    const h2 = await h2Request(session, { ":path": GET_PRODUCT, ...auth, ...TEXT }, Buffer.from(b64(product())));
    expect([h2.status, h2.headers["content-type"]]).toEqual([200, "application/grpc-web-text+proto"]);
    expect(grpcWebTrailers(unbase64(h2.body.toString("latin1")))["grpc-status"]).toBe("0");
  });

  it("answers in text what Accept asks for (PROTOCOL-WEB: Accept: application/grpc-web-text), binary otherwise", async () => {
    const asked = await post(GET_PRODUCT, { ...auth, ...BINARY, accept: "application/grpc-web-text" }, product());
    expect(asked.headers["content-type"]).toBe("application/grpc-web-text+proto");
    expect(grpcStatus(asked)).toBe("0");
    const binary = await post(GET_PRODUCT, { ...auth, ...BINARY, accept: "application/grpc-web" }, product());
    expect(binary.headers["content-type"]).toBe("application/grpc-web+proto");
    expect(grpcWebTrailers(binary.body)["grpc-status"]).toBe("0");
  });

  it("streams WatchOrder in text as each state happens, each piece decodable as it arrives", async () => {
    // Payment is down until the watch's first piece is in: the order cannot move on before it, nor the
    // stream end. (A fixed 600 ms of payment latency, and the first piece 300 ms before the end, was
    // missed when this process stood still for 350 ms between the order and its watch.)
    await sys.paymentChaos.setFaults({ faults: { down: true } });
    try {
      const order = {
        idempotencyKey: `text-${Date.now()}`,
        items: [{ productId: "ceramic-mug", quantity: 1 }],
        cardToken: "tok_visa",
      };
      const placed = await post(
        PLACE_ORDER,
        { ...auth, "content-type": "application/json" },
        Buffer.from(JSON.stringify(order)),
      );
      const orderId = (JSON.parse(placed.body.toString()) as { order: { id: string } }).order.id;
      const watch = envelope(toBinary(WatchOrderRequestSchema, create(WatchOrderRequestSchema, { orderId })));
      // Bounded, so that an answer held back fails here, not by the test's timeout.
      const bounded = { ...auth, ...TEXT, "grpc-timeout": "10S" };
      let restored: Promise<unknown> | undefined;
      const a = await post(WATCH_ORDER, bounded, Buffer.from(b64(watch)), () => {
        restored ??= sys.paymentChaos.setFaults({ faults: {} });
      });
      await restored;
      expect([a.status, a.headers["content-type"]]).toEqual([200, "application/grpc-web-text+proto"]);
      // What had arrived when the first piece came decodes, alone, to the order still unpaid: PENDING.
      // It came before the stream ended: an answer held back to its end never lets payment back, and
      // its watch ends at the 10 s bound with the order still PENDING.
      const first = a.pieces[0];
      expect(first).toBeDefined();
      const [pending] = dataFrames(unbase64(first ?? ""));
      expect(fromBinary(WatchOrderResponseSchema, pending ?? new Uint8Array()).order?.status).toBe(OrderStatus.PENDING);
      const body = unbase64(a.body.toString("latin1"));
      const states = dataFrames(body).map((m) => fromBinary(WatchOrderResponseSchema, m).order?.status);
      expect(states.at(-1)).toBe(OrderStatus.CONFIRMED);
      expect(grpcWebTrailers(body)["grpc-status"]).toBe("0");
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });
});

describe("gRPC-Web text: request bodies (Envoy: decodeData on 4-character groups, padding mandatory)", () => {
  it("decodes a body cut into pieces of any size, however they fall on the 4-character groups", async () => {
    const text = b64(product());
    for (const sizes of [[1], [2], [3], [5], [7], [1, 2, 3, 4, 5, 6, 7]]) {
      const pieces: string[] = [];
      for (let at = 0, i = 0; at < text.length; i++) {
        const n = sizes[i % sizes.length] ?? 1;
        pieces.push(text.slice(at, at + n));
        at += n;
      }
      const a = await post(GET_PRODUCT, { ...auth, ...TEXT }, pieces);
      expect([a.status, grpcStatus(a)], JSON.stringify(sizes)).toEqual([200, "0"]);
    }
  });

  it("decodes base64 chunks concatenated with their padding (each group decoded as it comes)", async () => {
    const frame = product();
    for (const cut of [1, 2, 4, 5, 7]) {
      const padded = b64(frame.subarray(0, cut)) + b64(frame.subarray(cut));
      expect(padded.slice(0, -4)).toContain("=");
      const a = await post(GET_PRODUCT, { ...auth, ...TEXT }, Buffer.from(padded));
      const body = unbase64(a.body.toString("latin1"));
      const [message] = dataFrames(body);
      expect(fromBinary(GetProductResponseSchema, message ?? new Uint8Array()).product?.id, `cut ${cut}`).toBe(
        "coffee-beans",
      );
    }
  });

  it("answers invalid base64 INVALID_ARGUMENT in a gRPC-Web text answer, never a 5xx or a hang", async () => {
    const valid = b64(product());
    const cases = [
      ["not the alphabet (Envoy: ****)", "****"],
      ["a length not a multiple of 4 (Envoy: Base64NoPadding)", valid.replace(/=+$/, "")],
      ["a byte short", valid.slice(0, -1)],
      ["padding inside a group", `A=AA${valid}`],
      ["three padding characters", `A===${valid}`],
      ["URL-safe alphabet", valid.replace(/\+/g, "-").replace(/\//g, "_").replace(/^./, "-")],
      ["a line break", `${valid.slice(0, 8)}\n${valid.slice(8)}`],
      ["a space", ` ${valid}`],
    ] as const;
    for (const [name, body] of cases) {
      const a = await post(GET_PRODUCT, { ...auth, ...TEXT }, Buffer.from(body, "latin1"));
      expect([a.status, a.headers["content-type"], grpcStatus(a)], name).toEqual([
        200,
        "application/grpc-web-text+proto",
        "3",
      ]);
      expect(decodeURIComponent(trailer(a, "grpc-message") ?? ""), name).toMatch(
        /^the gRPC-Web text request body is not valid base64: /,
      );
      const access = lines.filter((l) => l.msg === "access").at(-1);
      expect(access, name).toMatchObject({ protocol: "grpc-web", code: "InvalidArgument" });
    }
  });
});

describe("gRPC-Web text: the limits are gRPC-Web binary's", () => {
  it("refuses an oversize message with binary's status, declared or streamed; a message binary takes is taken", async () => {
    // A message over the limit; one within it, whose base64 is over it (4/3 of it).
    for (const [name, id] of [
      ["over", "x".repeat(MAX_BODY)],
      ["within", "x".repeat(MAX_BODY - 100)],
    ] as const) {
      const frame = product(id);
      const binary = await post(GET_PRODUCT, { ...auth, ...BINARY }, frame);
      const text = await post(GET_PRODUCT, { ...auth, ...TEXT }, Buffer.from(b64(frame)));
      const streamed = b64(frame).match(/.{1,1000}/g) ?? [];
      const chunked = await post(GET_PRODUCT, { ...auth, ...TEXT }, streamed);
      const want = name === "over" ? "8" : grpcStatus(binary);
      expect(grpcStatus(binary), name).toBe(want);
      for (const a of [text, chunked]) {
        expect([a.status, a.headers["content-type"], grpcStatus(a)], name).toEqual([
          binary.status,
          "application/grpc-web-text+proto",
          want,
        ]);
      }
    }
  });

  it("refuses a text body over 4/3 of the limit, declared or streamed, however little it decodes to", async () => {
    // Each byte its own padded group (base64 chunks concatenated): 4 characters a byte, the message
    // within the limit decoded, its body 8 KB against the 5,464 characters of the limit's base64.
    const padded = [...product("x".repeat(MAX_BODY / 2))].map((byte) => b64(Buffer.from([byte]))).join("");
    expect(padded.length).toBeGreaterThan(Math.ceil(MAX_BODY / 3) * 4);
    const declared = await post(GET_PRODUCT, { ...auth, ...TEXT }, Buffer.from(padded));
    const streamed = await post(GET_PRODUCT, { ...auth, ...TEXT }, padded.match(/.{1,1000}/g) ?? []);
    for (const [name, a] of [
      ["declared", declared],
      ["streamed", streamed],
    ] as const) {
      expect([a.status, a.headers["content-type"], grpcStatus(a)], name).toEqual([
        declared.status,
        "application/grpc-web-text+proto",
        "8",
      ]);
    }
  });

  it("invites a text body its limit takes (Expect: 100-continue), as binary's is", async () => {
    const text = Buffer.from(b64(product("x".repeat(MAX_BODY - 100))));
    expect(text.length).toBeGreaterThan(MAX_BODY);
    const invited = await new Promise<boolean>((resolve, reject) => {
      const headers = { ...auth, ...TEXT, expect: "100-continue", "content-length": String(text.length) };
      const req = http.request(new URL(GET_PRODUCT, gw.url), { method: "POST", headers, agent: false });
      const timer = setTimeout(() => {
        req.destroy();
        resolve(false);
      }, 2_000);
      req.on("continue", () => req.end(text));
      req.on("response", (res) => {
        clearTimeout(timer);
        res.resume();
        res.on("end", () => resolve(res.headers["content-type"] === "application/grpc-web-text+proto"));
      });
      req.on("error", reject);
      req.flushHeaders();
    });
    expect(invited).toBe(true);
  });

  it("refuses a call without a token as binary is refused (UNAUTHENTICATED), in a text answer", async () => {
    const binary = await post(GET_PRODUCT, BINARY, product());
    const text = await post(GET_PRODUCT, TEXT, Buffer.from(b64(product())));
    expect([binary.status, grpcStatus(binary)]).toEqual([200, "16"]);
    expect([text.status, text.headers["content-type"], grpcStatus(text)]).toEqual([
      200,
      "application/grpc-web-text+proto",
      "16",
    ]);
  });

  it("lets a browser's preflight send what the grpc-web client sends", async () => {
    const res = await fetch(`${gw.url}${GET_PRODUCT}`, {
      method: "OPTIONS",
      headers: {
        origin: "http://localhost:3000",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,grpc-timeout,x-grpc-web,x-user-agent",
      },
    });
    expect(res.status).toBe(204);
    const allowed = (res.headers.get("access-control-allow-headers") ?? "").toLowerCase().split(/\s*,\s*/);
    for (const h of ["authorization", "content-type", "grpc-timeout", "x-grpc-web", "x-user-agent"]) {
      expect(allowed, h).toContain(h);
    }
    expect(res.headers.get("access-control-allow-methods")).toContain("POST");
    const exposed = (res.headers.get("access-control-expose-headers") ?? "").toLowerCase();
    expect(exposed).toContain("grpc-status");
  });
});
