/**
 * One user of a data directory at a time: `make run`, or `make history-rebuild` (which starts make
 * run's NATS on its store). A second make run on other ports but the same DATA_DIR started a second
 * nats-server on the first one's JetStream store, its registry bucket included (its gateway routed to
 * the first run's services), and services on the first one's databases.
 *
 * The hold is a lock the kernel frees with its process (an exclusive SQLite transaction on
 * <data dir>/run.lock, as the history rebuild's lock is): a pid file alone was claimed by two runners
 * started at once (each read the other's file before its pid was in it, or both took over a stale
 * one). The runner's pid is in <data dir>/run.pid, for the messages and for `make clean`.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";

/** Where make run keeps its pid while it uses data directory `dataDir`. */
export const runPidFile = (dataDir: string) => join(dataDir, "run.pid");

/** The pid of the make run that uses `dataDir`, if one is running (a file left by a killed one is none). */
export function liveRunner(dataDir: string): number | undefined {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(runPidFile(dataDir), "utf8"), 10);
  } catch {
    return undefined;
  }
  if (!(pid > 0)) return undefined;
  try {
    process.kill(pid, 0);
    return pid;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM" ? pid : undefined; // EPERM: another user's
  }
}

/**
 * Holds `dataDir` for this process (a runner writes its pid too, removed at exit): the release, or
 * why not — who holds it. Throws when the directory cannot be made or written.
 */
export function holdDataDir(dataDir: string, opts: { runner?: boolean } = {}): (() => void) | { heldBy: string } {
  mkdirSync(dataDir, { recursive: true });
  const lock = new Database(join(dataDir, "run.lock"), { timeout: 0 });
  try {
    lock.pragma("journal_mode = DELETE");
    lock.exec("BEGIN EXCLUSIVE");
  } catch (err) {
    lock.close();
    if (!String((err as { code?: unknown }).code).startsWith("SQLITE_BUSY")) throw err;
    const pid = liveRunner(dataDir);
    return { heldBy: pid === undefined ? "a make history-rebuild, or a make run starting" : `make run (pid ${pid})` };
  }
  const file = runPidFile(dataDir);
  const release = () => {
    if (opts.runner) rmSync(file, { force: true });
    if (lock.open) lock.close();
  };
  if (opts.runner) {
    writeFileSync(file, `${process.pid}\n`);
    process.on("exit", release);
  }
  return release;
}
