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
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import type { DbLocation, Logger } from "../../platform/index.js";
import type { HistoryStore } from "./store.js";

/** Why a rebuild will not start (the command says it and exits 1, nothing changed). */
export class RebuildRefused extends Error {}

/** Where a rebuild of the view at `live` builds aside: a sibling file or schema. */
export function asideOf(live: DbLocation): DbLocation {
  if (live.engine === "sqlite") return { ...live, path: `${live.path}.rebuilding` };
  const schema = `${live.schema}_rebuilding`;
  // PostgreSQL cuts a longer name to 63 characters: it would name the live schema, dropped below.
  if (schema.length > 63) {
    throw new RebuildRefused(`schema ${live.schema} leaves no room for its rebuild's (${schema}: over 63 characters)`);
  }
  return { ...live, schema };
}

/** SQLite's files of the database at `path`. */
const filesOf = (path: string) => [path, `${path}-wal`, `${path}-shm`];

/** Runs `fn` on a connection of its own to `url` (DDL and locks outside any pool). */
async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
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
  if (aside.engine === "sqlite") for (const f of filesOf(aside.path)) rmSync(f, { force: true });
  else await withClient(aside.url, (c) => c.query(`DROP SCHEMA IF EXISTS ${aside.schema} CASCADE`));
}

/**
 * Makes the view built `aside` (its store closed) the one at `live`, in one step: SQLite renames
 * the file over the live one (its log checkpointed into it first, the live one's log removed so it
 * cannot be replayed onto the new file); PostgreSQL drops the live schema and renames the aside one,
 * in one transaction.
 */
export async function swapIn(aside: DbLocation, live: DbLocation): Promise<void> {
  if (aside.engine === "sqlite" && live.engine === "sqlite") {
    for (const path of [aside.path, live.path]) {
      if (!existsSync(path)) continue;
      try {
        const db = new Database(path);
        try {
          db.pragma("wal_checkpoint(TRUNCATE)");
        } finally {
          db.close();
        }
      } catch (err) {
        // A live view that is no database any more is what a rebuild is for: replaced, not read.
        if (path === aside.path || !["SQLITE_NOTADB", "SQLITE_CORRUPT"].includes(String(codeOf(err)))) throw err;
      }
    }
    for (const f of filesOf(live.path).slice(1)) rmSync(f, { force: true });
    renameSync(aside.path, live.path);
    // The rename itself on disk: a power cut must not bring back the old name's file.
    const dir = openSync(dirname(live.path), "r");
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    return;
  }
  if (aside.engine !== "postgres" || live.engine !== "postgres") throw new Error("a swap within one engine only");
  await withClient(live.url, async (c) => {
    await c.query("BEGIN");
    try {
      await c.query(`DROP SCHEMA IF EXISTS ${live.schema} CASCADE`);
      await c.query(`ALTER SCHEMA ${aside.schema} RENAME TO ${live.schema}`);
      await c.query("COMMIT");
    } catch (err) {
      await c.query("ROLLBACK").catch(() => {});
      throw err;
    }
  });
}

/** A database error's code, if it has one. */
const codeOf = (err: unknown) => (err as { code?: unknown } | null)?.code;

/** The advisory lock of the view in `schema`: shared by every history service, the rebuild's alone. */
const lockKey = (schema: string) => `shopmesh.rebuild.${schema}`;

/**
 * The SQLite file beside the view at `path` whose lock is the rebuild lock (rollback journal, not WAL:
 * its readers take a shared lock a writer's EXCLUSIVE waits for). The kernel frees it with its process.
 */
function lockFile(path: string): Database.Database {
  mkdirSync(dirname(path), { recursive: true });
  const db = new Database(`${path}.lock`, { timeout: 0 });
  try {
    db.pragma("journal_mode = DELETE");
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

/**
 * Takes the rebuild lock of the view at `live`, or refuses: a history service or another rebuild
 * holds it. Returns the release. SQLite: an exclusive lock on the lock file; PostgreSQL: an advisory
 * lock, held by a connection of its own. Either ends with the process that holds it.
 */
export async function lockRebuild(live: DbLocation): Promise<() => Promise<void>> {
  const refused = () =>
    new RebuildRefused(
      `a history service is running on ${live.engine === "sqlite" ? live.path : `schema ${live.schema}`}, or another rebuild is: stop it (make run) first`,
    );
  if (live.engine === "sqlite") {
    let db: Database.Database | undefined;
    try {
      db = lockFile(live.path);
      db.exec("BEGIN EXCLUSIVE");
    } catch (err) {
      db?.close();
      throw codeOf(err) === "SQLITE_BUSY" ? refused() : err;
    }
    const held = db;
    return async () => {
      held.close();
    };
  }
  const client = new pg.Client({ connectionString: live.url });
  client.on("error", () => {});
  await client.connect();
  const { rows } = await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock(hashtext($1)) AS ok", [
    lockKey(live.schema),
  ]);
  if (!rows[0]?.ok) {
    await client.end().catch(() => {});
    throw refused();
  }
  return () => client.end().catch(() => {}); // ending the session releases the lock
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
    if (!said) log.warn("a history rebuild is running: waiting for it to end before serving its view");
    said = true;
  };
  if (live.engine === "sqlite") {
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
  const client = new pg.Client({ connectionString: live.url });
  client.on("error", (err) =>
    log.warn({ err: err.message }, "the connection holding the view against a rebuild failed"),
  );
  await client.connect();
  const slow = setTimeout(waiting, 1_000);
  try {
    await client.query("SELECT pg_advisory_lock_shared(hashtext($1))", [lockKey(live.schema)]);
  } finally {
    clearTimeout(slow);
  }
  return () => client.end().catch(() => {});
}

/**
 * The orders of the `live` view that the view built `aside` would lose, or lose its owner or items
 * of: their events aged out of the streams (kept 7 days), or a stream was made again. A few ids and
 * how many.
 */
export async function losses(live: HistoryStore, aside: HistoryStore): Promise<{ count: number; some: string[] }> {
  const rebuilt = new Map((await aside.all()).map((v) => [v.orderId, v]));
  const lost = (await live.all()).filter((v) => {
    const r = rebuilt.get(v.orderId);
    return !r || (v.customerId !== null && r.customerId === null) || (v.items.length > 0 && r.items.length === 0);
  });
  return { count: lost.length, some: lost.slice(0, 3).map((v) => v.orderId) };
}
