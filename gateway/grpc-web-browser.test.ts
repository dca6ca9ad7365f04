/**
 * Google's own grpc-web client runtime (the `grpc-web` npm package, in its default text mode,
 * `format: "text"`), running in a real browser (Debian's chromium) on a page of another origin,
 * against a real gateway and the real services: the CORS preflight its headers cause, a unary call,
 * and a server stream whose first message arrives while the order is still being paid for. No
 * protoc-gen-grpc-web: the page hand-encodes the one-field requests and hands the answers' bytes
 * back here, where protobuf-es decodes them.
 */
import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { type Browser, chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetProductResponseSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderStatus, WatchOrderResponseSchema } from "../gen/shopmesh/order/v1/order_pb.js";
import { freePort, ROOT } from "../test/fixtures.js";
import { capturedLogger, type System, startSystem, startTestGateway } from "../test/system.js";
import type { GatewayApp } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET } from "./config.js";

const CHROMIUM = "/usr/bin/chromium";
const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const { log, lines } = capturedLogger();

let sys: System;
let gw: GatewayApp;
let page: http.Server;
let origin: string;
let browser: Browser;
let token: string;

/** The page: grpc-web's ES module, and a document of the page's origin that loads it (as `window.grpcweb`). */
function servePage(): http.Server {
  const runtime = readFileSync(join(ROOT, "node_modules", "grpc-web", "index.esm.js"));
  return http.createServer((req, res) => {
    if (req.url === "/grpc-web.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(runtime);
      return;
    }
    const load = `<script type="module">import * as web from "/grpc-web.js"; window.grpcweb = web;</script>`;
    res.writeHead(200, { "content-type": "text/html" }).end(`<!doctype html><title>grpc-web</title>${load}`);
  });
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`);
  const port = await freePort();
  page = servePage();
  await new Promise<void>((r) => page.listen(port, "127.0.0.1", () => r()));
  origin = `http://127.0.0.1:${port}`;
  sys = await startSystem();
  // The page's origin is not the gateway's: every call is cross-origin, and preflighted.
  gw = await startTestGateway(sys, { CORS_ORIGINS: origin }, log);
  token = await signDevToken(claims, "alice", ["customer"]);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
}, 60_000);
afterAll(async () => {
  await browser?.close();
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
  await new Promise((r) => page?.close(r));
});

/** What a call made in the page saw: each message's bytes, the status, or an error. */
interface Seen {
  readonly messages: { bytes: number[] }[];
  readonly status?: number;
  readonly error?: string;
}

/**
 * Calls `path` from the page with grpc-web's text-mode client: a request of one string field (field 1),
 * `request()`. `onFirst` runs (in this process) when the page has the first message; the call is then
 * bounded to 10 s, so that one whose messages all wait for `onFirst` fails at that bound.
 */
async function callFromPage(
  path: string,
  request: () => Promise<string>,
  streaming: boolean,
  onFirst?: () => unknown,
): Promise<Seen> {
  const context = await browser.newContext();
  try {
    if (onFirst) await context.exposeFunction("heardFirst", onFirst);
    const tab = await context.newPage();
    await tab.goto(origin);
    await tab.waitForFunction(() => "grpcweb" in globalThis);
    const value = await request(); // once the page is ready: the call starts now
    return await tab.evaluate(
      async ({ gateway, path, value, streaming, token, bounded }) => {
        // biome-ignore lint/suspicious/noExplicitAny: the runtime's module, loaded by the page
        const web = (globalThis as any).grpcweb;
        const client = new web.GrpcWebClientBase({ format: "text" });
        const utf8 = new TextEncoder().encode(value);
        const encode = () => new Uint8Array([0x0a, utf8.length, ...utf8]); // field 1, length-delimited
        const type = streaming ? web.MethodType.SERVER_STREAMING : web.MethodType.UNARY;
        const method = new web.MethodDescriptor(path, type, Object, Object, encode, (b: Uint8Array) => Array.from(b));
        const messages: { bytes: number[] }[] = [];
        const metadata = {
          authorization: `Bearer ${token}`,
          ...(bounded ? { deadline: String(Date.now() + 10_000) } : {}),
        };
        return await new Promise<Seen>((resolve) => {
          const done = (rest: { status?: number; error?: string }) => resolve({ messages, ...rest });
          const got = (bytes: number[]) => {
            messages.push({ bytes });
            // biome-ignore lint/suspicious/noExplicitAny: exposed by the context (onFirst)
            if (bounded && messages.length === 1) void (globalThis as any).heardFirst();
          };
          const failed = (e: { code: number; message: string }) => done({ error: `${e.code} ${e.message}` });
          if (!streaming) {
            // A unary call's answer comes to its callback.
            client.rpcCall(
              gateway + path,
              {},
              metadata,
              method,
              (e: { code: number; message: string } | null, bytes: number[]) => {
                if (e) return failed(e);
                got(bytes);
                done({ status: 0 });
              },
            );
            return;
          }
          const call = client.serverStreaming(gateway + path, {}, metadata, method);
          call.on("data", got);
          call.on("status", (s: { code: number }) => done({ status: s.code }));
          call.on("error", failed);
        });
      },
      { gateway: gw.url, path, value, streaming, token, bounded: onFirst !== undefined },
    );
  } finally {
    await context.close();
  }
}

describe("Google's grpc-web client (text mode) in a browser of another origin", () => {
  it("gets a product: preflight allowed, answer decoded, status OK", async () => {
    const path = "/shopmesh.inventory.v1.InventoryService/GetProduct";
    const seen = await callFromPage(path, async () => "coffee-beans", false);
    expect([seen.error, seen.status]).toEqual([undefined, 0]);
    const product = fromBinary(GetProductResponseSchema, Uint8Array.from(seen.messages[0]?.bytes ?? [])).product;
    expect(product?.id).toBe("coffee-beans");
    const access = lines.filter((l) => l.msg === "access");
    expect(access.map((l) => [l.procedure, l.code])).toContainEqual(["plain/preflight", "OK"]);
    expect(access.at(-1)).toMatchObject({ protocol: "grpc-web", code: "OK" });
  });

  it("watches an order: the first state arrives while it is still being paid for, the last is CONFIRMED", async () => {
    // Payment is down until the page has the watch's first state: the order cannot move on before it,
    // nor the stream end. (With a fixed 1 s of payment latency and the first state asked 400 ms before
    // the end, a busy machine between the order and its watch failed it.)
    await sys.paymentChaos.setFaults({ faults: { down: true } });
    let restored: unknown;
    try {
      const place = async () => {
        const placed = await fetch(`${gw.url}/shopmesh.order.v1.OrderService/PlaceOrder`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
          body: JSON.stringify({
            idempotencyKey: `browser-${Date.now()}`,
            items: [{ productId: "ceramic-mug", quantity: 1 }],
            cardToken: "tok_visa",
          }),
        });
        return ((await placed.json()) as { order: { id: string } }).order.id;
      };
      const seen = await callFromPage("/shopmesh.order.v1.OrderService/WatchOrder", place, true, () => {
        restored ??= sys.paymentChaos.setFaults({ faults: {} });
      });
      await restored;
      expect([seen.error, seen.status]).toEqual([undefined, 0]);
      const states = seen.messages.map((m) => fromBinary(WatchOrderResponseSchema, Uint8Array.from(m.bytes)).order);
      expect(states[0]?.status).toBe(OrderStatus.PENDING);
      // Confirmed once payment was back, which was after the first state reached the page: it came
      // while the order was unpaid (a stream held back to its end ends at the 10 s bound, PENDING).
      expect(states.at(-1)?.status).toBe(OrderStatus.CONFIRMED);
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  });
});
