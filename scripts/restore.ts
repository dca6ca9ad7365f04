/**
 * `make restore SERVICE=history|notification FROM=<backup dir>`: puts one event consumer's store back
 * to its copy in a backup (`make backup`), with `make run` stopped, so that it catches up on every
 * event published since: its SQLite file (scripts/restore-sqlite.ts), or with DB=postgres its schema
 * of make run's PostgreSQL, from the backup's pg_dump (scripts/restore-postgres.ts).
 *
 * A store put back alone does not: its durable consumers are in NATS, past the events the copy lacks
 * (test/backup.test.ts shows the view then missing them for good). So this deletes the service's
 * durables (`<service>-<stream>`); the service makes them again at its start, from each stream's first
 * event, and its inbox — restored with the store — skips those the copy had applied and applies the
 * rest once. Events the streams dropped since the backup (7 days, 200 MB a stream) are gone: said.
 *
 * Only history and notification, the consumers that call no one: the saga's services' stores hold
 * money, stock and idempotency keys other services act on (docs/operations.md says what a restore of
 * one of them loses). Exits 0 done; 1 refused, before anything changed (the data directory held or
 * missing, the store open, a FROM that is no finished backup or whose copy the service cannot run on,
 * PostgreSQL or NATS refusing), or failed (saying what is left); 2 for bad arguments.
 * test/hostile-backup.test.ts and test/restore-postgres.test.ts try each.
 */
import { existsSync } from "node:fs";
import { join, relative } from "node:path";
import { EVENTS } from "../contracts/events.js";
import { type Bus, busAuthOf, connectBus } from "../platform/bus.js";
import { BUS_ADMIN } from "../platform/bus-access.js";
import { silentLogger } from "../platform/log.js";
import { RebuildRefused } from "../services/history/rebuild-aside.js";
import { MIGRATIONS as HISTORY } from "../services/history/store.js";
import { MIGRATIONS as NOTIFICATION } from "../services/notification/store.js";
import { holdDataDir, stopLeftovers } from "./data-dir.js";
import { dbOf, portOf, ROOT } from "./layout.js";
import { CannotStart, catchSignals, ensureLocalNats, exitCodeOf } from "./local-nats.js";
import { localBusEnv } from "./nats.js";
import { sayWhileRead } from "./printable.js";
import { postgresTarget } from "./restore-postgres.js";
import { sqliteTarget } from "./restore-sqlite.js";
import type { RestoreTarget } from "./restore-target.js";

const DATA = process.env.DATA_DIR || join(ROOT, ".data");
const NATS_URL = process.env.NATS_URL || `nats://127.0.0.1:${portOf("NATS_PORT", 4222)}`;
/** The services restored by this command, and the migrations that make their stores (SQLite's dialect). */
const SCHEMAS: Readonly<Record<string, readonly string[]>> = {
  history: HISTORY.sqlite,
  notification: NOTIFICATION.sqlite,
};
const CONSUMERS_ONLY = Object.keys(SCHEMAS);
const say = sayWhileRead();
const shown = (path: string) => (path.startsWith(ROOT) ? relative(ROOT, path) : path);

/**
 * make run's NATS as its administrator (its users are in DATA_DIR; NATS_USER and NATS_PASSWORD set
 * override them). Refused, it was an Authorization Violation's stack trace.
 */
async function adminBus(): Promise<Bus> {
  const { NATS_USER = "", NATS_PASSWORD = "" } = localBusEnv(DATA, BUS_ADMIN);
  try {
    return await connectBus(NATS_URL, "restore", silentLogger(), {
      ...busAuthOf({
        NATS_USER: process.env.NATS_USER || NATS_USER,
        NATS_PASSWORD: process.env.NATS_PASSWORD || NATS_PASSWORD,
      }),
    });
  } catch (err) {
    throw new CannotStart(
      `cannot reach NATS at ${NATS_URL} as its administrator: ${(err as Error).message}; nothing changed ` +
        "(is it make run's? NATS_USER and NATS_PASSWORD, when set, are used instead of its users)",
    );
  }
}

/** Deletes `service`'s durable consumers on `bus`, saying from where each stream will be replayed. */
async function rewind(bus: Bus, service: string, backupAt: Date): Promise<void> {
  let deleted = 0;
  for (const { name: stream } of EVENTS.streams) {
    const info = await bus.jsm.streams.info(stream).catch(() => undefined);
    if (!info) continue;
    for await (const c of bus.jsm.consumers.list(stream)) {
      if (!c.name.startsWith(`${service}-`)) continue;
      await bus.jsm.consumers.delete(stream, c.name);
      deleted++;
      const { first_seq: first, last_seq: last, first_ts: firstTs, last_ts: lastTs, messages } = info.state;
      say(`  deleted durable ${c.name}: made again at ${service}'s start, it replays ${stream} ${first}..${last}`);
      // Events dropped (its age, its size: the first kept past 1) up to the first one kept or, none kept,
      // the last one: lost when younger than the backup. A stream begun after the backup lost none.
      const keptFrom = messages > 0 ? firstTs : lastTs;
      if (first > 1 && new Date(keptFrom) > backupAt) {
        say(
          `  WARNING: ${stream} holds no events before ${keptFrom}; those published between the backup ` +
            `(${backupAt.toISOString()}) and then are gone, and ${service} will never apply them`,
        );
      }
    }
  }
  // Not an error (a service never started), but a NATS other than make run's looks the same.
  if (deleted === 0) say(`  no durable of ${service} in NATS at ${NATS_URL}: it replays nothing (is that make run's?)`);
}

/** The store of `service` and its copy in backup `from`, the copy checked (throws CannotStart, nothing changed). */
function targetOf(service: string, from: string): RestoreTarget {
  const migrations = SCHEMAS[service] ?? [];
  return dbOf() === "postgres"
    ? postgresTarget(DATA, portOf("PG_PORT", 55432), service, migrations, from, shown, say)
    : sqliteTarget(DATA, service, migrations, from, shown);
}

async function main(): Promise<number> {
  const service = process.env.SERVICE ?? "";
  const from = process.env.FROM ?? "";
  if (!CONSUMERS_ONLY.includes(service)) {
    process.stderr.write(
      `restore: SERVICE must be ${CONSUMERS_ONLY.join(" or ")}, got ${JSON.stringify(service)}` +
        (service ? ": order, inventory and payment are restored by hand (docs/operations.md)\n" : "\n"),
    );
    return 2;
  }
  if (!from) {
    process.stderr.write("restore: FROM must name a backup directory (make backup prints it)\n");
    return 2;
  }
  const stops: (() => Promise<void> | void)[] = [];
  let rewinding = false;
  // A signal ends it between its steps, once what it started is stopped: ended at once (its terminal
  // closed), the NATS it started ran on, on make run's store.
  const signalled = catchSignals();
  const interrupted = () => {
    const signal = signalled();
    if (signal) throw new Interrupted(signal);
  };
  try {
    const target = targetOf(service, from);
    // Made by holding it below: a DATA_DIR misspelt took the copy, and a NATS store of its own, exit 0.
    if (!existsSync(DATA)) throw new CannotStart(`DATA_DIR=${DATA} does not exist: is it right? (make run makes it)`);
    const held = holdDataDir(DATA);
    if (typeof held !== "function") throw new CannotStart(`${held.heldBy} is using ${DATA}: stop it first`);
    stops.push(held);
    await stopLeftovers(DATA, say);
    await target.claim(stops);
    say(`restoring ${service} from ${target.copy} (taken ${target.at.toISOString()})`);
    const nats = await ensureLocalNats(DATA, dbOf(), NATS_URL, say, "the restore");
    if (nats) stops.push(nats);
    const bus = await adminBus();
    stops.push(() => bus.close());
    interrupted();
    // The durables first: if the swap then fails, the old store replays what it has already applied.
    rewinding = true;
    await rewind(bus, service, target.at);
    interrupted();
    await target.put();
    say(`  ${target.live} is the backup's copy now; start ${service} (${target.start}) and it catches up`);
    return 0;
  } catch (err) {
    if (err instanceof Interrupted && !rewinding) {
      process.stderr.write(`restore: ended by ${err.signal}; nothing changed\n`);
      return exitCodeOf(err.signal);
    }
    if (err instanceof CannotStart || err instanceof RebuildRefused) {
      process.stderr.write(`restore: ${err.message}\n`);
      return 1;
    }
    if (!rewinding) throw err;
    if (err instanceof Interrupted) {
      process.stderr.write(
        `restore: ended by ${err.signal} part-way; ${service}'s store is still the old one, whole, and its durables ` +
          `are deleted: run it again, or start ${service} as it is (it replays each stream)\n`,
      );
      return exitCodeOf(err.signal);
    }
    // Past this point an operator must know what is left (docs/operations.md: killed part-way).
    process.stderr.write(
      `restore failed: ${(err as Error).message}; ${service}'s store is still the old one, whole, and its ` +
        `durables may be deleted: run it again once that is fixed, or start ${service} as it is (it replays each stream)\n`,
    );
    return 1;
  } finally {
    // Each undone whatever the others do: a PostgreSQL that would not stop must not leave NATS running.
    for (const stop of stops.reverse()) {
      await Promise.resolve()
        .then(stop)
        .catch((err: unknown) => process.stderr.write(`restore: stopping: ${(err as Error).message}\n`));
    }
  }
}

/** A signal came: the restore ends before its next step. */
class Interrupted extends Error {
  constructor(readonly signal: NodeJS.Signals) {
    super(`ended by ${signal}`);
  }
}

process.exitCode = await main();
