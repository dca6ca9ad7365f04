/**
 * Group commit for SQLite: durability of FULL at a fraction of its cost.
 *
 * With `synchronous = FULL`, SQLite fsyncs the write-ahead log inside every
 * COMMIT — on the one thread that runs all of a service's JavaScript, so
 * every request waits while the disk flushes, one transaction at a time
 * (the saga spent half of the order service's time there). Here the
 * database runs `synchronous = NORMAL` (a commit writes its WAL frames to
 * the OS, which keeps them through a crash of the process, not of the
 * machine) and a transaction is reported committed only once an
 * fdatasync of the WAL file has covered it: off the main thread (libuv's
 * pool), and shared — every commit made while one sync runs waits for the
 * next, which covers them all. A caller therefore never sees a commit that
 * a power loss could undo, as with FULL; what changes is that commits from
 * concurrent callers share one flush.
 *
 * The WAL is append-only between checkpoints and SQLite syncs it before
 * each checkpoint (NORMAL's rule), so one fdatasync of the file makes
 * every frame written before it durable, whichever connection wrote it.
 */
import { fstatSync, statSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";

export class WalSync {
  /**
   * Told when a flush fails, once per log: a service's process (`runService`) exits then, to be
   * restarted — running on, every write it took failed after committing, and a consumer applied an
   * event, failed to acknowledge it and took it again for ever. Unset (a test, a script), the
   * callers' rejections are all there is.
   */
  static onBroken: ((err: Error) => void) | undefined;

  private file: Promise<FileHandle> | undefined;
  /** The sync running now: it may have started before the caller's commit. */
  private running: Promise<void> = Promise.resolve();
  /** The next sync, which every commit made meanwhile joins. */
  private next: Promise<void> | undefined;
  /** fdatasync calls so far (one per group of commits). */
  flushes = 0;
  /**
   * A flush that failed. It stays failed: after a failed fsync the kernel may have dropped the
   * pages it could not write and report the next fsync clean, so no later commit can be called
   * durable (the lesson PostgreSQL learned as "fsyncgate"). The process must be restarted ({@link WalSync.onBroken}).
   */
  private broken: Error | undefined;
  private closed = false;

  /** The database file's identity when opened (see {@link WalSync.flush}'s check). */
  private readonly identity: { dev: number; ino: number } | undefined;
  /** The log's, once opened. */
  private logIdentity: { dev: number; ino: number } | undefined;

  /**
   * `dbPath`: the database file, checked at each flush to be still the file this process writes (an
   * operator's `rm -rf` of the data directory left SQLite writing on to nameless files, and the
   * service accepting orders no restart would find).
   */
  constructor(
    private readonly walPath: string,
    private readonly dbPath?: string,
  ) {
    this.identity = dbPath === undefined ? undefined : statSync(dbPath);
  }

  /** Resolves once everything committed before this call is on disk. */
  sync(): Promise<void> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.closed) return Promise.reject(new Error("the database is closed"));
    this.next ??= (async () => {
      await this.running.catch(() => {});
      // Commits from here on are not covered by this round: they start the next one.
      this.next = undefined;
      this.running = this.flush();
      return this.running;
    })();
    return this.next;
  }

  private async flush(): Promise<void> {
    let file: FileHandle;
    try {
      this.file ??= open(this.walPath, "r");
      file = await this.file;
    } catch (err) {
      // Not opened, nothing lost: open it again next time.
      this.file = undefined;
      throw err;
    }
    this.flushes++;
    try {
      await file.datasync();
      if (this.replaced()) {
        throw new Error(
          `the database file ${this.dbPath} was removed or replaced while in use: what was written since is in no file a restart would open`,
        );
      }
      if (this.logReplaced(file)) {
        throw new Error(
          `the database log ${this.walPath} was removed or replaced while in use: what was committed since the last checkpoint is in no file a restart would open`,
        );
      }
    } catch (err) {
      this.broken = new Error(
        `the database log ${this.walPath} could not be flushed (${(err as Error).message}): ` +
          "writes since the last flush may not be on disk; restart the process",
        { cause: err },
      );
      WalSync.onBroken?.(this.broken);
      throw this.broken;
    }
  }

  /**
   * Whether the database file's path no longer names the file opened (deleted, or another put there),
   * looked at once the flush is done, so a removal during it counts. Synchronous: a `stat` of a local
   * path is a few µs, where the promise form took ~55 µs of the event loop's thread per flush (its
   * hand-off to libuv's pool and back), 35–40% of each flush's cost there (2026-12-07, 3,000 flushes).
   */
  private replaced(): boolean {
    if (!this.identity || this.dbPath === undefined) return false;
    const now = statSync(this.dbPath, { throwIfNoEntry: false });
    return now?.ino !== this.identity.ino || now.dev !== this.identity.dev;
  }

  /**
   * Whether the log's path no longer names the log this process writes (`rm *.db-wal`, taken for a
   * temporary file): SQLite wrote on to the nameless one, and a crash, or another process opening the
   * database, lost every commit since the last checkpoint. Only when a database file is checked too.
   */
  private logReplaced(file: FileHandle): boolean {
    if (!this.identity) return false;
    // The log is opened once, so its identity is read once: a stat per flush, as for the file.
    this.logIdentity ??= fstatSync(file.fd);
    const now = statSync(this.walPath, { throwIfNoEntry: false });
    return now?.ino !== this.logIdentity.ino || now.dev !== this.logIdentity.dev;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.next?.catch(() => {});
    await this.running.catch(() => {});
    await (await this.file?.catch(() => undefined))?.close();
  }
}
