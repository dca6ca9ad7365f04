/**
 * What one group-commit flush (platform/wal-sync.ts) costs the event loop's
 * thread: a write to a log file, then `WalSync.sync()` — the fdatasync runs
 * in libuv's pool, so what is measured is the thread's busy time around it
 * (`performance.eventLoopUtilization()`), one flush at a time, as each durable
 * commit pays at one order in flight.
 *
 *   npx tsx bench/wal-flush.ts               (WAL_FLUSHES=3000)
 *
 * One component in one process: run it on two checkouts, alternating, for an
 * A/B of a change to the flush. Prints and writes bench/results/wal-flush.json.
 */
import { openSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { configOrExit, int, parseEnv } from "../platform/config.js";
import { WalSync } from "../platform/wal-sync.js";
import { tempDir } from "../test/fixtures.js";
import { writeResults } from "./system.js";

const { WAL_FLUSHES: FLUSHES } = configOrExit(() =>
  parseEnv({ WAL_FLUSHES: int(3_000, { min: 1, max: 10_000_000 }) }, process.env),
);
using dir = tempDir("shopmesh-wal-bench-");
const db = join(dir.path, "bench.db");
writeFileSync(db, "");
writeFileSync(`${db}-wal`, Buffer.alloc(4096));
const log = openSync(`${db}-wal`, "r+");
const wal = new WalSync(`${db}-wal`, db);

async function round(count: number) {
  const busy = performance.eventLoopUtilization();
  const started = performance.now();
  for (let i = 0; i < count; i++) {
    writeSync(log, Buffer.alloc(128, i), 0);
    await wal.sync();
  }
  return {
    busyUs: (performance.eventLoopUtilization(busy).active / count) * 1_000,
    wallUs: ((performance.now() - started) / count) * 1_000,
  };
}

await round(300); // warm-up
const r = await round(FLUSHES);
process.stdout.write(
  `${FLUSHES} flushes: ${r.busyUs.toFixed(1)} µs of the event loop's thread, ${r.wallUs.toFixed(0)} µs wall per flush\n`,
);
await wal.close();
writeResults(join(import.meta.dirname, "results", "wal-flush.json"), { flushes: FLUSHES, ...r });
