/**
 * The load generator of `bench/scale-out.ts`, in a process of its own so it
 * does not share an event loop with what it measures: a closed loop of
 * BENCH_CONCURRENCY callers placing orders (both saga modes, alternating)
 * on the order replicas in ORDER_ADDRESSES (comma-separated) for
 * BENCH_SECONDS, through a resilient client (round robin over the replicas).
 * Prints one JSON line: calls, failures, seconds, latency percentiles.
 */
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { identityMetadata } from "../platform/identity.js";
import { silentLogger } from "../platform/log.js";
import { DEFAULT_POLICY } from "../platform/policy-config.js";
import { createResilientClient } from "../platform/resilience.js";

const addresses = (process.env.ORDER_ADDRESSES ?? "").split(",").filter(Boolean);
const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const concurrency = Number(process.env.BENCH_CONCURRENCY ?? 16);
const run = process.env.BENCH_RUN ?? String(process.pid);
if (addresses.length === 0) throw new Error("ORDER_ADDRESSES is empty");

const orders = createResilientClient(
  "order",
  OrderService,
  `ipv4:${addresses.join(",")}`,
  { ...DEFAULT_POLICY, bulkheadLimit: concurrency, bulkheadQueue: concurrency, timeoutMs: 10_000 },
  silentLogger(),
);
const products = ["coffee-beans", "ceramic-mug", "paper-filters", "pour-over-kettle"];
const latencies: number[] = [];
let failures = 0;
let n = 0;
const started = performance.now();
const end = started + seconds * 1000;
await Promise.all(
  Array.from({ length: concurrency }, async (_, worker) => {
    const metadata = identityMetadata({ subject: `bench-${worker}`, roles: ["customer"] });
    while (performance.now() < end) {
      const i = n++;
      const t = performance.now();
      try {
        await orders.placeOrder(
          {
            idempotencyKey: `${run}-${i}`,
            items: [{ productId: products[i % products.length] ?? "coffee-beans", quantity: 1 }],
            cardToken: "tok_visa",
            sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
          },
          { metadata },
        );
        latencies.push(performance.now() - t);
      } catch {
        failures++;
      }
    }
  }),
);
const elapsed = (performance.now() - started) / 1000;
orders.close();
latencies.sort((a, b) => a - b);
const p = (q: number) => Math.round((latencies[Math.floor(q * (latencies.length - 1))] ?? 0) * 10) / 10;
process.stdout.write(
  `${JSON.stringify({ calls: latencies.length, failures, seconds: elapsed, p50: p(0.5), p99: p(0.99) })}\n`,
);
process.exit(0);
