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

/** The command that runs `main` (a source path such as `services/order/main.ts`) from its build. */
export function nodeCommand(main: string, nodeArgs: readonly string[] = []): [string, string[]] {
  const built = join(ROOT, "dist", main.replace(/\.ts$/, ".js"));
  if (!existsSync(built)) throw new Error(`${built} is missing: run \`make build\` (make run does it for you)`);
  return [process.execPath, [...nodeArgs, built]];
}
