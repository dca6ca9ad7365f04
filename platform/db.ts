/**
 * Opening a service's database and bringing its schema up to date.
 *
 * SQLite (the default): one file per service — WAL journal, full sync on
 * commit (an accepted write survives a crash or power loss), foreign keys
 * on, a busy timeout for other processes on the same file; the schema
 * version lives in `PRAGMA user_version`.
 *
 * PostgreSQL (`DATABASE_URL`): one schema per service in a shared database,
 * the version in `<schema>.schema_version`. Migrations run in one transaction
 * under an advisory lock, so replicas starting together apply each one exactly once.
 *
 * Migrations are written once, in SQLite's dialect, and {@link migrations}
 * rewrites them for PostgreSQL; migration N is `list[N - 1]`. Never edit one
 * that has shipped; append instead.
 */
import { accessSync, constants, statSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { StartRefused } from "./config.js";
import type { Logger } from "./log.js";
import { makeDirs } from "./make-dirs.js";
import { pgPool } from "./pg-pool.js";
import { type Db, type DbLocation, type Engine, postgresDb, sqliteDb } from "./sql.js";

/** A service's migrations, one list per engine (made by {@link migrations}). */
export type Migrations = Readonly<Record<Engine, readonly string[]>>;

/**
 * SQLite DDL as PostgreSQL runs it. Every integer column becomes BIGINT
 * (they hold ms timestamps and minor units; `pg` reads them back as
 * numbers), BLOB becomes BYTEA, an AUTOINCREMENT key an identity column,
 * and STRICT (SQLite's type checking, which PostgreSQL always does) goes.
 */
export function postgresDialect(ddl: string): string {
  return ddl
    .replace(/\bINTEGER PRIMARY KEY AUTOINCREMENT\b/g, "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    .replace(/\bINTEGER\b/g, "BIGINT")
    .replace(/\bBLOB\b/g, "BYTEA")
    .replace(/\)\s*STRICT\s*;/g, ");");
}

/** A service's migrations, written once in SQLite's dialect (see {@link postgresDialect}). */
export function migrations(list: readonly string[]): Migrations {
  return { sqlite: list, postgres: list.map(postgresDialect) };
}

/** A schema name: an identifier both engines take unquoted. */
const SCHEMA = /^[a-z_][a-z0-9_]{0,62}$/;

function checkLists(migrations: Migrations): void {
  if (migrations.sqlite.length !== migrations.postgres.length) {
    throw new Error(
      `migrations differ in number: ${migrations.sqlite.length} for SQLite, ${migrations.postgres.length} for PostgreSQL`,
    );
  }
}

/**
 * `err`, met opening the SQLite file at `path`, as a line an operator can act on: the file named, and
 * why when SQLite's words do not say ("unable to open database file"). Its code is kept.
 */
function openError(path: string, err: unknown): Error {
  const { message, code } = err as Error & { code?: unknown };
  const why = (() => {
    if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) return "it is a directory";
    if (code === "SQLITE_NOTADB") return "it is not a SQLite database";
    if (typeof code === "string" && code.startsWith("SQLITE_CORRUPT")) return "it is damaged: restore it from a backup";
    if (code === "SQLITE_FULL") return "its disk is full";
    try {
      accessSync(dirname(path), constants.W_OK);
    } catch (e) {
      const errno = (e as NodeJS.ErrnoException).code;
      if (errno === "EROFS") return "its file system is read-only";
      if (errno === "EACCES") return "its directory is not writable by this user";
    }
    return undefined;
  })();
  return Object.assign(
    new Error(`the database ${path} could not be opened: ${why ? `${why} (${message})` : message}`, { cause: err }),
    { code },
  );
}

/**
 * A database a newer build has migrated: this one cannot read it, now or after any number of restarts
 * (it was logged with a stack trace and exit 1, and `make run` restarted it for ever).
 */
function tooNew(what: string, version: number, known: number, variable: string): StartRefused {
  return new StartRefused(
    `${what}: its schema version ${version} is newer than this build knows (${known}): ` +
      `run the build that wrote it, or set ${variable} to another`,
  );
}

function openSqlite(path: string, migrations: readonly string[]): Db {
  try {
    return openSqliteAs(path, migrations);
  } catch (err) {
    if (err instanceof StartRefused) throw err;
    throw openError(path, err);
  }
}

function openSqliteAs(path: string, migrations: readonly string[]): Db {
  if (path !== ":memory:") makeDirs(dirname(path));
  const db = new Database(path);
  try {
    db.pragma("journal_mode = WAL");
    // Commits are made durable by a shared fsync of the log before they are reported (wal-sync.ts):
    // FULL's guarantee, without FULL's fsync inside every COMMIT on the event loop's thread.
    db.pragma("synchronous = NORMAL");
    db.pragma("foreign_keys = ON");
    db.pragma("busy_timeout = 5000");
    for (let v = (db.pragma("user_version", { simple: true }) as number) + 1; v <= migrations.length; v++) {
      db.transaction(() => {
        // Another process may have applied it since we looked: the write lock makes the check final.
        if ((db.pragma("user_version", { simple: true }) as number) >= v) return;
        db.exec(migrations[v - 1] as string);
        db.pragma(`user_version = ${v}`);
      }).immediate();
    }
    const current = db.pragma("user_version", { simple: true }) as number;
    if (current > migrations.length) throw tooNew(`the database ${path}`, current, migrations.length, "DB_PATH");
    // The temporary tables a statement builds for itself (the rows RETURNING hands back, an IN list
    // from a subquery, a materialised WITH) in memory. With the default (a temporary file's pager for
    // each), the outbox relay's claim cost 0.16 ms for one row, against 0.03 now (on a copy
    // of an order service's database; a claim runs for every event at low rates). After the
    // migrations: in memory, SQLite's sorter never spills, and an index added to a grown table
    // held all its keys at once (db.test.ts).
    db.pragma("temp_store = MEMORY");
  } catch (err) {
    db.close();
    throw err;
  }
  return sqliteDb(db);
}

async function openPostgres(
  url: string,
  schema: string,
  poolSize: number,
  migrations: readonly string[],
  log: Logger | undefined,
): Promise<Db> {
  if (!SCHEMA.test(schema)) throw new Error(`invalid schema name "${schema}": expected [a-z_][a-z0-9_]*`);
  const pool = pgPool(url, schema, poolSize);
  const client = await pool.connect().catch(async (err: unknown) => {
    await pool.end();
    throw err;
  });
  try {
    // One transaction for all of it, under a transaction-scoped lock: a replica frozen or cut off
    // mid-way (SIGSTOP, a paused VM, a partition) is then always idle inside a transaction, which the
    // server ends after IDLE_IN_TRANSACTION_MS (pg-pool.ts), freeing the lock and undoing its part.
    // A session-scoped lock, held between statements outside any transaction, stalled every other
    // replica's start for as long as that one stayed frozen. DDL is transactional in PostgreSQL.
    // READ COMMITTED whatever the database's default: each statement after the lock must see what the
    // replica that held it committed (under REPEATABLE READ the snapshot predates the lock's wait).
    await client.query("BEGIN ISOLATION LEVEL READ COMMITTED");
    try {
      const lock = `shopmesh.migrate.${schema}`;
      // Said when it waits: a replica behind a sibling's migration (or a frozen one's) was silent.
      const { rows: got } = await client.query<{ ok: boolean }>(
        "SELECT pg_try_advisory_xact_lock(hashtext($1)) AS ok",
        [lock],
      );
      if (!got[0]?.ok) {
        log?.info({ schema }, "waiting for the migration lock: another process is migrating this schema");
        await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [lock]);
      }
      // Made only when missing: PostgreSQL asks for CREATE on the database even for IF NOT EXISTS, and in
      // the cluster only history's role has it (roles.sh: the schemas are made before the services start).
      const made = await client.query("SELECT 1 FROM pg_namespace WHERE nspname = $1", [schema]);
      if (made.rowCount === 0) await client.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
      await client.query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
      const { rows } = await client.query<{ version: number }>("SELECT version FROM schema_version");
      const current = rows[0]?.version ?? 0;
      if (current > migrations.length) {
        throw tooNew(`the database schema ${schema}`, current, migrations.length, "DATABASE_SCHEMA");
      }
      for (const m of migrations.slice(current)) await client.query(m);
      if (rows.length === 0)
        await client.query("INSERT INTO schema_version (version) VALUES ($1)", [migrations.length]);
      else if (current < migrations.length)
        await client.query("UPDATE schema_version SET version = $1", [migrations.length]);
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => {});
      throw err;
    }
  } catch (err) {
    client.release();
    await pool.end();
    throw err;
  }
  client.release();
  return postgresDb(pool, url);
}

/** Opens (creating if needed) the database at `location` and applies the migrations it has not seen yet. */
export async function openDatabase(location: DbLocation, migrations: Migrations, log?: Logger): Promise<Db> {
  checkLists(migrations);
  return location.engine === "sqlite"
    ? openSqlite(location.path, migrations.sqlite)
    : openPostgres(location.url, location.schema, location.poolSize, migrations.postgres, log);
}

/** The database settings every service reads (see commonEnv). */
export interface DbConfig {
  readonly DB_PATH: string;
  readonly DATABASE_URL: string;
  readonly DATABASE_SCHEMA: string;
  readonly DATABASE_POOL_SIZE: number;
}

/**
 * Where `service` keeps its data: PostgreSQL when `DATABASE_URL` is set (its
 * schema `DATABASE_SCHEMA`, by default `shopmesh_<service>`), else the SQLite
 * file `DB_PATH`.
 */
export function locationOf(service: string, c: DbConfig): DbLocation {
  if (!c.DATABASE_URL) return { engine: "sqlite", path: c.DB_PATH };
  return {
    engine: "postgres",
    url: c.DATABASE_URL,
    schema: c.DATABASE_SCHEMA || `shopmesh_${service}`,
    poolSize: c.DATABASE_POOL_SIZE,
  };
}
