/**
 * The last step of `make build` (dist/.built in the Makefile): moves a build written aside, in
 * `staging`, into `dist`, one rename a file. A process that starts meanwhile — a service `make run`
 * restarts, a command — reads every file whole, the old one or the new one: written in place, a
 * restart read a main.js or chunk cut short, or found dist/chunks deleted.
 *
 * The chunks go first, so a new main.js only ever names chunks that are there. The chunks of the
 * build before stay until the next (a process that read the old main.js just before it was replaced
 * imports them afterwards, and a chunk may be imported late: readable-log); older ones are removed.
 *
 *   node dist/.next/scripts/publish-build.js dist/.next dist
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";

/** Where the names of the chunks of the build in dist/ are kept (those of the build before are kept too). */
const CHUNK_LIST = ".chunks";

/** Moves everything under `staging` to the same path under `dist`, chunks first, then removes `staging`. */
export function publishBuild(staging: string, dist: string): void {
  const chunks = readdirSync(join(staging, "chunks"));
  const chunkDir = join(dist, "chunks");
  mkdirSync(chunkDir, { recursive: true });
  const listed = join(dist, CHUNK_LIST);
  const before = existsSync(listed) ? readFileSync(listed, "utf8").split("\n") : readdirSync(chunkDir);
  for (const c of chunks) renameSync(join(staging, "chunks", c), join(chunkDir, c));
  const made = new Set<string>();
  for (const file of filesUnder(staging)) {
    const to = join(dist, file);
    if (!made.has(dirname(to))) mkdirSync(dirname(to), { recursive: true });
    made.add(dirname(to));
    renameSync(join(staging, file), to);
  }
  const keep = new Set([...chunks, ...before]);
  for (const c of readdirSync(chunkDir)) if (!keep.has(c)) rmSync(join(chunkDir, c), { force: true });
  writeFileSync(listed, chunks.join("\n"));
  rmSync(staging, { recursive: true, force: true });
}

/** The files under `root`, by path from it. */
function filesUnder(root: string, dir = ""): string[] {
  return readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(root, join(dir, e.name)) : [join(dir, e.name)],
  );
}

if (process.argv[1] === import.meta.filename) {
  const [staging, dist] = process.argv.slice(2);
  if (staging === undefined || dist === undefined) {
    process.stderr.write("usage: node dist/.next/scripts/publish-build.js <staging> <dist>\n");
    process.exit(2);
  }
  publishBuild(staging, dist);
}
