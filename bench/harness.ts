/**
 * `make bench`: the whole system as `make run` starts it (nats-server, five
 * services and the gateway, each a Node process running the compiled
 * JavaScript of `make build`; SQLite; registry discovery), measured from a
 * load generator in a process of its own (bench/load.ts), every path side
 * by side in one run, with telemetry as `make run` has it (span file,
 * /metrics, access log) and with it off.
 *
 * Prints a table (calls/s, p50, p99, ratio to direct gRPC in the same
 * run, CPU of the whole system per call), then issue 14's targets as this
 * run measured them (bench/targets.ts), and writes bench/results/bench.json.
 * Also reports how long the system took to be ready and its memory, then and
 * after its rounds: summed RSS, and summed PSS (shared pages, such as the
 * node binary's, counted once rather than once per process).
 *
 *   BENCH_SECONDS   seconds per round (default 8)
 *   BENCH_SMOKE=1   a short run that checks the harness works (CI): ~20 s
 *   BENCH_TELEMETRY on | off | both (default both)
 *   BENCH_OUT       where to write the JSON (default bench/results/bench.json)
 *   BENCH_PROFILE   a process name (gateway, order, ...): it runs with --cpu-prof, and its profile's
 *                   summary (bench/profile.ts) is printed after the run
 *   BENCH_ONLY      run only the rounds whose path and load contain this text (e.g. "gateway gRPC",
 *                   "orchestration 1 in flight")
 *   BENCH_FAST_PATHS off: the gateway without its fast paths (FAST_PATHS=false: every call through
 *                   connect-es's general handlers), to see what they buy
 *
 * The per-principal and per-address rate limits are raised for the run (one
 * load generator is one client); everything else is the default.
 */
import { readdirSync, statSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { ROOT } from "../scripts/layout.js";
import type { LoadResult, LoadSpec } from "./load.js";
import { cpuSeconds, load, restock, type SystemMemory, startSystem, writeResults } from "./system.js";
import { formatTargets, targets } from "./targets.js";

const SMOKE = process.env.BENCH_SMOKE === "1";
const SECONDS = Number(process.env.BENCH_SECONDS ?? (SMOKE ? 0.5 : 8));
const WARMUP = SMOKE ? 0.2 : Math.min(2, SECONDS / 4);
const TELEMETRY = (process.env.BENCH_TELEMETRY ?? (SMOKE ? "on" : "both")) as "on" | "off" | "both";
const OUT = process.env.BENCH_OUT ?? join(ROOT, "bench", "results", "bench.json");
const STARTED = Date.now();
const PROFILE = process.env.BENCH_PROFILE ?? "";
const ONLY = process.env.BENCH_ONLY ?? "";
const PROFILE_DIR = join(ROOT, "bench", "results", "profiles");
const FAST_PATHS = process.env.BENCH_FAST_PATHS !== "off";
/** The open-loop rounds' rate, calls/s. */
const RATE = SMOKE ? 200 : 1000;

interface Row extends LoadResult {
  readonly path: string;
  readonly telemetry: "on" | "off";
  readonly load: string;
  /** CPU of every system process per call, ms (the load generator excluded). */
  readonly cpu_ms_per_call: number;
  /** The same, per process. */
  readonly cpu_ms_per_call_by_process: Readonly<Record<string, number>>;
  /** calls/s as a share of direct gRPC's in the same telemetry setting (closed-loop rows). */
  readonly of_direct?: number;
}

/** How long the system took to be ready and its memory then and after its rounds (RSS and PSS, MB). */
interface Start {
  readonly telemetry: "on" | "off";
  readonly readyMs: number;
  readonly rssMb: number;
  readonly pssMb: number;
  readonly afterRounds: SystemMemory;
  readonly byProcess: SystemMemory["byProcess"];
}

async function measure(telemetry: boolean, token: string): Promise<{ rows: Row[]; start: Start }> {
  const sys = await startSystem({
    telemetry,
    token,
    nodeArgs: (name) => (name === PROFILE ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`] : []),
    ...(FAST_PATHS ? {} : { env: { gateway: { FAST_PATHS: "false" } } }),
  });
  const startMemory = sys.memory();
  const rows: Row[] = [];
  const t = telemetry ? "on" : "off";
  const gw = sys.addressOf("gateway");
  const base = { seconds: SECONDS, warmupSeconds: WARMUP };
  const rounds: Array<[string, string, LoadSpec]> = [
    ["direct gRPC", "64 in flight", { ...base, client: "grpc", target: sys.addressOf("inventory"), concurrency: 64 }],
    ["gateway gRPC", "64 in flight", { ...base, client: "grpc", target: gw, token, concurrency: 64 }],
    [
      "gateway Connect binary (h2c)",
      "64 in flight",
      { ...base, client: "connect-h2", target: gw, token, concurrency: 64 },
    ],
    [
      "gateway Connect JSON (HTTP/1.1)",
      "32 in flight",
      { ...base, client: "connect-json-h1", target: gw, token, concurrency: 32 },
    ],
    ["gateway REST (HTTP/1.1)", "32 in flight", { ...base, client: "rest-h1", target: gw, token, concurrency: 32 }],
    ["direct gRPC", `${RATE}/s`, { ...base, client: "grpc", target: sys.addressOf("inventory"), rate: RATE }],
    ["gateway gRPC", `${RATE}/s`, { ...base, client: "grpc", target: gw, token, rate: RATE }],
    // Saturated first: at one order in flight the saga's code is still being optimised for ~25 s (a cold
    // system measured 20-30% slower than the same one warm), and a running system serves warm.
    ...(["orchestration", "choreography"] as const).flatMap(
      (sagaMode): Array<[string, string, LoadSpec]> => [
        [
          `saga, ${sagaMode}`,
          "32 in flight",
          { ...base, client: "saga", target: sys.addressOf("order"), sagaMode, concurrency: 32 },
        ],
        [
          `saga, ${sagaMode}`,
          "1 in flight",
          { ...base, client: "saga", target: sys.addressOf("order"), sagaMode, concurrency: 1 },
        ],
      ],
    ),
  ];
  let afterRounds: SystemMemory | undefined;
  try {
    await restock(sys);
    for (const [path, shape, spec] of rounds.filter(([path, shape]) => `${path} ${shape}`.includes(ONLY))) {
      const before = sys.procs.map((p) => cpuSeconds(p.child.pid));
      const r = await load(spec);
      const used = sys.procs.map((p, i) => cpuSeconds(p.child.pid) - (before[i] ?? 0));
      const cpu = used.reduce((a, b) => a + b, 0);
      // The warm-up's calls are not counted, its CPU is: scale by the measured share of the round.
      const share = spec.seconds / (spec.seconds + (spec.warmupSeconds ?? 0));
      const perCall = (seconds: number) => (r.calls ? Math.round(((seconds * share * 1000) / r.calls) * 100) / 100 : 0);
      // The direct gRPC round runs first: each saturated unary round is printed with its share of it.
      const direct =
        path === "direct gRPC"
          ? r.rps
          : (rows.find((x) => x.path === "direct gRPC" && x.load.endsWith("in flight"))?.rps ?? 0);
      const row: Row = {
        path,
        telemetry: t,
        load: shape,
        ...r,
        ...(shape.endsWith("in flight") && !path.startsWith("saga") && direct
          ? { of_direct: Math.round((r.rps / direct) * 100) / 100 }
          : {}),
        cpu_ms_per_call: perCall(cpu),
        cpu_ms_per_call_by_process: Object.fromEntries(sys.procs.map((p, i) => [p.name, perCall(used[i] ?? 0)])),
      };
      rows.push(row);
      process.stdout.write(`  ${format(row)}\n`);
    }
    afterRounds = sys.memory();
  } finally {
    await sys.stop();
  }
  return {
    rows,
    start: {
      telemetry: t,
      readyMs: sys.readyMs,
      rssMb: sys.rssMb,
      pssMb: sys.pssMb,
      afterRounds,
      byProcess: startMemory.byProcess,
    },
  };
}

function format(r: Row): string {
  const ratio = r.of_direct === undefined ? "" : `${Math.round(r.of_direct * 100)}%`;
  return [
    r.path.padEnd(32),
    r.telemetry.padEnd(4),
    r.load.padEnd(13),
    String(r.rps).padStart(6),
    r.p50_ms.toFixed(1).padStart(7),
    r.p99_ms.toFixed(1).padStart(7),
    ratio.padStart(6),
    r.cpu_ms_per_call.toFixed(2).padStart(7),
    r.failures ? `  ${r.failures} failed: ${r.firstError}` : "",
  ].join(" ");
}

const token = signDevToken(
  { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
  "bench",
  ["customer"],
);
const header = `  ${"path".padEnd(32)} ${"tel".padEnd(4)} ${"load".padEnd(13)} ${"call/s".padStart(6)} ${"p50 ms".padStart(7)} ${"p99 ms".padStart(7)} ${"direct".padStart(6)} ${"CPU ms".padStart(7)}`;
process.stdout.write(
  `make bench: ${SECONDS} s per round, ${cpus().length} cores, Node ${process.version}${SMOKE ? " (smoke)" : ""}` +
    `${FAST_PATHS ? "" : ", the gateway without its fast paths"}\n${header}\n`,
);
const settings = TELEMETRY === "both" ? [true, false] : [TELEMETRY === "on"];
const rows: Row[] = [];
const starts: Start[] = [];
for (const on of settings) {
  const m = await measure(on, await token);
  rows.push(...m.rows);
  starts.push(m.start);
}
process.stdout.write(
  "\n(call/s: closed loop saturates; open loop holds the rate. CPU ms: every system process, per call.)\n",
);
for (const s of starts)
  process.stdout.write(
    `system (telemetry ${s.telemetry}): answering through the gateway ${s.readyMs} ms after the first spawn, ` +
      `${s.rssMb} MB RSS (${s.pssMb} MB PSS); after its rounds ${s.afterRounds.rssMb} MB RSS (${s.afterRounds.pssMb} MB PSS)\n`,
  );
const failed = rows.filter((r) => r.failures > 0 || r.calls === 0);
const met = targets(rows, starts);
process.stdout.write(`\n${formatTargets(met)}`);
writeResults(OUT, { seconds: SECONDS, smoke: SMOKE, fastPaths: FAST_PATHS, starts, rows, targets: met });
if (PROFILE) {
  const { summarise } = await import("./profile.js");
  // One profile per thread: the main thread's is the largest of this run.
  const main = readdirSync(PROFILE_DIR)
    .filter((f) => f.endsWith(".cpuprofile"))
    .map((f) => join(PROFILE_DIR, f))
    .filter((f) => statSync(f).mtimeMs >= STARTED)
    .sort((a, b) => statSync(b).size - statSync(a).size)[0];
  if (main) process.stdout.write(`\n${summarise(main)}\n`);
}
if (failed.length > 0) {
  process.stderr.write(`${failed.length} rounds had failures or no calls\n`);
  process.exit(1);
}
process.exit(0);
