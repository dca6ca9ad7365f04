/**
 * A real PostgreSQL server for tests: a throwaway cluster (see
 * scripts/postgres.ts) in a temp dir on a free port, stoppable and
 * restartable on the same data (for outage tests), removed on dispose.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureDatabase, initCluster, ownDir, serverArgs, serverCommand, stopCluster } from "../scripts/postgres.js";
import { exited, freePort, outputReady } from "./fixtures.js";

/** A running (or stopped) test PostgreSQL. */
export interface TestPostgres extends AsyncDisposable {
  /** URL of the `postgres` database as the superuser. */
  readonly url: string;
  readonly port: number;
  /** A fresh, empty database; its URL. */
  createDatabase(prefix?: string): Promise<string>;
  /** Stops the server: "fast" (clean) or "immediate" (like a crash). */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  /** Starts it again on the same port and data. */
  start(): Promise<void>;
  /** What the server has logged so far (its ERROR lines: a statement that failed). */
  output(): string;
}

let databases = 0;

/** Creates a fresh, empty database on the server of `adminUrl` (a superuser's); its URL. */
export function createDatabase(adminUrl: string, prefix = "shopmesh"): Promise<string> {
  return ensureDatabase(adminUrl, `${prefix}_${process.pid}_${++databases}`);
}

/** Starts a fresh PostgreSQL on a free port. */
export async function startPostgres(): Promise<TestPostgres> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "shopmesh-pg-"));
  const data = join(dir, "data");
  let child: ChildProcess | undefined;
  let output = "";
  const start = async () => {
    const [cmd, args] = serverCommand("postgres", serverArgs(data, port, dir, false));
    const c = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    child = c;
    for (const s of [c.stdout, c.stderr]) s?.on("data", (d: Buffer) => (output += d.toString()));
    await outputReady(c, "ready to accept connections", "postgres", 20_000);
  };
  const stop = async (mode: "fast" | "immediate" = "fast") => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const done = exited(child);
    stopCluster(data, mode);
    await done;
  };
  try {
    ownDir(dir);
    initCluster(data);
    await start();
  } catch (err) {
    // A server that did not start (its port taken since freePort, or slower than the timeout on a loaded
    // machine) is stopped if it runs, and its cluster removed: no caller holds it to dispose of.
    await stop("immediate").catch(() => {});
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    url,
    port,
    createDatabase: (prefix) => createDatabase(url, prefix),
    stop,
    start,
    output: () => output,
    async [Symbol.asyncDispose]() {
      await stop("immediate");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
