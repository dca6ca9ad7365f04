/**
 * The load generator of `make bench` (bench/harness.ts), in a process of its
 * own so it never shares an event loop or a core's time slice bookkeeping
 * with what it measures. One run, given as JSON in argv[2]:
 *
 *   { "client": "grpc" | "connect-h2" | "connect-json-h1" | "saga",
 *     "target": "127.0.0.1:PORT", "token"?: "...", "sagaMode"?: "orchestration" | "choreography",
 *     "seconds": 10, "warmupSeconds": 1,
 *     "concurrency": 64          (closed loop: that many calls always in flight)
 *     "rate": 1000               (or open loop: calls started at that fixed rate, however slow the answers) }
 *
 * Unary clients call InventoryService.GetProduct; "saga" places an order on
 * the order service and follows it with WatchOrder until the saga ends
 * (CONFIRMED or CANCELLED), so one call is one whole checkout. Open-loop
 * latency is measured from when a call was due, not when it was sent
 * (no coordinated omission). Prints one JSON line: calls, failures,
 * seconds, calls/s, p50/p90/p99 in ms, and the first failure's message.
 */
import http from "node:http";
import { connect as netConnect } from "node:net";
import { createClient as createConnectClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Metadata } from "@grpc/grpc-js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { createChannel, createClient, identityMetadata } from "../platform/index.js";

export interface LoadSpec {
  readonly client: "grpc" | "connect-h2" | "connect-json-h1" | "saga";
  readonly target: string;
  readonly token?: string;
  readonly sagaMode?: "orchestration" | "choreography";
  readonly seconds: number;
  readonly warmupSeconds?: number;
  readonly concurrency?: number;
  readonly rate?: number;
}

export interface LoadResult {
  readonly calls: number;
  readonly failures: number;
  readonly seconds: number;
  readonly rps: number;
  readonly p50_ms: number;
  readonly p90_ms: number;
  readonly p99_ms: number;
  readonly firstError?: string;
}

const PRODUCT = { productId: "coffee-beans" };
const PRODUCTS = ["coffee-beans", "ceramic-mug", "paper-filters", "pour-over-kettle"];

/** One call of `spec`'s kind; rejects on any failure. */
function caller(spec: LoadSpec): { call: (i: number) => Promise<unknown>; close: () => void } {
  const [host = "127.0.0.1", port = "0"] = spec.target.split(":");
  const auth = spec.token ? `Bearer ${spec.token}` : undefined;
  switch (spec.client) {
    case "grpc": {
      const channel = createChannel(spec.target);
      const client = createClient(InventoryService, channel);
      const md = new Metadata();
      if (auth) md.set("authorization", auth);
      return { call: () => client.getProduct(PRODUCT, { metadata: md }), close: () => channel.close() };
    }
    case "connect-h2": {
      // Nagle off, as real HTTP/2 RPC clients do (node's http2.connect leaves it on).
      const createConnection = () => netConnect({ host, port: Number(port), noDelay: true });
      const client = createConnectClient(
        InventoryService,
        createConnectTransport({
          baseUrl: `http://${spec.target}`,
          httpVersion: "2",
          useBinaryFormat: true,
          nodeOptions: { createConnection },
        }),
      );
      const headers = auth ? { authorization: auth } : undefined;
      return { call: () => client.getProduct(PRODUCT, headers ? { headers } : {}), close: () => {} };
    }
    case "connect-json-h1": {
      // A plain keep-alive HTTP/1.1 client: the cheapest honest JSON caller Node has.
      const agent = new http.Agent({ keepAlive: true, maxSockets: spec.concurrency ?? 256 });
      const body = JSON.stringify({ product_id: PRODUCT.productId });
      const headers = {
        "content-type": "application/json",
        "content-length": String(Buffer.byteLength(body)),
        ...(auth ? { authorization: auth } : {}),
      };
      const call = () =>
        new Promise<void>((resolve, reject) => {
          const req = http.request(
            {
              agent,
              host,
              port: Number(port),
              method: "POST",
              path: "/shopmesh.inventory.v1.InventoryService/GetProduct",
              headers,
            },
            (res) => {
              res.resume();
              res.once("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`))));
              res.once("error", reject);
            },
          );
          req.once("error", reject);
          req.end(body);
        });
      return { call, close: () => agent.destroy() };
    }
    case "saga": {
      const channel = createChannel(spec.target);
      const orders = createClient(OrderService, channel);
      const mode = spec.sagaMode === "choreography" ? SagaMode.CHOREOGRAPHY : SagaMode.ORCHESTRATION;
      const run = `${process.pid}-${Date.now()}`;
      const call = async (i: number) => {
        const metadata = identityMetadata({ subject: `bench-${i % 64}`, roles: ["customer"] });
        const { order } = await orders.placeOrder(
          {
            idempotencyKey: `${run}-${i}`,
            items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 }],
            cardToken: "tok_visa",
            sagaMode: mode,
          },
          { metadata },
        );
        const id = order?.id ?? "";
        const ended = (s: OrderStatus | undefined) => s === OrderStatus.CONFIRMED || s === OrderStatus.CANCELLED;
        if (ended(order?.status)) return;
        const signal = AbortSignal.timeout(30_000);
        for await (const { order: o } of orders.watchOrder({ orderId: id }, { metadata, signal })) {
          if (ended(o?.status)) return;
        }
        throw new Error(`order ${id}: the watch ended before the saga did`);
      };
      return { call, close: () => channel.close() };
    }
  }
}

const percentile = (sorted: readonly number[], q: number) =>
  Math.round((sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0) * 100) / 100;

/** Runs `spec` and returns its numbers. */
export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const { call, close } = caller(spec);
  let n = 0;
  let failures = 0;
  let firstError: string | undefined;
  const latencies: number[] = [];
  const one = async (due: number, record: boolean) => {
    try {
      await call(n++);
      if (record) latencies.push(performance.now() - due);
    } catch (err) {
      if (!record) return;
      failures++;
      firstError ??= (err as Error).message;
    }
  };
  const phase = async (seconds: number, record: boolean) => {
    const end = performance.now() + seconds * 1000;
    if (spec.rate) {
      // Open loop: call k is due at start + k/rate, sent then whatever is still in flight.
      const start = performance.now();
      const inFlight = new Set<Promise<void>>();
      for (let k = 0; ; k++) {
        const due = start + (k * 1000) / spec.rate;
        if (due >= end) break;
        const wait = due - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        const p = one(due, record).finally(() => inFlight.delete(p));
        inFlight.add(p);
      }
      await Promise.all(inFlight);
      return;
    }
    await Promise.all(
      Array.from({ length: spec.concurrency ?? 1 }, async () => {
        while (performance.now() < end) await one(performance.now(), record);
      }),
    );
  };
  if (spec.warmupSeconds) await phase(spec.warmupSeconds, false);
  const started = performance.now();
  await phase(spec.seconds, true);
  const seconds = (performance.now() - started) / 1000;
  close();
  latencies.sort((a, b) => a - b);
  return {
    calls: latencies.length,
    failures,
    seconds: Math.round(seconds * 100) / 100,
    rps: Math.round(latencies.length / seconds),
    p50_ms: percentile(latencies, 0.5),
    p90_ms: percentile(latencies, 0.9),
    p99_ms: percentile(latencies, 0.99),
    ...(firstError ? { firstError } : {}),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const spec = JSON.parse(process.argv[2] ?? "{}") as LoadSpec;
  process.stdout.write(`${JSON.stringify(await runLoad(spec))}\n`);
  process.exit(0);
}
