/** What a database error means for the caller, on either engine (no driver imports: the gateway may read it too). */

/** PostgreSQL SQLSTATEs of a lost serialization race (or deadlock). */
const CONFLICT = new Set(["40001", "40P01"]);
/** Socket errors of a database connection that could not be made or was cut. */
const SOCKET = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENOTFOUND", "EAI_AGAIN"]);

/**
 * Whether `err` says the database's storage is full: SQLite's SQLITE_FULL (its file system out of
 * space: the transaction was rolled back, nothing of it kept), PostgreSQL's 53100 (disk_full). The
 * same request can succeed once space is freed, without a restart.
 */
export function isStorageFull(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "SQLITE_FULL" || code === "53100";
}

/**
 * Whether `err` says the database's storage refused a write: SQLite's I/O errors (a failing disk) and
 * read-only errors (its file system turned read-only under it, as ext4 does on a disk error). The
 * statement's transaction did not commit: the same request can succeed on other storage, or on this
 * once it is repaired. (A file damaged on disk, SQLITE_CORRUPT, is not this: it is a bug to show.)
 */
export function isStorageFailed(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^SQLITE_(IOERR|READONLY)(_|$)/.test(code);
}

/**
 * Whether `err` says the database could not be reached — down, restarting,
 * the connection cut (SQLSTATE class 08, 57P01-57P03, socket errors), no
 * connection slot free (53300), SQLite's file locked by another process for
 * longer than the busy timeout, its storage full or failing ({@link isStorageFull},
 * {@link isStorageFailed}): the
 * same request can succeed later, so it is a transient failure, not a bug.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  // A full disk: INTERNAL "internal error" until now, logged as a bug, and an event's failures counted towards the DLQ.
  if (isStorageFull(err) || isStorageFailed(err)) return true;
  // SQLite's file held by another process past the busy timeout (replicas sharing it; one frozen
  // holding the write lock): "database is locked", answered INTERNAL and logged as a bug until now.
  if (typeof code === "string" && code.startsWith("SQLITE_BUSY")) return true;
  // 25P03: the server ended a transaction left idle too long (pg-pool.ts, IDLE_IN_TRANSACTION_MS) with its session.
  // 55P03: a lock not to be had now (history's writes while its view is rebuilt: services/history/store.ts).
  // 53300: no connection slot free (replicas' pools past max_connections, a role's limit): INTERNAL until
  // now, so callers did not retry it, and a consumer whose count found a slot counted it towards the DLQ.
  if (
    typeof code === "string" &&
    (code.startsWith("08") || /^57P0[123]$|^25P03$|^55P03$|^53300$/.test(code) || SOCKET.has(code))
  )
    return true;
  return (
    err instanceof Error &&
    // "timeout expired": pg's own words for a handshake past its limit (pg-pool.ts, CONNECT_TIMEOUT_MS).
    /^Connection terminated|timeout exceeded when trying to connect|connection error and is not queryable|^timeout expired$/.test(
      err.message,
    )
  );
}

/** Whether `err` is a transaction that kept losing serialization races: retrying the request can succeed. */
export function isConflict(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && CONFLICT.has(code);
}
