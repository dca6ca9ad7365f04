/**
 * Regression tests for the fourth adversarial review of the front door: what a hostile client did
 * to the plain endpoints (the OpenAPI document, the development sign-in), to CORS preflights and to
 * the per-address call slots. Each `describe` is one finding, reproduced the way the client did it.
 * No service runs: the one upstream is a port that accepts connections and never answers.
 */
import http2 from "node:http2";
import net from "node:net";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { refusedBut } from "../test/fixtures.js";
import { h1Raw, rawConnect } from "../test/raw.js";
import { type GatewayApp, startGateway } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET, loadConfig } from "./config.js";
import { originForm } from "./server.js";

/** Calls in progress allowed per address: the pipelining test takes all of them at once. */
const MAX_CALLS = 41;

let silent: net.Server;
const held = new Set<net.Socket>();
let gw: GatewayApp;
const lines: Record<string, unknown>[] = [];
const access = (procedure?: string) =>
  lines.filter((l) => l.msg === "access" && (procedure === undefined || l.procedure === procedure));

beforeAll(async () => {
  silent = net.createServer((s) => {
    held.add(s);
    s.on("error", () => {});
  });
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  const log = pino({ level: "info" }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  gw = await startGateway(
    loadConfig({
      HTTP_HOST: "127.0.0.1",
      HTTP_PORT: "0",
      INVENTORY_TARGET: `127.0.0.1:${(silent.address() as net.AddressInfo).port}`,
      UPSTREAM_TIMEOUT_MS: "10000",
      UPSTREAM_RETRY_MAX_ATTEMPTS: "1",
      HTTP_MAX_CALLS_PER_IP: String(MAX_CALLS),
      RATE_LIMIT_IP_BURST: "500",
      CORS_ORIGINS: "http://app.example",
    }),
    log,
  );
});
afterAll(async () => {
  await gw?.stop();
  for (const s of held) s.destroy();
  await new Promise((r) => silent.close(r));
});

describe("pipelined requests behind a held one, then a reset connection", () => {
  it("gives back every call slot and logs each queued answer Canceled once", async () => {
    const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
    const token = await signDevToken(claims, "alice", ["customer"]);
    const bearer = `authorization: Bearer ${token}\r\n`;
    const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`;
    const body = '{"productId":"coffee-beans"}';
    const getProduct = (timeout = "") =>
      "POST /shopmesh.inventory.v1.InventoryService/GetProduct HTTP/1.1\r\nHost: localhost\r\n" +
      `${bearer}content-type: application/json\r\ncontent-length: ${body.length}\r\n` +
      `${timeout && `connect-timeout-ms: ${timeout}\r\n`}\r\n${body}`;
    // First a call its upstream holds until the client's deadline, so that everything after it waits
    // in Node's queue of answers; behind it plain requests, and calls (Connect JSON's fast path and
    // REST's) its upstream would hold for long. The deadline is how long the slots stay taken for the
    // checks below: at 400 ms a loaded machine's probes ran past it, the first answer went out, the
    // queue drained and the preflight was admitted (204).
    const requests = [
      getProduct("2000"),
      ...Array.from({ length: 20 }, () => get("/openapi.json")),
      ...Array.from({ length: 10 }, () => get("/dev/token")),
      ...Array.from({ length: 5 }, () => getProduct()),
      ...Array.from({ length: 5 }, () => `GET /v1/products/ceramic-mug HTTP/1.1\r\nHost: localhost\r\n${bearer}\r\n`),
    ];
    expect(requests).toHaveLength(MAX_CALLS);
    const before = access().length;
    const conn = await rawConnect(gw.port);
    await conn.write(requests.join(""));
    // Every one of them admitted, each holding its slot: a call from another connection is refused —
    // a preflight too (it takes a slot, though no rate token).
    let probes = 0;
    await expect
      .poll(async () => {
        probes++;
        return (await fetch(`${gw.url}/openapi.json`)).status;
      })
      .toBe(429);
    const preflight = await fetch(`${gw.url}/dev/token`, {
      method: "OPTIONS",
      headers: { origin: "http://app.example", "access-control-request-method": "POST" },
    });
    expect(preflight.status).toBe(429);
    conn.socket.resetAndDestroy();

    // Before the fix, Node never closed the 40 queued answers: their slots stayed taken, the 30 plain
    // ones were never logged, and the 10 calls ran on to their upstream's timeout. (Node reads a
    // connection with answers queued no further: it sees the reset when it writes the first answer.)
    await expect
      .poll(() => access("plain/openapi").length + access("plain/dev-token").length - probes, { timeout: 8_000 })
      .toBe(30);
    const queued = lines.slice(before).filter((l) => l.msg === "access" && l.code === "Canceled");
    expect(queued.filter((l) => String(l.procedure).startsWith("plain/"))).toHaveLength(30);
    for (const l of queued) expect(l).not.toHaveProperty("status");
    // The queued calls were cancelled with their connection, not left to run (the upstream's timeout is 10 s).
    const calls = queued.filter((l) => String(l.procedure).endsWith("/GetProduct"));
    expect(calls).toHaveLength(10);
    for (const l of calls) expect(l.ms).toBeLessThan(5_000);
    // Every slot is back: as many calls at once as the address may have, all admitted.
    const answers = await Promise.all(
      Array.from({ length: MAX_CALLS }, () => fetch(`${gw.url}/openapi.json`).then((r) => r.status)),
    );
    expect(answers.filter((s) => s === 429)).toEqual([]);
    // One line each, and no more.
    await expect
      .poll(() => access().length - before, { timeout: 5_000 })
      .toBe(requests.length + probes + 1 + MAX_CALLS);
  });
});

describe("an HTTP/2 client that resets its sign-in after sending the body", () => {
  it("is logged Canceled, not as a token handed out", async () => {
    const session = http2.connect(gw.url);
    try {
      const stream = session.request({ ":method": "POST", ":path": "/dev/token", "x-request-id": "reset-sign-in" });
      stream.on("error", () => {});
      stream.write('{"user":"alice"}');
      await new Promise((r) => setTimeout(r, 50));
      stream.close(http2.constants.NGHTTP2_CANCEL);
      await expect
        .poll(() => lines.find((l) => l.request_id === "reset-sign-in"))
        .toMatchObject({
          procedure: "plain/dev-token",
          code: "Canceled",
        });
    } finally {
      session.close();
    }
  });
});

describe("CORS preflights", () => {
  it("are counted against the address's calls and logged like any request", async () => {
    const preflight = () =>
      fetch(`${gw.url}/dev/token`, {
        method: "OPTIONS",
        headers: { origin: "http://app.example", "access-control-request-method": "POST" },
      });
    const r = await preflight();
    expect(r.status).toBe(204);
    expect(r.headers.get("access-control-allow-origin")).toBe("http://app.example");
    await expect.poll(() => access("plain/preflight").at(-1)).toMatchObject({ code: "OK", status: 204 });
  });

  it("spend no rate token: a browser could not read a refused preflight (it is a CORS failure to it)", async () => {
    const strict = await startGateway(
      loadConfig({
        HTTP_HOST: "127.0.0.1",
        HTTP_PORT: "0",
        INVENTORY_TARGET: "127.0.0.1:1",
        RATE_LIMIT_IP_BURST: "2",
        RATE_LIMIT_IP_RPS: "1",
        CORS_ORIGINS: "http://app.example",
      }),
      pino({ level: "silent" }),
    );
    try {
      for (let i = 0; i < 5; i++) {
        const r = await fetch(`${strict.url}/dev/token`, {
          method: "OPTIONS",
          headers: { origin: "http://app.example", "access-control-request-method": "POST" },
        });
        expect(r.status).toBe(204);
      }
      // The burst of 2 is still whole after five preflights; the third call finds it spent.
      const statuses: number[] = [];
      const began = Date.now();
      for (let i = 0; i < 3; i++) statuses.push((await fetch(`${strict.url}/openapi.json`)).status);
      expect(statuses).toEqual([200, 200, ...refusedBut(statuses.slice(2), 200, began)]);
    } finally {
      await strict.stop();
    }
  });
});

describe("a sign-in body far over its limit", () => {
  it("is refused 413 on its declared length at once, and after the first KiB when it declares none", async () => {
    // Only the headers, declaring a gigabyte: answered without waiting for a byte of it, and the
    // connection ends (the rest would otherwise be read as a request). Before: it waited for the body.
    const declared = await h1Raw(
      gw.port,
      "POST /dev/token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000\r\n\r\n",
      4_000,
    );
    expect(declared.status).toBe(413);
    expect(declared.raw).toMatch(/connection: close/i);
    expect(declared.raw).toContain("1024 bytes");
    // Chunked: no length declared, so it is counted as it arrives — and the answer does not wait for the rest.
    const started = performance.now();
    const chunks = (async function* () {
      yield Buffer.alloc(2048, 0x20);
      await new Promise((r) => setTimeout(r, 60_000));
      yield Buffer.alloc(1);
    })();
    const streamed = await fetch(`${gw.url}/dev/token`, {
      method: "POST",
      body: ReadableStreamFrom(chunks),
      duplex: "half",
    } as RequestInit);
    expect(streamed.status).toBe(413);
    expect(performance.now() - started).toBeLessThan(5_000);
  });
});

describe("a REST body over the limit on a keep-alive HTTP/1.1 connection", () => {
  it("is answered 413 with Connection: close (before, the connection ended unannounced and the next request on it failed)", async () => {
    const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
    const token = await signDevToken(claims, "alice", ["customer"]);
    const chunk = Buffer.alloc(2 * 1_048_576, 0x20); // past MAX_BODY_BYTES (1 MiB), no length declared
    const r = await h1Raw(
      gw.port,
      Buffer.concat([
        Buffer.from(
          "POST /v1/orders HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n" +
            `authorization: Bearer ${token}\r\ntransfer-encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n`,
        ),
        chunk,
      ]),
      4_000,
    );
    expect(r.status).toBe(413);
    expect(r.raw).toMatch(/connection: close/i);
  });
});

function ReadableStreamFrom(it: AsyncIterator<Buffer>): ReadableStream<Uint8Array> {
  return new ReadableStream({
    async pull(controller) {
      const next = await it.next();
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
  });
}

describe("a Connect or gRPC-Web body over the limit on a keep-alive HTTP/1.1 connection (the general path)", () => {
  it.each([
    ["Connect, compressed (not the fast path)", "application/json", "content-encoding: gzip\r\n", 413],
    ["gRPC-Web", "application/grpc-web+proto", "", 200],
  ])("%s: answered with Connection: close, as REST is", async (_name, type, extra, status) => {
    const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
    const token = await signDevToken(claims, "alice", ["customer"]);
    const chunk = Buffer.alloc(2 * 1_048_576, 0x20); // past MAX_BODY_BYTES (1 MiB), no length declared
    const r = await h1Raw(
      gw.port,
      Buffer.concat([
        Buffer.from(
          `POST /shopmesh.inventory.v1.InventoryService/GetProduct HTTP/1.1\r\nHost: localhost\r\ncontent-type: ${type}\r\n${extra}` +
            `authorization: Bearer ${token}\r\ntransfer-encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n`,
        ),
        chunk,
      ]),
      4_000,
    );
    expect(r.status).toBe(status);
    expect(r.raw).toMatch(/"code":"resource_exhausted"|grpc-status: 8\r\n/);
    expect(r.raw).toMatch(/connection: close/i);
  });
});

describe("a request target in absolute form (RFC 9112 §3.2.2: a server must accept it)", () => {
  it("is served as its origin form: the plain endpoints and the RPCs alike", async () => {
    const doc = await h1Raw(
      gw.port,
      "GET http://localhost/openapi.json?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    expect(doc.status).toBe(200);
    expect(doc.raw).toContain('"openapi"');
    // An RPC: routed by the same path (unauthenticated, so 401 — not 404 for an unknown path).
    const rpc = await h1Raw(
      gw.port,
      "GET HTTP://LOCALHOST:8080/v1/products HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    expect(rpc.status).toBe(401);
    expect(originForm("http://h")).toEqual({ path: "/", authority: "h" });
    expect(originForm("https://h:8080?q=1")).toEqual({ path: "/?q=1", authority: "h:8080" });
    expect(originForm("*")).toEqual({ path: "*" });
  });
});

describe("a body declared over the limit", () => {
  it("is refused 413 with Connection: close, and without inviting it by 100 Continue (the whole body was then read and thrown away)", async () => {
    const token = await signDevToken(
      { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
      "alice",
      ["customer"],
    );
    for (const expect100 of [true, false]) {
      const r = await h1Raw(
        gw.port,
        "POST /shopmesh.order.v1.OrderService/PlaceOrder HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n" +
          `authorization: Bearer ${token}\r\ncontent-length: 5000000\r\n${expect100 ? "expect: 100-continue\r\n" : ""}\r\n`,
        2_000,
      );
      expect(r.raw, `expect100=${expect100}`).not.toContain("100 Continue");
      expect(r.status).toBe(413);
      expect(r.raw).toMatch(/connection: close/i);
    }
  });
});

describe("Connect JSON errors on every method", () => {
  it("name the field: the gateway's own methods, enums, and a key too long to repeat whole", async () => {
    const token = await signDevToken(
      { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
      "alice",
      ["customer"],
    );
    const call = async (path: string, body: string) => {
      const r = await fetch(`${gw.url}${path}`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body,
      });
      const {
        code,
        message,
        details = [],
      } = (await r.json()) as {
        code: string;
        message: string;
        details?: { debug?: { fieldViolations?: { field: string }[] } }[];
      };
      // The field named in the message is named in a google.rpc.BadRequest detail too.
      const fields = details.flatMap((d) => (d.debug?.fieldViolations ?? []).map((v) => v.field));
      return { status: r.status, json: { code, message }, fields };
    };
    // A method the gateway answers itself (it said `cannot decode field shopmesh.gateway.v1…`).
    expect(await call("/shopmesh.gateway.v1.GatewayService/GetOrderDetails", '{"orderId":5}')).toEqual({
      status: 400,
      json: { code: "invalid_argument", message: "order_id: expected string, got 5" },
      fields: ["order_id"],
    });
    expect(await call("/shopmesh.order.v1.OrderService/PlaceOrder", '{"sagaMode":"NOPE"}')).toEqual({
      status: 400,
      json: { code: "invalid_argument", message: 'saga_mode: "NOPE" is not a SagaMode value' },
      fields: ["saga_mode"],
    });
    const long = await call("/shopmesh.order.v1.OrderService/PlaceOrder", `{"${"k".repeat(60_000)}":1}`);
    expect(long.status).toBe(400);
    expect(long.json.message.length).toBeLessThanOrEqual(1_000);
    expect(long.fields.map((f) => f.length)).toEqual([expect.any(Number)]);
    expect(long.fields[0]?.length).toBeLessThanOrEqual(1_000);
  });
});
