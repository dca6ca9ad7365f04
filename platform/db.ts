/**
 * SQLite per service (better-sqlite3): WAL journal, full sync on commit (an
 * accepted write survives a crash or power loss), foreign keys on, a busy
 * timeout for a second process on the same file, and versioned migrations
 * tracked in `PRAGMA user_version`.
 */
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";

export type { Database as Db } from "better-sqlite3";

/**
 * Opens (creating if needed) the database at `path` and applies the
 * migrations it has not seen yet, each in its own transaction. Migration N
 * is `migrations[N - 1]`; never edit one that has shipped, append instead.
 * `:memory:` opens a private in-memory database.
 */
export function openDatabase(path: string, migrations: readonly string[]): Database.Database {
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  const db = new Database(path);
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = FULL");
    db.pragma("foreign_keys = ON");
    db.pragma("busy_timeout = 5000");
    migrate(db, migrations);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

function migrate(db: Database.Database, migrations: readonly string[]): void {
  const current = db.pragma("user_version", { simple: true }) as number;
  if (current > migrations.length) {
    throw new Error(`database schema version ${current} is newer than this build knows (${migrations.length})`);
  }
  for (let v = current + 1; v <= migrations.length; v++) {
    db.transaction(() => {
      db.exec(migrations[v - 1] as string);
      db.pragma(`user_version = ${v}`);
    }).immediate();
  }
}
