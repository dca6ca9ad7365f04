/**
 * Group commit of whole transactions, for SQLite (sql.ts): the transactions requested while the
 * connection is busy run together, each in a savepoint of one database transaction, and share its
 * commit — one COMMIT, one write of each page they touched to the log, one flush — instead of one
 * each. The guarantees are those of separate transactions: they run one after another, in the
 * order they were asked for, each seeing what the ones before it wrote; one that throws undoes
 * only its own writes (its savepoint) and is rejected alone; and none resolves before the commit
 * that holds it is durable (a durable one: after the flush that covers it). Each runs in its
 * caller's asynchronous context (AsyncLocalStorage: the trace its events and log lines join), not
 * in that of whichever caller happened to start the group. If the shared transaction itself fails
 * (SQLite rolls a whole transaction back on some errors: a full disk, an I/O error), every
 * transaction in it is rejected, as each would have been on its own.
 */
import { AsyncResource } from "node:async_hooks";

/** What a {@link GroupCommit} needs of the database; `C` is an open transaction. */
export interface GroupOps<C> {
  /** Runs `body` in one database transaction and commits it (rolls back and rethrows if it throws). */
  transaction(body: (c: C) => Promise<void>): Promise<void>;
  /** Runs `f` in a savepoint of `c`: what it wrote is undone if it throws, and the error rethrown. */
  savepoint<T>(c: C, f: () => Promise<T>): Promise<T>;
  /** Whether the connection still has a transaction open (false: SQLite rolled all of it back). */
  inTransaction(): boolean;
  /** Resolves once everything committed so far is durable. */
  sync(): Promise<void>;
}

interface Job<C> {
  readonly fn: (c: C) => Promise<unknown>;
  /** The caller's asynchronous context, which `fn` runs in. */
  readonly scope: AsyncResource;
  readonly durable: boolean;
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: unknown) => void;
}

/** Most transactions that share one commit: a long group holds back the requests behind it. */
const MAX_GROUP = 64;

/** Runs transactions in groups that share a commit (see the module comment). */
export class GroupCommit<C> {
  private readonly queue: Job<C>[] = [];
  private running = false;
  private scheduled = false;

  constructor(private readonly ops: GroupOps<C>) {}

  /**
   * Runs `fn` in a savepoint of the next group's transaction; resolves with what it returns once
   * that transaction has committed (`durable`: and its commit is on disk).
   */
  run<T>(fn: (c: C) => Promise<T>, durable: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const scope = new AsyncResource("shopmesh.GroupCommit");
      this.queue.push({ fn, scope, durable, resolve: resolve as (v: unknown) => void, reject });
      this.schedule();
    });
  }

  /**
   * Starts the next group after the I/O callbacks of this turn of the event loop (setImmediate):
   * the requests they bring join it.
   */
  private schedule(): void {
    if (this.running || this.scheduled || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.next();
    });
  }

  private async next(): Promise<void> {
    this.running = true;
    const group = this.queue.splice(0, MAX_GROUP);
    const done: { job: Job<C>; value: unknown }[] = [];
    const failed: { job: Job<C>; err: unknown }[] = [];
    try {
      await this.ops.transaction(async (c) => {
        const [only] = group;
        if (group.length === 1 && only) {
          // Alone: the transaction is its own, and rolls back whole if it throws (no savepoint needed).
          try {
            done.push({ job: only, value: await only.scope.runInAsyncScope(only.fn, undefined, c) });
          } catch (err) {
            failed.push({ job: only, err });
            throw err;
          }
          return;
        }
        for (const job of group) {
          try {
            done.push({
              job,
              value: await this.ops.savepoint(c, () => job.scope.runInAsyncScope(job.fn, undefined, c)),
            });
          } catch (err) {
            // The whole transaction is gone (or its savepoint could not be undone): nothing in it holds.
            if (!this.ops.inTransaction()) throw err;
            failed.push({ job, err });
          }
        }
      });
    } catch (err) {
      for (const job of group) job.reject(failed.find((f) => f.job === job)?.err ?? err);
      return;
    } finally {
      this.running = false;
      this.schedule();
    }
    for (const { job, err } of failed) job.reject(err);
    const durable = done.filter((d) => d.job.durable);
    for (const d of done) if (!d.job.durable) d.job.resolve(d.value);
    if (durable.length === 0) return;
    this.ops.sync().then(
      () => {
        for (const d of durable) d.job.resolve(d.value);
      },
      (err: unknown) => {
        for (const d of durable) d.job.reject(err);
      },
    );
  }
}
