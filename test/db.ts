/**
 * Which database engine the store and service suites run on: SQLite files
 * (the default tier) or PostgreSQL (`SHOPMESH_TEST_DB=postgres`, the
 * `postgres` vitest project, whose global setup starts one server for the
 * run). Suites ask here for their databases instead of naming files, so one
 * suite covers both engines.
 */
import { rmSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { sql } from "kysely";
import { inject } from "vitest";
import { locationOf } from "../platform/db.js";
import { pgPool } from "../platform/pg-pool.js";
import { type Db, type DbLocation, type Engine, postgresDb, sqliteDb } from "../platform/sql.js";
import { createDatabase } from "./postgres.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** The run's PostgreSQL server, as its superuser (postgres project only). */
    postgresUrl: string;
  }
}

/** The engine of this run. */
export const TEST_DB: Engine = process.env.SHOPMESH_TEST_DB === "postgres" ? "postgres" : "sqlite";

/** The run's PostgreSQL (superuser URL); throws outside the postgres project. */
export function postgresUrl(): string {
  const url = TEST_DB === "postgres" ? inject("postgresUrl") : undefined;
  if (!url) throw new Error("no PostgreSQL in this run: run the postgres vitest project (SHOPMESH_TEST_DB=postgres)");
  return url;
}

/**
 * The databases of one test system: SQLite files in `dir`, or one fresh
 * PostgreSQL database shared by the services (a schema each, as in production).
 */
export class TestDatabases {
  private url: Promise<string> | undefined;

  constructor(private readonly dir: string) {}

  /** The service's database settings, as environment variables. */
  async env(service: string): Promise<Record<string, string>> {
    if (TEST_DB === "sqlite") return { DB_PATH: join(this.dir, `${service}.db`) };
    this.url ??= createDatabase(postgresUrl(), "test");
    return { DATABASE_URL: await this.url };
  }

  /** Where the service's store lives (to open it directly). */
  async location(service: string): Promise<DbLocation> {
    const env = await this.env(service);
    return locationOf(service, {
      DB_PATH: env.DB_PATH ?? "",
      DATABASE_URL: env.DATABASE_URL ?? "",
      DATABASE_SCHEMA: "",
      DATABASE_POOL_SIZE: 4,
    });
  }
}

/** Runs `fn` on the database at `location` (as it is: no migrations), then closes it. */
export async function withDb<T>(location: DbLocation, fn: (db: Db) => Promise<T>): Promise<T> {
  const db =
    location.engine === "sqlite"
      ? sqliteDb(new Database(location.path))
      : postgresDb(pgPool(location.url, location.schema, 1), location.url);
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}

/**
 * Every row of every table (or of the `only` tables) of `db`, as one string:
 * equal snapshots before and after a call prove the call wrote nothing.
 */
export async function snapshot(db: Db, only?: readonly string[]): Promise<string> {
  const tables = await db.all(
    db.engine === "sqlite"
      ? sql<{
          name: string;
        }>`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`
      : sql<{ name: string }>`SELECT table_name AS name FROM information_schema.tables
          WHERE table_schema = current_schema() ORDER BY table_name`,
  );
  const out: [string, string[]][] = [];
  for (const { name } of tables.filter((t) => !only || only.includes(t.name))) {
    const rows = await db.all(sql<Record<string, unknown>>`SELECT * FROM ${sql.table(name)}`);
    // Row order is the engine's business; the set of rows is the snapshot.
    out.push([name, rows.map((r) => JSON.stringify(r)).sort()]);
  }
  return JSON.stringify(out);
}

/** Deletes the database at `location` (its SQLite file, or its PostgreSQL schema), as if the disk were lost. */
export async function dropDatabase(location: DbLocation): Promise<void> {
  if (location.engine === "sqlite") {
    for (const suffix of ["", "-wal", "-shm"]) rmSync(`${location.path}${suffix}`, { force: true });
    return;
  }
  await withDb(location, (db) => db.run(sql`DROP SCHEMA IF EXISTS ${sql.id(location.schema)} CASCADE`));
}

/** Statements of `db`'s PostgreSQL database waiting for a lock another transaction holds right now. */
export async function lockWaits(db: Db): Promise<number> {
  const [row] = await db.all(sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'`);
  return row?.n ?? 0;
}
