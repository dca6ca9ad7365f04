/**
 * What keeps a history rebuild from ever leaving a part-built view: it builds the view aside (a
 * sibling SQLite file, or a sibling PostgreSQL schema) and swaps it in, in one step, only once every
 * stream is replayed; one rebuild at a time; none next to a running history service.
 *
 * A rebuild that emptied the live view first and then replayed into it left, when stopped part-way
 * (Ctrl-C, a kill, NATS or PostgreSQL gone, a full disk), a view with orders missing or without
 * their payment state, which the service then served as complete for good: its durable consumers
 * were past those events. Two rebuilds at once emptied each other's work.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import type { Bus, DbLocation } from "../../platform/index.js";
import { listInstances } from "../../platform/registry.js";

/** Why a rebuild will not start (the command says it and exits 1, nothing changed). */
export class RebuildRefused extends Error {}

/** Where a rebuild of the view at `live` builds aside: a sibling file or schema. */
export function asideOf(live: DbLocation): DbLocation {
  return live.engine === "sqlite"
    ? { ...live, path: `${live.path}.rebuilding` }
    : { ...live, schema: `${live.schema}_rebuilding` };
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
      const db = new Database(path);
      try {
        db.pragma("wal_checkpoint(TRUNCATE)");
      } finally {
        db.close();
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

/** Whether process `pid` is alive on this machine. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Takes the rebuild lock of the view at `live`, or refuses: another rebuild holds it. SQLite: a file
 * beside the database holding the owner's pid (one left by a dead process is taken over);
 * PostgreSQL: an advisory lock, held by a connection of its own until released. Returns the release.
 */
export async function lockRebuild(live: DbLocation): Promise<() => Promise<void>> {
  if (live.engine === "sqlite") {
    const path = `${live.path}.rebuild-lock`;
    for (let tries = 0; ; tries++) {
      try {
        const fd = openSync(path, "wx");
        writeSync(fd, String(process.pid));
        closeSync(fd);
        return async () => rmSync(path, { force: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST" || tries > 0) throw err;
        const owner = Number(readFileSync(path, "utf8"));
        if (Number.isInteger(owner) && owner > 0 && alive(owner)) {
          throw new RebuildRefused(`another rebuild of ${live.path} is running (pid ${owner}, ${path})`);
        }
        rmSync(path, { force: true }); // its owner died: a rebuild killed part-way
      }
    }
  }
  const client = new pg.Client({ connectionString: live.url });
  client.on("error", () => {});
  await client.connect();
  const key = `shopmesh.rebuild.${live.schema}`;
  const { rows } = await client.query<{ ok: boolean }>("SELECT pg_try_advisory_lock(hashtext($1)) AS ok", [key]);
  if (!rows[0]?.ok) {
    await client.end().catch(() => {});
    throw new RebuildRefused(`another rebuild of schema ${live.schema} is running (it holds advisory lock ${key})`);
  }
  return () => client.end().catch(() => {}); // ending the session releases the lock
}

/**
 * Refuses while a history service is registered: it would go on serving (and, on SQLite, writing
 * into) the view this rebuild replaces. One stopped without deregistering is listed until its entry's
 * time to live runs out.
 */
export async function refuseIfServing(bus: Bus): Promise<void> {
  const running = await listInstances(bus.nc, "history");
  if (running.length === 0) return;
  const where = running.map((e) => `${e.instanceId} at ${e.address}`).join(", ");
  throw new RebuildRefused(
    `a history service is running (${where}): stop it (make run) first; one killed a moment ago is listed for a few seconds more`,
  );
}

/**
 * Refuses when a stream no longer holds its first events (they aged out: the streams keep 7 days),
 * unless `allowLoss`: a rebuild from what is left would drop the orders they made from the view.
 */
export async function refuseIfEventsLost(bus: Bus, streams: readonly string[], allowLoss: boolean): Promise<void> {
  const lost: string[] = [];
  for (const stream of streams) {
    const { state } = await bus.jsm.streams.info(stream);
    if (state.first_seq > 1) lost.push(`${stream}'s first ${state.first_seq - 1}`);
  }
  if (lost.length === 0 || allowLoss) return;
  throw new RebuildRefused(
    `events no longer on the streams (aged out): ${lost.join(", ")}. A rebuild from what is left drops what they made from the view; ALLOW_LOSS=1 rebuilds anyway`,
  );
}
