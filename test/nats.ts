/**
 * A real nats-server with JetStream for tests: an ephemeral port, a temp
 * data dir, stoppable and restartable on the same port and data (for outage
 * tests), torn down on dispose.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exited, freePort, outputReady } from "./fixtures.js";

/** A running (or stopped) test NATS server. */
export interface TestNats extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  /** Its data dir (JetStream's store). */
  readonly dir: string;
  /** Stops the server (SIGTERM, or SIGKILL), keeping its data. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and data dir. */
  start(): Promise<void>;
  /** Freezes the server (SIGSTOP): its connections stay open and nothing answers. */
  pause(): void;
  /** Lets a paused server go on (SIGCONT). */
  resume(): void;
}

/**
 * The nats-servers this process runs, and their data dirs: killed and removed when it ends without
 * disposing of them — else they outlive the run. A process ended by a signal (a worker's SIGTERM) runs
 * no "exit" listener: on one, they go first, then the process dies of the signal as it would have.
 * (SIGKILL leaves them: nothing runs.)
 */
const running = new Set<ChildProcess>();
const dirs = new Set<string>();
const endAll = () => {
  for (const c of running) c.kill("SIGKILL");
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
};
process.once("exit", endAll);
for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
  process.once(signal, () => {
    endAll();
    process.kill(process.pid, signal);
  });
}

/** Starts nats-server -js on a free port with a fresh data dir, and `config` (e.g. users) when given. */
export async function startNats(config?: string): Promise<TestNats> {
  const dir = mkdtempSync(join(tmpdir(), "shopmesh-nats-"));
  dirs.add(dir);
  const port = await freePort();
  const file = join(dir, "server.conf");
  if (config !== undefined) writeFileSync(file, config);
  let child: ChildProcess | undefined;
  const start = async () => {
    const args = [...(config === undefined ? [] : ["-c", file]), "-js", "-sd", dir, "-a", "127.0.0.1"];
    const c = spawn("nats-server", [...args, "-p", String(port)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    child = c;
    running.add(c);
    c.once("exit", () => running.delete(c));
    await outputReady(
      c,
      "Server is ready",
      "nats-server (install it with `make nats` or your package manager)",
      10_000,
    );
  };
  const stop = async (signal: NodeJS.Signals = "SIGTERM") => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const done = exited(child);
    child.kill(signal);
    await done;
  };
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    dir,
    stop,
    start,
    pause: () => {
      if (child) freeze(child);
    },
    resume: () => child?.kill("SIGCONT"),
    async [Symbol.asyncDispose]() {
      await stop("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
      dirs.delete(dir);
    },
  };
}

/**
 * Publishes one message with a header block written by hand, as a client other than nats.js may, and
 * resolves with the stream sequence JetStream stored it at (its acknowledgement, to a reply subject).
 */
export async function rawPublish(port: number, subject: string, header: string, payload: Uint8Array): Promise<number> {
  const s = net.connect(port, "127.0.0.1");
  let got = "";
  try {
    return await new Promise<number>((resolve, reject) => {
      s.on("error", reject);
      s.on("data", (d) => {
        got += d.toString("latin1");
        if (got.includes("INFO") && !got.includes("sent")) {
          got += "sent";
          const hl = Buffer.byteLength(header);
          s.write(
            `CONNECT {"verbose":false,"headers":true,"protocol":1}\r\nSUB raw.ack 1\r\n` +
              `HPUB ${subject} raw.ack ${hl} ${hl + payload.byteLength}\r\n`,
          );
          s.write(Buffer.concat([Buffer.from(header), payload, Buffer.from("\r\n")]));
        }
        const ack = /"seq":(\d+)/.exec(got);
        if (ack) resolve(Number(ack[1]));
        if (got.includes("-ERR") || got.includes('"error"')) reject(new Error(got));
      });
    });
  } finally {
    s.destroy();
  }
}

/**
 * Sends `c` SIGSTOP and returns once every thread of it has stopped (at most 2 s). A thread takes the
 * signal when it next runs: on a loaded machine a request sent right after kill() was, once in a while,
 * still answered (a scrape that was to find NATS frozen read a number).
 */
function freeze(c: ChildProcess): void {
  c.kill("SIGSTOP");
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (const deadline = Date.now() + 2_000; Date.now() < deadline && !stopped(c.pid); ) Atomics.wait(pause, 0, 0, 1);
}

/** Whether every thread of process `pid` is stopped (or it is gone). */
function stopped(pid: number | undefined): boolean {
  try {
    return readdirSync(`/proc/${pid}/task`).every((t) =>
      /\) [tT] /.test(readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8")),
    );
  } catch {
    return true;
  }
}
