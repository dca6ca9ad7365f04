/**
 * make run's PostgreSQL for a command that needs it while `make run DB=postgres` is stopped (`make
 * history-rebuild`, `make restore`): make run starts it as its child (data in <DATA_DIR>/postgres) and
 * stops it with everything else, so with make run stopped nothing answers. Then it is started on that
 * data for the command and stopped after; a PostgreSQL answering on the port is used as it is and left
 * running, unless make run's cluster is here and that server serves another data directory (refused).
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { recordChild } from "./data-dir.js";
import { CannotStart, endOf, killGroup } from "./local-nats.js";
import { answers } from "./nats.js";
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

/**
 * Starts make run's PostgreSQL (cluster in `dataDir`/postgres, on 127.0.0.1:`port`) unless something
 * answers there; the URL of its `shopmesh` database (made when missing) and, when it was started here,
 * how to stop it. `what` ends the line saying so (", it stops after the rebuild"). Throws
 * {@link CannotStart} when it cannot (no server binaries, not up within 30 s).
 */
export async function ensurePostgres(
  dataDir: string,
  port: number,
  say: (line: string) => void,
  what: string,
): Promise<{ url: string; stop?: () => Promise<void> }> {
  const admin = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const data = join(dataDir, "postgres");
  if (await answers("127.0.0.1", port)) {
    let served: string | undefined;
    try {
      served = await dataDirectoryOf(admin);
    } catch (err) {
      // Something else on the port, or a server that refuses make run's user: it was a stack trace.
      throw new CannotStart(
        `what answers on 127.0.0.1:${port} (PG_PORT) is no PostgreSQL of make run's: ${(err as Error).message}`,
      );
    }
    // make run's own cluster is here, and that server serves another (another checkout's make run, one
    // started by hand): the command went on in that server's database, and a restore replaced its schema.
    if (served !== undefined && existsSync(join(data, "PG_VERSION")) && !sameDir(served, data)) {
      throw new CannotStart(
        `what answers on 127.0.0.1:${port} (PG_PORT) is another PostgreSQL (data ${served}), not make run's (${data}): ` +
          "stop it, or set PG_PORT to make run's",
      );
    }
    return { url: await ensureDatabase(admin, "shopmesh") };
  }
  try {
    postgresBinDir();
  } catch {
    throw new CannotStart(POSTGRES_MISSING);
  }
  initCluster(data);
  const [cmd, args] = serverCommand("postgres", serverArgs(data, port, data, true));
  // A process group of its own, as the NATS beside it (local-nats.ts): a Ctrl-C at the terminal stopped it
  // under the command's step. The command stops it; one killed leaves it to the next's stopLeftovers.
  const server = spawn(cmd, args, { stdio: "ignore", detached: true });
  try {
    await waitForPostgres(admin);
    // The postmaster, not its `runuser` (as root), which passes no SIGINT on to it.
    recordChild(dataDir, Number.parseInt(readFileSync(join(data, "postmaster.pid"), "utf8"), 10), "postgres");
  } catch (err) {
    // The whole group: as root `server` is `runuser`, and the postmaster under it ran on, holding PG_PORT.
    killGroup(server);
    throw new CannotStart(`PostgreSQL did not come up on port ${port}: ${(err as Error).message}`);
  }
  say(`started PostgreSQL on port ${port} (${data}); it stops after ${what}`);
  return {
    url: await ensureDatabase(admin, "shopmesh"),
    stop: async () => {
      if (server.exitCode !== null || server.signalCode !== null) return; // it died: nothing to stop
      const done = endOf(server);
      stopCluster(data);
      await done;
    },
  };
}

/** The data directory of the server of `adminUrl`; undefined when its user may not read it (no superuser). */
async function dataDirectoryOf(adminUrl: string): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: adminUrl });
  await client.connect();
  try {
    return (await client.query<{ dir: string }>("SELECT current_setting('data_directory') AS dir")).rows[0]?.dir;
  } catch {
    return undefined;
  } finally {
    await client.end();
  }
}

const sameDir = (a: string, b: string) => {
  const real = (p: string) => {
    try {
      return realpathSync(p);
    } catch {
      return p;
    }
  };
  return real(a) === real(b);
};
