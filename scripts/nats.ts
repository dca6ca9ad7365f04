/**
 * The local NATS: how `make run` starts it (JetStream, its streams under
 * <data dir>/nats, loopback only, a user per process with what it may
 * publish: platform/bus-access.ts), so that `make history-rebuild` can start
 * the same server on the same streams when `make run` is stopped. The users'
 * passwords are made once per data directory, at random, and kept in
 * <data dir>/nats/users.json, readable by its owner only; the commands that
 * read the bus by hand (`make events`, `make dlq`) connect as its
 * administrator from there.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { BUS_USERS } from "../contracts/events.js";
import { natsAuthorization } from "../platform/bus-access.js";

/** What to do when nats-server is missing. */
export const NATS_MISSING =
  "nats-server is not installed. Install it with your OS package manager, e.g.\n" +
  "  sudo apt-get install -y nats-server      (Debian/Ubuntu)\n" +
  "  brew install nats-server                 (macOS)\n" +
  "or download it from https://github.com/nats-io/nats-server/releases";

/** Whether nats-server can be run. */
export function natsInstalled(): boolean {
  return !spawnSync("nats-server", ["--version"], { encoding: "utf8" }).error;
}

/** The passwords of the local bus's users (BUS_USERS), made the first time for `dataDir` and kept there. */
export function localBusPasswords(dataDir: string): Record<string, string> {
  const file = join(dataDir, "nats", "users.json");
  const kept = existsSync(file) ? readKept(file) : {};
  if (BUS_USERS.every((u) => typeof kept[u.user] === "string")) return kept;
  const all = { ...kept };
  for (const { user } of BUS_USERS) all[user] ??= randomBytes(18).toString("base64url");
  mkdirSync(join(dataDir, "nats"), { recursive: true });
  // Written aside and renamed over: a write cut short (a full disk, a kill) leaves the old file whole.
  const aside = `${file}.${process.pid}.tmp`; // each writer its own: two at once both rename whole files
  writeFileSync(aside, `${JSON.stringify(all, null, 2)}\n`, { mode: 0o600 });
  renameSync(aside, file);
  return all;
}

/**
 * The passwords kept in `file` (its string values); none when it is no JSON object (cut short, say):
 * they are made again, and each start writes the server's users from them. Such a file was a stack
 * trace in make run, make events and make history-rebuild until deleted by hand.
 */
function readKept(file: string): Record<string, string> {
  let kept: unknown;
  try {
    kept = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    if (err instanceof SyntaxError) return {};
    throw err;
  }
  if (typeof kept !== "object" || kept === null) return {};
  return Object.fromEntries(Object.entries(kept).filter((e): e is [string, string] => typeof e[1] === "string"));
}

/**
 * NATS_USER and NATS_PASSWORD of `user` on the bus `make run` started with `dataDir`; none when it
 * has not (a bus started otherwise, anonymous: connect as nothing).
 */
export function localBusEnv(dataDir: string, user: string): Record<string, string> {
  if (!existsSync(join(dataDir, "nats", "users.json"))) return {};
  const password = localBusPasswords(dataDir)[user];
  return password ? { NATS_USER: user, NATS_PASSWORD: password } : {};
}

/**
 * Where the local bus keeps its streams for database `db`: `<dataDir>/nats` with SQLite, and
 * `<dataDir>/nats/postgres` with PostgreSQL. Each store's events belong to its own databases: one
 * bus for both would hand the history service of one the other's orders, and the outbox of one
 * would publish into streams the other has consumed.
 */
export function jetStreamDir(dataDir: string, db: string): string {
  return db === "postgres" ? join(dataDir, "nats", "postgres") : join(dataDir, "nats");
}

/**
 * {@link jetStreamDir} for `db`, made if missing. Before 4ad9e0c (2026-12-03) PostgreSQL's streams
 * were in `<dataDir>/nats` too: a PostgreSQL database made then (its data directory is there) with no
 * store of its own yet gets a copy of that store first. Started on an empty one, every event its
 * outboxes had marked sent was gone for it: the sagas waiting for one never ended, a cancelled
 * order's stock stayed reserved, and history and notification never heard of the orders they were
 * behind on. The copy is made aside and renamed into place, so one cut short is made again.
 */
export function preparedJetStreamDir(dataDir: string, db: string): string {
  const dir = jetStreamDir(dataDir, db);
  const shared = join(dataDir, "nats", "jetstream");
  if (
    db === "postgres" &&
    !existsSync(dir) &&
    existsSync(shared) &&
    existsSync(join(dataDir, "postgres", "PG_VERSION"))
  ) {
    const aside = `${dir}.copying`;
    rmSync(aside, { recursive: true, force: true });
    cpSync(shared, join(aside, "jetstream"), { recursive: true });
    renameSync(aside, dir);
  }
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Arguments of `nats-server` for the local bus: JetStream with its store
 * in {@link jetStreamDir} for `db`, client port `port` (-1: any), monitoring on
 * `monitorPort` when given, and the users of {@link localBusPasswords}
 * (their config written to `<dataDir>/nats/users.conf`).
 */
export function natsServerArgs(dataDir: string, port: number, monitorPort?: number, db = "sqlite"): string[] {
  const passwords = localBusPasswords(dataDir);
  const users = join(dataDir, "nats", "users.conf");
  writeFileSync(
    users,
    natsAuthorization(BUS_USERS, (u) => passwords[u] ?? ""),
    { mode: 0o600 },
  );
  return [
    ...["-c", users],
    ...["-js", "-sd", jetStreamDir(dataDir, db)],
    // Loopback only: nothing off this machine needs the local bus.
    ...["-a", "127.0.0.1", "-p", String(port)],
    ...(monitorPort === undefined ? [] : ["-m", String(monitorPort)]),
    ...["-n", "shopmesh-local"],
  ];
}

/** Whether something accepts TCP connections on `host:port` within `timeoutMs`. */
export function answers(host: string, port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** Where the cluster's NATS users are (scripts/nats-users.ts writes it; test/deploy.test.ts checks it). */
export const DEPLOY_USERS_CONF = "deploy/kubernetes/base/nats/users.conf";

/** The environment variable the cluster's nats-server reads `user`'s password from (the nats-credentials Secret). */
export const passwordVariable = (user: string) => `${user.toUpperCase()}_NATS_PASSWORD`;

/** The cluster's users.conf: BUS_USERS, each password read by nats-server from {@link passwordVariable}. */
export function deployUsersConf(): string {
  return (
    "# Generated by scripts/nats-users.ts from contracts/events.ts (BUS_USERS): do not edit.\n" +
    "# Each service's user may publish only its own events, in an account that reaches the streams'\n" +
    "# only through what it imports (platform/bus-access.ts).\n" +
    natsAuthorization(BUS_USERS, (u) => `$${passwordVariable(u)}`)
  );
}
