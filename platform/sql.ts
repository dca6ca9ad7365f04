/**
 * A service's database, on either engine, behind one small interface: SQLite (better-sqlite3, one
 * file per service — the zero-setup default) or PostgreSQL (pg, a pooled connection and a schema per
 * service — the replicated store). Queries are written once, as SQL template literals (Kysely's `sql`
 * tag compiles placeholders for each engine); only DDL and the rare engine-specific clause differ.
 *
 * Concurrency, the rules every store follows: a transaction that reads a row to decide how to change
 * it reads it with `tx.forUpdate`; one that locks several rows locks them in one order (by key); a
 * row that must not exist twice has a unique key. On SQLite a transaction takes the write lock up
 * front (`BEGIN IMMEDIATE`: the whole database is the lock, and several processes on one file never
 * deadlock), so the clause is empty. On PostgreSQL (READ COMMITTED, many replicas) it is `FOR UPDATE`:
 * writers of one row queue, the next one reads what the last committed; two inserts of one key race
 * on the unique index and the loser is run again from the start, as is a deadlock victim (found after
 * a second's wait: hence the one order) — and then finds the winner's row. Either way a store can
 * read, decide and write as if it were alone.
 */
import { realpathSync } from "node:fs";
import type Database from "better-sqlite3";
import { CompiledQuery, Kysely, PostgresDialect, type QueryResult, type RawBuilder, sql } from "kysely";
import type pg from "pg";
import { backoffMs } from "./backoff.js";
import { GroupCommit } from "./group-commit.js";
import { listenOn, type Ping, pgPing } from "./pg-pool.js";
import { SqliteConnection, sqliteDialect } from "./sqlite-driver.js";
import { WalSync } from "./wal-sync.js";

/** Which engine a database runs on. */
export type Engine = "sqlite" | "postgres";

/** A query: `sql<Row>\`SELECT ... WHERE id = ${id}\`` (from kysely). */
export type Query<R> = RawBuilder<R>;

/** What both a database and a transaction can do. */
export interface Queries {
  readonly engine: Engine;
  /** Every row of `q`. */
  all<R>(q: Query<R>): Promise<R[]>;
  /** The first row of `q`, or undefined. */
  one<R>(q: Query<R>): Promise<R | undefined>;
  /** Runs a statement; the number of rows it inserted, updated or deleted. */
  run(q: Query<unknown>): Promise<number>;
}

/** An open transaction. */
export interface Tx extends Queries {
  /**
   * Append to a SELECT whose rows this transaction will change: on PostgreSQL `FOR UPDATE` (other
   * writers of those rows wait for this transaction), on SQLite nothing (the transaction already
   * holds the database's write lock).
   */
  readonly forUpdate: Query<unknown>;
  /**
   * Append to a SELECT that claims rows for this transaction to change, where any free rows will
   * do (a relay's batch, expired leases): on PostgreSQL `FOR UPDATE SKIP LOCKED` (rows another
   * transaction holds are passed over: no waiting for it, no deadlock with it), on SQLite nothing.
   */
  readonly skipLocked: Query<unknown>;
  /** Runs `fn` once the transaction has committed (never when it rolls back). */
  afterCommit(fn: () => void): void;
  /**
   * Runs `fn` in a savepoint: if it throws, what it wrote is undone and the `afterCommit` hooks it
   * added are dropped, the rest of the transaction going on; the error is rethrown. (Catch it to
   * carry on; a {@link isRerunnable} error should be rethrown, so the whole transaction runs again.)
   */
  savepoint<T>(fn: () => Promise<T>): Promise<T>;
}

/** A service's database. */
export interface Db extends Queries {
  /**
   * Runs `fn` in one transaction and commits, or rolls back when it throws.
   * On PostgreSQL `fn` may run more than once (a lost unique-key race or a deadlock is
   * retried): keep side effects for `afterCommit`. On SQLite it resolves once the commit is on
   * disk (wal-sync.ts); if that flush fails, it rejects although the transaction committed, and
   * every later one fails too, until the process is restarted. On SQLite the transactions asked
   * for together run one after another in savepoints of one transaction and share its commit
   * (group-commit.ts): to each, the same guarantees as a commit of its own.
   */
  transaction<T>(fn: (tx: Tx) => Promise<T>, opts?: TxOptions): Promise<T>;
  /** Runs `fn` in `tx` when given (joining the caller's transaction), else in a transaction of its own. */
  within<T>(tx: Tx | undefined, fn: (tx: Tx) => Promise<T>): Promise<T>;
  /**
   * PostgreSQL: calls `fn` with every payload sent on `channel` (by `pg_notify`, from any connection
   * of any replica, delivered at commit), and with "*" after a lost connection is back, when some
   * may have been missed. SQLite: undefined — one process, nothing to hear from elsewhere.
   */
  readonly listen?: (channel: string, fn: (payload: string) => void) => Promise<Listening>;
  /** Resolves once the database answers, rejects if not in `waitMs`: asked outside the traffic's queue (health.ts). */
  ping(waitMs: number): Promise<void>;
  /** Resolves once every commit so far, by any connection, is on disk (SQLite: a wal-sync round; PostgreSQL: at once). */
  durable(): Promise<void>;
  close(): Promise<void>;
}

/** Options of {@link Db.transaction}. */
export interface TxOptions {
  /**
   * false: resolve at commit, without waiting for the commit to be flushed to disk (on SQLite no
   * wal-sync round; on PostgreSQL `synchronous_commit = off` for this transaction). Only for writes
   * whose loss in a power failure harms nobody — nothing was promised on them, and a later durable
   * commit covers them anyway (the log is sequential) — such as the outbox relay's claims and its
   * sent marks (a lost mark republishes an event that JetStream and the inboxes drop). Default true.
   */
  readonly durable?: boolean;
  /** false: a PostgreSQL conflict is the caller's error at once, not run again (a batch that splits up). */
  readonly rerunOnConflict?: boolean;
}

/**
 * A PostgreSQL conflict (serialization failure, deadlock, unique-key race) {@link Db.transaction} runs the
 * transaction again on. Not db-errors.ts isConflict (a client's ABORTED "try again"), which leaves the
 * unique-key race out: one that escapes the reruns is answered INTERNAL.
 */
export function isRerunnable(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && RETRYABLE.has(code);
}

/** A running {@link Db.listen}. */
export type Listening = { close(): Promise<void> };

/** Where a database lives. */
export type DbLocation =
  | { readonly engine: "sqlite"; readonly path: string }
  /** `schema`: the service's (created when missing); `poolSize`: connections in the pool. */
  | { readonly engine: "postgres"; readonly url: string; readonly schema: string; readonly poolSize: number };

const FOR_UPDATE = sql`FOR UPDATE`;
const SKIP_LOCKED = sql`FOR UPDATE SKIP LOCKED`;
const NOTHING = sql``;
const PING = CompiledQuery.raw("SELECT 1");
const ASYNC_COMMIT = sql`SET LOCAL synchronous_commit TO OFF`;
/** The savepoint of {@link Tx.savepoint}, and the one each transaction of a SQLite group commit runs in. */
const NESTED = { begin: sql`SAVEPOINT sp`, release: sql`RELEASE SAVEPOINT sp`, undo: sql`ROLLBACK TO SAVEPOINT sp` };
const GROUPED = { begin: sql`SAVEPOINT g`, release: sql`RELEASE SAVEPOINT g`, undo: sql`ROLLBACK TO SAVEPOINT g` };

/** PostgreSQL errors a transaction is run again on: serialization failure, deadlock, unique-key race. */
const RETRYABLE = new Set(["40001", "40P01", "23505"]);
/** Attempts of one PostgreSQL transaction before its conflict is the caller's error. */
const MAX_TX_ATTEMPTS = 12;

/** Runs `f` in savepoint `sp` of `tx`: what it wrote is undone if it throws, and the error rethrown. */
async function savepoint<R>(
  tx: Queries,
  sp: { begin: Query<unknown>; release: Query<unknown>; undo: Query<unknown> },
  f: () => Promise<R>,
): Promise<R> {
  await tx.run(sp.begin);
  try {
    const r = await f();
    await tx.run(sp.release);
    return r;
  } catch (err) {
    // SQLite may have rolled the whole transaction back (a full disk): the caller hears why, not "no such savepoint".
    await tx
      .run(sp.undo)
      .then(() => tx.run(sp.release))
      .catch(() => {});
    throw err;
  }
}

/** Runs a compiled statement on SQLite's connection (sqlite-driver.ts): in the transaction holding it, or at its turn. */
type Direct = (q: CompiledQuery) => QueryResult<unknown> | Promise<QueryResult<unknown>>;

class Queryer implements Queries {
  constructor(
    readonly engine: Engine,
    private readonly executor: Kysely<unknown>,
    private readonly direct?: Direct,
  ) {}
  /** `pick` of `q`'s result; one promise when `direct` runs it (hot: every statement of every store). */
  private result<R, T>(q: Query<R>, pick: (r: QueryResult<R>) => T): Promise<T> {
    if (!this.direct) return q.execute(this.executor).then(pick);
    try {
      const r = this.direct(q.compile(this.executor)) as QueryResult<R> | Promise<QueryResult<R>>;
      return r instanceof Promise ? r.then(pick) : Promise.resolve(pick(r));
    } catch (err) {
      return Promise.reject(err);
    }
  }
  all<R>(q: Query<R>): Promise<R[]> {
    return this.result(q, rowsOf);
  }
  one<R>(q: Query<R>): Promise<R | undefined> {
    return this.result(q, firstOf);
  }
  run(q: Query<unknown>): Promise<number> {
    return this.result(q, changesOf);
  }
}

const rowsOf = <R>(r: QueryResult<R>): R[] => r.rows;
const firstOf = <R>(r: QueryResult<R>): R | undefined => r.rows[0];
const changesOf = (r: QueryResult<unknown>): number => Number(r.numAffectedRows ?? 0n);

class OpenDb extends Queryer implements Db {
  readonly listen?: Db["listen"];
  /** SQLite: statements of a transaction run on its connection at once. */
  private readonly inTx: Direct | undefined;
  /** SQLite: transactions asked for together share a commit (group-commit.ts). */
  private readonly group: GroupCommit<Kysely<unknown>> | undefined;
  /** SQLite: the connection (Kysely only compiles queries for it: its driver never opens, so destroy() closes nothing). */
  private readonly sqlite: SqliteConnection | undefined;
  /** SQLite in WAL mode: what makes a commit durable (wal-sync.ts). */
  private readonly wal: WalSync | undefined;
  /** PostgreSQL: pings on a connection of their own (pgPing). */
  private readonly pinger: Ping | undefined;
  /** PostgreSQL: the pool, ended at close even when Kysely never took it. */
  private readonly pool: pg.Pool | undefined;

  constructor(
    engine: Engine,
    private readonly kysely: Kysely<unknown>,
    opts: {
      listen?: Db["listen"];
      wal?: WalSync | undefined;
      sqlite?: SqliteConnection;
      pinger?: Ping;
      pool?: pg.Pool;
    },
  ) {
    const { sqlite } = opts;
    super(engine, kysely, sqlite && ((q) => sqlite.inTurn(q)));
    this.wal = opts.wal;
    this.pinger = opts.pinger;
    this.pool = opts.pool;
    this.inTx = sqlite && ((q) => sqlite.execute(q));
    this.sqlite = sqlite;
    if (opts.listen) this.listen = opts.listen;
    this.group =
      sqlite &&
      new GroupCommit({
        transaction: (body) => sqlite.transaction(() => body(kysely)),
        savepoint: (k, f) => savepoint(new Queryer(engine, k, this.inTx), GROUPED, f),
        inTransaction: () => sqlite.db.inTransaction,
        sync: () => this.wal?.sync() ?? Promise.resolve(),
      });
  }

  /** A write outside a transaction commits on its own: reported once durable, as a transaction is. */
  override async run(q: Query<unknown>): Promise<number> {
    const n = await super.run(q);
    await this.durable();
    return n;
  }

  /** SQLite: `SELECT 1` at once, out of turn (it reads nothing a transaction holds); fails once closed. */
  async ping(waitMs: number): Promise<void> {
    if (this.pinger) return this.pinger.ping(waitMs);
    this.sqlite?.execute(PING);
  }

  durable(): Promise<void> {
    return this.wal?.sync() ?? Promise.resolve();
  }

  /** `trx` as a {@link Tx} whose `afterCommit` hooks go to `hooks`. */
  private txOf(trx: Kysely<unknown>, hooks: (() => void)[]): Tx {
    const tx = new Queryer(this.engine, trx, this.inTx);
    return Object.assign(tx, {
      forUpdate: this.engine === "postgres" ? FOR_UPDATE : NOTHING,
      skipLocked: this.engine === "postgres" ? SKIP_LOCKED : NOTHING,
      afterCommit: (f: () => void) => hooks.push(f),
      savepoint: async <R>(f: () => Promise<R>): Promise<R> => {
        const mark = hooks.length;
        try {
          return await savepoint(tx, NESTED, f);
        } catch (err) {
          hooks.length = mark;
          throw err;
        }
      },
    });
  }

  async transaction<T>(fn: (tx: Tx) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    const durable = opts.durable ?? true;
    if (this.group) {
      const hooks: (() => void)[] = [];
      const result = await this.group.run((trx) => fn(this.txOf(trx, hooks)), durable);
      for (const h of hooks) h();
      return result;
    }
    for (let attempt = 1; ; attempt++) {
      const hooks: (() => void)[] = [];
      try {
        const result = await this.kysely.transaction().execute(async (trx) => {
          if (!durable && this.engine === "postgres") await ASYNC_COMMIT.execute(trx);
          return fn(this.txOf(trx, hooks));
        });
        if (durable) await this.wal?.sync();
        for (const h of hooks) h();
        return result;
      } catch (err) {
        const rerun = this.engine === "postgres" && isRerunnable(err) && opts.rerunOnConflict !== false;
        if (!rerun || attempt >= MAX_TX_ATTEMPTS) throw err;
        await new Promise((r) => setTimeout(r, backoffMs(attempt, 2, 200, Math.random())));
      }
    }
  }

  within<T>(tx: Tx | undefined, fn: (tx: Tx) => Promise<T>): Promise<T> {
    return tx ? fn(tx) : this.transaction(fn);
  }

  async close(): Promise<void> {
    await this.wal?.close();
    await this.sqlite?.close();
    await this.pinger?.close();
    await this.kysely.destroy();
    // Kysely ends the pool only once a statement of its own has run (it takes the pool then): one closed
    // before that left the connection its migrations used idle, and open, for as long as the process lived.
    if (this.pool && !this.pool.ended) await this.pool.end();
  }
}

/** Opens a SQLite file as a {@link Db} (WAL, full sync, foreign keys, a busy timeout for other processes). */
export function sqliteDb(db: Database.Database): Db {
  // A file in WAL mode syncs its log per group of commits (wal-sync.ts). SQLite keeps the log beside
  // the file a link names, not beside the link.
  const file = db.pragma("journal_mode", { simple: true }) === "wal" ? realpathSync(db.name) : undefined;
  const wal = file === undefined ? undefined : new WalSync(`${file}-wal`, file);
  const connection = new SqliteConnection(db);
  return new OpenDb("sqlite", new Kysely({ dialect: sqliteDialect(connection) }), { wal, sqlite: connection });
}

/** A PostgreSQL pool as a {@link Db}; `url` (the pool's) serves LISTEN connections. */
export function postgresDb(pool: pg.Pool, url: string): Db {
  return new OpenDb("postgres", new Kysely({ dialect: new PostgresDialect({ pool }) }), {
    listen: (channel, fn) => listenOn(url, channel, fn, pool.options.application_name),
    pinger: pgPing(url, pool),
    pool,
  });
}
