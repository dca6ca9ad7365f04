/**
 * The load generator of `make bench` (bench/harness.ts), in a process of its
 * own so it never shares an event loop or a core's time slice bookkeeping
 * with what it measures. One run, given as JSON in argv[2]:
 *
 *   { "client": "grpc" | "connect-h2" | "connect-json-h1" | "rest-h1" | "saga" | "details" | "history" | "orders",
 *     "target": "127.0.0.1:PORT", "token"?: "...", "sagaMode"?: "orchestration" | "choreography",
 *     "cardToken"?: "tok_decline", "orderIds"?: ["..."], "records"?: true, "startAt"?: <epoch ms>,
 *     "seconds": 10, "warmupSeconds": 1,
 *     "concurrency": 64          (closed loop: that many calls always in flight)
 *     "rate": 1000               (or open loop: calls started at that fixed rate, however slow the answers) }
 *
 * Unary clients call InventoryService.GetProduct ("rest-h1" as its REST path,
 * GET /v1/products/{id}, which the gateway transcodes); "saga" places an order on
 * the order service and follows it with WatchOrder until the saga ends
 * (CONFIRMED or CANCELLED), so one call is one whole checkout, and its
 * outcome is the order's end status. Through the gateway, "details" asks
 * for the composed GetOrderDetails of `orderIds` in turn (outcome "partial"
 * when a part is missing) and "history" for a page of the CQRS read model
 * (ListOrderHistory); "orders" lists the caller's orders on the order
 * service itself. Open-loop latency is measured from when a call was due,
 * not when it was sent (no coordinated omission). Prints one JSON line:
 * calls, failures, seconds, calls/s, p50/p90/p95/p99 in ms, outcomes by
 * name, the first failure's message, and with `records` every measured
 * call (when it was due, epoch ms; its latency; its outcome).
 */
import http from "node:http";
import { connect as netConnect } from "node:net";
import { Metadata } from "@grpc/grpc-js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { GatewayService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { HistoryService } from "../gen/shopmesh/history/v1/history_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
// The two modules it uses, not platform/index.js: that loads the whole runtime (bus, databases,
// telemetry), ~0.4 s of CPU at the start of every round, which make compare starts dozens of.
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";

export interface LoadSpec {
  readonly client: "grpc" | "connect-h2" | "connect-json-h1" | "rest-h1" | "saga" | "details" | "history" | "orders";
  readonly target: string;
  readonly token?: string;
  readonly sagaMode?: "orchestration" | "choreography";
  /** The saga's card (default tok_visa; tok_decline is declined). */
  readonly cardToken?: string;
  /** Orders whose details "details" asks for, in turn. */
  readonly orderIds?: readonly string[];
  /** Return every measured call, not only the summary. */
  readonly records?: boolean;
  /** Epoch ms to start at (after the warm-up), so a run lines up with changes made to the system meanwhile. */
  readonly startAt?: number;
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
  readonly p95_ms: number;
  readonly p99_ms: number;
  /** Successful calls by outcome, for clients that name one (a saga's end status, "partial" details). */
  readonly outcomes: Readonly<Record<string, number>>;
  readonly firstError?: string;
  readonly records?: readonly CallRecord[];
}

/** One measured call: when it was due (epoch ms), how long it took, how it ended ("error" for a failure). */
export interface CallRecord {
  readonly at: number;
  readonly ms: number;
  readonly outcome: string;
}

const PRODUCT = { productId: "coffee-beans" };
const PRODUCTS = ["coffee-beans", "ceramic-mug", "paper-filters", "pour-over-kettle"];

/** One call of `spec`'s kind, resolving with its outcome when it names one; rejects on any failure. */
async function caller(spec: LoadSpec): Promise<{ call: (i: number) => Promise<unknown>; close: () => void }> {
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
      // Loaded by the one client that needs it: ~0.2 s of CPU off every other round's start.
      const { createClient: createConnectClient } = await import("@connectrpc/connect");
      const { createConnectTransport } = await import("@connectrpc/connect-node");
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
    case "connect-json-h1":
    case "rest-h1": {
      // A plain keep-alive HTTP/1.1 client: the cheapest honest JSON caller Node has.
      const agent = new http.Agent({ keepAlive: true, maxSockets: spec.concurrency ?? 256 });
      const rest = spec.client === "rest-h1";
      const body = rest ? "" : JSON.stringify({ product_id: PRODUCT.productId });
      const headers = {
        ...(rest ? {} : { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) }),
        ...(auth ? { authorization: auth } : {}),
      };
      const call = () =>
        new Promise<void>((resolve, reject) => {
          const req = http.request(
            {
              agent,
              host,
              port: Number(port),
              method: rest ? "GET" : "POST",
              path: rest ? `/v1/products/${PRODUCT.productId}` : "/shopmesh.inventory.v1.InventoryService/GetProduct",
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
            cardToken: spec.cardToken ?? "tok_visa",
            sagaMode: mode,
          },
          { metadata },
        );
        const id = order?.id ?? "";
        const ended = (s: OrderStatus | undefined) => s === OrderStatus.CONFIRMED || s === OrderStatus.CANCELLED;
        if (ended(order?.status)) return OrderStatus[order?.status ?? 0];
        // Beyond the longest a saga may take (its step budget and compensation).
        const signal = AbortSignal.timeout(90_000);
        for await (const { order: o } of orders.watchOrder({ orderId: id }, { metadata, signal })) {
          if (ended(o?.status)) return OrderStatus[o?.status ?? 0];
        }
        throw new Error(`order ${id}: the watch ended before the saga did`);
      };
      return { call, close: () => channel.close() };
    }
    case "details":
    case "history": {
      const channel = createChannel(spec.target);
      const md = new Metadata();
      if (auth) md.set("authorization", auth);
      if (spec.client === "history") {
        const history = createClient(HistoryService, channel);
        return {
          call: () => history.listOrderHistory({ pageSize: 20 }, { metadata: md }),
          close: () => channel.close(),
        };
      }
      const ids = spec.orderIds ?? [];
      if (ids.length === 0) throw new Error("details: orderIds is empty");
      const gateway = createClient(GatewayService, channel);
      const call = async (i: number) => {
        const { missing } = await gateway.getOrderDetails({ orderId: ids[i % ids.length] ?? "" }, { metadata: md });
        return missing.length > 0 ? "partial" : "complete";
      };
      return { call, close: () => channel.close() };
    }
    case "orders": {
      const channel = createChannel(spec.target);
      const orders = createClient(OrderService, channel);
      const metadata = identityMetadata({ subject: "bench-reader", roles: ["customer"] });
      return { call: () => orders.listOrders({ pageSize: 10 }, { metadata }), close: () => channel.close() };
    }
  }
}

const percentile = (sorted: readonly number[], q: number) =>
  Math.round((sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0) * 100) / 100;

/** Runs `spec` and returns its numbers. */
export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const { call, close } = await caller(spec);
  let n = 0;
  let failures = 0;
  let firstError: string | undefined;
  const latencies: number[] = [];
  const outcomes: Record<string, number> = {};
  const records: CallRecord[] = [];
  // performance.now() is monotonic; records say when in wall-clock time, for whoever changed the system meanwhile.
  const epoch = Date.now() - performance.now();
  const one = async (due: number, record: boolean) => {
    try {
      const outcome = await call(n++);
      if (!record) return;
      const ms = performance.now() - due;
      latencies.push(ms);
      if (typeof outcome === "string") outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
      if (spec.records)
        records.push({ at: Math.round(epoch + due), ms: Math.round(ms), outcome: String(outcome ?? "ok") });
    } catch (err) {
      if (!record) return;
      failures++;
      firstError ??= (err as Error).message;
      if (spec.records)
        records.push({ at: Math.round(epoch + due), ms: Math.round(performance.now() - due), outcome: "error" });
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
  if (spec.startAt) await new Promise((r) => setTimeout(r, Math.max(0, (spec.startAt ?? 0) - Date.now())));
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
    p95_ms: percentile(latencies, 0.95),
    p99_ms: percentile(latencies, 0.99),
    outcomes,
    ...(firstError ? { firstError } : {}),
    ...(spec.records ? { records } : {}),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const spec = JSON.parse(process.argv[2] ?? "{}") as LoadSpec;
  process.stdout.write(`${JSON.stringify(await runLoad(spec))}\n`);
  process.exit(0);
}
