/**
 * The metrics port holds what a scraper needs and no more: a client that
 * opens many connections, sends its request slowly or never reads its answers is cut; a scrape
 * with a query string is still a scrape.
 */
import net from "node:net";
import { Gauge, Registry } from "prom-client";
import { afterAll, beforeAll, expect, it } from "vitest";
import { silentLogger } from "./log.js";
import { METRICS_SERVER_LIMITS, serveMetrics } from "./metrics-server.js";

let server: Awaited<ReturnType<typeof serveMetrics>>;
beforeAll(async () => {
  server = await serveMetrics(new Registry(), 0, "127.0.0.1", silentLogger());
});
afterAll(() => server.close());

/** A connection to the metrics port; `ended` resolves with what the server sent before it closed. */
async function connect(): Promise<{ socket: net.Socket; ended: Promise<string> }> {
  const socket = net.connect(server.port, "127.0.0.1");
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject));
  let got = "";
  socket.on("data", (d: Buffer) => {
    got += d.toString("latin1");
  });
  const ended = new Promise<string>((resolve) => {
    socket.once("close", () => resolve(got));
    socket.on("error", () => {});
  });
  return { socket, ended };
}

it("answers /metrics and /healthz with a query string too", async () => {
  for (const path of ["/metrics?x=1", "/healthz?t=2"]) {
    const res = await fetch(`http://127.0.0.1:${server.port}${path}`);
    expect(res.status, path).toBe(200);
  }
});

it(`holds at most ${METRICS_SERVER_LIMITS.maxConnections} connections: the rest are closed at once`, async () => {
  const { maxConnections } = METRICS_SERVER_LIMITS;
  const held = await Promise.all(Array.from({ length: maxConnections }, connect));
  const over = await Promise.all(Array.from({ length: 5 }, connect));
  const closed = await Promise.race([
    Promise.all(over.map((c) => c.ended)).then(() => true),
    new Promise((r) => setTimeout(() => r(false), 2_000)),
  ]);
  expect(closed).toBe(true);
  for (const c of held) c.socket.destroy();
  await Promise.all(held.map((c) => c.ended));
  // Once they are gone, scrapes are answered again.
  expect((await fetch(`http://127.0.0.1:${server.port}/metrics`)).status).toBe(200);
});

it("cuts a client that sends its request headers too slowly", async () => {
  const c = await connect();
  c.socket.write("GET /metrics HTTP/1.1\r\nHost: a\r\n"); // never finished
  const started = Date.now();
  const sent = await c.ended;
  const took = Date.now() - started;
  expect(sent).toMatch(/^HTTP\/1\.1 408/);
  expect(took).toBeGreaterThanOrEqual(METRICS_SERVER_LIMITS.headersTimeoutMs - 1_000);
  expect(took).toBeLessThan(METRICS_SERVER_LIMITS.headersTimeoutMs + 3_000);
}, 15_000);

it("cuts a client that sends scrapes and never reads the answers, once nothing has moved for the idle limit", async () => {
  const registry = new Registry();
  const gauge = new Gauge({ name: "wide", help: "a large scrape", labelNames: ["k"], registers: [registry] });
  for (let i = 0; i < 200; i++) gauge.set({ k: `value-${i}` }, i); // ~5 KB an answer
  const idleTimeoutMs = 1_000;
  const limits = { ...METRICS_SERVER_LIMITS, idleTimeoutMs, headersTimeoutMs: 60_000, requestTimeoutMs: 120_000 };
  const slow = await serveMetrics(registry, 0, "127.0.0.1", silentLogger(), limits);
  try {
    const socket = net.connect(slow.port, "127.0.0.1");
    socket.pause(); // never reads: the answers back up until the server stops writing and reading
    let cut = false;
    socket.on("error", () => {});
    socket.once("close", () => {
      cut = true;
    });
    await new Promise<void>((resolve) => socket.once("connect", resolve));
    // ~100 MB of answers, beyond any socket buffers; the server reads no more requests once its answers back up.
    socket.write("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".repeat(20_000));
    // A connection the server dropped (with requests unread: a reset) fails the next write, read or not;
    // an empty line between requests is one the server would skip.
    const end = Date.now() + 15_000;
    while (!cut && Date.now() < end) {
      socket.write("\r\n");
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(cut, "the server dropped the connection").toBe(true);
  } finally {
    await slow.close();
  }
}, 20_000);

// A scrape is computed once at a time and reused for ten times as long as it took: many scrapes at
// once of a registry that takes 5 ms to read cost a few readings, not one each, and one a little later
// sees fresh values (stale by tens of milliseconds, not a scrape interval).
it("shares a scrape among those asked at once, and computes a fresh one soon after", async () => {
  const registry = new Registry();
  let computed = 0;
  new Gauge({
    name: "scrapes_computed",
    help: "how many times the registry was read",
    registers: [registry],
    collect() {
      const until = performance.now() + 5;
      while (performance.now() < until) {} // a registry that takes 5 ms to read
      computed++;
      this.set(computed);
    },
  });
  const own = await serveMetrics(registry, 0, "127.0.0.1", silentLogger());
  try {
    const scrape = async () => (await fetch(`http://127.0.0.1:${own.port}/metrics`)).text();
    const texts = await Promise.all(Array.from({ length: 20 }, scrape));
    expect(computed).toBeLessThanOrEqual(5);
    expect(new Set(texts).size).toBe(computed);
    // Reused for ten times as long as it took: ~50 ms on an idle machine, longer on a busy one (a 5 ms
    // reading can take 40 ms of wall time beside other work), so ask until one is fresh, within seconds.
    const before = computed;
    const end = Date.now() + 5_000;
    let text = await scrape();
    while (computed === before && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 50));
      text = await scrape();
    }
    expect(text).toContain(`scrapes_computed ${before + 1}`);
  } finally {
    await own.close();
  }
});
