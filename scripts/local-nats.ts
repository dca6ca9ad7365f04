/**
 * make run's NATS for a command that needs the streams while `make run` is stopped (`make
 * history-rebuild`, `make restore`): when nothing answers at the command's NATS_URL, it is started on
 * make run's store for the command and stopped after. Whatever answers (make run's own) is used as it
 * is and left running.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { constants } from "node:os";
import { createInterface } from "node:readline";
import { recordChild } from "./data-dir.js";
import { answers, jetStreamDir, NATS_MISSING, natsInstalled, natsServerArgs, preparedJetStreamDir } from "./nats.js";

const LOCAL_HOSTS = new Set(["127.0.0.1", "localhost", "[::1]"]);

/** Something the command needs could not be started: its message is the command's last line. */
export class CannotStart extends Error {}

/**
 * Catches the signals that end a command (Ctrl-C, a kill, its terminal closed), so that it stops what it
 * started before it ends, also with its stderr gone; each is passed to `onSignal`. The command checks `signalled()` between its
 * steps. Ended at once, a command left its NATS running on make run's store: nats-server reads
 * SIGHUP as "reload the configuration", so a terminal closed over both did not stop it.
 */
export function catchSignals(onSignal: (signal: NodeJS.Signals) => void = () => {}): () => NodeJS.Signals | undefined {
  // A terminal closed takes stderr with it: the command's last line ("ended by SIGHUP") met EIO (EPIPE in
  // a pipe), an uncaught error that ended it before it stopped its NATS. What cannot be said is not.
  process.stderr.on("error", () => {});
  let first: NodeJS.Signals | undefined;
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      first ??= signal;
      onSignal(signal);
    });
  }
  return () => first;
}

/** A signal's exit code as a shell reports it, for the signals of a person at a terminal (Ctrl-C 130, the terminal closed 129); 1 for any other. */
export const exitCodeOf = (signal: NodeJS.Signals): number =>
  signal === "SIGINT" || signal === "SIGHUP" ? 128 + constants.signals[signal] : 1;

/**
 * SIGKILLs `child` with its process group (a child started `detached` leads one): what it started goes
 * too. As root, PostgreSQL is `runuser` over the postmaster, and killing `runuser` alone left the
 * postmaster running, holding PG_PORT: the next make run was refused (port in use).
 */
export function killGroup(child: ChildProcess): void {
  try {
    process.kill(-(child.pid as number), "SIGKILL");
  } catch {
    child.kill("SIGKILL");
  }
}

/** Resolves when `child` exits: its code, or the signal that ended it. */
export const endOf = (child: ChildProcess) =>
  new Promise<number | NodeJS.Signals>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode ?? child.signalCode ?? 1);
    else child.once("exit", (code, signal) => resolve(code ?? signal ?? 1));
  });

/**
 * Starts make run's NATS on its store in `dataDir` (for `db`) unless something answers at `natsUrl`;
 * how to stop what was started, or undefined when nothing was. `what` ends the line saying so (", it
 * stops after the rebuild"). Throws {@link CannotStart} when it cannot (not this machine's, not installed,
 * not ready within 15 s).
 */
export async function ensureLocalNats(
  dataDir: string,
  db: string,
  natsUrl: string,
  say: (line: string) => void,
  what: string,
): Promise<(() => Promise<void>) | undefined> {
  const first = natsUrl.split(",")[0] ?? natsUrl;
  if (!URL.canParse(first))
    throw new CannotStart(`NATS_URL must be a URL such as nats://127.0.0.1:4222, got ${JSON.stringify(natsUrl)}`);
  const url = new URL(first);
  const port = Number(url.port || 4222);
  if (await answers(url.hostname, port)) return undefined;
  if (natsUrl.includes(",") || !LOCAL_HOSTS.has(url.hostname)) {
    throw new CannotStart(`nothing answers at NATS_URL=${natsUrl}, and it is not this machine's NATS to start`);
  }
  if (!natsInstalled()) throw new CannotStart(NATS_MISSING);
  preparedJetStreamDir(dataDir, db);
  const nats = spawn("nats-server", natsServerArgs(dataDir, port, undefined, db), {
    stdio: ["ignore", "pipe", "pipe"],
    // A process group of its own, as make run's processes: a Ctrl-C at the terminal reached it with the
    // command, and it was gone before the command's next step, which then waited for it without end
    // (its NATS connection waits for a first server), every later Ctrl-C caught and kept for that step.
    // The command stops it; one killed leaves it to the next's stopLeftovers (run.children).
    detached: true,
  });
  recordChild(dataDir, nats.pid, "nats");
  const lines: string[] = [];
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      killGroup(nats); // not ready: stopped, not left to the next command's stopLeftovers
      reject(new CannotStart(`NATS did not start:\n${lines.join("\n")}`));
    }, 15_000);
    for (const stream of [nats.stdout, nats.stderr]) {
      createInterface({ input: stream }).on("line", (line) => {
        lines.push(line);
        if (line.includes("Server is ready")) {
          clearTimeout(timer);
          resolve();
        }
      });
    }
    nats.once("exit", (code) => {
      clearTimeout(timer);
      reject(new CannotStart(`NATS exited ${code}:\n${lines.join("\n")}`));
    });
  });
  say(`started NATS on port ${port} with make run's streams (${jetStreamDir(dataDir, db)}); it stops after ${what}`);
  return async () => {
    const done = endOf(nats);
    nats.kill("SIGTERM");
    await done;
  };
}
