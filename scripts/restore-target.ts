/** What `make restore` (scripts/restore.ts) needs of a store's engine: its SQLite file, or its PostgreSQL schema. */

/** One service's store about to be put back to its copy in a backup, the copy already checked. */
export interface RestoreTarget {
  /** When the backup was taken (events since are replayed). */
  readonly at: Date;
  /** The copy and the live store, as said to the operator (`backups/…/history.db`, `.data/history.db`). */
  readonly copy: string;
  readonly live: string;
  /** The command that starts the service again (`make run`). */
  readonly start: string;
  /**
   * Makes sure no process has the live store in use, and keeps one from taking it; what it started or
   * took is undone by the functions it pushes on `stops`. Throws CannotStart or RebuildRefused, nothing changed.
   */
  claim(stops: (() => Promise<void> | void)[]): Promise<void>;
  /** Puts the copy in place of the live store in one step: on failure the live store is the old one, whole. */
  put(): Promise<void>;
}
