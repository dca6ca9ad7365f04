/**
 * `make footprint`: the system's memory as issue 14 measures it — started as
 * `make run` starts it (bench/system.ts: nats-server, the five services and
 * the gateway, the compiled JavaScript of `make build`, telemetry on), then
 * after a minute of `make load`'s mix (scripts/load.ts at 50 calls/s, in a
 * process of its own: browse, order reads, orders in both saga modes, some
 * declined). Stock is topped up first (as bench/harness.ts does), so the
 * orders run their sagas to the end rather than failing out of stock.
 *
 * Prints per process, at start and after the load: RSS, PSS (shared pages,
 * such as the node binary's ~45 MB, divided among the processes that map
 * them: what the system takes from the machine) and anonymous memory (the
 * process's own: JavaScript heap, malloc, stacks), their sums, the peak of
 * the sums while the load ran, what the load got answered, and what each
 * process's scavenges promoted into its old generation while it ran
 * (bench/gc-watch.ts). Writes it all as JSON.
 *
 *   FOOTPRINT_SECONDS    seconds of load (default 60)
 *   FOOTPRINT_RATE       calls per second (default 50, as `make load`)
 *   FOOTPRINT_TELEMETRY  on | off (default on, as `make run` has it)
 *   FOOTPRINT_OUT        where to write the JSON (default bench/results/footprint.json)
 *   FOOTPRINT_GC         on | off: record the scavenges while the load runs (default on)
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { configOrExit, num, oneOf, parseEnv, str } from "../platform/config.js";
import { nodeCommand, ROOT, SYSTEM_ENV, systemNodeFlags } from "../scripts/layout.js";
import type { GcWatch } from "./gc-watch.js";
import { type Proc, restock, type System, startSystem, writeResults } from "./system.js";

/** Its settings, read as the services read theirs: a value they cannot take is a line naming it (exit 78). */
const ENV = configOrExit(() =>
  parseEnv(
    {
      FOOTPRINT_SECONDS: num(60, { min: 1, max: 3_600 }),
      FOOTPRINT_RATE: num(50, { min: 1, max: 10_000 }),
      FOOTPRINT_TELEMETRY: oneOf(["on", "off"], "on"),
      FOOTPRINT_OUT: str(join(ROOT, "bench", "results", "footprint.json")),
      FOOTPRINT_GC: oneOf(["on", "off"], "on"),
    },
    process.env,
  ),
);
const SECONDS = ENV.FOOTPRINT_SECONDS;
const RATE = ENV.FOOTPRINT_RATE;
const TELEMETRY = ENV.FOOTPRINT_TELEMETRY === "on";
const OUT = ENV.FOOTPRINT_OUT;
const GC_WATCH = ENV.FOOTPRINT_GC === "on";
/** How often the sums are sampled while the load runs, ms (for their peak). */
const SAMPLE_MS = 1_000;

/** Memory of one process, MB. */
interface Mem {
  readonly rss: number;
  readonly pss: number;
  /** Anonymous pages: its own heap, malloc arenas and stacks (none of the binary's). */
  readonly anon: number;
}
interface Snapshot {
  readonly rssMb: number;
  readonly pssMb: number;
  readonly anonMb: number;
  readonly byProcess: Readonly<Record<string, Mem>>;
}

/** RSS, PSS and anonymous memory of `pid` from /proc/<pid>/smaps_rollup, MB (zeros once it has exited). */
function memoryOf(pid: number | undefined): Mem {
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    const mb = (field: string) =>
      Math.round(Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(rollup)?.[1] ?? 0) / 1024);
    return { rss: mb("Rss"), pss: mb("Pss"), anon: mb("Anonymous") };
  } catch {
    return { rss: 0, pss: 0, anon: 0 };
  }
}

function snapshot(procs: readonly Proc[]): Snapshot {
  const byProcess = Object.fromEntries(procs.map((p) => [p.name, memoryOf(p.child.pid)]));
  const sum = (k: keyof Mem) => Object.values(byProcess).reduce((s, m) => s + m[k], 0);
  return { rssMb: sum("rss"), pssMb: sum("pss"), anonMb: sum("anon"), byProcess };
}

/** What scripts/load.ts reported on stopping: calls/s sent and how they ended (its "total" line). */
interface LoadTotals {
  readonly seconds: number;
  readonly sentPerSecond: number;
  readonly outcomes: Readonly<Record<string, number>>;
  readonly line: string;
}

/** Runs scripts/load.ts (from its build) against the system's gateway for SECONDS, in its own process. */
function runLoad(sys: System, sample: () => void): Promise<LoadTotals> {
  const [cmd, args] = nodeCommand("scripts/load.ts");
  const child = spawn(cmd, args, {
    cwd: ROOT,
    env: {
      ...process.env,
      RATE: String(RATE),
      DURATION_S: String(SECONDS),
      GATEWAY_URL: `http://${sys.addressOf("gateway")}`,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const sampler = setInterval(sample, SAMPLE_MS);
  return new Promise((res, rej) => {
    child.once("exit", (code) => {
      clearInterval(sampler);
      const m = /^total over (\d+) s: (\d+)\/s sent; (.*); p50/m.exec(out);
      if (code !== 0 || !m) return rej(new Error(`the load generator exited ${code}:\n${out}`));
      const outcomes = Object.fromEntries(
        (m[3] ?? "").split(", ").map((o) => {
          const at = o.lastIndexOf(" ");
          return [o.slice(0, at), Number(o.slice(at + 1))];
        }),
      );
      const line = /^total over .*$/m.exec(out)?.[0] ?? m[0];
      res({ seconds: Number(m[1]), sentPerSecond: Number(m[2]), outcomes, line });
    });
  });
}

const token = await signDevToken(
  { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
  "footprint",
  ["customer"],
);
process.stdout.write(
  `make footprint: the system at start, then after ${SECONDS} s of make load at ${RATE} calls/s ` +
    `(telemetry ${TELEMETRY ? "on" : "off"}), ${cpus().length} cores, Node ${process.version}\n`,
);
// Each Node process preloads bench/gc-watch.ts: SIGUSR2 starts its GC profiler, the next writes what it saw here.
const gcDir = GC_WATCH ? mkdtempSync(join(tmpdir(), "footprint-gc-")) : "";
process.env.GC_WATCH_DIR = gcDir;
const gcWatch = pathToFileURL(join(ROOT, "dist", "bench", "gc-watch.js")).href;
const sys = await startSystem({
  telemetry: TELEMETRY,
  token,
  nodeArgs: () => (GC_WATCH ? ["--import", gcWatch] : []),
}).catch((err: unknown) => {
  if (gcDir) rmSync(gcDir, { recursive: true, force: true });
  throw err;
});
const nodeProcs = sys.procs.filter((p) => p.name !== "nats");
let atStart: Snapshot;
let afterLoad: Snapshot;
let totals: LoadTotals;
let young: Record<string, GcWatch> = {};
const peak = { rssMb: 0, pssMb: 0 };
try {
  atStart = snapshot(sys.procs);
  await restock(sys);
  const sample = () => {
    const s = snapshot(sys.procs);
    peak.rssMb = Math.max(peak.rssMb, s.rssMb);
    peak.pssMb = Math.max(peak.pssMb, s.pssMb);
  };
  if (GC_WATCH) for (const p of nodeProcs) p.child.kill("SIGUSR2");
  totals = await runLoad(sys, sample);
  afterLoad = snapshot(sys.procs);
  sample();
  if (GC_WATCH) young = await gcWatches();
} finally {
  await sys.stop();
  if (gcDir) rmSync(gcDir, { recursive: true, force: true });
}

/** Stops every process's GC profiler and reads what each wrote within 5 s; a process that did not is named. */
async function gcWatches(): Promise<Record<string, GcWatch>> {
  for (const p of nodeProcs) p.child.kill("SIGUSR2");
  const file = (name: string) => join(gcDir, `${name}.json`);
  for (let waited = 0; waited < 5_000 && !nodeProcs.every((p) => existsSync(file(p.name))); waited += 50) {
    await new Promise((r) => setTimeout(r, 50));
  }
  const silent = nodeProcs.filter((p) => !existsSync(file(p.name))).map((p) => p.name);
  if (silent.length > 0) process.stderr.write(`no scavenge record from ${silent.join(", ")} (exited?)\n`);
  return Object.fromEntries(
    nodeProcs
      .filter((p) => !silent.includes(p.name))
      .map((p) => [p.name, JSON.parse(readFileSync(file(p.name), "utf8")) as GcWatch]),
  );
}

/** The source path of a system process's main (its node flags are keyed by it). */
const mainOf = (name: string) => (name === "gateway" ? "gateway/main.ts" : `services/${name}/main.ts`);
const cell = (m: Mem | undefined) =>
  m ? `${String(m.rss).padStart(5)} ${String(m.pss).padStart(5)} ${String(m.anon).padStart(5)}` : "";
const names = sys.procs.map((p) => p.name);
const rows = [
  `  ${"".padEnd(13)} ${"at start".padEnd(17)}   ${"after load".padEnd(17)}`,
  `  ${"process".padEnd(13)} ${"  RSS   PSS  anon"}   ${"  RSS   PSS  anon"}   flags`,
  ...names.map(
    (n) =>
      `  ${n.padEnd(13)} ${cell(atStart.byProcess[n])}   ${cell(afterLoad.byProcess[n])}   ${n === "nats" ? "" : systemNodeFlags(mainOf(n)).join(" ")}`,
  ),
  `  ${"system".padEnd(13)} ${cell({ rss: atStart.rssMb, pss: atStart.pssMb, anon: atStart.anonMb })}   ${cell({ rss: afterLoad.rssMb, pss: afterLoad.pssMb, anon: afterLoad.anonMb })}`,
];
const youngRows = Object.entries(young).map(
  ([n, g]) =>
    `  ${n.padEnd(13)} ${String(g.scavenges).padStart(9)} ${g.promotedMb.toFixed(1).padStart(12)} ${(g.scavenges ? g.promotedMb / g.scavenges : 0).toFixed(2).padStart(13)} ${g.survivorsMbPerScavenge.toFixed(2).padStart(13)} ${String(g.otherCollections).padStart(10)}`,
);
if (youngRows.length > 0) {
  rows.push("", `  while loaded  scavenges  promoted MB  per scavenge  young after  other GCs`, ...youngRows);
}
process.stdout.write(
  `${rows.join("\n")}\n\n(MB. PSS: shared pages divided among the processes that map them. anon: a process's own pages.` +
    (youngRows.length > 0
      ? "\n While loaded, from V8's GC profiler (bench/gc-watch.ts, preloaded; FOOTPRINT_GC=off leaves it out):" +
        " what the scavenges moved into the old generation, and the mean left in the young one after each."
      : "") +
    ")\n" +
    `ready ${sys.readyMs} ms after the first spawn; while loaded the sums peaked at ${peak.rssMb} MB RSS (${peak.pssMb} MB PSS)\n` +
    `load: ${totals.line}\n`,
);
writeResults(OUT, {
  telemetry: TELEMETRY ? "on" : "off",
  rate: RATE,
  seconds: SECONDS,
  env: SYSTEM_ENV,
  flags: Object.fromEntries(names.filter((n) => n !== "nats").map((n) => [n, systemNodeFlags(mainOf(n))])),
  readyMs: sys.readyMs,
  atStart,
  afterLoad,
  peakWhileLoaded: peak,
  load: totals,
  youngGeneration: young,
});
process.exit(0);
