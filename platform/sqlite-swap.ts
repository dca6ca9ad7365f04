/**
 * Putting a whole SQLite file in place of a store's, in one step: what a history rebuild's swap
 * (services/history/rebuild-aside.ts) and a restore from a backup (scripts/restore.ts) do. The live
 * store's process must be stopped: one running on would write on to the file replaced (it notices at
 * its next flush and exits, platform/wal-sync.ts), and what it wrote would be in no file.
 */
import {
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  openSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";

/** The file a path names, links followed (the path itself while there is none). */
export const sqliteFileOf = (path: string) => (existsSync(path) ? realpathSync(path) : path);

/** SQLite's files of the database at `path`: the file, its log and its shared-memory index. */
export const sqliteFilesOf = (path: string) => [path, `${path}-wal`, `${path}-shm`];

/** SQLite's codes of a file that is no readable database. */
export const UNREADABLE = new Set(["SQLITE_NOTADB", "SQLITE_CORRUPT"]);

/** A database error's code, if it has one. */
const codeOf = (err: unknown) => (err as { code?: unknown } | null)?.code;

/**
 * Whether another connection has the database at `path` open (a running service keeps its store open
 * for as long as it runs, in WAL mode, holding a shared lock on the file): taking the file's lock
 * exclusively, at once, and letting it go. False when there is no file.
 */
export function openElsewhere(path: string): boolean {
  if (!existsSync(path)) return false;
  const db = new Database(path, { timeout: 0 });
  try {
    // Taken at the first access in this mode, and kept until the connection closes (so no WAL index).
    db.pragma("locking_mode = EXCLUSIVE");
    db.exec("BEGIN EXCLUSIVE; COMMIT");
    return false;
  } catch (err) {
    if (String(codeOf(err)).startsWith("SQLITE_BUSY")) return true;
    if (UNREADABLE.has(String(codeOf(err)))) return false; // no database: replaced unread
    throw err;
  } finally {
    db.close();
  }
}

/**
 * Makes the SQLite file at `from` (closed by whoever wrote it) the one at `livePath`, in one step: both
 * logs checkpointed into their files first, the live one's log removed so it cannot be replayed onto
 * the new file (its pages would land on another database's), the live file's mode taken, `from`
 * renamed over it, then the directory flushed. A `livePath` that is a link stays one: the file it names
 * is replaced (SQLite keeps its log beside that file too). A live file that is no database any more
 * is replaced unread.
 */
export function swapSqliteFile(from: string, livePath: string): void {
  const live = sqliteFileOf(livePath);
  for (const path of [from, live]) {
    if (!existsSync(path)) continue;
    try {
      const db = new Database(path);
      try {
        db.pragma("wal_checkpoint(TRUNCATE)");
      } finally {
        db.close();
      }
    } catch (err) {
      if (path === from || !UNREADABLE.has(String(codeOf(err)))) throw err;
    }
  }
  for (const f of sqliteFilesOf(live).slice(1)) rmSync(f, { force: true });
  if (existsSync(live)) chmodSync(from, statSync(live).mode & 0o7777);
  renameSync(from, live);
  // The rename itself on disk: a power cut must not bring back the old name's file.
  const dir = openSync(dirname(live), "r");
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}
