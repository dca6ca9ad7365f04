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
import { rawConnect } from "../test/raw.js";
import { type GatewayApp, startGateway } from "./app.js";
import { signDevToken } from "./auth.js";
import { DEV_JWT_SECRET, loadConfig } from "./config.js";

/** Calls in progress allowed per address: the pipelining test takes 41 of them at once. */
const MAX_CALLS = 45;

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
      UPSTREAM_TIMEOUT_MS: "1500",
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
    const get = (path: string, auth = false) =>
      `GET ${path} HTTP/1.1\r\nHost: x\r\n${auth ? `authorization: Bearer ${token}\r\n` : ""}\r\n`;
    // First a call its upstream holds, so that everything after it waits in Node's queue of answers.
    const requests = [
      get("/v1/products/coffee-beans", true),
      ...Array.from({ length: 20 }, () => get("/openapi.json")),
      ...Array.from({ length: 10 }, () => get("/dev/token")),
      ...Array.from({ length: 10 }, () => get("/v1/products/ceramic-mug", true)),
    ];
    const before = access().length;
    const conn = await rawConnect(gw.port);
    await conn.write(requests.join(""));
    // Parsed at once, all of them (a wait too short fails below, on the count: it cannot pass).
    await new Promise((r) => setTimeout(r, 300));
    conn.socket.resetAndDestroy();

    // Before the fix, Node never closed the 40 queued answers: their slots stayed taken, and the
    // 30 plain ones were never logged. (Node reads a connection with answers queued no further, so
    // it sees the reset when it writes the held call's answer: at its upstream's timeout.)
    await expect
      .poll(() => access("plain/openapi").length + access("plain/dev-token").length, { timeout: 8_000 })
      .toBe(30);
    for (const l of [...access("plain/openapi"), ...access("plain/dev-token")]) {
      expect(l).toMatchObject({ code: "Canceled" });
      expect(l).not.toHaveProperty("status");
    }
    // Every slot is back: as many calls at once as the address may have, all admitted.
    const answers = await Promise.all(
      Array.from({ length: MAX_CALLS }, () => fetch(`${gw.url}/openapi.json`).then((r) => r.status)),
    );
    expect(answers.filter((s) => s === 429)).toEqual([]);
    // One line each, even after the held calls' own ending (their upstream timing out).
    await expect.poll(() => access().length - before, { timeout: 5_000 }).toBe(requests.length + MAX_CALLS);
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

  it("are refused (429) when the address's rate is spent, as everything else is", async () => {
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
      const statuses: number[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await fetch(`${strict.url}/dev/token`, {
          method: "OPTIONS",
          headers: { origin: "http://app.example", "access-control-request-method": "POST" },
        });
        statuses.push(r.status);
      }
      // Before, preflights passed every limit: 204 five times.
      expect(statuses.slice(0, 2)).toEqual([204, 204]);
      expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(2);
    } finally {
      await strict.stop();
    }
  });
});

describe("a sign-in body far over its limit", () => {
  it("is refused 413 on its declared length at once, and after the first KiB when it declares none", async () => {
    const big = Buffer.alloc(64 * 1024 * 1024, 0x20);
    const started = performance.now();
    const declared = await fetch(`${gw.url}/dev/token`, { method: "POST", body: big });
    expect(declared.status).toBe(413);
    expect(await declared.json()).toMatchObject({ code: 8, message: expect.stringContaining("1024 bytes") });
    // Chunked: no length declared, so it is counted as it arrives — and the answer does not wait for the rest.
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
    // Neither read what the client still meant to send (64 MiB, or a body that never ends).
    expect(performance.now() - started).toBeLessThan(5_000);
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
