/**
 * `npm run bench:telemetry`: the throughput cost of tracing + metrics on a
 * simple RPC. One process, one machine, one run: InventoryService.GetProduct
 * over real gRPC on loopback, with a closed loop of concurrent callers,
 * alternating rounds with telemetry off (no spans, no metrics) and on (server
 * and client spans through a batch processor, RED histograms). Prints a table
 * and writes bench/results/telemetry.json.
 *
 * Knobs: BENCH_SECONDS (per round, default 5), BENCH_ROUNDS (per mode, 3),
 * BENCH_CONCURRENCY (32).
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ExportResultCode } from "@opentelemetry/core";
import { BatchSpanProcessor, type ReadableSpan, type SpanExporter } from "@opentelemetry/sdk-trace-base";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { configOrExit, int, num, parseEnv } from "../platform/config.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { silentLogger } from "../platform/log.js";
import { bind, startGrpcServer } from "../platform/server.js";
import { createTelemetry } from "../platform/telemetry.js";
import { startTracing } from "../platform/tracing.js";
import { createInventoryApi } from "../services/inventory/api.js";
import { DEMO_CATALOGUE } from "../services/inventory/catalogue.js";
import { InventoryStore } from "../services/inventory/store.js";

const {
  BENCH_SECONDS: SECONDS,
  BENCH_ROUNDS: ROUNDS,
  BENCH_CONCURRENCY: CONCURRENCY,
} = configOrExit(() =>
  parseEnv(
    {
      BENCH_SECONDS: num(5, { min: 0.1, max: 3_600 }),
      BENCH_ROUNDS: int(3, { min: 1, max: 100 }),
      BENCH_CONCURRENCY: int(32, { min: 1, max: 10_000 }),
    },
    process.env,
  ),
);

/** Counts spans and drops them: the cost measured is creating and batching spans, not disk or network. */
class CountingExporter implements SpanExporter {
  count = 0;
  export(spans: ReadableSpan[], done: (r: { code: ExportResultCode }) => void): void {
    this.count += spans.length;
    done({ code: ExportResultCode.SUCCESS });
  }
  async shutdown(): Promise<void> {}
}

const exporter = new CountingExporter();
const stopTracing = await startTracing({
  service: "bench",
  otlpEndpoint: "",
  traceFile: "",
  extra: [new BatchSpanProcessor(exporter)],
});
const dir = join(tmpdir(), `shopmesh-bench-${process.pid}`);
mkdirSync(dir, { recursive: true });
const store = await InventoryStore.open({ engine: "sqlite", path: join(dir, "inventory.db") });
await store.seedIfEmpty(DEMO_CATALOGUE);
const log = silentLogger();
const telemetry = createTelemetry("bench");
const impl = createInventoryApi({ store });
const plain = await startGrpcServer({ host: "127.0.0.1", port: 0, services: [bind(InventoryService, impl)], log });
const observed = await startGrpcServer({
  host: "127.0.0.1",
  port: 0,
  services: [bind(InventoryService, impl)],
  log,
  telemetry,
});
const plainClient = createClient(InventoryService, createChannel(plain.address));
const observedClient = createClient(InventoryService, createChannel(observed.address), telemetry.tracer);

async function round(client: typeof plainClient, seconds: number): Promise<{ rps: number; p50: number; p99: number }> {
  const latencies: number[] = [];
  const until = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < until) {
        const t = performance.now();
        await client.getProduct({ productId: "coffee-beans" });
        latencies.push(performance.now() - t);
      }
    }),
  );
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  return { rps: latencies.length / seconds, p50: at(0.5), p99: at(0.99) };
}

// Warm both paths (JIT, connections) before measuring.
await round(plainClient, 1);
await round(observedClient, 1);
const results: Record<"off" | "on", { rps: number; p50: number; p99: number }[]> = { off: [], on: [] };
for (let i = 0; i < ROUNDS; i++) {
  for (const mode of ["off", "on"] as const) {
    const r = await round(mode === "off" ? plainClient : observedClient, SECONDS);
    results[mode].push(r);
    process.stderr.write(
      `round ${i + 1}/${ROUNDS} telemetry ${mode.padEnd(3)} ${r.rps.toFixed(0)} calls/s  p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms\n`,
    );
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
const summary = Object.fromEntries(
  (["off", "on"] as const).map((m) => [
    m,
    {
      rps: median(results[m].map((r) => r.rps)),
      p50_ms: median(results[m].map((r) => r.p50)),
      p99_ms: median(results[m].map((r) => r.p99)),
    },
  ]),
) as Record<"off" | "on", { rps: number; p50_ms: number; p99_ms: number }>;
const cost = 1 - summary.on.rps / summary.off.rps;
console.log("\ntelemetry cost on InventoryService.GetProduct (gRPC, loopback, median of rounds)");
console.log(
  `  off: ${summary.off.rps.toFixed(0)} calls/s  p50 ${summary.off.p50_ms.toFixed(2)} ms  p99 ${summary.off.p99_ms.toFixed(2)} ms`,
);
console.log(
  `  on:  ${summary.on.rps.toFixed(0)} calls/s  p50 ${summary.on.p50_ms.toFixed(2)} ms  p99 ${summary.on.p99_ms.toFixed(2)} ms`,
);
console.log(`  throughput cost of tracing + metrics: ${(cost * 100).toFixed(1)}%  (${exporter.count} spans exported)`);
mkdirSync("bench/results", { recursive: true });
writeFileSync(
  "bench/results/telemetry.json",
  `${JSON.stringify({ when: new Date().toISOString(), seconds: SECONDS, rounds: ROUNDS, concurrency: CONCURRENCY, summary, cost, results }, null, 2)}\n`,
);
await plain.stop(0);
await observed.stop(0);
await store.close();
await stopTracing();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
