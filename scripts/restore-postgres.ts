/**
 * `make restore` with DB=postgres: the service's store is schema shopmesh_<service> of make run's
 * database `shopmesh`, and the backup one `pg_dump` of that database (shopmesh.dump, custom format).
 * make run starts its PostgreSQL as its child and stops it with everything else, so with make run
 * stopped the restore starts it on make run's data (scripts/local-postgres.ts) and stops it after.
 *
 * The dump is checked first, with pg_restore alone (nothing is read from the server): it must hold the
 * service's schema, with its tables at a version this build runs, and read whole. Then the schema is
 * dropped and restored from the dump, as the role that owned it, in one transaction (`psql`, fed
 * `pg_restore -n <schema>`'s script between a BEGIN and a COMMIT written only once pg_restore has ended
 * well): a restore that fails part-way, or is killed, leaves the old schema whole. Dropped first, so no
 * table of the live schema the copy lacks survives (`pg_restore --clean` drops only what the dump holds).
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { devNull } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { lockRebuild } from "../services/history/rebuild-aside.js";
import { expectStore, fileOf, takenAt } from "./backup-copy.js";
import { SERVICE_NAMES } from "./layout.js";
import { CannotStart, endOf } from "./local-nats.js";
import { ensurePostgres } from "./local-postgres.js";
import { clientTool } from "./postgres.js";
import type { RestoreTarget } from "./restore-target.js";

/** The application name of the restore's own connections, as pg_stat_activity shows them. */
const APP = "shopmesh-restore";
/** How long the restore waits for a lock on the live schema before it fails, ms. */
const LOCK_TIMEOUT_MS = 10_000;

const INSTALL =
  "install PostgreSQL's client tools (apt-get install postgresql-client, brew install postgresql@16) or put them on PATH";

/** Runs PostgreSQL client tool `name`; refused as CannotStart when it is not installed. */
function tool(name: "pg_restore" | "psql", args: readonly string[]) {
  const run = spawnSync(clientTool(name), args, { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  if ((run.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT") {
    throw new CannotStart(`${name} not found: ${INSTALL}; nothing changed`);
  }
  if (run.error) throw run.error;
  return run;
}

/** Refuses, before anything changes, when a tool the restore needs is missing or does not run (Debian's wrapper without a version). */
function expectTools(): void {
  for (const name of ["pg_restore", "psql"] as const) {
    const run = tool(name, ["--version"]);
    if (run.status !== 0) {
      const why = `${run.stderr}${run.stdout}`.trim().split("\n")[0];
      throw new CannotStart(`${name} does not run (${why}): ${INSTALL}; nothing changed`);
    }
  }
}

/**
 * The dump in backup `from`, checked to hold `schema`, the store of `service` as `migrations` make it;
 * when the backup was taken. Throws {@link CannotStart} saying what is wrong.
 */
function checkedDump(
  from: string,
  service: string,
  schema: string,
  migrations: readonly string[],
  shown: (path: string) => string,
): { file: string; at: Date } {
  const sqlite = existsSync(join(from, `${service}.db`));
  const file = fileOf(
    from,
    "shopmesh.dump",
    shown,
    sqlite ? " (this one holds SQLite's: restore it without DB=postgres)" : "",
  );
  const at = takenAt(from, shown);
  expectTools();
  /** pg_restore's output of `args` on the dump; refused, saying `refusal` and pg_restore's first complaint. */
  const read = (args: readonly string[], refusal: (why: string) => string) => {
    const run = tool("pg_restore", [...args, file]);
    if (run.status !== 0) throw new CannotStart(refusal(run.stderr.trim().split("\n")[0] ?? ""));
    return run.stdout;
  };
  const listed = read(["-l"], (why) => `${shown(file)} is not a dump make backup wrote, or is damaged: ${why}`);
  const entries = listed.split("\n").map((line) => line.split(";")[1]?.trim().split(/\s+/) ?? []);
  // `<dump id> <catalog oid> <object oid> SCHEMA - <name> <owner>`, `… TABLE <schema> <name> <owner>`.
  if (!entries.some((e) => e[2] === "SCHEMA" && e[4] === schema)) {
    throw new CannotStart(
      `${shown(file)} holds no schema ${schema}: it is no dump of make run's database (DB=postgres's shopmesh)`,
    );
  }
  const tables = entries.filter((e) => e[2] === "TABLE" && e[3] === schema).map((e) => e[4] ?? "");
  // Read whole once, as the restore will: a dump cut short (its copy's disk full) lists its contents
  // and reads its first tables well, and failed only once the durables were deleted.
  const damaged = (why: string) => `${shown(file)} is damaged (${why}): use another backup`;
  read(["-n", schema, "-f", devNull], damaged);
  // The version is a row: read from the dump's script of that table's data (`COPY … FROM stdin;`, the row, `\.`).
  const lines = read(["-a", "-n", schema, "-t", "schema_version", "-f", "-"], damaged).split("\n");
  const copyAt = lines.findIndex((l) => l.startsWith(`COPY ${schema}.schema_version `));
  const version = copyAt < 0 ? 0 : Number.parseInt(lines[copyAt + 1] ?? "", 10) || 0;
  expectStore(`${shown(file)}: schema ${schema}`, service, migrations, version, tables, ["schema_version"]);
  return { file, at };
}

/**
 * The connections to `url`'s database that may use `schema`: how many, and whose. A session's search_path
 * is not shown, so every client's may, but the restore's own and those named after another service's
 * schema (a service's pool, ping and LISTEN connections are, platform/pg-pool.ts): a service whose URL
 * names its connections (the URL's name wins), a psql, a pooler, `make backup`'s pg_dump.
 */
async function usersOf(url: string, schema: string): Promise<{ n: number; who: string }> {
  const client = new pg.Client({ connectionString: url, application_name: APP });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number; who: string | null }>(
      `SELECT count(*)::int AS n, string_agg(DISTINCT coalesce(nullif(application_name, ''), '(unnamed)'), ', ') AS who
        FROM pg_stat_activity WHERE ${mayUse(schema)}`,
    );
    return { n: rows[0]?.n ?? 0, who: rows[0]?.who ?? "" };
  } finally {
    await client.end();
  }
}

/** The condition on pg_stat_activity of {@link usersOf}'s connections (`schema` and the names: [a-z_] only). */
function mayUse(schema: string): string {
  const others = SERVICE_NAMES.map((s) => `'shopmesh_${s}'`).filter((s) => s !== `'${schema}'`);
  return `datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
    AND application_name NOT IN ('${APP}', ${others.join(", ")})`;
}

/** Replaces `schema` of `url`'s database by the one in dump `file`, in one transaction. */
async function replaceSchema(url: string, schema: string, file: string): Promise<void> {
  const psql = spawn(clientTool("psql"), ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url], {
    stdio: ["pipe", "ignore", "pipe"],
    // Process groups of their own, as the NATS the restore starts: a Ctrl-C at the terminal reached them
    // with the restore and cancelled the replace it means to let finish. Killed, the restore closes
    // psql's input: it ends, the transaction undone.
    detached: true,
    // A lock waited for in vain (a session left in a transaction on the schema) fails the restore, not hangs it.
    env: { ...process.env, PGAPPNAME: APP, PGOPTIONS: `-c lock_timeout=${LOCK_TIMEOUT_MS}` },
  });
  const dump = spawn(clientTool("pg_restore"), ["--no-owner", "-n", schema, "-f", "-", file], {
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let said = "";
  for (const out of [psql.stderr, dump.stderr]) out.on("data", (d: Buffer) => (said += d.toString()));
  psql.stdin.on("error", () => {}); // psql stopped on an error: said on its stderr
  const psqlEnd = endOf(psql);
  const dumpEnd = new Promise<number | null>((resolve) => dump.once("close", resolve));
  // Made again as its owner's, and filled as that role: on the deployment's roles (roles.sh) the service's
  // role owns its schema and is no superuser, and a schema and tables of the restore's user were
  // "permission denied" to it. A schema lost whole is the restore's user's, as a service's first start makes it.
  psql.stdin.write(
    `BEGIN;\nSELECT coalesce((SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
      WHERE n.nspname = '${schema}'), current_user) AS owner \\gset\n` +
      `DROP SCHEMA IF EXISTS ${schema} CASCADE;\nCREATE SCHEMA ${schema} AUTHORIZATION :"owner";\nSET ROLE :"owner";\n`,
  );
  dump.stdout.pipe(psql.stdin, { end: false });
  // psql gone (an error), pg_restore would wait on a full pipe for good.
  void psqlEnd.then(() => dump.kill());
  const dumped = await dumpEnd;
  // Without the COMMIT, psql's end ends the transaction undone: the old schema stays, whole. Checked again
  // first: a service started since the check (its NATS, its durables, a lock waited for took seconds)
  // had its schema replaced under it.
  const recheck = `DO $$BEGIN IF EXISTS (SELECT FROM pg_stat_activity WHERE ${mayUse(schema)}) THEN
    RAISE EXCEPTION 'schema ${schema} came into use during the restore: undone, stop what uses it'; END IF; END$$;\n`;
  psql.stdin.end(dumped === 0 ? `${recheck}COMMIT;\n` : "");
  const restored = await psqlEnd;
  if (dumped !== 0 || restored !== 0) {
    const why = said.trim().split("\n").slice(-3).join("; ") || `pg_restore ${dumped}, psql ${restored}`;
    throw new Error(`restoring schema ${schema} from ${file}: ${why}`);
  }
}

/**
 * `service`'s schema in make run's PostgreSQL (on 127.0.0.1:`port`, data in `dataDir`/postgres) and its
 * copy in backup `from` (checked against `migrations`: throws CannotStart when it is no copy the service
 * runs on). `say` reports a PostgreSQL started for the restore; `shown` shortens a path for the messages.
 */
export function postgresTarget(
  dataDir: string,
  port: number,
  service: string,
  migrations: readonly string[],
  from: string,
  shown: (path: string) => string,
  say: (line: string) => void,
): RestoreTarget {
  const schema = `shopmesh_${service}`;
  const dump = checkedDump(from, service, schema, migrations, shown);
  let url = "";
  return {
    at: dump.at,
    copy: `${shown(dump.file)}, schema ${schema}`,
    live: `schema ${schema} of make run's PostgreSQL (port ${port})`,
    start: "make run DB=postgres",
    async claim(stops) {
      const server = await ensurePostgres(dataDir, port, say, "the restore");
      if (server.stop) stops.push(server.stop);
      const named = new URL(server.url);
      named.searchParams.set("application_name", APP);
      url = named.toString();
      // History holds its view's lock while it runs (as on SQLite): taken alone here, it keeps one from starting.
      if (service === "history") {
        const lock = await lockRebuild({ engine: "postgres", url, schema, poolSize: 1 });
        stops.push(() => lock.release());
      }
      // A service running outside make run (notification has no lock of its own), a make backup dumping, a psql.
      const users = await usersOf(url, schema);
      if (users.n > 0)
        throw new CannotStart(
          `schema ${schema} may be in use: ${users.n} connection(s) of ${users.who} (a ${service} service, a make backup, ` +
            "a psql: any connection to its database not named after another service's schema may use it): stop or close it first",
        );
    },
    put: () => replaceSchema(url, schema, dump.file),
  };
}
