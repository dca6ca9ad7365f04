/**
 * `make compare`: the trade-offs the patterns text (sections 4-2 to 4-6)
 * describes in words, measured on this machine, same system, same run:
 *
 *   1. orchestration vs choreography (4-3)
 *   2. synchronous vs asynchronous calls under a payment outage (4-2)
 *   3. API composition vs the CQRS read model (4-6)
 *   4. resilience policies on vs off with payment slow and flaky (4-4)
 *
 * Each experiment runs against the system as `make run` starts it
 * (bench/system.ts), with the load in processes of their own
 * (bench/load.ts), and writes its table into README.md and its chart as
 * SVG under the output directory, plus every number in results.json.
 *
 *   QUICK=1        short rounds (~1.5 min: 78 s in CI on 2 cores, alone; what CI runs)
 *   COMPARE_OUT    output directory (default docs/compare; with QUICK=1,
 *                  bench/results/compare-quick, so a quick run never
 *                  replaces the committed full one)
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join, relative } from "node:path";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { HistoryService } from "../gen/shopmesh/history/v1/history_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { ROOT } from "../scripts/layout.js";
import type { CallRecord, LoadResult, LoadSpec } from "./load.js";
import { load, type ProcessName, restock, SERVICES, type ServiceName, type System, startSystem } from "./system.js";

const QUICK = process.env.QUICK === "1";
const OUT =
  process.env.COMPARE_OUT ?? join(ROOT, ...(QUICK ? ["bench", "results", "compare-quick"] : ["docs", "compare"]));
/** A duration or a size: the full run's, or the quick run's. */
const q = (full: number, quick: number) => (QUICK ? quick : full);
const MODES = ["orchestration", "choreography"] as const;
type Mode = (typeof MODES)[number];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const round = (v: number, digits = 1) => Math.round(v * 10 ** digits) / 10 ** digits;
const started = Date.now();

function say(line: string): void {
  process.stdout.write(`[${((Date.now() - started) / 1000).toFixed(0).padStart(3)} s] ${line}\n`);
}

const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
const READER = "compare-reader";
const loadToken = await signDevToken(claims, "bench", ["customer"]);
const readerToken = await signDevToken(claims, READER, ["customer"]);

// ---------------------------------------------------------------- observation

/** Sums the samples of metric `name` in Prometheus text whose labels pass `where`. */
function sumMetric(text: string, name: string, where: (labels: string) => boolean = () => true): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    const labels = rest.startsWith("{") ? rest.slice(1, rest.indexOf("}")) : "";
    if (!(rest.startsWith("{") || rest.startsWith(" ")) || !where(labels)) continue;
    const value = Number(rest.slice(rest.lastIndexOf(" ") + 1));
    if (Number.isFinite(value)) sum += value;
  }
  return sum;
}

interface Snapshot {
  readonly at: number;
  readonly cpu: Record<ProcessName, number>;
  readonly metrics: Record<ServiceName, string>;
  readonly nats: { in_msgs: number };
}

async function snapshot(sys: System): Promise<Snapshot> {
  const metrics = Object.fromEntries(
    await Promise.all(
      SERVICES.map(async (s) => [s, await (await fetch(`${sys.observeUrlOf(s)}/metrics`)).text()] as const),
    ),
  ) as Record<ServiceName, string>;
  const nats = (await (await fetch(`${sys.observeUrlOf("nats")}/varz`)).json()) as { in_msgs: number };
  return { at: performance.now(), cpu: sys.cpu(), metrics, nats };
}

/** What the system did between two snapshots, per order. */
function perOrder(a: Snapshot, b: Snapshot, orders: number) {
  const total = (name: string, where?: (labels: string) => boolean) =>
    SERVICES.reduce((s, svc) => s + sumMetric(b.metrics[svc], name, where) - sumMetric(a.metrics[svc], name, where), 0);
  const cpuBy = Object.fromEntries(
    (Object.keys(b.cpu) as ProcessName[]).map((p) => [p, round(((b.cpu[p] - a.cpu[p]) * 1000) / orders, 2)]),
  ) as Record<ProcessName, number>;
  return {
    cpu_ms: round(
      Object.values(cpuBy).reduce((s, v) => s + v, 0),
      2,
    ),
    cpu_ms_by_process: cpuBy,
    grpc_calls: round(total("rpc_client_duration_seconds_count") / orders, 2),
    events: round(total("events_published_total") / orders, 2),
    nats_messages: round((b.nats.in_msgs - a.nats.in_msgs) / orders, 1),
  };
}

/** Caller-side failed calls to payment, breaker openings and bulkhead rejections between two snapshots (the order service's view). */
function paymentFailures(a: Snapshot, b: Snapshot) {
  const d = (name: string, where: (l: string) => boolean) =>
    sumMetric(b.metrics.order, name, where) - sumMetric(a.metrics.order, name, where);
  return {
    failed_calls: d(
      "rpc_client_duration_seconds_count",
      (l) => l.includes('downstream="payment"') && !l.includes('code="OK"'),
    ),
    breaker_opened: d(
      "circuit_breaker_transitions_total",
      (l) => l.includes('downstream="payment"') && l.includes('to="open"'),
    ),
    bulkhead_rejected: d("bulkhead_rejected_total", (l) => l.includes('downstream="payment"')),
  };
}

function chaos(sys: System, service: ServiceName) {
  const channel = createChannel(sys.addressOf(service));
  const client = createClient(ChaosService, channel);
  const metadata = identityMetadata({ subject: "compare-operator", roles: ["admin"] });
  return {
    set: (faults: { down?: boolean; latencyMs?: number; errorRate?: number }) =>
      client.setFaults({ faults }, { metadata }),
    resilience: () => client.getResilience({}, { metadata }),
    close: () => channel.close(),
  };
}

const sagaSpec = (sys: System, sagaMode: Mode, rest: Partial<LoadSpec>): LoadSpec => ({
  client: "saga",
  target: sys.addressOf("order"),
  sagaMode,
  seconds: 1,
  ...rest,
});

function pct(sorted: readonly number[], p: number): number {
  return sorted.length ? (sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0) : 0;
}

// ---------------------------------------------------------------- 1. orchestration vs choreography

async function sagaModes(sys: System) {
  const rate = q(40, 20);
  const rows = [];
  for (const mode of MODES) {
    say(`1. ${mode}: 1 in flight`);
    const one = await load(sagaSpec(sys, mode, { concurrency: 1, seconds: q(10, 1), warmupSeconds: q(1, 0.3) }));
    say(`1. ${mode}: ${rate} orders/s`);
    const fixed = await load(sagaSpec(sys, mode, { rate, seconds: q(10, 1) }));
    // Costs over the saturated round, where the system's idle work (pollers, heartbeats) weighs least.
    say(`1. ${mode}: saturated (32 in flight)`);
    const a = await snapshot(sys);
    const saturated = await load(sagaSpec(sys, mode, { concurrency: 32, seconds: q(10, 1) }));
    await sleep(1_000); // the events of the round's last orders are consumed (history, notification)
    const costs = perOrder(a, await snapshot(sys), saturated.calls + saturated.failures);
    say(`1. ${mode}: declined card, 1 in flight`);
    const declined = await load(
      sagaSpec(sys, mode, { concurrency: 1, cardToken: "tok_decline", seconds: q(8, 1), warmupSeconds: q(0.5, 0.2) }),
    );
    rows.push({ mode, one, fixed, rate, costs, saturated, declined });
  }
  return rows;
}

// ---------------------------------------------------------------- 2. sync vs async under a payment outage

async function outage(sys: System) {
  const rate = q(20, 10);
  const seconds = q(36, 5);
  const downAt = q(8, 1) * 1000;
  const upAt = downAt + q(10, 1.5) * 1000;
  const payment = chaos(sys, "payment");
  const rows = [];
  try {
    for (const mode of MODES) {
      say(`2. ${mode}: ${rate} orders/s for ${seconds} s, payment down from ${downAt / 1000} s to ${upAt / 1000} s`);
      const startAt = Date.now() + 1_500; // the load generator's start-up is not part of the timeline
      const a = await snapshot(sys);
      const running = load(sagaSpec(sys, mode, { rate, seconds, records: true, startAt }));
      await sleep(startAt + downAt - Date.now());
      await payment.set({ down: true });
      await sleep(startAt + upAt - Date.now());
      await payment.set({});
      const result = await running;
      const failures = paymentFailures(a, await snapshot(sys));
      rows.push({
        mode,
        rate,
        seconds,
        startAt,
        downAt,
        upAt,
        result,
        ...failures,
        ...outageNumbers(result, startAt, downAt, upAt),
      });
      await sleep(q(6_000, 1_000)); // the breaker closes again and the backlog of events is gone
    }
  } finally {
    await payment.set({}).catch(() => {});
    payment.close();
  }
  return rows;
}

function outageNumbers(r: LoadResult, startAt: number, downAt: number, upAt: number) {
  const recs = r.records ?? [];
  const during = recs.filter((c) => c.at >= startAt + downAt && c.at < startAt + upAt);
  const ended = (c: CallRecord) => c.at + c.ms;
  const affected = recs.filter((c) => c.at < startAt + upAt && ended(c) >= startAt + downAt);
  const lastAffected = Math.max(startAt + upAt, ...affected.map(ended));
  const count = (cs: readonly CallRecord[], outcome: string) => cs.filter((c) => c.outcome === outcome).length;
  // Orders that reached CONFIRMED, per second of the run, by when they ended.
  const perSecond = new Map<number, number>();
  for (const c of recs) {
    if (c.outcome !== "CONFIRMED") continue;
    const s = Math.floor((ended(c) - startAt) / 1000);
    perSecond.set(s, (perSecond.get(s) ?? 0) + 1);
  }
  const lastSecond = Math.max(0, ...perSecond.keys());
  const latencies = during.map((c) => c.ms).sort((x, y) => x - y);
  return {
    placed: recs.length,
    placed_during: during.length,
    client_errors: count(recs, "error"),
    confirmed: count(recs, "CONFIRMED"),
    cancelled: count(recs, "CANCELLED"),
    confirmed_during: count(during, "CONFIRMED"),
    cancelled_during: count(during, "CANCELLED"),
    p50_during_ms: pct(latencies, 0.5),
    max_during_ms: latencies[latencies.length - 1] ?? 0,
    drain_ms: Math.round(lastAffected - (startAt + upAt)),
    confirmed_per_second: Array.from({ length: lastSecond + 1 }, (_, s) => perSecond.get(s) ?? 0),
  };
}

// ---------------------------------------------------------------- 3. API composition vs CQRS

async function readModels(sys: System) {
  const orderCh = createChannel(sys.addressOf("order"));
  const historyCh = createChannel(sys.addressOf("history"));
  const orders = createClient(OrderService, orderCh);
  const history = createClient(HistoryService, historyCh);
  const metadata = identityMetadata({ subject: READER, roles: ["customer"] });
  const n = q(30, 6);
  say(`3. ${n} orders, each watched to CONFIRMED, then the read model polled until it shows it`);
  const staleness: number[] = [];
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const { order } = await orders.placeOrder(
      {
        idempotencyKey: `compare-${started}-${i}`,
        items: [{ productId: "coffee-beans", quantity: 1 }],
        cardToken: "tok_visa",
      },
      { metadata },
    );
    const id = order?.id ?? "";
    ids.push(id);
    let confirmedAt = 0;
    for await (const { order: o } of orders.watchOrder(
      { orderId: id },
      { metadata, signal: AbortSignal.timeout(30_000) },
    )) {
      if (o?.status === OrderStatus.CONFIRMED) {
        confirmedAt = performance.now();
        break;
      }
      if (o?.status === OrderStatus.CANCELLED) throw new Error(`order ${id} was cancelled: ${o.statusReason}`);
    }
    for (const until = performance.now() + 30_000; ; await sleep(2)) {
      const { entries } = await history.listOrderHistory({ pageSize: 5 }, { metadata });
      if (entries.some((e) => e.orderId === id && e.status === OrderStatus.CONFIRMED)) break;
      if (performance.now() > until) throw new Error(`order ${id} not CONFIRMED in the read model after 30 s`);
    }
    staleness.push(performance.now() - confirmedAt);
  }
  orderCh.close();
  historyCh.close();
  staleness.sort((a, b) => a - b);

  const gateway = sys.addressOf("gateway");
  const reads = async (label: string) => {
    const spec = { target: gateway, token: readerToken, concurrency: 4, seconds: q(8, 1), warmupSeconds: q(1, 0.2) };
    say(`3. reads, ${label}: GetOrderDetails (composition) and ListOrderHistory (read model), 4 in flight`);
    const details = await load({ ...spec, client: "details", orderIds: ids });
    const hist = await load({ ...spec, client: "history" });
    return { condition: label, details, history: hist };
  };
  const conditions = [await reads("all services up")];
  for (const service of ["payment", "inventory"] as const) {
    const c = chaos(sys, service);
    try {
      await c.set({ down: true });
      conditions.push(await reads(`${service} down`));
    } finally {
      await c.set({});
      c.close();
    }
  }
  return {
    orders: n,
    staleness_ms: {
      p50: round(pct(staleness, 0.5)),
      p99: round(pct(staleness, 0.99)),
      max: round(staleness[staleness.length - 1] ?? 0),
    },
    conditions,
  };
}

// ---------------------------------------------------------------- 4. resilience on vs off

/** The order service's policies for payment switched off: one attempt, no breaker, no bulkhead, no saga-level retry. */
const RESILIENCE_OFF = {
  PAYMENT_RETRY_MAX_ATTEMPTS: "1",
  PAYMENT_BREAKER_CONSECUTIVE_FAILURES: "1000",
  PAYMENT_BULKHEAD_LIMIT: "10000",
  PAYMENT_BULKHEAD_QUEUE: "100000",
  SAGA_STEP_BUDGET_MS: "100",
};

const FAULTS = [
  { name: "healthy", faults: {} },
  { name: "slow (+1.5 s)", faults: { latencyMs: 1_500 } },
  { name: "flaky (30% UNAVAILABLE)", faults: { errorRate: 0.3 } },
] as const;

async function resilience(policies: "on" | "off") {
  const sys = await startSystem({
    telemetry: true,
    token: loadToken,
    observe: true,
    ...(policies === "off" ? { env: { order: RESILIENCE_OFF } } : {}),
  });
  const rate = q(40, 30);
  const seconds = q(10, 1);
  const rows = [];
  try {
    await restock(sys);
    const payment = chaos(sys, "payment");
    const order = chaos(sys, "order");
    for (const f of FAULTS) {
      say(`4. policies ${policies}, payment ${f.name}: ${rate} orders/s and ListOrders at 20/s for ${seconds} s`);
      await payment.set(f.faults);
      const before = await snapshot(sys);
      let peakInFlight = 0;
      let peakQueued = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          const { downstreams } = await order.resilience();
          const p = downstreams.find((d) => d.name === "payment");
          peakInFlight = Math.max(peakInFlight, p?.inFlight ?? 0);
          peakQueued = Math.max(peakQueued, p?.queued ?? 0);
          await sleep(100);
        }
      })();
      const [checkout, unrelated] = await Promise.all([
        load(sagaSpec(sys, "orchestration", { rate, seconds })),
        load({ client: "orders", target: sys.addressOf("order"), rate: 20, seconds }),
      ]);
      sampling = false;
      await sampler;
      const { breaker_opened, bulkhead_rejected } = paymentFailures(before, await snapshot(sys));
      await payment.set({});
      rows.push({
        policies,
        fault: f.name,
        rate,
        checkout,
        unrelated,
        success: round((checkout.outcomes.CONFIRMED ?? 0) / Math.max(1, checkout.calls + checkout.failures), 3),
        peak_in_flight: peakInFlight,
        peak_queued: peakQueued,
        bulkhead_rejected,
        breaker_opened,
      });
      await sleep(q(2_000, 500));
    }
    payment.close();
    order.close();
  } finally {
    await sys.stop();
  }
  return rows;
}

// ---------------------------------------------------------------- the run

say(
  `make compare${QUICK ? " (QUICK)" : ""}: ${cpus().length} cores, Node ${process.version}; writing ${relative(ROOT, OUT) || OUT}`,
);
const sys = await startSystem({ telemetry: true, token: loadToken, observe: true });
let saga: Awaited<ReturnType<typeof sagaModes>>;
let sync: Awaited<ReturnType<typeof outage>>;
let reads: Awaited<ReturnType<typeof readModels>>;
try {
  await restock(sys);
  saga = await sagaModes(sys);
  sync = await outage(sys);
  reads = await readModels(sys);
} finally {
  await sys.stop();
}
const policies = [...(await resilience("on")), ...(await resilience("off"))];
const results = {
  when: new Date().toISOString(),
  quick: QUICK,
  machine: { cores: cpus().length, cpu: cpus()[0]?.model ?? "", node: process.version },
  seconds: Math.round((Date.now() - started) / 1000),
  saga,
  sync: sync.map(({ result, ...r }) => ({ ...r, checkouts: { ...result, records: undefined } })),
  reads,
  policies,
  /** What "off" set for the order service in section 4. */
  resilienceOff: RESILIENCE_OFF,
};
mkdirSync(OUT, { recursive: true });
writeFileSync(join(OUT, "results.json"), `${JSON.stringify(results, null, 2)}\n`);
const { render } = await import("./compare-report.js");
for (const [file, text] of Object.entries(render(results))) writeFileSync(join(OUT, file), text);
say(`wrote ${relative(ROOT, join(OUT, "README.md"))}, 4 charts and results.json`);
process.exit(0);

export type CompareResults = typeof results;
