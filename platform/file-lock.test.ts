/**
 * The kernel-freed lock ("one process at a time": make run's data directory, the order service's SQLite
 * file), against real processes: a process that only passes through the file (as another taker's own
 * attempt does, for a moment) is not a holder, a live holder is, and a killed one is not.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { afterEach, expect, it } from "vitest";
import { tempDir } from "../test/fixtures.js";
import { holdExclusive } from "./file-lock.js";

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
});

/** A process running `code` (an ES module with better-sqlite3 as `Database`, the lock's path as `path`), once it says "ready". */
async function child(path: string, code: string): Promise<ChildProcess> {
  const source = `import Database from "better-sqlite3"; const path = process.argv[1]; ${code}`;
  const c = spawn(process.execPath, ["--input-type=module", "-e", source, path], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(c);
  let out = "";
  c.stdout?.on("data", (d) => {
    out += d;
  });
  await new Promise<void>((resolve, reject) => {
    c.stdout?.on("data", () => out.includes("ready") && resolve());
    c.on("exit", (code) => reject(new Error(`the child exited (${code}) before it was ready: ${out}`)));
  });
  return c;
}

it("a process that only reads the lock's file for a moment is not a holder: the taker waits it out (both takers were refused, each seeing the other's attempt)", async () => {
  using dir = tempDir();
  const path = join(dir.path, "run.lock");
  // A shared lock held 200 ms: what a taker's journal-mode read or failed attempt holds for microseconds.
  await child(
    path,
    `const db = new Database(path); db.exec("BEGIN"); db.prepare("SELECT count(*) FROM sqlite_master").get();
    console.log("ready"); setTimeout(() => { db.exec("COMMIT"); db.close(); }, 200); setTimeout(() => {}, 5000);`,
  );
  const release = holdExclusive(path);
  expect(release, "refused while another process only read the file").toBeTypeOf("function");
  release?.();
});

it("a live holder refuses every other taker; killed, its lock is the next one's", async () => {
  using dir = tempDir();
  const path = join(dir.path, "run.lock");
  const holder = await child(
    path,
    `const db = new Database(path, { timeout: 0 }); db.pragma("journal_mode = DELETE"); db.exec("BEGIN EXCLUSIVE");
    console.log("ready"); setInterval(() => {}, 1000);`,
  );
  expect(holdExclusive(path)).toBeUndefined();
  holder.kill("SIGKILL");
  await once(holder, "exit");
  const release = holdExclusive(path);
  expect(release).toBeTypeOf("function");
  release?.();
});
