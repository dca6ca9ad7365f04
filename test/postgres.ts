/**
 * A real PostgreSQL server for tests: initdb into a temp dir, started on a
 * free port (trust auth, loopback only), stoppable and restartable on the
 * same data (for outage tests), removed on dispose. Uses the server binaries
 * of the machine's PostgreSQL (Debian's `postgresql` package; .ci/run installs
 * it); as root it runs them as the `postgres` user, since PostgreSQL refuses
 * to run as root.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { exited } from "./fixtures.js";

/** A running (or stopped) test PostgreSQL. */
export interface TestPostgres extends AsyncDisposable {
  /** URL of the `postgres` database as the superuser. */
  readonly url: string;
  readonly port: number;
  /** A fresh, empty database; its URL. */
  createDatabase(prefix?: string): Promise<string>;
  /** Stops the server: "fast" (clean) or "immediate" (like a crash). */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  /** Starts it again on the same port and data. */
  start(): Promise<void>;
}

const MISSING =
  "PostgreSQL server binaries not found: apt-get install -y postgresql (Debian/Ubuntu; .ci/run does), " +
  "brew install postgresql@16 (macOS), or put `postgres` and `initdb` on PATH";

/** The directory of `postgres` and `initdb`: the newest /usr/lib/postgresql/<v>/bin, else PATH. */
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
    // fall through
  }
  throw new Error(MISSING);
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => resolve(typeof addr === "object" && addr ? addr.port : 0));
    });
  });
}

/** argv that runs `bin` as the postgres user when we are root. */
function asPostgres(bin: string, args: string[]): [string, string[]] {
  return process.getuid?.() === 0 ? ["runuser", ["-u", "postgres", "--", bin, ...args]] : [bin, args];
}

let databases = 0;

/** Creates a fresh, empty database on the server of `adminUrl` (a superuser's); its URL. */
export async function createDatabase(adminUrl: string, prefix = "shopmesh"): Promise<string> {
  const name = `${prefix}_${process.pid}_${++databases}`;
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${name}`);
  } finally {
    await client.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Starts a fresh PostgreSQL on a free port. */
export async function startPostgres(): Promise<TestPostgres> {
  const bin = postgresBinDir();
  const dir = mkdtempSync(join(tmpdir(), "shopmesh-pg-"));
  const data = join(dir, "data");
  if (process.getuid?.() === 0) chownSync(dir, Number(execFileSync("id", ["-u", "postgres"]).toString()), 0);
  const [initCmd, initArgs] = asPostgres(join(bin, "initdb"), [
    "-D",
    data,
    "-U",
    "postgres",
    "--auth=trust",
    "-E",
    "UTF8",
  ]);
  execFileSync(initCmd, initArgs, { stdio: "pipe" });
  const port = await freePort();
  let child: ChildProcess | undefined;
  const start = async () => {
    const [cmd, args] = asPostgres(join(bin, "postgres"), [
      "-D",
      data,
      "-p",
      String(port),
      "-k",
      dir,
      "-c",
      "listen_addresses=127.0.0.1",
      // Tests kill processes, never the machine: the OS keeps written pages, so fsync buys nothing here.
      "-c",
      "fsync=off",
      "-c",
      "max_connections=300",
    ]);
    const c = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    child = c;
    let out = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`postgres did not start:\n${out}`)), 20_000);
      const onData = (d: Buffer) => {
        out += d.toString();
        if (out.includes("ready to accept connections")) {
          clearTimeout(timer);
          resolve();
        }
      };
      c.stdout?.on("data", onData);
      c.stderr?.on("data", onData);
      c.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`postgres exited ${code}:\n${out}`));
      });
    });
  };
  const stop = async (mode: "fast" | "immediate" = "fast") => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const done = exited(child);
    // pg_ctl signals the postmaster itself (runuser, our child when root, forwards no signal).
    const [cmd, args] = asPostgres(join(bin, "pg_ctl"), ["stop", "-D", data, "-m", mode, "-w"]);
    execFileSync(cmd, args, { stdio: "pipe" });
    await done;
  };
  await start();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    url,
    port,
    createDatabase: (prefix) => createDatabase(url, prefix),
    stop,
    start,
    async [Symbol.asyncDispose]() {
      await stop("immediate");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
