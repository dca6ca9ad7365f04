/**
 * `make backup`: a consistent copy of every service's SQLite store (DATA_DIR, default .data) in a new
 * directory <BACKUP_DIR, default backups/ in the checkout>/<UTC time>, while the services run (not
 * under .data: `make clean` removes that). Each copy is `VACUUM INTO` from one read transaction: the
 * store as one commit left it (WAL mode lets the writers go on meanwhile). A plain `cp` is not: the
 * file alone lacks the commits still in its `-wal`, and the two copied one after the other, under
 * load, were "malformed" one time in twenty (order.db, four clients placing orders). Each copy is then opened and checked
 * (`PRAGMA integrity_check`); `backup.json` beside them says when and what.
 *
 * The copies are written under `<name>.partial`, renamed into place once all are whole: a directory
 * without the suffix is a complete backup. With DB=postgres, the stores are schemas of make run's
 * PostgreSQL: one `pg_dump` of its database, shopmesh.dump. Exits 0 when every store was copied;
 * 1 when one is missing, cannot be read or stayed locked (named, with why); 2 for bad arguments.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import Database from "better-sqlite3";
import { makeDirs } from "../platform/make-dirs.js";
import { dbOf, portOf, ROOT, SERVICE_NAMES } from "./layout.js";
import { catchSignals, exitCodeOf } from "./local-nats.js";
import { clientTool } from "./postgres.js";
import { sayWhileRead } from "./printable.js";

const DATA = process.env.DATA_DIR || join(ROOT, ".data");
const say = sayWhileRead();
// A signal (Ctrl-C, its terminal closed, a kill) ends it after the store being copied, what it copied
// removed: killed at once, it left a `.partial` directory for someone to find and delete.
const signalled = catchSignals();

/** When a signal has come (its handler runs once the event loop polls): `partial` removed, said, and the exit code. */
async function endedBySignal(partial: string): Promise<number | undefined> {
  // Two turns: called from a callback of the loop's poll phase (as the module's top level is), a single
  // setImmediate ran before the next poll read the signal, and a signal during pg_dump went unseen.
  for (let turn = 0; turn < 2; turn++) await new Promise((resolve) => setImmediate(resolve));
  const signal = signalled();
  if (!signal) return undefined;
  rmSync(partial, { recursive: true, force: true });
  process.stderr.write(`backup: ended by ${signal}; nothing kept\n`);
  return exitCodeOf(signal);
}
const shown = (path: string) => (path.startsWith(ROOT) ? relative(ROOT, path) : path);

/** `path` as one shell word: quoted when it holds more than letters, digits and `/._-:+` (a space split it into make targets). */
const pastable = (path: string) => (/^[\w/.:+-]+$/.test(path) ? path : `'${path.replaceAll("'", "'\\''")}'`);

/** What `backup.json` says of one store. */
interface BackedUp {
  readonly file: string;
  readonly bytes: number;
  readonly schemaVersion: number;
}

/** The copy could not be written where the backup goes (the store itself read fine). */
class CopyUnwritten extends Error {}

/** Why a store could not be copied, in words for the operator. */
function why(path: string, err: unknown): string {
  if (err instanceof CopyUnwritten) return `${err.message} (is the disk of BACKUP_DIR full?)`;
  const code = String((err as { code?: unknown }).code ?? "");
  if (code === "SQLITE_CANTOPEN") return `no store at ${shown(path)} (is DATA_DIR right? has the service run once?)`;
  if (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED")) {
    return `${shown(path)} stayed locked for 5 s (a process holds it exclusively): try again`;
  }
  if (code === "SQLITE_NOTADB") return `${shown(path)} is not a SQLite database`;
  if (code.startsWith("SQLITE_CORRUPT")) return `${shown(path)} is damaged: back up from an earlier copy`;
  return `${shown(path)}: ${(err as Error).message}`;
}

/** Copies the store at `from` to `to` (which must not exist) as one transaction saw it, and checks the copy. */
function copyStore(from: string, to: string): BackedUp {
  // Never created here: a store missing is an error, not an empty database to back up.
  const source = new Database(from, { fileMustExist: true, timeout: 5_000 });
  try {
    source.prepare("VACUUM INTO ?").run(to);
  } catch (err) {
    // The copy's side (its disk full, or refusing): said of the store, it read as the data disk failing.
    const code = String((err as { code?: unknown }).code ?? "");
    if (/^SQLITE_(FULL|CANTOPEN|READONLY|IOERR_(WRITE|FSYNC|TRUNCATE))/.test(code)) {
      throw new CopyUnwritten(`cannot write its copy in ${shown(dirname(to))}: ${(err as Error).message}`);
    }
    throw err;
  } finally {
    source.close();
  }
  const copy = new Database(to, { readonly: true });
  try {
    const check = copy.pragma("integrity_check", { simple: true });
    if (check !== "ok") throw new Error(`the copy failed its integrity check: ${String(check)}`);
    const schemaVersion = copy.pragma("user_version", { simple: true }) as number;
    return { file: to, bytes: statSync(to).size, schemaVersion };
  } finally {
    copy.close();
  }
}

/**
 * DB=postgres: every store is a schema of make run's `shopmesh` database, and one pg_dump is one
 * snapshot of them all, at one instant (custom format: `pg_restore -n shopmesh_<service>` takes one back).
 */
async function pgDump(partial: string, dir: string, at: Date): Promise<number> {
  const port = portOf("PG_PORT", 55432);
  const file = join(partial, "shopmesh.dump");
  say(`backing up make run's PostgreSQL (127.0.0.1:${port}, database shopmesh, every schema) to ${shown(dir)}`);
  const run = spawnSync(
    clientTool("pg_dump"),
    ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "-Fc", "-f", file, "shopmesh"],
    {
      encoding: "utf8",
    },
  );
  // A Ctrl-C reaches pg_dump too; a SIGTERM to the backup alone waits for it (spawnSync), then ends it as well.
  const ended = await endedBySignal(partial);
  if (ended !== undefined) return ended;
  if (run.status !== 0) {
    rmSync(partial, { recursive: true, force: true });
    // Its first line, without its own "pg_dump: " (the line names it): the second is libpq's hint, ours follows.
    const why = run.error ? run.error.message : (run.stderr.trim().split("\n")[0] ?? "").replace(/^pg_dump: /, "");
    process.stderr.write(`backup failed: pg_dump: ${why} (is make run DB=postgres up?)\n`);
    return 1;
  }
  const bytes = statSync(file).size;
  say(`  shopmesh.dump: ${Math.ceil(bytes / 1024)} KiB, one snapshot of every service's schema`);
  writeFileSync(
    join(partial, "backup.json"),
    `${JSON.stringify({ at: at.toISOString(), pgDump: "shopmesh.dump" }, null, 2)}\n`,
  );
  renameSync(partial, dir);
  say(
    `done: ${shown(dir)} (restore one consumer's schema: make restore DB=postgres SERVICE=history FROM=${pastable(shown(dir))})`,
  );
  return 0;
}

/**
 * A name of its own in `parent` for a backup taken `at`: its time, or with `-1`, `-2`... when a backup
 * there has it (one started the same millisecond, or a clock set back). Renamed onto a backup of the same
 * name, the copies failed (ENOTEMPTY, the .partial left); two in one `.partial` wrote over each other's.
 * The `.partial` is made here, exclusively: the claim.
 */
function claim(parent: string, at: Date): { dir: string; partial: string } {
  makeDirs(parent);
  const stamp = at.toISOString().replace(/[:.]/g, "-");
  for (let n = 0; ; n++) {
    const dir = join(parent, n === 0 ? stamp : `${stamp}-${n}`);
    if (existsSync(dir)) continue;
    try {
      mkdirSync(`${dir}.partial`);
      return { dir, partial: `${dir}.partial` };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  }
}

async function main(): Promise<number> {
  // Before any copy: every event a consumer had applied by then is in its copy (what a restore replays from).
  const at = new Date();
  const parent = process.env.BACKUP_DIR || join(ROOT, "backups");
  let claimed: { dir: string; partial: string };
  try {
    claimed = claim(parent, at);
  } catch (err) {
    process.stderr.write(
      `backup failed: cannot make a directory in ${shown(parent)} (BACKUP_DIR): ${(err as Error).message}\n`,
    );
    return 1;
  }
  const { dir, partial } = claimed;
  if (dbOf() === "postgres") return pgDump(partial, dir, at);
  say(`backing up ${SERVICE_NAMES.length} stores from ${shown(DATA)} to ${shown(dir)}`);
  const stores: Record<string, BackedUp> = {};
  const failed: string[] = [];
  for (const name of SERVICE_NAMES) {
    const ended = await endedBySignal(partial);
    if (ended !== undefined) return ended;
    const from = join(DATA, `${name}.db`);
    const started = Date.now();
    try {
      const done = copyStore(from, join(partial, `${name}.db`));
      stores[name] = { ...done, file: `${name}.db` };
      const kb = Math.ceil(done.bytes / 1024);
      say(`  ${name}: ${kb} KiB, schema ${done.schemaVersion}, integrity ok (${Date.now() - started} ms)`);
    } catch (err) {
      failed.push(name);
      say(`  ${name}: FAILED: ${why(from, err)}`);
    }
  }
  // Before a store's failure is said: a Ctrl-C during the last copy kept the others in `.partial`.
  const ended = await endedBySignal(partial);
  if (ended !== undefined) return ended;
  if (failed.length > 0) {
    if (Object.keys(stores).length === 0) rmSync(partial, { recursive: true, force: true });
    const kept = Object.keys(stores).length === 0 ? "nothing was" : `what was is in ${shown(partial)}`;
    process.stderr.write(`backup incomplete: ${failed.join(", ")} not copied; ${kept}\n`);
    return 1;
  }
  writeFileSync(join(partial, "backup.json"), `${JSON.stringify({ at: at.toISOString(), stores }, null, 2)}\n`);
  renameSync(partial, dir);
  say(`done: ${shown(dir)} (restore one consumer's store: make restore SERVICE=history FROM=${pastable(shown(dir))})`);
  return 0;
}

process.exitCode = await main();
