/**
 * The system under measurement for `make bench` and `make compare`: started
 * as `make run` starts it — nats-server, the five services and the gateway,
 * each a Node process running the compiled JavaScript of `make build`,
 * SQLite, registry discovery — on free ports under a temporary directory,
 * plus what a measurement reads from outside: each process's CPU, RSS and PSS
 * (/proc), a load round in a process of its own (bench/load.ts), and, when
 * asked for, the services' /metrics and nats-server's monitoring endpoint.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { Metadata } from "@grpc/grpc-js";
import { EVENTS } from "../contracts/events.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { BUS_ADMIN, provisionBus } from "../platform/bus-access.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { silentLogger } from "../platform/log.js";
import { nodeCommand, ROOT, SERVICE_NAMES, SYSTEM_ENV } from "../scripts/layout.js";
import { localBusPasswords, natsServerArgs } from "../scripts/nats.js";
import type { LoadResult, LoadSpec } from "./load.js";

export const SERVICES = SERVICE_NAMES;
export type ServiceName = (typeof SERVICES)[number];
export type ProcessName = ServiceName | "gateway" | "nats";

const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;

export interface Proc {
  readonly name: ProcessName;
  readonly child: ChildProcess;
  readonly port: number;
  /** Its /metrics (a service) or monitoring (nats-server) port, when observed. */
  readonly observePort?: number;
}

/**
 * Every system process still running and every data directory not yet removed: killed and removed
 * if the measuring process exits first (a failed start, an error, Ctrl-C).
 */
const spawned = new Set<ChildProcess>();
const dirs = new Set<string>();
process.on("exit", () => {
  for (const c of spawned) c.kill("SIGKILL");
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
/** A signal ends the process without its exit handlers: exit instead, once a system is started. */
const exitOnSignal = () => process.exit(130);

/**
 * Spawns `cmd`, reads (and drops) its output as `make run` would print it, resolves once `ready`
 * appears — and `observe` too, when given (the port of its /metrics or monitoring, bound as 0).
 */
function startProcess(
  name: ProcessName,
  cmd: string,
  args: readonly string[],
  env: Record<string, string>,
  ready: (line: string) => number | undefined,
  observe?: (line: string) => number | undefined,
): Promise<Proc> {
  const child = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  spawned.add(child);
  child.once("exit", () => spawned.delete(child));
  let tail = "";
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${name} did not start in 60 s:\n${tail}`)), 60_000);
    let started = false;
    let port: number | undefined;
    let observePort: number | undefined;
    for (const s of [child.stdout, child.stderr]) {
      createInterface({ input: s }).on("line", (line) => {
        if (started) return;
        tail = `${tail}${line}\n`.slice(-4000);
        port ??= ready(line);
        observePort ??= observe?.(line);
        if (port === undefined || (observe && observePort === undefined)) return;
        started = true;
        clearTimeout(timer);
        res({ name, child, port, ...(observePort === undefined ? {} : { observePort }) });
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
export function cpuSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/**
 * Memory of `pid`, MB (0 when it cannot be read): `rss`, what it has resident, and `pss`, the same
 * with each shared page divided among the processes that map it. Six Node processes share the pages
 * of the node binary (~45 MB each in RSS), so a sum of RSS counts those six times; a sum of PSS is
 * what the system takes from the machine.
 */
export function memoryMb(pid: number | undefined): { rss: number; pss: number } {
  if (!pid) return { rss: 0, pss: 0 };
  try {
    const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, "utf8");
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(rollup)?.[1] ?? 0);
    return { rss: Math.round(kb("Rss") / 1024), pss: Math.round(kb("Pss") / 1024) };
  } catch {
    return { rss: 0, pss: 0 };
  }
}

/** Memory of each process, MB, and their sums. */
export interface SystemMemory {
  readonly rssMb: number;
  readonly pssMb: number;
  readonly byProcess: Readonly<Record<string, { rss: number; pss: number }>>;
}

function memoryOf(procs: readonly Proc[]): SystemMemory {
  const byProcess = Object.fromEntries(procs.map((p) => [p.name, memoryMb(p.child.pid)]));
  const sum = (k: "rss" | "pss") => Object.values(byProcess).reduce((s, m) => s + m[k], 0);
  return { rssMb: sum("rss"), pssMb: sum("pss"), byProcess };
}

export interface SystemOptions {
  /** Telemetry as `make run` has it (span file, /metrics) or off. */
  readonly telemetry: boolean;
  /** A development token the gateway accepts (readiness is checked through the gateway). */
  readonly token: string;
  /** Extra env per process (e.g. `{ order: { PAYMENT_RETRY_MAX_ATTEMPTS: "1" } }`). */
  readonly env?: Partial<Record<ServiceName | "gateway", Record<string, string>>>;
  /** Extra node flags per process (e.g. --cpu-prof for one of them). */
  readonly nodeArgs?: (name: ServiceName | "gateway") => readonly string[];
  /** Serve each service's /metrics and nats-server's monitoring endpoint (on ports they pick and log). */
  readonly observe?: boolean;
}

export interface System {
  readonly procs: readonly Proc[];
  /** host:port of a process's gRPC (services), HTTP (gateway) or client (nats) port. */
  readonly addressOf: (name: ProcessName) => string;
  /** http://host:port of a service's /metrics, or nats-server's monitoring (with `observe`). */
  readonly observeUrlOf: (name: ServiceName | "nats") => string | undefined;
  readonly readyMs: number;
  /** Summed RSS of every process once ready, MB. */
  readonly rssMb: number;
  /** Summed PSS of every process once ready, MB (shared pages counted once). */
  readonly pssMb: number;
  /** Memory now, per process and summed. */
  memory(): SystemMemory;
  /** CPU seconds used by each process so far, by name. */
  cpu(): Record<ProcessName, number>;
  stop(): Promise<void>;
}

/** Starts the system as `make run` does, on free ports under a temporary data directory. */
export async function startSystem(opts: SystemOptions): Promise<System> {
  const dir = mkdtempSync(join(tmpdir(), "shopmesh-bench-"));
  dirs.add(dir);
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.off(signal, exitOnSignal);
    process.once(signal, exitOnSignal);
  }
  const t0 = performance.now();
  const nats = await startProcess(
    "nats",
    "nats-server",
    natsServerArgs(dir, -1, opts.observe ? -1 : undefined),
    {},
    (line) => {
      const m = /Listening for client connections on 127\.0\.0\.1:(\d+)/.exec(line);
      return m ? Number(m[1]) : undefined;
    },
    opts.observe
      ? (line) => {
          const m = /Starting http monitor on [\d.]+:(\d+)/.exec(line);
          return m ? Number(m[1]) : undefined;
        }
      : undefined,
  );
  // Each process its own NATS user, the streams created by the bus's administrator: as make run does.
  const passwords = localBusPasswords(dir);
  const natsUrl = `nats://127.0.0.1:${nats.port}`;
  await provisionBus(natsUrl, EVENTS, silentLogger(), { auth: { user: BUS_ADMIN, pass: passwords[BUS_ADMIN] ?? "" } });
  const common: Record<string, string> = {
    ...SYSTEM_ENV,
    NATS_URL: natsUrl,
    LOG_FORMAT: "json",
    LOG_LEVEL: "info",
    ...Object.fromEntries(SERVICES.map((n) => [`${n.toUpperCase()}_TARGET`, `registry:///${n}`])),
    ...(opts.telemetry ? { METRICS_PORT: "0", TRACE_FILE: join(dir, "traces.jsonl") } : {}),
  };
  // Started as `make run` starts them: the compiled JavaScript in dist/ (make build), with the same
  // node flags (nodeCommand) and environment (SYSTEM_ENV).
  const node = (name: ServiceName | "gateway", main: string) => nodeCommand(main, opts.nodeArgs?.(name) ?? []);
  const services = await Promise.all(
    SERVICES.map((name) => {
      const [cmd, args] = node(name, join("services", name, "main.ts"));
      return startProcess(
        name,
        cmd,
        args,
        {
          ...common,
          NATS_USER: name,
          NATS_PASSWORD: passwords[name] ?? "",
          GRPC_PORT: "0",
          DB_PATH: join(dir, `${name}.db`),
          ...(opts.observe ? { METRICS_PORT: "0" } : {}),
          ...opts.env?.[name],
        },
        logged("gRPC server listening"),
        opts.observe ? logged("metrics on /metrics") : undefined,
      );
    }),
  );
  const [gcmd, gargs] = node("gateway", "gateway/main.ts");
  const gateway = await startProcess(
    "gateway",
    gcmd,
    gargs,
    {
      ...common,
      NATS_USER: "gateway",
      NATS_PASSWORD: passwords.gateway ?? "",
      HTTP_PORT: "0",
      // One load generator is one client: the per-principal and per-address limits are raised.
      RATE_LIMIT_RPS: "1000000",
      RATE_LIMIT_BURST: "500",
      RATE_LIMIT_IP_RPS: "1000000",
      RATE_LIMIT_IP_BURST: "500",
      ...opts.env?.gateway,
    },
    logged("gateway listening"),
  );
  const procs = [nats, ...services, gateway];
  // The gateway learns the services from the registry: ready once it answers through to inventory.
  await untilAnswered(`127.0.0.1:${gateway.port}`, opts.token);
  const readyMs = Math.round(performance.now() - t0);
  const atStart = memoryOf(procs);
  return {
    procs,
    readyMs,
    rssMb: atStart.rssMb,
    pssMb: atStart.pssMb,
    memory: () => memoryOf(procs),
    addressOf: (name) => `127.0.0.1:${procs.find((p) => p.name === name)?.port}`,
    observeUrlOf: (name) => {
      const port = procs.find((p) => p.name === name)?.observePort;
      return port ? `http://127.0.0.1:${port}` : undefined;
    },
    cpu: () => Object.fromEntries(procs.map((p) => [p.name, cpuSeconds(p.child.pid)])) as Record<ProcessName, number>,
    async stop() {
      const exited = (c: ChildProcess) =>
        c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once("exit", r));
      for (const p of [...services, gateway]) p.child.kill("SIGTERM");
      await Promise.all([...services, gateway].map((p) => exited(p.child)));
      nats.child.kill("SIGTERM");
      await exited(nats.child);
      rmSync(dir, { recursive: true, force: true });
      dirs.delete(dir);
    },
  };
}

/** Resolves once `GetProduct` through the gateway at `address` succeeds (10 s at most). */
async function untilAnswered(address: string, token: string): Promise<void> {
  const ch = createChannel(address);
  const inv = createClient(InventoryService, ch);
  const md = new Metadata();
  md.set("authorization", `Bearer ${token}`);
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
export function load(spec: LoadSpec): Promise<LoadResult> {
  return new Promise((res, rej) => {
    const [cmd, args] = nodeCommand("bench/load.ts");
    const child = spawn(cmd, [...args, JSON.stringify(spec)], {
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

/** Stock enough for any run: a million of each product. */
export async function restock(sys: System): Promise<void> {
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

/** Writes a benchmark's results as JSON to `path`, stamped with when, the cores and Node it ran on; says so. */
export function writeResults(path: string, results: Record<string, unknown>): void {
  mkdirSync(dirname(path), { recursive: true });
  const stamp = { when: new Date().toISOString(), cores: cpus().length, node: process.version };
  writeFileSync(path, `${JSON.stringify({ ...stamp, ...results }, null, 2)}\n`);
  process.stdout.write(`wrote ${path}\n`);
}
