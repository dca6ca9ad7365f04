/**
 * Preloaded into each system process by `make footprint` (`node --import`): what the young
 * generation's collections keep while the load runs. The first SIGUSR2 starts V8's GC profiler, the
 * second stops it and writes GC_WATCH_DIR/<process>.json ({@link GcWatch}). What a scavenge promotes
 * is what grows a process's old generation, and with it its RSS, under steady load until the next
 * full collection — and V8 keeps the pages it grew (docs/performance.md, "Memory").
 */
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { GCProfiler, type GCProfilerResult } from "node:v8";

export interface GcWatch {
  readonly seconds: number;
  readonly scavenges: number;
  /** Moved into the old generation by the scavenges (old space and large objects), MiB. */
  readonly promotedMb: number;
  /** Left in the young generation after a scavenge (promoted at the next if still reachable), MiB, mean. */
  readonly survivorsMbPerScavenge: number;
  /** Every other collection (mark-compacts, their incremental steps, weak-callback processing). */
  readonly otherCollections: number;
}

const dir = process.env.GC_WATCH_DIR;
// services/order/main.js → order; gateway/main.js → gateway
const name = (process.argv[1] ?? "").split(/[\\/]/).at(-2) ?? "node";

function summary(r: GCProfilerResult): GcWatch {
  const used = (side: { heapSpaceStatistics: { spaceName: string; spaceUsedSize: number }[] }, space: string) =>
    side.heapSpaceStatistics.find((s) => s.spaceName === space)?.spaceUsedSize ?? 0;
  const scavenges = r.statistics.filter((s) => s.gcType === "Scavenge");
  const mb = (bytes: number) => Math.round((bytes / 2 ** 20) * 100) / 100;
  const grew = (s: GCProfilerResult["statistics"][number], space: string) =>
    used(s.afterGC, space) - used(s.beforeGC, space);
  // A large object a scavenge keeps moves from new_large_object_space to large_object_space, not old_space.
  const promoted = scavenges.reduce((n, s) => n + grew(s, "old_space") + grew(s, "large_object_space"), 0);
  const survivors = scavenges.reduce((n, s) => n + used(s.afterGC, "new_space"), 0);
  return {
    seconds: Math.round((r.endTime - r.startTime) / 1000),
    scavenges: scavenges.length,
    promotedMb: mb(promoted),
    survivorsMbPerScavenge: scavenges.length ? mb(survivors / scavenges.length) : 0,
    otherCollections: r.statistics.length - scavenges.length,
  };
}

if (dir) {
  let profiler: GCProfiler | undefined;
  process.on("SIGUSR2", () => {
    if (!profiler) {
      profiler = new GCProfiler();
      profiler.start();
      return;
    }
    const result = profiler.stop();
    profiler = undefined;
    try {
      // Whole or not at all: the reader polls for the file.
      const file = join(dir, `${name}.json`);
      writeFileSync(`${file}.tmp`, JSON.stringify(summary(result)));
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      process.stderr.write(`gc-watch: ${(err as Error).message}\n`);
    }
  });
}
