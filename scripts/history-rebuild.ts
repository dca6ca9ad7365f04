/**
 * `make history-rebuild`: rebuilds the history read model from the event
 * streams (services/history/rebuild.ts) with `make run` stopped, as the
 * docs say to run it. The streams are in make run's NATS store
 * (.data/nats, or .data/nats/postgres with DB=postgres; DATA_DIR moves
 * .data): when nothing answers at NATS_URL (default
 * nats://127.0.0.1:<NATS_PORT, 4222>), this starts that NATS on that
 * store for the rebuild and stops it after. With DB=postgres the view
 * is in make run's PostgreSQL (PG_PORT, 55432; data in .data/postgres),
 * started and stopped the same way when it is down. Whatever already
 * answers (make run's own) is used as it is and left running.
 *
 * The rebuild writes the history database of make run: .data/history.db,
 * or schema shopmesh_history of database shopmesh with DB=postgres. Exits
 * with the rebuild's code (0 done, 1 failed or refused, 78 bad configuration);
 * 1 when what it needs cannot be started, or a signal ended the rebuild
 * (130 for SIGINT, 129 for SIGHUP: its terminal closed). A signal stops what it started first.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { BUS_ADMIN } from "../platform/bus-access.js";
import { holdDataDir, stopLeftovers } from "./data-dir.js";
import { dbOf, nodeCommand, portOf, ROOT } from "./layout.js";
import { CannotStart, catchSignals, endOf, ensureLocalNats, exitCodeOf } from "./local-nats.js";
import { ensurePostgres } from "./local-postgres.js";
import { localBusEnv } from "./nats.js";
import { sayWhileRead } from "./printable.js";

const DATA = process.env.DATA_DIR || join(ROOT, ".data");
// Refused as make run refuses them: a DB=postgress rebuilt the SQLite view, and a PG_PORT or NATS_PORT
// that is no port ended in a stack trace.
const DB = dbOf();
const PG_PORT = portOf("PG_PORT", 55432);
const NATS_URL = process.env.NATS_URL || `nats://127.0.0.1:${portOf("NATS_PORT", 4222)}`;

const say = sayWhileRead();

async function main(): Promise<number> {
  const stops: (() => Promise<void>)[] = [];
  // A signal is passed on to the rebuild, and ends this command once what it started is stopped.
  let rebuild: ChildProcess | undefined;
  const signalled = catchSignals((signal) => rebuild?.kill(signal));
  /** A signal that came before the rebuild began, said: its exit code. */
  const endedEarly = (): number | undefined => {
    const signal = signalled();
    if (signal) process.stderr.write(`history rebuild: ended by ${signal} before it began; the view is as it was\n`);
    return signal && exitCodeOf(signal);
  };
  try {
    // Before anything is started: a NATS of its own on the store of a make run on other ports was a
    // second server on live JetStream files (the rebuild then refused, the history service being up).
    const held = holdDataDir(DATA);
    if (typeof held !== "function") throw new CannotStart(`${held.heldBy} is using ${DATA}: stop it first`);
    stops.push(async () => held());
    await stopLeftovers(DATA, say);
    const nats = await ensureLocalNats(DATA, DB, NATS_URL, say, "the rebuild");
    if (nats) stops.push(nats);
    const early = endedEarly();
    if (early) return early;
    const database: Record<string, string> = { DB_PATH: join(DATA, "history.db") };
    if (DB === "postgres") {
      const pg = await ensurePostgres(DATA, PG_PORT, say, "the rebuild");
      if (pg.stop) stops.push(pg.stop);
      database.DATABASE_URL = pg.url;
      const late = endedEarly();
      if (late) return late;
    }
    // The rebuild from the same tree as this script: from the build under make, the source under tsx.
    const built = import.meta.filename.endsWith(".js");
    const [node, args] = built
      ? nodeCommand("services/history/rebuild.ts")
      : [process.execPath, ["--import", "tsx", join(ROOT, "services/history/rebuild.ts")]];
    rebuild = spawn(node, args, {
      cwd: ROOT,
      // As make run's bus administrator, like `make events` (unless NATS_USER says otherwise). Its log
      // lines (an event skipped) readable, as make run's are, among this command's own (LOG_FORMAT=json: JSON).
      env: { ...localBusEnv(DATA, BUS_ADMIN), LOG_FORMAT: "pretty", ...process.env, ...database, NATS_URL },
      stdio: "inherit",
    });
    const end = await endOf(rebuild);
    if (typeof end === "number") return end;
    process.stderr.write(
      `history rebuild: ended by ${end} part-way; the view is the old one, or the new one whole if it ended after its swap (never one part-built)\n`,
    );
    return exitCodeOf(end);
  } catch (err) {
    if (!(err instanceof CannotStart)) throw err;
    process.stderr.write(`history rebuild: ${err.message}\n`);
    return 1;
  } finally {
    // Each stopped whatever the others do: a PostgreSQL that died must not leave NATS running.
    for (const stop of stops.reverse()) {
      await stop().catch((err: unknown) =>
        process.stderr.write(`history rebuild: stopping: ${(err as Error).message}\n`),
      );
    }
  }
}

process.exitCode = await main();
