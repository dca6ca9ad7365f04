/**
 * `make bench`: the whole system as `make run` starts it (nats-server, five
 * services and the gateway, each a Node process running the compiled
 * JavaScript of `make build`; SQLite; registry discovery), measured from a
 * load generator in a process of its own (bench/load.ts), every path side
 * by side in one run, with telemetry as `make run` has it (span file,
 * /metrics, access log) and with it off.
 *
 * Prints a table (calls/s, p50, p99, ratio to direct gRPC in the same
 * run, CPU of the whole system per call) and writes bench/results/bench.json.
 * Also reports how long the system took to be ready and its RSS.
 *
 *   BENCH_SECONDS   seconds per round (default 8)
 *   BENCH_SMOKE=1   a short run that checks the harness works (CI): ~20 s
 *   BENCH_TELEMETRY on | off | both (default both)
 *   BENCH_OUT       where to write the JSON (default bench/results/bench.json)
 *   BENCH_PROFILE   a process name (gateway, order, ...): it runs with --cpu-prof, and its profile's
 *                   summary (bench/profile.ts) is printed after the run
 *   BENCH_ONLY      run only the rounds whose path contains this text (e.g. "gateway gRPC")
 *
 * The per-principal and per-address rate limits are raised for the run (one
 * load generator is one client); everything else is the default.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { Metadata } from "@grpc/grpc-js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { createChannel, createClient, identityMetadata } from "../platform/index.js";
import { nodeCommand, ROOT } from "../scripts/layout.js";
import type { LoadResult, LoadSpec } from "./load.js";

const SMOKE = process.env.BENCH_SMOKE === "1";
const SECONDS = Number(process.env.BENCH_SECONDS ?? (SMOKE ? 0.5 : 8));
const WARMUP = SMOKE ? 0.2 : Math.min(2, SECONDS / 4);
const TELEMETRY = (process.env.BENCH_TELEMETRY ?? (SMOKE ? "on" : "both")) as "on" | "off" | "both";
const OUT = process.env.BENCH_OUT ?? join(ROOT, "bench", "results", "bench.json");
const STARTED = Date.now();
const PROFILE = process.env.BENCH_PROFILE ?? "";
const ONLY = process.env.BENCH_ONLY ?? "";
const PROFILE_DIR = join(ROOT, "bench", "results", "profiles");
const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;

const SERVICES = ["inventory", "payment", "order", "notification", "history"] as const;

interface Proc {
  readonly name: string;
  readonly child: ChildProcess;
  readonly port: number;
}

/** Every system process still running: killed if the harness exits first (a failed start, an error). */
const spawned = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of spawned) c.kill("SIGKILL");
});

/** Spawns `cmd`, reads (and drops) its output as `make run` would print it, resolves once `ready` appears. */
function startProcess(
  name: string,
  cmd: string,
  args: readonly string[],
  env: Record<string, string>,
  ready: (line: string) => number | undefined,
): Promise<Proc> {
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  spawned.add(child);
  child.once("exit", () => spawned.delete(child));
  let tail = "";
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${name} did not start in 60 s:\n${tail}`)), 60_000);
    let started = false;
    for (const s of [child.stdout, child.stderr]) {
      createInterface({ input: s }).on("line", (line) => {
        if (started) return;
        tail = `${tail}${line}\n`.slice(-4000);
        const port = ready(line);
        if (port === undefined) return;
        started = true;
        clearTimeout(timer);
        res({ name, child, port });
      });
    }
    child.once("exit", (code, signal) => {
      if (!started) rej(new Error(`${name} exited ${code ?? signal}:\n${tail}`));
    });
  });
}

/** Reads the port from the JSON log line whose msg is `msg`. */
function logged(msg: string): (line: string) => number | undefined {
  return (line) => {
    if (!line.includes(msg)) return undefined;
    try {
      const o = JSON.parse(line) as { msg?: string; port?: number };
      return o.msg === msg ? Number(o.port) : undefined;
    } catch {
      return undefined;
    }
  };
}

/** CPU seconds (user + system) of `pid` so far. */
function cpuSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** Resident memory of `pid`, MB. */
function rssMb(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return Math.round(Number(m?.[1] ?? 0) / 1024);
  } catch {
    return 0;
  }
}

interface System {
  readonly procs: readonly Proc[];
  readonly addressOf: (name: string) => string;
  readonly readyMs: number;
  readonly rssMb: number;
  stop(): Promise<void>;
}

/** Starts the system as `make run` does, on free ports under a temporary data directory. */
async function startSystem(telemetry: boolean): Promise<System> {
  const dir = mkdtempSync(join(tmpdir(), "shopmesh-bench-"));
  const t0 = performance.now();
  const nats = await startProcess(
    "nats",
    "nats-server",
    ["-js", "-sd", join(dir, "nats"), "-a", "127.0.0.1", "-p", "-1"],
    {},
    (line) => {
      const m = /Listening for client connections on 127\.0\.0\.1:(\d+)/.exec(line);
      return m ? Number(m[1]) : undefined;
    },
  );
  const common: Record<string, string> = {
    NATS_URL: `nats://127.0.0.1:${nats.port}`,
    LOG_FORMAT: "json",
    LOG_LEVEL: "info",
    ...Object.fromEntries(SERVICES.map((n) => [`${n.toUpperCase()}_TARGET`, `registry:///${n}`])),
    ...(telemetry ? { METRICS_PORT: "0", TRACE_FILE: join(dir, "traces.jsonl") } : {}),
  };
  // Started as `make run` starts them: the compiled JavaScript in dist/ (make build).
  const node = (main: string) =>
    nodeCommand(main, PROFILE && main.includes(`${PROFILE}/`) ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`] : []);
  const services = await Promise.all(
    SERVICES.map((name) => {
      const [cmd, args] = node(join("services", name, "main.ts"));
      return startProcess(
        name,
        cmd,
        args,
        { ...common, GRPC_PORT: "0", DB_PATH: join(dir, `${name}.db`) },
        logged("gRPC server listening"),
      );
    }),
  );
  const [gcmd, gargs] = node("gateway/main.ts");
  const gateway = await startProcess(
    "gateway",
    gcmd,
    gargs,
    {
      ...common,
      HTTP_PORT: "0",
      RATE_LIMIT_RPS: "1000000",
      RATE_LIMIT_BURST: "500",
      RATE_LIMIT_IP_RPS: "1000000",
      RATE_LIMIT_IP_BURST: "500",
    },
    logged("gateway listening"),
  );
  const procs = [nats, ...services, gateway];
  // The gateway learns the services from the registry: ready once it answers through to inventory.
  await untilAnswered(`127.0.0.1:${gateway.port}`);
  const readyMs = Math.round(performance.now() - t0);
  return {
    procs,
    readyMs,
    rssMb: procs.reduce((s, p) => s + rssMb(p.child.pid), 0),
    addressOf: (name) => `127.0.0.1:${procs.find((p) => p.name === name)?.port}`,
    async stop() {
      const exited = (c: ChildProcess) =>
        c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once("exit", r));
      for (const p of [...services, gateway]) p.child.kill("SIGTERM");
      await Promise.all([...services, gateway].map((p) => exited(p.child)));
      nats.child.kill("SIGTERM");
      await exited(nats.child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves once `GetProduct` through the gateway at `address` succeeds (10 s at most). */
async function untilAnswered(address: string): Promise<void> {
  const ch = createChannel(address);
  const inv = createClient(InventoryService, ch);
  const md = new Metadata();
  md.set("authorization", `Bearer ${await token}`);
  try {
    for (const until = Date.now() + 10_000; ; ) {
      try {
        await inv.getProduct({ productId: "coffee-beans" }, { metadata: md, timeoutMs: 1_000 });
        return;
      } catch (err) {
        if (Date.now() > until) throw new Error(`the gateway did not answer within 10 s: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  } finally {
    ch.close();
  }
}

/** Runs one round in a separate load-generator process. */
function load(spec: LoadSpec): Promise<LoadResult> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "bench", "load.ts"), JSON.stringify(spec)], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.once("exit", (code) => {
      try {
        if (code !== 0) throw new Error(`load generator exited ${code}`);
        res(JSON.parse(out.trim().split("\n").pop() ?? "") as LoadResult);
      } catch (err) {
        rej(err);
      }
    });
  });
}

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

async function restock(sys: System): Promise<void> {
  const ch = createChannel(sys.addressOf("inventory"));
  const inv = createClient(InventoryService, ch);
  const metadata = identityMetadata({ subject: "bench-operator", roles: ["admin"] });
  for (const productId of ["coffee-beans", "ceramic-mug", "paper-filters", "pour-over-kettle"]) {
    await inv.restock(
      { idempotencyKey: `bench-${productId}-${Date.now()}`, productId, quantity: 1_000_000 },
      { metadata },
    );
  }
  ch.close();
}

async function measure(telemetry: boolean, token: string): Promise<{ rows: Row[]; readyMs: number; rssMb: number }> {
  const sys = await startSystem(telemetry);
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
    [
      "direct gRPC",
      "1000/s",
      { ...base, client: "grpc", target: sys.addressOf("inventory"), rate: SMOKE ? 200 : 1000 },
    ],
    ["gateway gRPC", "1000/s", { ...base, client: "grpc", target: gw, token, rate: SMOKE ? 200 : 1000 }],
    ...(["orchestration", "choreography"] as const).flatMap(
      (sagaMode): Array<[string, string, LoadSpec]> => [
        [
          `saga, ${sagaMode}`,
          "1 in flight",
          { ...base, client: "saga", target: sys.addressOf("order"), sagaMode, concurrency: 1 },
        ],
        [
          `saga, ${sagaMode}`,
          "32 in flight",
          { ...base, client: "saga", target: sys.addressOf("order"), sagaMode, concurrency: 32 },
        ],
      ],
    ),
  ];
  try {
    await restock(sys);
    for (const [path, shape, spec] of rounds.filter(([path]) => path.includes(ONLY))) {
      const before = sys.procs.map((p) => cpuSeconds(p.child.pid));
      const r = await load(spec);
      const used = sys.procs.map((p, i) => cpuSeconds(p.child.pid) - (before[i] ?? 0));
      const cpu = used.reduce((a, b) => a + b, 0);
      // The warm-up's calls are not counted, its CPU is: scale by the measured share of the round.
      const share = spec.seconds / (spec.seconds + (spec.warmupSeconds ?? 0));
      const perCall = (seconds: number) => (r.calls ? Math.round(((seconds * share * 1000) / r.calls) * 100) / 100 : 0);
      const row: Row = {
        path,
        telemetry: t,
        load: shape,
        ...r,
        cpu_ms_per_call: perCall(cpu),
        cpu_ms_per_call_by_process: Object.fromEntries(sys.procs.map((p, i) => [p.name, perCall(used[i] ?? 0)])),
      };
      rows.push(row);
      process.stdout.write(`  ${format(row)}\n`);
    }
  } finally {
    await sys.stop();
  }
  const direct = rows.find((r) => r.path === "direct gRPC" && r.load.endsWith("in flight"))?.rps ?? 0;
  return {
    rows: rows.map((r) =>
      r.load.endsWith("in flight") && !r.path.startsWith("saga") && direct
        ? { ...r, of_direct: Math.round((r.rps / direct) * 100) / 100 }
        : r,
    ),
    readyMs: sys.readyMs,
    rssMb: sys.rssMb,
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
  `make bench: ${SECONDS} s per round, ${cpus().length} cores, Node ${process.version}${SMOKE ? " (smoke)" : ""}\n${header}\n`,
);
const settings = TELEMETRY === "both" ? [true, false] : [TELEMETRY === "on"];
const rows: Row[] = [];
const starts: Array<{ telemetry: "on" | "off"; readyMs: number; rssMb: number }> = [];
for (const on of settings) {
  const m = await measure(on, await token);
  rows.push(...m.rows);
  starts.push({ telemetry: on ? "on" : "off", readyMs: m.readyMs, rssMb: m.rssMb });
}
process.stdout.write(
  "\n(call/s: closed loop saturates; open loop holds the rate. CPU ms: every system process, per call.)\n",
);
for (const s of starts)
  process.stdout.write(
    `system (telemetry ${s.telemetry}): answering through the gateway ${s.readyMs} ms after the first spawn, ${s.rssMb} MB RSS\n`,
  );
const failed = rows.filter((r) => r.failures > 0 || r.calls === 0);
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(
  OUT,
  `${JSON.stringify(
    {
      when: new Date().toISOString(),
      cores: cpus().length,
      node: process.version,
      seconds: SECONDS,
      smoke: SMOKE,
      starts,
      rows,
    },
    null,
    2,
  )}\n`,
);
process.stdout.write(`wrote ${OUT}\n`);
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
