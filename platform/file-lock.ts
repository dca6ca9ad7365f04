/**
 * A lock the kernel frees with its process: an exclusive transaction on a SQLite file of its own
 * (an fcntl lock underneath), for "one process at a time" (make run's data directory, the order
 * service's SQLite file). A pid file alone is claimed by two processes started at once.
 *
 * A taker waits up to PASSING_MS for a lock it finds taken: another taker's attempt holds the file's
 * locks for a moment too (a shared lock to read it, a pending one while it tries), and with no wait two
 * make runs started at once were both refused, each having seen the other's attempt (once in
 * CI's runs of hostile-cli). A holder holds for its life, so the wait costs only a refused taker, once.
 */
import Database from "better-sqlite3";

const PASSING_MS = 1_000;

/** Takes the lock at `path` (created if missing): its release, or undefined when another process holds it. */
export function holdExclusive(path: string): (() => void) | undefined {
  const lock = new Database(path, { timeout: PASSING_MS });
  try {
    lock.pragma("journal_mode = DELETE");
    lock.exec("BEGIN EXCLUSIVE");
  } catch (err) {
    lock.close();
    if (String((err as { code?: unknown }).code).startsWith("SQLITE_BUSY")) return undefined;
    throw err;
  }
  return () => {
    if (lock.open) lock.close();
  };
}
