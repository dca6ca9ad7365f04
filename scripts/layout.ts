/**
 * Where the repository is, and how `make run` (and `make bench`) start a
 * process: the compiled JavaScript in dist/ that `make build` writes
 * (esbuild, about a second; rebuilt when a source changes), not TypeScript
 * compiled at start by tsx — which would cost every process seconds of start
 * and ~90 MB of memory. The services and the gateway run one bundle each
 * (dist/<service>/main.js and the chunks they share). No source maps by
 * default (they cost ~19 MB per process): set NODE_OPTIONS=--enable-source-maps
 * for stack traces in TypeScript lines.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";

/** The repository root: the nearest folder above this file with a package.json (dist/ has none). */
export const ROOT = (() => {
  for (let dir = import.meta.dirname; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "package.json"))) return dir;
    if (dirname(dir) === dir) throw new Error(`no package.json above ${import.meta.dirname}`);
  }
})();

/**
 * The largest young generation (one of its two semi-spaces, MB) of each of
 * the system's processes: V8's default is 16 MB, which it grows to as soon as
 * start-up or load allocates, and keeps while the process idles. The gateway
 * and inventory serve the hot read paths (every gateway call, GetProduct) at
 * thousands of calls a second and keep 8 MB: at 4 their scavenges cost ~8%
 * of the gateway's throughput, at 8 nothing beyond this machine's noise. The
 * others run sagas, at a few hundred orders a second at most, where 4 MB cost
 * nothing measurable. Measured in docs/performance.md.
 */
const SEMI_SPACE_MB: Readonly<Record<string, number>> = {
  "gateway/main.ts": 8,
  "services/inventory/main.ts": 8,
  "services/payment/main.ts": 4,
  "services/order/main.ts": 4,
  "services/notification/main.ts": 4,
  "services/history/main.ts": 4,
};

/**
 * The V8 flags of `main` when it is a service or the gateway (wherever it is started: `make run`,
 * `make bench`): its young generation (SEMI_SPACE_MB). No cap on the heap: `--max-old-space-size=256`
 * made V8 collect the old generation early (the order service reaches ~50 MB before its first full
 * collection without it) but cost 7–29% of throughput on every path (two interleaved pairs).
 */
export function systemNodeFlags(main: string): readonly string[] {
  const semiSpace = SEMI_SPACE_MB[main.split("\\").join("/")];
  return semiSpace === undefined ? [] : [`--max-semi-space-size=${semiSpace}`];
}

/**
 * Environment of the system's processes: glibc's malloc keeps at most two
 * arenas instead of one per thread that allocates (8 × cores), each of which
 * stays resident once used.
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
