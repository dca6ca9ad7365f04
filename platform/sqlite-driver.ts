/**
 * SQLite for sql.ts: one better-sqlite3 connection that callers take turns
 * on, a whole transaction at a time, prepared statements cached, and the
 * write lock taken up front (`BEGIN IMMEDIATE`). better-sqlite3 is
 * synchronous, so whoever holds the connection runs its statements on it
 * directly ({@link SqliteConnection.execute}), and a transaction is begun,
 * committed and rolled back here too ({@link SqliteConnection.transaction}):
 * Kysely's executor and transaction machinery (a few promises per statement,
 * a dozen and a new Kysely per transaction, each paid for again by
 * AsyncLocalStorage's promise hooks when tracing is on) only compiles
 * queries here. Its driver ({@link sqliteDialect}) takes the same turns.
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
import { isStorageFailed } from "./db-errors.js";

const BEGIN = CompiledQuery.raw("begin immediate");
const COMMIT = CompiledQuery.raw("commit");
const ROLLBACK = CompiledQuery.raw("rollback");

/** SQLite through better-sqlite3: one connection, prepared statements cached, writes taken up front. */
export class SqliteConnection implements DatabaseConnection {
  private readonly statements = new Map<string, Database.Statement>();
  /** Whether someone holds the connection; those waiting for it, first come first served. */
  private busy = false;
  private readonly waiting: (() => void)[] = [];
  constructor(readonly db: Database.Database) {}

  /**
   * Called when the file's storage fails under a statement (SQLite's I/O and read-only errors: a failing
   * disk, ext4 turned read-only by a disk error): set by a service process to exit, to be restarted
   * and moved (the process answered UNAVAILABLE for good, its health still SERVING, so no restart and
   * no replica took its traffic). Unset (tests, tools), the error is only thrown.
   */
  static onStorageFailed: ((err: unknown, file: string) => void) | undefined;

  /** Takes the connection: at once (undefined) when it is free, else a promise resolved at the caller's turn. */
  take(): Promise<void> | undefined {
    if (!this.busy) {
      this.busy = true;
      return undefined;
    }
    return new Promise<void>((r) => this.waiting.push(r));
  }

  /** Gives the connection back: to the next caller waiting, if any. */
  give(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.busy = false;
  }

  /** Runs `q` on its own (a statement outside any transaction), at once when the connection is free. */
  inTurn<R>(q: CompiledQuery): QueryResult<R> | Promise<QueryResult<R>> {
    const turn = this.take();
    if (turn) return turn.then(() => this.alone<R>(q));
    return this.alone<R>(q);
  }

  private alone<R>(q: CompiledQuery): QueryResult<R> {
    try {
      return this.execute<R>(q);
    } finally {
      this.give();
    }
  }

  /**
   * Runs `body` in a transaction of its own, at the caller's turn: committed when it resolves,
   * rolled back when it throws (or when the commit fails), and the error rethrown.
   */
  transaction(body: () => Promise<void>): Promise<void> {
    return this.held(async () => {
      this.execute(BEGIN);
      try {
        await body();
        this.execute(COMMIT);
      } catch (err) {
        if (this.db.inTransaction) this.execute(ROLLBACK);
        throw err;
      }
    });
  }

  /** Runs `f` holding the connection, taken at the caller's turn and given back however `f` ends. */
  private async held(f: () => void | Promise<void>): Promise<void> {
    const turn = this.take();
    if (turn) await turn;
    try {
      await f();
    } finally {
      this.give();
    }
  }

  async executeQuery<R>(q: CompiledQuery): Promise<QueryResult<R>> {
    return this.execute(q);
  }
  /**
   * Runs `q` now, synchronously (better-sqlite3 is): for whoever holds the connection — the
   * transaction in progress — without Kysely's few promises per statement around it.
   */
  execute<R>(q: CompiledQuery): QueryResult<R> {
    try {
      let stmt = this.statements.get(q.sql);
      if (!stmt) {
        stmt = this.db.prepare(q.sql);
        if (this.statements.size < 500) this.statements.set(q.sql, stmt);
      }
      const params = q.parameters as unknown[];
      if (stmt.reader) return { rows: stmt.all(...params) as R[] };
      const { changes } = stmt.run(...params);
      return { rows: [], numAffectedRows: BigInt(changes) };
    } catch (err) {
      if (isStorageFailed(err)) SqliteConnection.onStorageFailed?.(err, this.db.name);
      throw err;
    }
  }
  /** Closes the connection at the caller's turn: after whoever holds it, before those waiting (who then fail). */
  close(): Promise<void> {
    return this.held(() => {
      this.db.close();
    });
  }
  // biome-ignore lint/correctness/useYield: Kysely asks for streaming support; this driver never streams.
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new Error("streaming queries are not supported on SQLite here");
  }
}

/** Kysely's SQLite driver, with statement caching and `BEGIN IMMEDIATE` (see sql.ts's module comment). */
class SqliteDriver implements Driver {
  constructor(private readonly connection: SqliteConnection) {}
  async init(): Promise<void> {}
  async acquireConnection(): Promise<DatabaseConnection> {
    await this.connection.take();
    return this.connection;
  }
  async beginTransaction(c: DatabaseConnection): Promise<void> {
    await c.executeQuery(BEGIN);
  }
  async commitTransaction(c: DatabaseConnection): Promise<void> {
    await c.executeQuery(COMMIT);
  }
  async rollbackTransaction(c: DatabaseConnection): Promise<void> {
    await c.executeQuery(ROLLBACK);
  }
  async releaseConnection(): Promise<void> {
    this.connection.give();
  }
  async destroy(): Promise<void> {
    await this.connection.close();
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
