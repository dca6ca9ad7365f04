/**
 * A PostgreSQL server of our own, from the machine's server binaries
 * (Debian's `postgresql` package: /usr/lib/postgresql/<version>/bin; or
 * `postgres` on PATH): a cluster initialised on first use (trust
 * authentication, loopback only), started and stopped with it. Used by
 * `make run DB=postgres` (data under .data/postgres) and by the tests (a
 * throwaway cluster per run). PostgreSQL refuses to run as root, so as root
 * every server binary runs as the `postgres` user (which the package
 * creates) and the data directory is given to it.
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";

/** What to do when the binaries are missing. */
export const POSTGRES_MISSING =
  "PostgreSQL server binaries not found: apt-get install -y postgresql (Debian/Ubuntu; `make postgres` and .ci/run do it " +
  "as root), brew install postgresql@16 (macOS), or put `postgres` and `initdb` on PATH";

/** The directory of `postgres`, `initdb` and `pg_ctl`: the newest /usr/lib/postgresql/<v>/bin, else PATH. */
export function postgresBinDir(): string {
  const root = "/usr/lib/postgresql";
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((v) => existsSync(join(root, v, "bin", "postgres")))
      .sort((a, b) => Number(b) - Number(a));
    if (versions[0]) return join(root, versions[0], "bin");
  }
  try {
    const found = execFileSync("sh", ["-c", "command -v postgres"], { encoding: "utf8" }).trim();
    if (found) return join(found, "..");
  } catch {
    // not on PATH either
  }
  throw new Error(POSTGRES_MISSING);
}

/**
 * The path of PostgreSQL client tool `name` (pg_dump, pg_restore, psql): the server binaries' own
 * (the same version), else `name` alone, for PATH to find.
 */
export function clientTool(name: "pg_dump" | "pg_restore" | "psql"): string {
  try {
    const bin = join(postgresBinDir(), name);
    if (existsSync(bin)) return bin;
  } catch {} // no server binaries where we look: PATH's tool, if any
  return name;
}

const asRoot = () => process.getuid?.() === 0;

/** argv that runs server binary `name` as the postgres user when we are root. */
export function serverCommand(name: "postgres" | "initdb" | "pg_ctl", args: readonly string[]): [string, string[]] {
  const bin = join(postgresBinDir(), name);
  return asRoot() ? ["runuser", ["-u", "postgres", "--", bin, ...args]] : [bin, [...args]];
}

/** Gives `dir` to the postgres user when we are root (the server may only run as its owner). */
export function ownDir(dir: string): void {
  mkdirSync(dir, { recursive: true });
  if (asRoot()) chownSync(dir, Number(execFileSync("id", ["-u", "postgres"]).toString()), 0);
}

/** Initialises a cluster in `data` unless one is there; true when it made one. */
export function initCluster(data: string): boolean {
  if (existsSync(join(data, "PG_VERSION"))) return false;
  ownDir(data);
  const [cmd, args] = serverCommand("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
  execFileSync(cmd, args, { stdio: "pipe" });
  return true;
}

/**
 * Arguments of `postgres` for `data` on 127.0.0.1:`port`, its socket in
 * `socketDir`. `durable: false` turns fsync off (tests kill processes,
 * never the machine).
 */
export function serverArgs(data: string, port: number, socketDir: string, durable: boolean): string[] {
  return [
    "-D",
    data,
    "-p",
    String(port),
    "-k",
    socketDir,
    "-c",
    "listen_addresses=127.0.0.1",
    "-c",
    "max_connections=300",
    ...(durable ? [] : ["-c", "fsync=off"]),
  ];
}

/** Stops the server of `data` ("fast": clean; "immediate": like a crash) and waits until it is gone. */
export function stopCluster(data: string, mode: "fast" | "immediate" = "fast"): void {
  // pg_ctl signals the postmaster itself (runuser, our child when root, forwards no signal).
  const [cmd, args] = serverCommand("pg_ctl", ["stop", "-D", data, "-m", mode, "-w"]);
  execFileSync(cmd, args, { stdio: "pipe" });
}

/** Creates database `name` on the server of `adminUrl` unless it exists; the new database's URL. */
export async function ensureDatabase(adminUrl: string, name: string): Promise<string> {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`invalid database name "${name}"`);
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]);
    if (!rowCount) await client.query(`CREATE DATABASE ${name}`);
  } finally {
    await client.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Resolves once the server of `adminUrl` accepts a connection; rejects with the last error after `timeoutMs`. */
export async function waitForPostgres(adminUrl: string, timeoutMs = 30_000): Promise<void> {
  for (const until = Date.now() + timeoutMs; ; ) {
    const c = new pg.Client({ connectionString: adminUrl });
    try {
      await c.connect();
      await c.end();
      return;
    } catch (err) {
      await c.end().catch(() => {});
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}
