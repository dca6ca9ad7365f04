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
 *   BENCH_TELEMETRY on | off | both (default both: two systems, one with telemetry and one without, both
 *                   running from the start; each round runs on one and at once on the other)
 *   BENCH_REPEAT    run every round this many times (default 1) and print the table of medians
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
import { configOrExit, int, num, oneOf, parseEnv, str } from "../platform/config.js";
import { ROOT, SYSTEM } from "../scripts/layout.js";
import type { LoadResult, LoadSpec } from "./load.js";
import { cpuSeconds, load, restock, type System, type SystemMemory, startSystem, writeResults } from "./system.js";
import { formatTargets, targets } from "./targets.js";

const SMOKE = process.env.BENCH_SMOKE === "1";
/**
 * The run's settings, read as the services read theirs: a value they cannot take ends the run at once
 * in a line naming it (exit 78). Read with Number() and casts, BENCH_SECONDS=abc made every round
 * empty and BENCH_TELEMETRY=yes ran telemetry off, each without a word.
 */
const ENV = configOrExit(() =>
  parseEnv(
    {
      BENCH_SECONDS: num(SMOKE ? 0.5 : 8, { min: 0.1, max: 3_600 }),
      BENCH_TELEMETRY: oneOf(["on", "off", "both"], SMOKE ? "on" : "both"),
      BENCH_PROFILE: oneOf(["", ...SYSTEM.map((p) => p.name)], ""),
      BENCH_FAST_PATHS: oneOf(["on", "off"], "on"),
      BENCH_REPEAT: int(1, { min: 1, max: 20 }),
      BENCH_ONLY: str(""),
      BENCH_OUT: str(join(ROOT, "bench", "results", "bench.json")),
    },
    process.env,
  ),
);
const SECONDS = ENV.BENCH_SECONDS;
const WARMUP = SMOKE ? 0.2 : Math.min(2, SECONDS / 4);
const TELEMETRY = ENV.BENCH_TELEMETRY;
const OUT = ENV.BENCH_OUT;
const STARTED = Date.now();
const PROFILE = ENV.BENCH_PROFILE;
const ONLY = ENV.BENCH_ONLY;
const PROFILE_DIR = join(ROOT, "bench", "results", "profiles");
const FAST_PATHS = ENV.BENCH_FAST_PATHS === "on";
/** The open-loop rounds' rate, calls/s. */
const RATE = SMOKE ? 200 : 1000;
const REPEAT = ENV.BENCH_REPEAT;

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

/** One system under measurement: its telemetry setting and its memory once ready. */
interface Measured {
  readonly sys: System;
  readonly telemetry: "on" | "off";
  readonly startMemory: SystemMemory;
  /** The rounds this run measures on it (BENCH_ONLY), in the order run. */
  readonly rounds: readonly Round[];
}

async function start(telemetry: boolean, token: string): Promise<Measured> {
  const sys = await startSystem({
    telemetry,
    token,
    nodeArgs: (name) => (name === PROFILE ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`] : []),
    ...(FAST_PATHS ? {} : { env: { gateway: { FAST_PATHS: "false" } } }),
  });
  const startMemory = sys.memory();
  await restock(sys);
  const rounds = roundsOf(sys, token).filter(([path, shape]) => `${path} ${shape}`.includes(ONLY));
  return { sys, telemetry: telemetry ? "on" : "off", startMemory, rounds };
}

type Round = readonly [path: string, load: string, spec: LoadSpec];

function roundsOf(sys: System, token: string): Round[] {
  const gw = sys.addressOf("gateway");
  const base = { seconds: SECONDS, warmupSeconds: WARMUP };
  return [
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
    ...(["orchestration", "choreography"] as const).flatMap((sagaMode): Round[] => [
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
    ]),
  ];
}

/** Runs one round against one system; `earlier` holds this repetition's rows so far (direct gRPC's first). */
async function measure(m: Measured, [path, shape, spec]: Round, earlier: readonly Row[]): Promise<Row> {
  const { procs } = m.sys;
  const before = procs.map((p) => cpuSeconds(p.child.pid));
  const r = await load(spec);
  const used = procs.map((p, i) => cpuSeconds(p.child.pid) - (before[i] ?? 0));
  const cpu = used.reduce((a, b) => a + b, 0);
  // The warm-up's calls are not counted, its CPU is: scale by the measured share of the round.
  const share = spec.seconds / (spec.seconds + (spec.warmupSeconds ?? 0));
  const perCall = (seconds: number) => (r.calls ? round2((seconds * share * 1000) / r.calls) : 0);
  return withShare(
    {
      path,
      telemetry: m.telemetry,
      load: shape,
      ...r,
      cpu_ms_per_call: perCall(cpu),
      cpu_ms_per_call_by_process: Object.fromEntries(procs.map((p, i) => [p.name, perCall(used[i] ?? 0)])),
    },
    earlier,
  );
}

const round2 = (x: number) => Math.round(x * 100) / 100;

/** A saturated unary row with its share of direct gRPC's calls/s in the same setting (among `rows`). */
function withShare(row: Row, rows: readonly Row[]): Row {
  const direct =
    row.path === "direct gRPC"
      ? row.rps
      : rows.find((x) => x.path === "direct gRPC" && x.telemetry === row.telemetry && x.load.endsWith("in flight"))
          ?.rps;
  if (!row.load.endsWith("in flight") || row.path.startsWith("saga") || !direct) return row;
  return { ...row, of_direct: round2(row.rps / direct) };
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
};

/** Each round's median over the repetitions, figure by figure; calls and failures summed. */
function medians(runs: readonly Row[][]): Row[] {
  const out: Row[] = [];
  for (const first of runs[0] ?? []) {
    const same = runs.flatMap((run) =>
      run.filter((r) => r.path === first.path && r.telemetry === first.telemetry && r.load === first.load),
    );
    const med = (f: (r: Row) => number, digits = 100) => Math.round(median(same.map(f)) * digits) / digits;
    const row: Row = {
      ...first,
      calls: same.reduce((s, r) => s + r.calls, 0),
      failures: same.reduce((s, r) => s + r.failures, 0),
      firstError: same.find((r) => r.firstError)?.firstError,
      rps: med((r) => r.rps, 1),
      p50_ms: med((r) => r.p50_ms),
      p90_ms: med((r) => r.p90_ms),
      p95_ms: med((r) => r.p95_ms),
      p99_ms: med((r) => r.p99_ms),
      cpu_ms_per_call: med((r) => r.cpu_ms_per_call),
      cpu_ms_per_call_by_process: Object.fromEntries(
        Object.keys(first.cpu_ms_per_call_by_process).map((p) => [p, med((r) => r.cpu_ms_per_call_by_process[p] ?? 0)]),
      ),
    };
    delete (row as { of_direct?: number }).of_direct;
    out.push(withShare(row, out));
  }
  return out;
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

const token = await signDevToken(
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
const systems: Measured[] = [];
const runs: Row[][] = [];
const starts: Start[] = [];
/** The rounds there are, when BENCH_ONLY picked none of them. */
let unmatched: string[] = [];
try {
  // Both systems run from the start, and each round is measured on one and then at once on the other
  // (the order alternating), so telemetry's cost is read from adjacent rounds, not from rounds minutes
  // apart on a machine whose speed drifts. The idle one costs the measured one ~3% of the machine.
  for (const on of settings) systems.push(await start(on, token));
  const count = systems[0]?.rounds.length ?? 0;
  if (count === 0 && systems[0]) unmatched = roundsOf(systems[0].sys, token).map(([path, load]) => `${path} ${load}`);
  for (let rep = 0; rep < REPEAT; rep++) {
    if (REPEAT > 1) process.stdout.write(`  run ${rep + 1} of ${REPEAT}\n`);
    const run: Row[] = [];
    for (let n = 0; n < count; n++) {
      for (const m of (n + rep) % 2 ? [...systems].reverse() : systems) {
        const round = m.rounds[n];
        if (!round) continue;
        const row = await measure(m, round, run);
        run.push(row);
        process.stdout.write(`  ${format(row)}\n`);
      }
    }
    runs.push(run);
  }
  for (const m of systems) {
    const { readyMs, rssMb, pssMb } = m.sys;
    const afterRounds = m.sys.memory();
    starts.push({ telemetry: m.telemetry, readyMs, rssMb, pssMb, afterRounds, byProcess: m.startMemory.byProcess });
  }
} finally {
  for (const m of systems) await m.sys.stop();
}
if (unmatched.length > 0) {
  process.stderr.write(
    `BENCH_ONLY=${JSON.stringify(ONLY)} is in no round's name; the rounds:\n  ${unmatched.join("\n  ")}\n`,
  );
  process.exit(2);
}
// The table again, telemetry on first (its rounds ran interleaved), or each round's median over the runs.
const rows = (REPEAT > 1 ? medians(runs) : (runs[0] ?? [])).sort(
  (a, b) => Number(a.telemetry === "off") - Number(b.telemetry === "off"),
);
if (REPEAT > 1 || systems.length > 1) {
  const what = REPEAT > 1 ? `each round's median over ${REPEAT} runs` : "by telemetry setting";
  process.stdout.write(`\n${what}:\n${header}\n${rows.map((r) => `  ${format(r)}\n`).join("")}`);
}
process.stdout.write(
  "\n(call/s: closed loop saturates; open loop holds the rate. CPU ms: every system process, per call.)\n",
);
for (const s of starts)
  process.stdout.write(
    `system (telemetry ${s.telemetry}): answering through the gateway ${s.readyMs} ms after the first spawn, ` +
      `${s.rssMb} MB RSS (${s.pssMb} MB PSS); after the rounds ${s.afterRounds.rssMb} MB RSS (${s.afterRounds.pssMb} MB PSS)\n`,
  );
const failed = rows.filter((r) => r.failures > 0 || r.calls === 0);
const met = targets(rows, starts);
process.stdout.write(`\n${formatTargets(met)}`);
writeResults(OUT, {
  seconds: SECONDS,
  smoke: SMOKE,
  fastPaths: FAST_PATHS,
  repeat: REPEAT,
  starts,
  rows,
  targets: met,
  ...(REPEAT > 1 ? { runs } : {}),
});
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
