/**
 * `npm run bench:gateway`: gateway throughput against direct gRPC, same run,
 * same machine. InventoryService.GetProduct: (a) straight to the service
 * over grpc-js, (b) through the gateway with the Connect protocol (binary,
 * HTTP/2, connect-node client), (c) through the gateway with gRPC. Closed
 * loop of concurrent callers; prints calls/s and latency percentiles and
 * writes bench/results/gateway.json. Telemetry is off on both paths (as
 * without TRACE_FILE/OTLP); the gateway still authenticates and rate-limits.
 *
 * Knobs: BENCH_SECONDS (per round, default 5), BENCH_CONCURRENCY (32).
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient as createConnectClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { startGateway } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, loadConfig as gatewayConfig } from "../gateway/config.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { createChannel, createClient, silentLogger } from "../platform/index.js";
import { startInventory } from "../services/inventory/app.js";
import { loadConfig as inventoryConfig } from "../services/inventory/config.js";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const log = silentLogger();
const dir = join(tmpdir(), `shopmesh-bench-gw-${process.pid}`);
mkdirSync(dir, { recursive: true });

const inventory = await startInventory(
  inventoryConfig({ GRPC_HOST: "127.0.0.1", GRPC_PORT: "0", DB_PATH: join(dir, "inventory.db"), NATS_URL: "off" }),
  log,
);
const gw = await startGateway(
  gatewayConfig({
    HTTP_HOST: "127.0.0.1",
    HTTP_PORT: "0",
    INVENTORY_TARGET: inventory.address,
    RATE_LIMIT_RPS: "1000000",
    RATE_LIMIT_BURST: "1000000",
    RATE_LIMIT_IP_RPS: "1000000",
    RATE_LIMIT_IP_BURST: "1000000",
  }),
  log,
);
const token = await signDevToken(
  { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
  "bench",
  ["customer"],
);
const headers = { authorization: `Bearer ${token}` };

const direct = createClient(InventoryService, createChannel(inventory.address));
// Like real gRPC clients (grpc-go, grpc-js, browsers), the HTTP/2 client sockets disable Nagle;
// node's http2.connect does not by default, which alone adds ~40 ms stalls.
const noDelay = {
  createConnection: (authority: URL) => {
    const socket = connect(Number(authority.port), authority.hostname);
    socket.setNoDelay(true);
    return socket;
  },
};
const viaConnect = createConnectClient(
  InventoryService,
  createConnectTransport({ baseUrl: gw.url, httpVersion: "2", useBinaryFormat: true, nodeOptions: noDelay }),
);
const viaGrpc = createConnectClient(InventoryService, createGrpcTransport({ baseUrl: gw.url, nodeOptions: noDelay }));
const viaHttp1 = createConnectClient(InventoryService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }));

const paths: Record<string, () => Promise<unknown>> = {
  "direct gRPC (grpc-js)": () => direct.getProduct({ productId: "coffee-beans" }),
  "gateway, Connect binary over h2c": () => viaConnect.getProduct({ productId: "coffee-beans" }, { headers }),
  "gateway, gRPC over h2c": () => viaGrpc.getProduct({ productId: "coffee-beans" }, { headers }),
  "gateway, Connect JSON over HTTP/1.1": () => viaHttp1.getProduct({ productId: "coffee-beans" }, { headers }),
};

async function round(call: () => Promise<unknown>, seconds: number) {
  const lat: number[] = [];
  const until = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (performance.now() < until) {
        const t = performance.now();
        await call();
        lat.push(performance.now() - t);
      }
    }),
  );
  lat.sort((a, b) => a - b);
  const at = (q: number) => lat[Math.min(lat.length - 1, Math.floor(q * lat.length))] ?? 0;
  return { rps: lat.length / seconds, p50_ms: at(0.5), p99_ms: at(0.99) };
}

const results: Record<string, { rps: number; p50_ms: number; p99_ms: number }> = {};
for (const call of Object.values(paths)) await round(call, 1); // warm up
for (const [name, call] of Object.entries(paths)) {
  results[name] = await round(call, SECONDS);
  const r = results[name];
  console.log(
    `${name.padEnd(34)} ${r.rps.toFixed(0).padStart(6)} calls/s  p50 ${r.p50_ms.toFixed(2)} ms  p99 ${r.p99_ms.toFixed(2)} ms`,
  );
}
const base = results["direct gRPC (grpc-js)"]?.rps ?? 1;
for (const [name, r] of Object.entries(results))
  console.log(`  ${name}: ${((r.rps / base) * 100).toFixed(0)}% of direct`);
mkdirSync("bench/results", { recursive: true });
writeFileSync(
  "bench/results/gateway.json",
  `${JSON.stringify({ when: new Date().toISOString(), seconds: SECONDS, concurrency: CONCURRENCY, results }, null, 2)}\n`,
);
await gw.stop();
await inventory.stop();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
