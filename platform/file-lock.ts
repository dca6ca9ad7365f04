/**
 * A lock the kernel frees with its process: an exclusive transaction on a SQLite file of its own
 * (an fcntl lock underneath), for "one process at a time" (make run's data directory, the order
 * service's SQLite file). A pid file alone is claimed by two processes started at once.
 */
import Database from "better-sqlite3";

/** Takes the lock at `path` (created if missing): its release, or undefined when another process holds it. */
export function holdExclusive(path: string): (() => void) | undefined {
  const lock = new Database(path, { timeout: 0 });
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
