/**
 * Kysely's SQLite driver for sql.ts: one better-sqlite3 connection that
 * callers take turns on a whole transaction at a time, prepared statements
 * cached, and the write lock taken up front (`BEGIN IMMEDIATE`). Inside a
 * transaction, which holds the connection, sql.ts runs its statements on
 * the connection directly ({@link SqliteConnection.execute}).
 */
import type Database from "better-sqlite3";
import {
  CompiledQuery,
  type DatabaseConnection,
  type Dialect,
  type Driver,
  type QueryResult,
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
} from "kysely";

/** SQLite through better-sqlite3: one connection, prepared statements cached, writes taken up front. */
export class SqliteConnection implements DatabaseConnection {
  private readonly statements = new Map<string, Database.Statement>();
  constructor(readonly db: Database.Database) {}
  async executeQuery<R>(q: CompiledQuery): Promise<QueryResult<R>> {
    return this.execute(q);
  }
  /**
   * Runs `q` now, synchronously (better-sqlite3 is): for whoever holds the connection — the
   * transaction in progress — without Kysely's few promises per statement around it.
   */
  execute<R>(q: CompiledQuery): QueryResult<R> {
    let stmt = this.statements.get(q.sql);
    if (!stmt) {
      stmt = this.db.prepare(q.sql);
      if (this.statements.size < 500) this.statements.set(q.sql, stmt);
    }
    const params = q.parameters as unknown[];
    if (stmt.reader) return { rows: stmt.all(...params) as R[] };
    const { changes } = stmt.run(...params);
    return { rows: [], numAffectedRows: BigInt(changes) };
  }
  // biome-ignore lint/correctness/useYield: Kysely asks for streaming support; this driver never streams.
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error("streaming queries are not supported on SQLite here");
  }
}

/** Kysely's SQLite driver, with statement caching and `BEGIN IMMEDIATE` (see sql.ts's module comment). */
class SqliteDriver implements Driver {
  private queue: Promise<void> = Promise.resolve();
  private release: (() => void) | undefined;
  constructor(private readonly connection: SqliteConnection) {}
  async init(): Promise<void> {}
  async acquireConnection(): Promise<DatabaseConnection> {
    // One connection: callers take turns, a whole transaction at a time.
    const previous = this.queue;
    let release = () => {};
    this.queue = new Promise<void>((r) => {
      release = r;
    });
    await previous;
    this.release = release;
    return this.connection;
  }
  async beginTransaction(c: DatabaseConnection): Promise<void> {
    await c.executeQuery(CompiledQuery.raw("begin immediate"));
  }
  async commitTransaction(c: DatabaseConnection): Promise<void> {
    await c.executeQuery(CompiledQuery.raw("commit"));
  }
  async rollbackTransaction(c: DatabaseConnection): Promise<void> {
    await c.executeQuery(CompiledQuery.raw("rollback"));
  }
  async releaseConnection(): Promise<void> {
    this.release?.();
  }
  async destroy(): Promise<void> {
    this.connection.db.close();
  }
}

/** Kysely's dialect for one better-sqlite3 connection, through {@link SqliteDriver}. */
export function sqliteDialect(connection: SqliteConnection): Dialect {
  return {
    createAdapter: () => new SqliteAdapter(),
    createDriver: () => new SqliteDriver(connection),
    createIntrospector: (k) => new SqliteIntrospector(k),
    createQueryCompiler: () => new SqliteQueryCompiler(),
  };
}
