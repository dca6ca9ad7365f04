/**
 * Where the repository is, and how `make run` (and `make bench`) start a
 * process: the compiled JavaScript in dist/ that `make build` writes
 * (esbuild, about a second; rebuilt when a source changes), not TypeScript
 * compiled at start by tsx — which would cost every process seconds of start
 * and ~90 MB of memory. The services and the gateway run one bundle each
 * (dist/services/<name>/main.js, dist/gateway/main.js, and the chunks they
 * share in dist/chunks). No source maps by
 * default (they cost ~19 MB per process): set NODE_OPTIONS=--enable-source-maps
 * for stack traces in TypeScript lines.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { DEFAULT_PORTS } from "../contracts/ports.js";

/** The repository root: the nearest folder above this file with a package.json (dist/ has none). */
export const ROOT = (() => {
  for (let dir = import.meta.dirname; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "package.json"))) return dir;
    if (dirname(dir) === dir) throw new Error(`no package.json above ${import.meta.dirname}`);
  }
})();

/**
 * The local system's processes and their default ports (`make run`'s; `<NAME>_PORT` and
 * `<NAME>_METRICS_PORT` move them): the one list `make run`, `make bench` and the tests that start or
 * watch the whole system read. A new service goes here.
 */
export const SYSTEM = [
  { name: "inventory", port: DEFAULT_PORTS.inventory, metrics: 9101 },
  { name: "payment", port: DEFAULT_PORTS.payment, metrics: 9102 },
  { name: "order", port: DEFAULT_PORTS.order, metrics: 9103 },
  { name: "notification", port: DEFAULT_PORTS.notification, metrics: 9104 },
  { name: "history", port: DEFAULT_PORTS.history, metrics: 9105 },
  { name: "gateway", port: 8080, metrics: 9100 },
] as const;
/**
 * The port in environment variable `variable`, or `fallback` when it is unset or empty; anything but a
 * port ends the command with exit code 2 and a line naming the variable (the runner's and the history
 * rebuild's: a PG_PORT=abc reached a socket and ended in a stack trace).
 */
export function portOf(variable: string, fallback: number): number {
  const raw = process.env[variable];
  if (raw === undefined || raw === "") return fallback;
  // Decimal digits, as the services read a port (platform/config.ts): Number() took 0x4A39 for 19001.
  const n = /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    process.stderr.write(`${variable} must be a port (1..65535), got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return n;
}

/** `<NAME>_REPLICAS` (default 1), or a line naming the variable and exit 2 when it is not 1..5. */
export function replicaCount(name: string): number {
  const raw = process.env[`${name.toUpperCase()}_REPLICAS`];
  const n = raw === undefined || raw === "" ? 1 : /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isInteger(n) || n < 1 || n > 5) {
    process.stderr.write(`${name.toUpperCase()}_REPLICAS must be 1..5, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  return n;
}

/** Where make run's services keep their data (`DB`: sqlite, the default, or postgres), or a line and exit 2. */
export function dbOf(): "sqlite" | "postgres" {
  const db = process.env.DB || "sqlite";
  if (db === "sqlite" || db === "postgres") return db;
  process.stderr.write(`DB must be sqlite or postgres, got ${JSON.stringify(db)}\n`);
  process.exit(2);
}

/** The services (every process of {@link SYSTEM} but the gateway). */
export const SERVICE_NAMES = SYSTEM.flatMap((p) => (p.name === "gateway" ? [] : [p.name]));

/**
 * How much memory V8 may take in each of the system's processes, as measured
 * with `make footprint` (bench/footprint.ts) and `make bench` in one window
 * (docs/performance.md):
 *
 * - `semiSpaceMb`, the largest young generation (one of its two semi-spaces):
 *   V8's default is 16 MB, which it grows to as soon as start-up or load
 *   allocates, and keeps while the process idles. The gateway and inventory
 *   serve the hot read paths (every gateway call, GetProduct) at thousands of
 *   calls a second and keep 8 MB: at 4 their scavenges cost ~8% of the
 *   gateway's throughput and ~12% of direct gRPC's, at 8 nothing beyond this
 *   machine's noise. The saga's processes run at 4: payment at 2 and
 *   notification and history at 1 saved ~16 MB after a minute of `make load`
 *   but, once the group commit had made the saga cheaper, cost 10–18% of its
 *   throughput with telemetry on (two alternating pairs).
 * - `heapGrowingPercent`, how far past what survived its last full collection
 *   the old generation may grow before the next (V8 picks 10–300% from how
 *   fast the process allocates; its first pick, at start-up, is ~300%, so the
 *   order service's old generation reached ~50 MB of mostly garbage over ~15
 *   MB live before its first full collection under `make load`). Set for the
 *   saga's processes only: on the gateway and inventory, whose read paths
 *   allocate fastest, 50% cost 12–23% of throughput; on the saga's, nothing
 *   measurable. No cap on the heap: `--max-old-space-size=256` does the same
 *   with 30% for every process and cost 7–29% on every path.
 */
interface HeapLimits {
  readonly semiSpaceMb: number;
  readonly heapGrowingPercent?: number;
}
const HEAP_LIMITS: Readonly<Record<string, HeapLimits>> = {
  "gateway/main.ts": { semiSpaceMb: 8 },
  "services/inventory/main.ts": { semiSpaceMb: 8 },
  "services/order/main.ts": { semiSpaceMb: 4, heapGrowingPercent: 50 },
  "services/payment/main.ts": { semiSpaceMb: 4, heapGrowingPercent: 50 },
  "services/notification/main.ts": { semiSpaceMb: 4, heapGrowingPercent: 50 },
  "services/history/main.ts": { semiSpaceMb: 4, heapGrowingPercent: 50 },
};

/**
 * The V8 flags of `main` when it is a service or the gateway (wherever it is started: `make run`,
 * `make bench`): its young generation and, for the saga's processes, how far its old generation
 * grows between full collections (HEAP_LIMITS). Nothing for any other script.
 */
export function systemNodeFlags(main: string): readonly string[] {
  const limits = HEAP_LIMITS[main.split("\\").join("/")];
  if (limits === undefined) return [];
  return [
    `--max-semi-space-size=${limits.semiSpaceMb}`,
    ...(limits.heapGrowingPercent === undefined ? [] : [`--heap-growing-percent=${limits.heapGrowingPercent}`]),
  ];
}

/**
 * Environment of the system's processes: glibc's malloc keeps at most two
 * arenas instead of one per thread that allocates (8 × cores), each of which
 * stays resident once used. Not one: that saved ~1.5 MB a process and cost
 * 22–40% of throughput on every path (the main thread and V8's helper threads
 * then wait on the one arena's lock).
 */
export const SYSTEM_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: "2" };

/**
 * The command that runs `main` (a source path such as `services/order/main.ts`) from its build,
 * with `nodeArgs` and, for a service or the gateway, its systemNodeFlags before them.
 */
export function nodeCommand(main: string, nodeArgs: readonly string[] = []): [string, string[]] {
  const built = join(ROOT, "dist", main.replace(/\.ts$/, ".js"));
  if (!existsSync(built)) throw new Error(`${built} is missing: run \`make build\` (make run does it for you)`);
  return [process.execPath, [...systemNodeFlags(main), ...nodeArgs, built]];
}
