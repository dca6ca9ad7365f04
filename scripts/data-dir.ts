/**
 * One user of a data directory at a time: `make run`, or `make history-rebuild` or `make restore` (which start make
 * run's NATS on its store). A second make run on other ports but the same DATA_DIR started a second
 * nats-server on the first one's JetStream store, its registry bucket included (its gateway routed to
 * the first run's services), and services on the first one's databases.
 *
 * The hold is a lock the kernel frees with its process (an exclusive SQLite transaction on
 * <data dir>/run.lock, as the history rebuild's lock is): a pid file alone was claimed by two runners
 * started at once (each read the other's file before its pid was in it, or both took over a stale
 * one). The runner's pid is in <data dir>/run.pid, for the messages and for `make clean`.
 *
 * What a holder starts is listed in <data dir>/run.children (pid, start time, name): a holder killed
 * outright (SIGKILL, an OOM kill) left its nats-server, services and gateway running on the store,
 * the databases and the ports (the next make run refused: "port 4222 is in use"). The next holder
 * stops what is left.
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { holdExclusive } from "../platform/file-lock.js";
import { makeDirs } from "../platform/make-dirs.js";

/** Where make run keeps its pid while it uses data directory `dataDir`. */
const runPidFile = (dataDir: string) => join(dataDir, "run.pid");

/** The pid of the make run that uses `dataDir`, if one is running (a file left by a killed one is none). */
function liveRunner(dataDir: string): number | undefined {
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
  makeDirs(dataDir);
  const unlock = holdExclusive(join(dataDir, "run.lock"));
  if (!unlock) {
    const pid = liveRunner(dataDir);
    return {
      heldBy:
        pid === undefined ? "a make restore or make history-rebuild, or a make run starting," : `make run (pid ${pid})`,
    };
  }
  const file = runPidFile(dataDir);
  const release = () => {
    if (opts.runner) rmSync(file, { force: true });
    unlock();
  };
  if (opts.runner) {
    writeFileSync(file, `${process.pid}\n`);
    process.on("exit", release);
  }
  return release;
}

const childrenFile = (dataDir: string) => join(dataDir, "run.children");

/** When process `pid` started (clock ticks since boot, /proc), or undefined when it is gone or there is no /proc. */
function startOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/**
 * Lists `pid` (`name`), just started by this holder of `dataDir`, for the next holder should this one be
 * killed — with the children listed before that still run: appended to for every restart, the list
 * grew for as long as the runner ran (a service crashing every 30 s added ~2,900 lines a day). Written
 * whole and renamed into place, so a holder killed mid-write leaves the list as it was.
 */
export function recordChild(dataDir: string, pid: number | undefined, name: string): void {
  const start = pid === undefined ? undefined : startOf(pid);
  if (start === undefined) return;
  const file = childrenFile(dataDir);
  const running = listed(file).filter((c) => c.pid !== pid && startOf(c.pid) === c.start);
  const lines = [...running.map((c) => `${c.pid} ${c.start} ${c.name}`), `${pid} ${start} ${name}`];
  writeFileSync(`${file}.tmp`, `${lines.join("\n")}\n`);
  renameSync(`${file}.tmp`, file);
}

/** The children listed in `file` (pid, start time, name); none when there is no list. */
function listed(file: string): { pid: number; start: string | undefined; name: string | undefined }[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    text = "";
  }
  return text
    .split("\n")
    .map((line) => line.split(" "))
    .map(([pid, start, name]) => ({ pid: Number(pid), start, name }))
    .filter(({ pid, start }) => pid > 0 && start !== undefined);
}

/** Signals `pid`'s process group when it leads one (make run's children), else `pid` alone. */
function signal(pid: number, sig: NodeJS.Signals): void {
  for (const target of [-pid, pid]) {
    try {
      process.kill(target, sig);
      return;
    } catch {}
  }
}

/**
 * Stops what an earlier holder of `dataDir`, killed outright, started and left running (the same pid
 * with the same start time: not a process that took its pid since), telling `say` which: SIGINT (each
 * stops cleanly: PostgreSQL's fast shutdown), SIGKILL what still runs 10 s later. Call it holding the
 * directory; it starts this holder's list afresh.
 */
export async function stopLeftovers(dataDir: string, say: (line: string) => void): Promise<void> {
  const left = listed(childrenFile(dataDir)).filter(({ pid, start }) => startOf(pid) === start);
  for (const { pid, name } of left) {
    say(`stopping ${name} (pid ${pid}), left running on ${dataDir} by a holder that was killed`);
    signal(pid, "SIGINT");
  }
  const deadline = Date.now() + 10_000;
  // Still the process listed (its pid not taken by another since it ended).
  const lives = ({ pid, start }: (typeof left)[number]) => startOf(pid) === start;
  while (left.some(lives) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  for (const l of left) if (lives(l)) signal(l.pid, "SIGKILL");
  while (left.some(lives) && Date.now() < deadline + 2_000) await new Promise((r) => setTimeout(r, 50));
  writeFileSync(childrenFile(dataDir), "");
}
