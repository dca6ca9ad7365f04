/**
 * `make run`: starts nats-server (JetStream, data under .data/nats; with
 * DB=postgres under .data/nats/postgres, each database its own streams) and
 * every service on its fixed port, each with its own SQLite file under .data/,
 * and prints their logs as readable lines prefixed by service name. Ctrl-C
 * (or SIGTERM, SIGHUP: its terminal closed, or SIGUSR2) stops everything cleanly; a second Ctrl-C kills at once, and a
 * service still stopping 10 s (RUN_STOP_MARGIN_MS) past its SHUTDOWN_GRACE_MS is
 * killed (exit 1).
 * LOG_FORMAT=json prints JSON lines instead, one object per line on stdout
 * (`make run | jq`): the process in `proc`, the services' own JSON as it is,
 * anything else (NATS, PostgreSQL, a crash trace) and the runner's messages
 * as `{"level","time","proc","msg"}`.
 *
 * `DB=postgres` starts a PostgreSQL of its own instead (data under
 * .data/postgres, port PG_PORT, default 55432; see scripts/postgres.ts) and
 * gives every service a schema in its `shopmesh` database. Replicas:
 * `<SERVICE>_REPLICAS=n` (1..5) starts n instances on port + 100 each; they
 * register for discovery and share the service's database and durable
 * consumers. ORDER_REPLICAS > 1 needs DB=postgres (sagas are shared by
 * leases, and replicas hear each other's changes through NOTIFY).
 *
 * Ports: `SYSTEM` in scripts/layout.ts — gateway 8080 (HTTP: Connect,
 * gRPC-Web, gRPC), the services 50051-50055, /metrics on 9100-9105; NATS 4222
 * (monitoring 8222). Each can be moved: `<NAME>_PORT` and
 * `<NAME>_METRICS_PORT` (GATEWAY_PORT=8081, PAYMENT_PORT=...), NATS_PORT and
 * NATS_MONITOR_PORT. A port already taken
 * is named, with its process and the variable, before anything starts.
 *
 * Supervision: a service, NATS or PostgreSQL that exits unexpectedly is restarted with
 * backoff (1 s, doubling to 30 s; back to 1 s after a minute up), and the
 * runner says why it exited and how many restarts it has had. RESTART=no
 * turns that off. DATA_DIR moves .data (tests run a whole system there); one
 * runner at a time uses a data directory (its pid in <data dir>/run.pid).
 * Spans go to .data/traces.jsonl for `make trace`. Every process runs the
 * compiled JavaScript that `make build` writes to dist/, with the flags and
 * environment of scripts/layout.ts (systemNodeFlags, SYSTEM_ENV), as
 * `make bench` starts them.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { basename, join } from "node:path";
import { createInterface } from "node:readline";
import { EVENTS } from "../contracts/events.js";
import { backoffMs } from "../platform/backoff.js";
import { BUS_ADMIN, provisionBus } from "../platform/bus-access.js";
import { commonEnv, configOrExit, EXIT_REFUSED, int, parseEnv } from "../platform/config.js";
import { silentLogger } from "../platform/log.js";
import { holdDataDir, recordChild, stopLeftovers } from "./data-dir.js";
import { dbOf, nodeCommand, portOf, ROOT, replicaCount, SYSTEM, SYSTEM_ENV } from "./layout.js";
import { killGroup } from "./local-nats.js";
import { localBusPasswords, NATS_MISSING, natsInstalled, natsServerArgs, preparedJetStreamDir } from "./nats.js";
import {
  ensureDatabase,
  initCluster,
  POSTGRES_MISSING,
  postgresBinDir,
  serverArgs,
  serverCommand,
  stopCluster,
  waitForPostgres,
} from "./postgres.js";
import { runOutput } from "./run-output.js";

const DATA = process.env.DATA_DIR || join(ROOT, ".data");
/** A variable of the runner's that takes a value of `on` (true) or of `off` (false), or a line and exit 2. */
function choice(variable: string, on: readonly string[], off: readonly string[]): boolean {
  const raw = process.env[variable] ?? "";
  if (on.includes(raw)) return true;
  if (off.includes(raw)) return false;
  process.stderr.write(
    `${variable} must be one of ${[...on, ...off].filter(Boolean).join(", ")}, got ${JSON.stringify(raw)}\n`,
  );
  process.exit(2);
}
// Misread before: RESTART=0 or false restarted (only "no" turned it off), LOG_FORMAT=JSON printed pretty lines.
const RESTART = choice("RESTART", ["", "yes", "true", "1"], ["no", "false", "0"]);

/** The local topology (scripts/layout.ts), each process with its entry point and environment. */
const SERVICES: readonly {
  name: string;
  port: number;
  metrics: number;
  main?: string;
  env?: Record<string, string>;
}[] = SYSTEM.map((p) =>
  // Local runs may set faults from the web shop's operator panel.
  p.name === "gateway" ? { ...p, main: "gateway/main.ts", env: { FAULT_INJECTION: "true" } } : { ...p },
);

for (const s of SERVICES) {
  const upper = s.name.toUpperCase();
  (s as { port: number }).port = portOf(`${upper}_PORT`, s.port);
  (s as { metrics: number }).metrics = portOf(`${upper}_METRICS_PORT`, s.metrics);
}
const NATS_PORT = portOf("NATS_PORT", 4222);
const NATS_MONITOR_PORT = portOf("NATS_MONITOR_PORT", 8222);

/** Every caller finds its upstreams through the registry (client-side discovery). */
const UPSTREAMS = Object.fromEntries(
  SERVICES.filter((s) => !s.main).map((s) => [`${s.name.toUpperCase()}_TARGET`, `registry:///${s.name}`]),
);

/** Where the services keep their data. */
const DB = dbOf();
const PG_PORT = portOf("PG_PORT", 55432);

/** `<NAME>_REPLICAS` (default 1), refused where the local system cannot run more than one. */
function replicasOf(name: string): number {
  const n = replicaCount(name);
  if (n > 1 && name === "gateway") {
    process.stderr.write("the gateway runs one instance locally (one port: 8080)\n");
    process.exit(2);
  }
  if (n > 1 && name === "order" && DB !== "postgres") {
    process.stderr.write(
      "ORDER_REPLICAS > 1 needs DB=postgres: order replicas share sagas through leases in the database " +
        "and hear each other's changes through PostgreSQL NOTIFY\n",
    );
    process.exit(2);
  }
  return n;
}

/** LOG_FORMAT=json: stdout is JSON lines only, for jq and log shippers. */
const JSON_LINES = choice("LOG_FORMAT", ["json"], ["", "pretty"]);
/** Stopped because stdout lost its reader: the exit code is then 141. */
let lostOutput = false;
const { prefix, relay, say, blankLine, exitOnceWritten } = await runOutput(
  [...SERVICES.map((s) => s.name), "nats"],
  JSON_LINES,
  (err) => {
    if (stopping) return; // already stopping (a terminal closed sends SIGHUP too): that stop goes on
    lostOutput = true;
    process.stderr.write(`make run: its output's reader is gone: stopping everything (${err.code ?? err.message})\n`);
    stopAll();
  },
);

const children: { name: string; child: ChildProcess }[] = [];
let stopping = false;
/** A start that failed: everything is stopped, and the runner exits 1. */
let failed = false;
/** A process refused to start for good (exit 78): everything is stopped, and the runner exits 78 too. */
let refused = false;
function failStart(why: string): void {
  process.stderr.write(`${why}\n`);
  failed = true;
  stopAll();
}

/** First restart delay, longest delay, and how long up counts as recovered (the delay starts over). */
const BACKOFF_MS = 1_000;
const MAX_BACKOFF_MS = 30_000;
const HEALTHY_MS = 60_000;

/**
 * Starts a child in its own process group (so the terminal's Ctrl-C reaches
 * only this runner, which then stops services before NATS) and relays every
 * output line that `show` accepts. An unexpected exit restarts it after a
 * backoff (unless RESTART=no); an exit 78 (a refused start: its configuration or
 * its data) stops everything instead, and the runner exits 78.
 */
function start(
  name: string,
  i: number,
  cmd: string,
  args: string[],
  env: Record<string, string>,
  show: (line: string) => boolean = () => true,
): void {
  if (stopping) return; // a start that failed (PostgreSQL) stops everything: start nothing more
  const p = prefix(name, i);
  const entry = { name, child: undefined as unknown as ChildProcess };
  children.push(entry);
  let restarts = 0;
  const launch = () => {
    const started = Date.now();
    const child = spawn(cmd, args, {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    recordChild(DATA, child.pid, name);
    entry.child = child;
    for (const [stream, fromStderr] of [
      [child.stdout, false],
      [child.stderr, true],
    ] as const) {
      createInterface({ input: stream }).on("line", (line) => {
        if (show(line)) relay(name, p, line, fromStderr);
      });
    }
    say(name, p, `started (pid ${child.pid})`, { pid: child.pid });
    child.on("exit", (code, signal) => {
      if (stopping) return;
      if (code === EXIT_REFUSED) {
        // Its configuration or its data refused, which a restart cannot change: restarted, it was
        // refused again every 1 to 30 s for ever, its reason scrolled away under the others' lines.
        say(
          name,
          p,
          `${name} refused to start (exit ${code}: its configuration or its data, as it said above): ` +
            "not restarted; fix it and run again. Stopping everything",
          { exit: `code ${code}` },
          60,
        );
        refused = true;
        stopAll();
        return;
      }
      const why = signal ?? `code ${code}`;
      if (!RESTART) {
        say(name, p, `exited unexpectedly (${why}); the others keep running`, { exit: why }, 50);
        return;
      }
      // What it started and left behind (a postmaster whose `runuser` was killed) would hold the
      // port and the data directory the restart needs.
      killGroup(child);
      if (Date.now() - started > HEALTHY_MS) restarts = 0;
      restarts++;
      const delay = backoffMs(restarts, BACKOFF_MS, MAX_BACKOFF_MS);
      say(
        name,
        p,
        `exited unexpectedly (${why}); restarting in ${delay / 1000} s (restart ${restarts}; RESTART=no turns this off)`,
        { exit: why, restart: restarts, restartInMs: delay },
        50,
      );
      setTimeout(() => {
        if (!stopping) launch();
      }, delay).unref();
    });
  };
  launch();
}

/** The process listening on TCP `port`, as "name (pid N)", when the system can tell (ss). */
function holderOf(port: number): string {
  const out = spawnSync("ss", ["-ltnpH", `sport = :${port}`], { encoding: "utf8" }).stdout ?? "";
  const m = /users:\(\("([^"]+)",pid=(\d+)/.exec(out);
  if (!m) return "another process";
  // ss names a process by its main thread, which Node 24 calls "MainThread": its command says "node".
  let name = m[1];
  if (name === "MainThread") {
    try {
      name = basename(readFileSync(`/proc/${m[2]}/cmdline`, "utf8").split("\0")[0] || name);
    } catch {} // gone meanwhile: the thread's name will do
  }
  return `${name} (pid ${m[2]})`;
}

/** Whether `port` can be listened on (all interfaces, as the services and NATS need it). */
function free(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, () => probe.close(() => resolve(true)));
  });
}

/** Refuses to start when a port is taken, one line per port: which, by what, and the variable that moves it. */
async function checkPorts(
  ports: readonly { port: number; what: string; variable: string; offset?: number }[],
): Promise<void> {
  // Replicas listen 100 ports apart: past 65535 the probe below threw a RangeError stack trace.
  for (const p of ports) {
    if (p.port > 65535) {
      process.stderr.write(
        `${p.what} would listen on port ${p.port}, past 65535 (replicas take ${p.variable} + 100 each): set ${p.variable} lower\n`,
      );
      process.exit(2);
    }
  }
  // Two of its own processes on one port: both were free at this check, and the second to listen crashed
  // and was restarted for ever, told to set METRICS_PORT (a variable the runner sets, not its caller).
  // A replica's port is its variable's + 100 each: named so, not as the variable, which holds another port.
  const given = new Map<number, (typeof ports)[number]>();
  const by = (p: (typeof ports)[number]) => `${p.what} (${p.variable}${p.offset ? ` + ${p.offset}` : ""})`;
  for (const p of ports) {
    const first = given.get(p.port);
    if (first) {
      process.stderr.write(
        `port ${p.port} is given to ${by(first)} and to ${by(p)}: set one of them to another port\n`,
      );
      process.exit(2);
    }
    given.set(p.port, p);
  }
  const taken = [];
  for (const p of ports) if (!(await free(p.port))) taken.push(p);
  if (taken.length === 0) return;
  for (const t of taken) {
    // A replica's port is its variable's + 100 each: "set INVENTORY_PORT=<free port>" named a port that was free.
    const what = t.offset ? `${t.what}, ${t.variable} + ${t.offset}` : t.what;
    const fix = t.offset ? `${t.variable} to another port` : `${t.variable}=<free port>`;
    process.stderr.write(
      `port ${t.port} (${what}) is in use by ${holderOf(t.port)}: stop it (another make run?) or set ${fix}\n`,
    );
  }
  process.exit(1);
}

function requireNats(): void {
  if (!natsInstalled()) {
    process.stderr.write(`${NATS_MISSING}\n`);
    process.exit(1);
  }
}

const PG_DATA = join(DATA, "postgres");
const INFRA = new Set(["nats", "postgres"]);

/**
 * How long past its shutdown grace a service may take to stop before it is killed, and how long NATS and
 * PostgreSQL may take to stop after the services (RUN_STOP_MARGIN_MS, 10 s).
 */
const { RUN_STOP_MARGIN_MS: STOP_MARGIN_MS } = configOrExit(() =>
  parseEnv({ RUN_STOP_MARGIN_MS: int(10_000, { min: 100, max: 600_000 }) }, process.env),
);

/**
 * SHUTDOWN_GRACE_MS read as the services read it (platform/config.ts): Number() took only spaces, their
 * default 10 s, for 0, and killed a service still draining within its grace. A value they refuse
 * stopped them at start, so it never counts here.
 */
function graceMs(): number {
  try {
    return parseEnv({ SHUTDOWN_GRACE_MS: commonEnv.SHUTDOWN_GRACE_MS }, process.env).SHUTDOWN_GRACE_MS;
  } catch {
    return 10_000;
  }
}

function stopAll(): void {
  if (stopping) {
    for (const { child } of children) killGroup(child);
    process.exit(130);
  }
  stopping = true;
  blankLine();
  say("run", undefined, "stopping (Ctrl-C again to kill)...");
  // Services first (they drain calls and give their leases back), NATS and PostgreSQL last.
  const services = children.filter((c) => !INFRA.has(c.name));
  const infra = children.filter((c) => INFRA.has(c.name));
  const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
  const waitAll = (cs: ChildProcess[]) =>
    Promise.all(cs.filter(alive).map((c) => new Promise<void>((r) => c.once("exit", () => r()))));
  for (const { child } of services) child.kill("SIGTERM");
  // A service that has not stopped within its grace (SHUTDOWN_GRACE_MS, as it reads it) and a margin is
  // killed, and said so: with the data directory's disk full, five of them stayed in their stop for
  // good, and so did the runner, NATS with it, until a second Ctrl-C.
  const deadlineMs = graceMs() + STOP_MARGIN_MS;
  const deadline = setTimeout(() => {
    for (const { name, child } of services.filter((c) => alive(c.child))) {
      say(name, undefined, `${name} did not stop within ${deadlineMs / 1000} s: killed`, {}, 50);
      failed = true;
      killGroup(child);
    }
  }, deadlineMs);
  void waitAll(services.map((s) => s.child)).then(() => {
    clearTimeout(deadline);
    for (const { name, child } of infra) {
      if (!alive(child)) continue;
      if (name === "nats") child.kill("SIGTERM");
      else {
        try {
          stopCluster(PG_DATA);
        } catch {
          killGroup(child);
        }
      }
    }
    // NATS or PostgreSQL stuck in its own stop (its store on a full disk; frozen) held the runner too.
    const infraDeadline = setTimeout(() => {
      for (const { name, child } of infra.filter((c) => alive(c.child))) {
        say(name, undefined, `${name} did not stop within ${STOP_MARGIN_MS / 1000} s: killed`, {}, 50);
        failed = true;
        killGroup(child);
      }
    }, STOP_MARGIN_MS);
    return waitAll(infra.map((c) => c.child)).then(() => {
      clearTimeout(infraDeadline);
      say("run", undefined, "all stopped");
      exitOnceWritten(refused ? EXIT_REFUSED : failed ? 1 : lostOutput ? 141 : 0);
    });
  });
}

/**
 * Creates the event streams and the registry bucket as the bus's administrator — the services' own
 * users may not (platform/bus-access.ts) — once NATS answers; stops everything if it never does.
 */
async function provisionStreams(): Promise<void> {
  const timer = setTimeout(() => {
    failStart(`NATS did not let the streams be created within 30 s (port ${NATS_PORT})`);
  }, 30_000);
  try {
    await provisionBus(NATS_URL, EVENTS, silentLogger(), {
      auth: { user: BUS_ADMIN, pass: busPasswords[BUS_ADMIN] ?? "" },
    });
  } finally {
    clearTimeout(timer);
  }
}

/** Starts the local PostgreSQL (initialising it on first use), waits until it answers; the `shopmesh` database URL. */
async function startPostgres(): Promise<string> {
  try {
    postgresBinDir();
  } catch {
    process.stderr.write(`${POSTGRES_MISSING}\n`);
    process.exit(1);
  }
  try {
    if (initCluster(PG_DATA)) say("run", undefined, `initialised a PostgreSQL cluster in ${PG_DATA}`);
  } catch (err) {
    // initdb's own words (a data directory its user cannot reach, say), not a dump of the call: and
    // NATS, started already, stopped with the rest.
    const why = (err as { stderr?: Buffer }).stderr?.toString().trim() || (err as Error).message;
    failStart(`PostgreSQL could not be initialised in ${PG_DATA}: ${why}`);
    return "";
  }
  const [cmd, args] = serverCommand("postgres", serverArgs(PG_DATA, PG_PORT, PG_DATA, true));
  // PostgreSQL logs every checkpoint; show readiness, warnings and errors.
  start("postgres", 7, cmd, args, {}, (line) => /ready to accept|WARNING|ERROR|FATAL|PANIC/.test(line));
  const admin = `postgres://postgres@127.0.0.1:${PG_PORT}/postgres`;
  try {
    await waitForPostgres(admin);
  } catch (err) {
    failStart(`PostgreSQL did not come up on port ${PG_PORT}: ${(err as Error).message}`);
    return "";
  }
  return ensureDatabase(admin, "shopmesh");
}

/** Holds the data directory for this runner's life (scripts/data-dir.ts), or refuses in a line. */
function claimDataDir(): void {
  let held: ReturnType<typeof holdDataDir>;
  try {
    held = holdDataDir(DATA, { runner: true });
  } catch (err) {
    // DATA_DIR a file, or a directory this user may not write: a line, not a stack trace.
    process.stderr.write(`cannot use the data directory ${DATA}: ${(err as Error).message}\n`);
    process.exit(1);
  }
  if (typeof held !== "function") {
    process.stderr.write(`${held.heldBy} is using ${DATA}: stop it, or set DATA_DIR=<another directory>\n`);
    process.exit(1);
  }
}

requireNats();
claimDataDir();
await stopLeftovers(DATA, (line) => say("run", undefined, line));
const replicas = new Map(SERVICES.map((s) => [s.name, replicasOf(s.name)]));
await checkPorts([
  { port: NATS_PORT, what: "NATS", variable: "NATS_PORT" },
  { port: NATS_MONITOR_PORT, what: "NATS monitoring", variable: "NATS_MONITOR_PORT" },
  ...(DB === "postgres" ? [{ port: PG_PORT, what: "PostgreSQL", variable: "PG_PORT" }] : []),
  ...SERVICES.flatMap((s) =>
    Array.from({ length: replicas.get(s.name) ?? 1 }, (_, r) => [
      { port: s.port + 100 * r, what: s.name, variable: `${s.name.toUpperCase()}_PORT`, offset: 100 * r },
      {
        port: s.metrics + 100 * r,
        what: `${s.name} metrics`,
        variable: `${s.name.toUpperCase()}_METRICS_PORT`,
        offset: 100 * r,
      },
    ]).flat(),
  ),
]);
preparedJetStreamDir(DATA, DB);
// NATS prints a banner; show only its readiness, warnings and errors.
start(
  "nats",
  0,
  "nats-server",
  natsServerArgs(DATA, NATS_PORT, NATS_MONITOR_PORT, DB),
  {},
  // Its users' passwords are in a file only this user reads (scripts/nats.ts): not worth a warning each start.
  (line) => /\[(WRN|ERR|FTL)\]|Server is ready|Listening for client/.test(line) && !/Plaintext passwords/.test(line),
);
process.on("SIGINT", stopAll);
process.on("SIGTERM", stopAll);
// Its terminal closed, or a restarter (nodemon sends SIGUSR2): Node's default ended the runner alone, and
// every process it started, each in a process group of its own, ran on with nobody to stop it.
process.on("SIGHUP", stopAll);
process.on("SIGUSR2", stopAll);
// Node's default for SIGUSR1 opens an inspector on 127.0.0.1:9229, through which whatever reaches that port
// runs code in the runner, as the services no longer allow (platform/lifecycle.ts); --inspect still opens it.
process.on("SIGUSR1", () => say("run", undefined, "SIGUSR1 ignored: the inspector opens only with --inspect"));
const NATS_URL = `nats://127.0.0.1:${NATS_PORT}`;
const busPasswords = localBusPasswords(DATA);
const provisioned = provisionStreams();
// PostgreSQL: one database, a schema per service (DATABASE_SCHEMA defaults to shopmesh_<service>).
const database: Record<string, string> = DB === "postgres" ? { DATABASE_URL: await startPostgres() } : {};
await provisioned;
SERVICES.forEach((s, i) => {
  const main = s.main ?? join("services", s.name, "main.ts");
  const n = replicas.get(s.name) ?? 1;
  for (let r = 0; r < n; r++) {
    // Replicas share the service's database (SQLite: WAL and IMMEDIATE transactions, safe across processes
    // on one machine) and its durable consumers, and register themselves for registry:/// discovery.
    const [cmd, args] = nodeCommand(main);
    start(n > 1 ? `${s.name}-${r + 1}` : s.name, i + 1, cmd, args, {
      ...SYSTEM_ENV,
      [s.name === "gateway" ? "HTTP_PORT" : "GRPC_PORT"]: String(s.port + 100 * r),
      DB_PATH: join(DATA, `${s.name}.db`),
      ...database,
      // JSON from every process, made readable here: formatting is the runner's work, not the services'.
      LOG_FORMAT: "json",
      NATS_URL,
      // Each process its own NATS user, which may publish only its own events (platform/bus-access.ts).
      NATS_USER: s.name,
      NATS_PASSWORD: busPasswords[s.name] ?? "",
      METRICS_PORT: String(s.metrics + 100 * r),
      TRACE_FILE: join(DATA, "traces.jsonl"),
      ...UPSTREAMS,
      ...s.env,
    });
  }
});
process.on("exit", () => {
  for (const { child } of children) if (child.exitCode === null) killGroup(child);
});
