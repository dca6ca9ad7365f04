/**
 * `make load RATE=50`: steady mixed traffic through the gateway of a running
 * system (`make run`), as a shop's customers would make it, until Ctrl-C —
 * for the dashboards, `make trace`, and demos of the resilience patterns
 * (flip payment faults while it runs and watch the numbers move).
 *
 * Calls start at RATE per second (open loop: a slow system does not slow the
 * traffic down), as Connect JSON over HTTP/1.1 with a development token per
 * customer: 55% browse (ListProducts, GetProduct), 10% read an order back,
 * 35% place an order (both saga modes; one in ten with a declined card, one
 * in twenty with insufficient funds). Every 5 s it prints what was sent and
 * how it ended, with latencies; on Ctrl-C, the totals.
 *
 *   RATE        calls per second (default 50; 1..2000)
 *   GATEWAY_URL default http://127.0.0.1:8080
 *   DURATION_S  stop after this many seconds (default: run until stopped)
 *   JWT_SECRET, JWT_ISSUER, JWT_AUDIENCE  as the gateway was given them (make token reads them too)
 */
import http from "node:http";
import { signDevToken } from "../gateway/auth.js";
import { loadConfig } from "../gateway/config.js";
import { configOrExit } from "../platform/config.js";
import { quietWhenOutputCloses } from "./printable.js";

quietWhenOutputCloses();

const rate = Number(process.env.RATE || 50);
if (!Number.isFinite(rate) || rate < 1 || rate > 2000) {
  process.stderr.write(`RATE must be 1..2000 calls per second, got ${JSON.stringify(process.env.RATE)}\n`);
  process.exit(2);
}
// Refused as RATE is, not read as "run until stopped" (a DURATION_S=abc ran for ever) or thrown as a
// stack trace (a GATEWAY_URL that is no URL).
const durationS = Number(process.env.DURATION_S || 0);
if (!Number.isFinite(durationS) || durationS < 0) {
  process.stderr.write(
    `DURATION_S must be a number of seconds (0: until stopped), got ${JSON.stringify(process.env.DURATION_S)}\n`,
  );
  process.exit(2);
}
const gatewayUrl = process.env.GATEWAY_URL || "http://127.0.0.1:8080";
const base = new URL(URL.canParse(gatewayUrl) ? gatewayUrl : "invalid:");
if (base.protocol !== "http:") {
  process.stderr.write(
    `GATEWAY_URL must be the gateway's http:// URL, e.g. http://127.0.0.1:8080; got ${JSON.stringify(gatewayUrl)}\n`,
  );
  process.exit(2);
}
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
// Signed as make token signs, from the gateway's own configuration: with the development key whatever
// JWT_SECRET said, every call to a gateway started with that JWT_SECRET was a 401, and so was every call
// past its JWT_MAX_LIFETIME_S. Tokens live an hour at most and are signed again every half hour.
const config = configOrExit(() => loadConfig(process.env)); // refused as the gateway refuses it (exit 78)
const CUSTOMERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"];
const TOKEN_TTL_S = Math.min(3600, config.JWT_MAX_LIFETIME_S);
const tokens = new Map<string, string>();
const signAll = async () => {
  for (const c of CUSTOMERS) tokens.set(c, await signDevToken(config, c, ["customer"], TOKEN_TTL_S));
};
await signAll();
setInterval(() => void signAll(), (TOKEN_TTL_S / 2) * 1000).unref();
const PRODUCTS = ["coffee-beans", "ceramic-mug", "paper-filters", "pour-over-kettle", "hand-grinder"];
const run = Date.now().toString(36);
const placed: { id: string; customer: string }[] = [];
let orders = 0;

/** One Connect JSON call; resolves with the HTTP status and the parsed body. */
function call(procedure: string, body: unknown, customer: string): Promise<{ status: number; json: unknown }> {
  const payload = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: base.hostname,
        port: base.port || 80,
        method: "POST",
        path: `/${procedure}`,
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(payload),
          authorization: `Bearer ${tokens.get(customer)}`,
        },
        timeout: 30_000,
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (text += d));
        res.on("end", () => {
          try {
            resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : {} });
          } catch {
            resolve({ status: res.statusCode ?? 0, json: {} });
          }
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("no answer within 30 s")));
    req.on("error", reject);
    req.end(payload);
  });
}

type Kind = "browse" | "read" | "order";
const pick = <T>(xs: readonly T[], i: number): T => xs[i % xs.length] as T;

/** The i-th call of the mix. */
async function one(i: number): Promise<{ kind: Kind; status: number }> {
  const customer = pick(CUSTOMERS, i * 7);
  const roll = i % 20;
  if (roll < 11) {
    const r =
      roll % 2 === 0
        ? await call("shopmesh.inventory.v1.InventoryService/ListProducts", { page_size: 10 }, customer)
        : await call("shopmesh.inventory.v1.InventoryService/GetProduct", { product_id: pick(PRODUCTS, i) }, customer);
    return { kind: "browse", status: r.status };
  }
  const mine = placed.filter((p) => p.customer === customer);
  if (roll < 13 && mine.length > 0) {
    const { id } = pick(mine, i);
    return {
      kind: "read",
      status: (await call("shopmesh.order.v1.OrderService/GetOrder", { order_id: id }, customer)).status,
    };
  }
  // Counted over orders, so every outcome happens in both saga modes (20 orders of one, then 20 of the other).
  const k = orders++;
  const card = k % 10 === 3 ? "tok_decline" : k % 20 === 9 ? "tok_insufficient" : "tok_visa";
  const r = await call(
    "shopmesh.order.v1.OrderService/PlaceOrder",
    {
      idempotency_key: `load-${run}-${i}`,
      items: [{ product_id: pick(PRODUCTS, i), quantity: 1 }],
      card_token: card,
      saga_mode: Math.floor(k / 20) % 2 === 0 ? "SAGA_MODE_ORCHESTRATION" : "SAGA_MODE_CHOREOGRAPHY",
    },
    customer,
  );
  const id = (r.json as { order?: { id?: string } }).order?.id;
  if (id) {
    placed.push({ id, customer });
    if (placed.length > 500) placed.shift();
  }
  return { kind: "order", status: r.status };
}

interface Window {
  sent: number;
  done: Record<string, number>;
  latencies: number[];
}
const fresh = (): Window => ({ sent: 0, done: {}, latencies: [] });
let window = fresh();
const total = fresh();
const pct = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0) : 0;
};
const line = (w: Window, seconds: number) => {
  const outcomes = Object.entries(w.done)
    .sort()
    .map(([k, n]) => `${k} ${n}`)
    .join(", ");
  return `${(w.sent / seconds).toFixed(0)}/s sent; ${outcomes || "nothing answered"}; p50 ${pct(w.latencies, 0.5).toFixed(0)} ms, p99 ${pct(w.latencies, 0.99).toFixed(0)} ms`;
};

process.stdout.write(`load: ${rate} calls/s to ${base.origin} (55% browse, 10% read, 35% orders; Ctrl-C stops)\n`);
const started = performance.now();
/**
 * Calls waiting for their answer, at most two seconds' worth (64 at least): past that a due call is
 * counted as not sent. Against a gateway that accepts and never answers, they queued for sockets with
 * no timeout of their own, and the queue grew for as long as the load ran.
 */
const MAX_IN_FLIGHT = Math.max(64, rate * 2);
let inFlight = 0;
let i = 0;
let stopping = false;
const tick = setInterval(() => {
  // Open loop: as many calls as are due by now, however many are still in flight (up to the bound).
  const due = Math.floor(((performance.now() - started) / 1000) * rate);
  for (; i < due && !stopping; i++) {
    if (inFlight >= MAX_IN_FLIGHT) {
      for (const w of [window, total]) w.done["not sent (unanswered)"] = (w.done["not sent (unanswered)"] ?? 0) + 1;
      continue;
    }
    const t = performance.now();
    window.sent++;
    total.sent++;
    inFlight++;
    void one(i)
      .finally(() => inFlight--)
      .then(
        ({ kind, status }) => {
          const key = `${kind} ${status === 200 ? "ok" : status}`;
          for (const w of [window, total]) {
            w.done[key] = (w.done[key] ?? 0) + 1;
            w.latencies.push(performance.now() - t);
          }
        },
        (err: Error) => {
          for (const w of [window, total])
            w.done[`failed (${err.message})`] = (w.done[`failed (${err.message})`] ?? 0) + 1;
        },
      );
  }
}, 10);
const report = setInterval(() => {
  process.stdout.write(`${new Date().toISOString().slice(11, 19)}  ${line(window, 5)}\n`);
  window = fresh();
}, 5_000);

const stop = () => {
  if (stopping) process.exit(130);
  stopping = true;
  clearInterval(tick);
  clearInterval(report);
  const seconds = (performance.now() - started) / 1000;
  process.stdout.write(`\ntotal over ${seconds.toFixed(0)} s: ${line(total, seconds)}\n`);
  agent.destroy();
  process.exit(0);
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
if (durationS > 0) setTimeout(stop, durationS * 1000);
