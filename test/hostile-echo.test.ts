/**
 * A hostile round on what a client's strings become when they are echoed back (2026-12-07): in JSON
 * error bodies, gRPC status messages and trailers, response headers and the web shop. Each `describe`
 * is one finding; each of its tests fails on the code it was written against.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type GatewayApp, startGateway } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, loadConfig as gatewayConfig, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { silentLogger } from "../platform/log.js";
import { envelope, grpcWebTrailers, h1Request, h2Request, h2Session } from "./raw.js";

/** A `\uXXXX` escape of a surrogate with no partner, or such a surrogate itself, in JSON text `text`. */
function loneSurrogate(text: string): string | undefined {
  const escaped = /\\u(d[89ab][0-9a-f]{2})(?!\\ud[c-f])|(?<!\\ud[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})/i.exec(text);
  if (escaped) return escaped[0];
  return /[\ud800-\udfff]/u.exec(text)?.[0];
}

describe.each(["true", "false"])("a client's text quoted in an error (FAST_PATHS=%s)", (fast) => {
  let gw: GatewayApp;
  let auth: string;
  beforeAll(async () => {
    const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), "127.0.0.1:1"]));
    gw = await startGateway(
      gatewayConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", FAST_PATHS: fast, ...targets }),
      silentLogger(),
    );
    const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
    auth = `Bearer ${await signDevToken(claims, "mallory", ["customer"])}`;
  });
  afterAll(async () => {
    await gw?.stop();
  });

  describe("a lone surrogate a client wrote, in a JSON error", () => {
    // A JSON key, enum value or number written `"\ud800"` was quoted back as `\ud800` in the message and
    // the BadRequest detail of the JSON error (REST, Connect unary, a Connect GET, a Connect stream's end):
    // JSON that names no character (RFC 8259 §8.2), which serde_json refuses to parse at all (the client
    // lost the error) and Python takes as a str it cannot print or encode; the same error's binary detail
    // and REST's detail said U+FFFD. (A gRPC-Web trailer, which connect-es cannot percent-encode it into,
    // is INVALID_ARGUMENT without the field: test/hostile-inputs-observed.test.ts.)
    const line = (extra: string) => `{"items":[{"productId":"coffee-beans","quantity":1${extra}}]`;
    const bodies = [
      String.raw`${line("")},"cardToken":"tok_visa","sagaMode":"\ud800"}`,
      `${line(String.raw`,"\udc00":1`)},"cardToken":"tok_visa"}`,
      String.raw`${line("")},"cardToken":"tok_visa","\ud83dx":1}`,
      String.raw`{"items":[{"productId":"coffee-beans","quantity":"\ud800"}],"cardToken":"tok_visa"}`,
      String.raw`{"items":"\ud800","cardToken":"tok_visa"}`,
    ];

    it("is well-formed over REST, Connect unary and a Connect GET, naming the field", async () => {
      let n = 0;
      for (const body of bodies) {
        const headers = { authorization: auth, "content-type": "application/json" };
        const rest = await h1Request(gw.url, "POST", "/v1/orders", {
          headers: { ...headers, "idempotency-key": `echo-${++n}` },
          body,
        });
        expect([rest.status, loneSurrogate(rest.text)], `REST ${body}`).toEqual([400, undefined]);
        const connect = await h1Request(gw.url, "POST", "/shopmesh.order.v1.OrderService/PlaceOrder", {
          headers,
          body: body.replace("{", `{"idempotencyKey":"echo-${++n}",`),
        });
        expect([connect.status, loneSurrogate(connect.text)], `Connect ${body}`).toEqual([400, undefined]);
        expect(connect.json.message, body).toContain("\ufffd");
      }
      const message = encodeURIComponent(String.raw`{"\ud800":1}`);
      const get = await h1Request(
        gw.url,
        "GET",
        `/shopmesh.inventory.v1.InventoryService/ListProducts?encoding=json&message=${message}`,
        { headers: { authorization: auth } },
      );
      expect([get.status, loneSurrogate(get.text)]).toEqual([400, undefined]);
      expect(get.json.message).toBe('ListProductsRequest: key "\ufffd" is unknown');
    });

    it("is well-formed at a Connect stream's end", async () => {
      await using session = await h2Session(gw.url);
      const request = envelope(Buffer.from(String.raw`{"orderId":"x","\ud800":1}`));
      const connect = await h2Request(
        session,
        {
          ":path": "/shopmesh.order.v1.OrderService/WatchOrder",
          "content-type": "application/connect+json",
          authorization: auth,
        },
        request,
      );
      const end = connect.body.subarray(5).toString("utf8");
      expect(loneSurrogate(end)).toBeUndefined();
      expect(JSON.parse(end).error.message).toBe('WatchOrderRequest: key "\ufffd" is unknown');
    });
  });

  describe("a long unknown key, in a gRPC status", () => {
    // An unknown key of 1,000 three-byte characters in a gRPC request with JSON bodies came back quoted
    // whole: a 9 KB percent-encoded `grpc-message` and the same text again in `grpc-status-details-bin`,
    // past grpc-java's and grpc-go's default 8 KiB limit on a response's header block (the client then
    // fails the call with an error of its own, not the field that was wrong).
    it.each(["application/grpc+json", "application/grpc-web+json"])(
      "fits a client's 8 KiB header limit over %s",
      async (type) => {
        await using session = await h2Session(gw.url);
        const key = "€".repeat(1_000);
        const got = await h2Request(
          session,
          {
            ":path": "/shopmesh.inventory.v1.InventoryService/ListProducts",
            "content-type": type,
            te: "trailers",
            authorization: auth,
          },
          envelope(Buffer.from(JSON.stringify({ [key]: 1 }))),
        );
        const trailers = type.includes("web") ? grpcWebTrailers(got.body) : { ...got.headers, ...got.trailers };
        expect(trailers["grpc-status"]).toBe("3");
        const message = decodeURIComponent(String(trailers["grpc-message"]));
        expect(message).toMatch(/^ListProductsRequest: key "€+…/);
        // The status as HPACK's size counts it (RFC 7541 §4.1: name, value and 32 octets an entry): at most
        // half the block a client takes, the rest left to the response's other headers and proxies' own.
        const status = Object.entries(trailers).filter(([k]) => k.startsWith("grpc-"));
        const size = status.reduce((sum, [k, v]) => sum + k.length + Buffer.byteLength(String(v)) + 32, 0);
        expect(size).toBeLessThan(4_096);
      },
    );
  });
});

describe("the development sign-in refusing a method", () => {
  // `POST /dev/token` answered any other method with `<method> is not allowed on /dev/token`, the
  // method whole: an HTTP/2 `:method` is any token, so 5,000 characters of it came back, where every
  // other refusal quotes a method or path cut to 200 (gateway/wire.ts `echoed`).
  let gw: GatewayApp;
  beforeAll(async () => {
    const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), "127.0.0.1:1"]));
    gw = await startGateway(gatewayConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", ...targets }), silentLogger());
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it("quotes at most 200 characters of it", async () => {
    await using session = await h2Session(gw.url);
    const method = "X".repeat(5_000);
    const got = await h2Request(session, { ":method": method, ":path": "/dev/token" });
    expect(got.status).toBe(405);
    const { message } = JSON.parse(got.body.toString("utf8")) as { message: string };
    expect(message.length).toBeLessThan(300);
    expect(message).toMatch(/^X{199}… is not allowed on \/dev\/token$/);
  });
});
