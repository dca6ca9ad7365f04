/**
 * `npm run bench:scale-out`: order throughput on SQLite and PostgreSQL, with
 * one and with three order replicas, measured in one run on this machine.
 * Each configuration gets a fresh NATS, a fresh database, one inventory,
 * one payment and N order replicas as real processes, from their build in
 * dist/ as make run starts them (the npm script builds it first); the load
 * generator (bench/order-load.ts) runs in a process of its own. Two numbers per
 * configuration: orders accepted per second (PlaceOrder answered), and
 * orders completed per second (until every accepted order is CONFIRMED or
 * CANCELLED, read from the order database). Writes
 * bench/results/scale-out.json; ratios are against SQLite with one replica.
 *
 * Knobs: BENCH_SECONDS (load per configuration, default 10),
 * BENCH_CONCURRENCY (callers, 16), BENCH_ONLY (run the setups whose name
 * contains it), BENCH_PROFILE_DIR (write a V8 CPU profile of every order
 * replica there: open it in Chrome DevTools or speedscope).
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { sql } from "kysely";
import { configOrExit, int, num, parseEnv, str } from "../platform/config.js";
import { pgPool } from "../platform/pg-pool.js";
import { type Db, postgresDb, sqliteDb } from "../platform/sql.js";
import { ROOT, type ServiceProcess, spawnService, tempDir } from "../test/fixtures.js";
import { startNats } from "../test/nats.js";
import { startPostgres } from "../test/postgres.js";

const ENV = configOrExit(() =>
  parseEnv(
    {
      BENCH_SECONDS: num(10, { min: 0.1, max: 3_600 }),
      BENCH_CONCURRENCY: int(16, { min: 1, max: 10_000 }),
      BENCH_ONLY: str(""),
      BENCH_PROFILE_DIR: str(""),
    },
    process.env,
  ),
);
const SECONDS = ENV.BENCH_SECONDS;
const CONCURRENCY = ENV.BENCH_CONCURRENCY;

interface Setup {
  readonly name: string;
  readonly engine: "sqlite" | "postgres";
  readonly orderReplicas: number;
}
const SETUPS = (
  [
    { name: "sqlite, 1 order replica", engine: "sqlite", orderReplicas: 1 },
    { name: "postgres, 1 order replica", engine: "postgres", orderReplicas: 1 },
    { name: "postgres, 3 order replicas", engine: "postgres", orderReplicas: 3 },
  ] satisfies Setup[]
).filter((s) => s.name.includes(ENV.BENCH_ONLY));
const PROFILE_DIR = ENV.BENCH_PROFILE_DIR || undefined;

/** Runs the load generator; its JSON result. */
function load(addresses: string[], run: string) {
  return new Promise<{ calls: number; failures: number; seconds: number; p50: number; p99: number }>(
    (resolve, reject) => {
      const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "bench/order-load.ts")], {
        cwd: ROOT,
        env: {
          ...process.env,
          ORDER_ADDRESSES: addresses.join(","),
          BENCH_SECONDS: String(SECONDS),
          BENCH_CONCURRENCY: String(CONCURRENCY),
          BENCH_RUN: run,
        },
        stdio: ["ignore", "pipe", "inherit"],
      });
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.once("exit", (code) => {
        try {
          resolve(JSON.parse(out.trim().split("\n").at(-1) ?? ""));
        } catch {
          reject(new Error(`load generator exited ${code}: ${out}`));
        }
      });
    },
  );
}

async function measure(setup: Setup, pgUrl: () => Promise<string>) {
  using dir = tempDir("shopmesh-bench-");
  await using nats = await startNats();
  const database = setup.engine === "postgres" ? { DATABASE_URL: await pgUrl() } : ({} as Record<string, string>);
  const env = (name: string) => ({
    NATS_URL: nats.url,
    ...(setup.engine === "sqlite" ? { DB_PATH: join(dir.path, `${name}.db`) } : database),
  });
  const procs: ServiceProcess[] = [];
  try {
    const inventory = await spawnService("inventory", env("inventory"), 60_000);
    const payment = await spawnService("payment", env("payment"), 60_000);
    procs.push(inventory, payment);
    const orderEnv = {
      ...env("order"),
      INVENTORY_TARGET: inventory.address,
      PAYMENT_TARGET: payment.address,
    };
    const profile = PROFILE_DIR ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`] : [];
    // The first replica migrates the schema; the others start on it together.
    const first = await spawnService("order", orderEnv, 60_000, profile);
    const rest = await Promise.all(
      Array.from({ length: setup.orderReplicas - 1 }, () => spawnService("order", orderEnv, 60_000, profile)),
    );
    const orders = [first, ...rest];
    procs.push(...orders);
    process.stdout.write(`${setup.name}: loading for ${SECONDS} s with ${CONCURRENCY} callers...\n`);
    const started = performance.now();
    const result = await load(
      orders.map((o) => o.address),
      `${setup.engine}-${setup.orderReplicas}`,
    );
    const orderDb: Db =
      setup.engine === "sqlite"
        ? sqliteDb(new Database(join(dir.path, "order.db"), { readonly: true }))
        : postgresDb(pgPool(database.DATABASE_URL ?? "", "shopmesh_order", 1), database.DATABASE_URL ?? "");
    try {
      for (;;) {
        const r = await orderDb.one(
          sql<{ n: number }>`SELECT COUNT(*) AS n FROM orders WHERE status IN ('PENDING', 'COMPENSATING')`,
        );
        if ((r?.n ?? 0) === 0) break;
        await new Promise((res) => setTimeout(res, 100));
      }
    } finally {
      await orderDb.close();
    }
    const completedIn = (performance.now() - started) / 1000;
    return {
      setup: setup.name,
      accepted: result.calls,
      failures: result.failures,
      acceptedPerSec: Math.round((result.calls / result.seconds) * 10) / 10,
      completedPerSec: Math.round((result.calls / completedIn) * 10) / 10,
      placeP50Ms: result.p50,
      placeP99Ms: result.p99,
    };
  } finally {
    await Promise.all(procs.map((p) => p.kill("SIGTERM")));
  }
}

await using pg = await startPostgres();
let databases = 0;
const results = [];
for (const setup of SETUPS) {
  const r = await measure(setup, () => pg.createDatabase(`bench${++databases}`));
  results.push(r);
  process.stdout.write(`  ${JSON.stringify(r)}\n`);
}
const base = results[0];
const summary = results.map((r) => ({
  setup: r.setup,
  acceptedPerSec: r.acceptedPerSec,
  completedPerSec: r.completedPerSec,
  vsSqlite1: base ? Math.round((r.completedPerSec / base.completedPerSec) * 100) / 100 : 1,
}));
console.table(summary);
mkdirSync(join(ROOT, "bench/results"), { recursive: true });
writeFileSync(
  join(ROOT, "bench/results/scale-out.json"),
  `${JSON.stringify({ when: new Date().toISOString(), seconds: SECONDS, concurrency: CONCURRENCY, cores: (await import("node:os")).availableParallelism(), summary, results }, null, 2)}\n`,
);
// Stopped here: process.exit skips `await using`'s disposal, and PostgreSQL outlived every run.
await pg.stop("immediate");
process.exit(0);
