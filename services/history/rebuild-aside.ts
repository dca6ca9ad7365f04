/**
 * What keeps a history rebuild from ever leaving a part-built view: it builds the view aside (a
 * sibling SQLite file, or a sibling PostgreSQL schema) and swaps it in, in one step, only once every
 * stream is replayed; it holds a lock no history service and no other rebuild can hold with it; and
 * it does not swap in a view that lost orders the live one has, unless told to.
 *
 * A rebuild that emptied the live view first and then replayed into it left, when stopped part-way
 * (Ctrl-C, a kill, NATS or PostgreSQL gone, a full disk), a view with orders missing or without
 * their payment state, which the service then served as complete for good: its durable consumers
 * were past those events. Two rebuilds at once emptied each other's work.
 */
import { existsSync, lstatSync, rmSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import {
  type DbLocation,
  type Logger,
  makeDirs,
  sqliteFileOf,
  sqliteFilesOf,
  swapSqliteFile,
} from "../../platform/index.js";
import { CONNECT_TIMEOUT_MS } from "../../platform/pg-pool.js";
import { type HistoryStore, rebuildLockKey } from "./store.js";

/** Why a rebuild will not start (the command says it and exits 1, nothing changed). */
export class RebuildRefused extends Error {}

/** Whether `path` is a link to nothing (which the rebuild would fill beside the link, and swap beside the target). */
const dangling = (path: string) =>
  !existsSync(path) && lstatSync(path, { throwIfNoEntry: false })?.isSymbolicLink() === true;

/** Where a rebuild of the view at `live` builds aside: a sibling file (of the file a link names) or schema. */
export function asideOf(live: DbLocation): DbLocation {
  if (live.engine === "sqlite") {
    if (dangling(live.path))
      throw new RebuildRefused(`DB_PATH ${live.path} is a link to nothing: point it at a file, or remove it`);
    return { ...live, path: `${sqliteFileOf(live.path)}.rebuilding` };
  }
  const schema = `${live.schema}_rebuilding`;
  // PostgreSQL cuts a longer name to 63 characters: it would name the live schema, dropped below.
  if (schema.length > 63) {
    throw new RebuildRefused(`schema ${live.schema} leaves no room for its rebuild's (${schema}: over 63 characters)`);
  }
  return { ...live, schema };
}

/** A connection of its own to `url`, for DDL and locks outside any pool (as the pool's: a handshake bounded, kept alive). */
const lockClient = (url: string) =>
  new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    keepAlive: true,
    // A connection dropped silently (a failover moving the address) is found in seconds, not the system's 2 hours.
    keepAliveInitialDelayMillis: 10_000,
  });

/** Runs `fn` on a connection of its own to `url`. */
async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = lockClient(url);
  client.on("error", () => {}); // a server gone mid-call fails the call itself
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

/** Removes whatever a stopped rebuild left aside, so this one starts from nothing. */
export async function clearAside(aside: DbLocation): Promise<void> {
  if (aside.engine === "sqlite") for (const f of sqliteFilesOf(aside.path)) rmSync(f, { force: true });
  else await withClient(aside.url, (c) => c.query(`DROP SCHEMA IF EXISTS ${aside.schema} CASCADE`));
}

/** A database error's code, if it has one. */
const codeOf = (err: unknown) => (err as { code?: unknown } | null)?.code;

/**
 * The SQLite file beside the view at `path` whose lock is the rebuild lock (rollback journal, not WAL:
 * its readers take a shared lock a writer's EXCLUSIVE waits for). The kernel frees it with its process.
 */
function lockFile(path: string): Database.Database {
  makeDirs(dirname(path));
  const db = new Database(`${path}.lock`, { timeout: 0 });
  try {
    db.pragma("journal_mode = DELETE");
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

/** The rebuild lock, held: what swaps the view built aside in, and what lets the lock go. */
export interface RebuildLock {
  /**
   * Makes the view built at `aside` (its store closed) the one at `live`, in one step. PostgreSQL:
   * the live schema dropped and the aside one renamed, in one transaction on the lock's own session,
   * which fails if that session (and with it the lock) was lost meanwhile.
   */
  swapIn(aside: DbLocation): Promise<void>;
  release(): Promise<void>;
}

/**
 * Takes the rebuild lock of the view at `live`, or refuses: a history service or another rebuild
 * holds it. SQLite: an exclusive lock on the lock file; PostgreSQL: an advisory lock, held by a
 * connection of its own. Either ends with the process that holds it.
 */
export async function lockRebuild(live: DbLocation): Promise<RebuildLock> {
  const refused = () =>
    new RebuildRefused(
      `the view ${live.engine === "sqlite" ? live.path : `in schema ${live.schema}`} is in use by a history service or another rebuild: stop the service first (make run; on Kubernetes, scale history to 0)`,
    );
  if (live.engine === "sqlite") {
    if (live.path === ":memory:") throw new RebuildRefused("DB_PATH=:memory: has no view to rebuild");
    let db: Database.Database | undefined;
    try {
      db = lockFile(live.path);
      db.exec("BEGIN EXCLUSIVE");
    } catch (err) {
      db?.close();
      throw codeOf(err) === "SQLITE_BUSY" ? refused() : err;
    }
    const held = db;
    return {
      swapIn: async (aside) => swapSqliteFile((aside as { path: string }).path, live.path),
      release: async () => {
        held.close();
      },
    };
  }
  const client = lockClient(live.url);
  client.on("error", () => {}); // a session lost fails the swap, on this client
  await client.connect();
  const { rows } = await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock(hashtext($1)) AS ok", [
    rebuildLockKey(live.schema),
  ]);
  if (!rows[0]?.ok) {
    await client.end().catch(() => {});
    throw refused();
  }
  return {
    swapIn: async (aside) => {
      await client.query("BEGIN");
      try {
        await client.query(`DROP SCHEMA IF EXISTS ${live.schema} CASCADE`);
        await client.query(`ALTER SCHEMA ${(aside as { schema: string }).schema} RENAME TO ${live.schema}`);
        await client.query("COMMIT");
      } catch (err) {
        await client.query("ROLLBACK").catch(() => {});
        throw err;
      }
    },
    release: () => client.end().catch(() => {}), // ending the session releases the lock
  };
}

/**
 * Holds the view at `live` against a rebuild for as long as the history service runs (a shared
 * lock: replicas hold it together), waiting while a rebuild runs. A rebuild checked for a running
 * service once, at its start: one started meanwhile went on serving and, on SQLite, writing into the
 * file the rebuild then replaced, and the events it applied were lost to the view for good.
 * Returns the release.
 */
export async function holdAgainstRebuild(live: DbLocation, log: Logger): Promise<() => Promise<void>> {
  let said = false;
  const waiting = () => {
    if (!said) log.warn("a history rebuild is running: waiting for it to end (its view is served once it has)");
    said = true;
  };
  if (live.engine === "sqlite") {
    if (live.path === ":memory:") return async () => {}; // no other process can open it
    for (;;) {
      let db: Database.Database | undefined;
      try {
        db = lockFile(live.path);
        db.exec("BEGIN");
        db.prepare("SELECT count(*) FROM sqlite_master").get(); // the shared lock, held until released
        const held = db;
        return async () => {
          held.close();
        };
      } catch (err) {
        db?.close();
        if (codeOf(err) !== "SQLITE_BUSY") throw err;
        waiting();
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }
  // Lost, this session's lock is lost too: it is taken again (waiting while a rebuild holds it), and
  // meanwhile each transaction of the store checks the lock (HistoryStore.apply), so a rebuild that
  // took it still excludes the service's writes.
  let client: pg.Client | undefined;
  let retry: NodeJS.Timeout | undefined;
  let released = false;
  const hold = async () => {
    const c = lockClient(live.url);
    client = c;
    c.on("error", (err) => log.warn({ err: err.message }, "the connection holding the view against a rebuild failed"));
    await c.connect();
    const slow = setTimeout(waiting, 1_000);
    try {
      await c.query("SELECT pg_advisory_lock_shared(hashtext($1))", [rebuildLockKey(live.schema)]);
    } finally {
      clearTimeout(slow);
    }
    c.once("end", again);
  };
  const again = () => {
    if (released || retry) return;
    retry = setTimeout(() => {
      retry = undefined;
      if (released) return;
      hold().then(
        () => {
          if (!released) log.info("the view is held against a rebuild again");
        },
        () => {
          client?.end().catch(() => {});
          again();
        },
      );
    }, 1_000);
    retry.unref();
  };
  try {
    await hold();
  } catch (err) {
    await client?.end().catch(() => {});
    throw err;
  }
  return async () => {
    released = true;
    clearTimeout(retry);
    await client?.end().catch(() => {});
  };
}

/**
 * The orders of the `live` view that the view built `aside` would lose, or lose the owner, items,
 * status or payment of: their events aged out of the streams (kept 7 days), or a stream was made
 * again. A few ids and how many. The live view is read a page at a time, and for each page the same
 * orders of the other, so memory stays flat however many orders there are.
 */
export async function losses(
  live: HistoryStore,
  aside: HistoryStore,
  pageSize = 1_000,
): Promise<{ count: number; some: string[] }> {
  let count = 0;
  const some: string[] = [];
  for (let after = ""; ; ) {
    const page = await live.page(after, pageSize);
    const rebuilt = new Map((await aside.some(page.map((v) => v.orderId))).map((v) => [v.orderId, v]));
    for (const v of page) {
      const r = rebuilt.get(v.orderId);
      const lost =
        !r ||
        (v.customerId !== null && r.customerId === null) ||
        (v.items.length > 0 && r.items.length === 0) ||
        (v.status !== null && r.status === null) ||
        (v.paymentStatus !== null && r.paymentStatus === null);
      if (lost && ++count <= 3) some.push(v.orderId);
    }
    const last = page.at(-1);
    if (!last || page.length < pageSize) break;
    after = last.orderId;
  }
  return { count, some };
}
