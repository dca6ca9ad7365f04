/**
 * What `make restore` checks of a store's copy in a backup before it changes anything: that FROM is a
 * backup `make backup` finished (its backup.json says when), and that the copy is whole and is the
 * service's store, of a schema this build runs. A copy put in place that the service then refuses
 * (a newer schema: "newer than this build knows") left it unable to start with its durables already
 * deleted; another service's store (notification's as history's) was taken as it was, its inbox
 * skipping the events the other service had applied.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { CannotStart } from "./local-nats.js";

/** The tables the first `version` of `migrations` make (SQLite's dialect, the same names on PostgreSQL), in order of name. */
function tablesAt(migrations: readonly string[], version: number): string[] {
  const db = new Database(":memory:");
  try {
    for (const m of migrations.slice(0, version)) db.exec(m);
    return tablesOf(db);
  } finally {
    db.close();
  }
}

const tablesOf = (db: Database.Database) =>
  db
    .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    .pluck()
    .all() as string[];

/** When the backup in `from` was taken, from its backup.json. */
export function takenAt(from: string, shown: (path: string) => string): Date {
  const manifest = join(from, "backup.json");
  if (!existsSync(manifest)) {
    throw new CannotStart(
      from.replace(/\/+$/, "").endsWith(".partial")
        ? `${shown(from)} is an unfinished backup (make backup did not complete it): use one without .partial`
        : `${shown(from)} has no backup.json: FROM must be a directory make backup wrote`,
    );
  }
  let at = Number.NaN;
  try {
    at = Date.parse((JSON.parse(readFileSync(manifest, "utf8")) as { at?: string }).at ?? "");
  } catch {} // said below
  if (Number.isNaN(at)) {
    throw new CannotStart(`${shown(manifest)} is not make backup's (no time "at" in it): FROM must be what it wrote`);
  }
  return new Date(at);
}

/** The file `name` of backup directory `from`, refused when either is missing. */
export function fileOf(from: string, name: string, shown: (path: string) => string, hint = ""): string {
  if (!statSync(from, { throwIfNoEntry: false })?.isDirectory())
    throw new CannotStart(`FROM=${from} is no directory: name one make backup wrote (it prints it)`);
  const file = join(from, name);
  if (!existsSync(file))
    throw new CannotStart(`${shown(file)} does not exist: FROM must be a directory make backup wrote${hint}`);
  return file;
}

/**
 * Refuses a copy at schema `version` holding `tables` that is not `service`'s store as `migrations` make it
 * (`extra`: the tables the engine adds), or that this build cannot run on. `what` names the copy.
 */
export function expectStore(
  what: string,
  service: string,
  migrations: readonly string[],
  version: number,
  tables: readonly string[],
  extra: readonly string[] = [],
): void {
  const held = [...tables].sort();
  // A newer schema is built on this build's last one: a copy lacking one of its tables is another
  // service's (history's store, at 6, given as notification's, at 4, was said to be of a newer build).
  const latest = [...tablesAt(migrations, migrations.length), ...extra].sort();
  if (version > migrations.length && !latest.every((t) => held.includes(t)))
    notItsStore(what, service, held, migrations.length, latest);
  if (version > migrations.length) {
    throw new CannotStart(
      `${what}: its schema version ${version} is newer than this build knows (${migrations.length}): ` +
        "restore it with the build that wrote it",
    );
  }
  const want = [...tablesAt(migrations, version), ...extra].sort();
  if (held.join() !== want.join()) notItsStore(what, service, held, version, want);
}

function notItsStore(
  what: string,
  service: string,
  held: readonly string[],
  version: number,
  want: readonly string[],
): never {
  throw new CannotStart(
    `${what} is not ${service}'s store: it holds tables ${held.join(", ") || "none"}, ` +
      `where ${service}'s schema ${version} has ${want.join(", ") || "none"}`,
  );
}

/**
 * The copy of `service` (whose store `migrations` make) in backup `from`, checked; when the backup was
 * taken. Throws {@link CannotStart} saying what is wrong. `shown` shortens a path for the message.
 */
export function checkedCopy(
  from: string,
  service: string,
  migrations: readonly string[],
  shown: (path: string) => string,
): { file: string; at: Date } {
  const dumped = existsSync(join(from, "shopmesh.dump"));
  const file = fileOf(
    from,
    `${service}.db`,
    shown,
    dumped ? " (this one is DB=postgres's: restore it with DB=postgres)" : "",
  );
  const at = takenAt(from, shown);
  let version: number;
  let tables: string[];
  try {
    const db = new Database(file, { readonly: true, fileMustExist: true });
    try {
      const check = db.pragma("integrity_check", { simple: true });
      if (check !== "ok") throw new CannotStart(`${shown(file)} failed its integrity check: ${String(check)}`);
      version = db.pragma("user_version", { simple: true }) as number;
      tables = tablesOf(db);
    } finally {
      db.close();
    }
  } catch (err) {
    const code = String((err as { code?: unknown }).code ?? "");
    if (code === "SQLITE_NOTADB") throw new CannotStart(`${shown(file)} is not a SQLite database`);
    if (code.startsWith("SQLITE_CORRUPT")) throw new CannotStart(`${shown(file)} is damaged: use another backup`);
    throw err;
  }
  expectStore(shown(file), service, migrations, version, tables);
  return { file, at };
}
