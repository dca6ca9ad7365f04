/**
 * A real nats-server with JetStream for tests: an ephemeral port, a temp
 * data dir, stoppable and restartable on the same port and data (for outage
 * tests), torn down on dispose.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exited } from "./fixtures.js";

/** A running (or stopped) test NATS server. */
export interface TestNats extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  /** Stops the server (SIGTERM, or SIGKILL), keeping its data. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and data dir. */
  start(): Promise<void>;
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

/** Starts nats-server -js on a free port with a fresh data dir. */
export async function startNats(): Promise<TestNats> {
  const dir = mkdtempSync(join(tmpdir(), "shopmesh-nats-"));
  const port = await freePort();
  let child: ChildProcess | undefined;
  const start = async () => {
    const c = spawn("nats-server", ["-js", "-sd", dir, "-a", "127.0.0.1", "-p", String(port)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    child = c;
    let out = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server did not start:\n${out}`)), 10_000);
      const onData = (d: Buffer) => {
        out += d.toString();
        if (out.includes("Server is ready")) {
          clearTimeout(timer);
          resolve();
        }
      };
      c.stdout?.on("data", onData);
      c.stderr?.on("data", onData);
      c.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`nats-server exited ${code}:\n${out}`));
      });
      c.once("error", (err) => {
        clearTimeout(timer);
        reject(
          new Error(`cannot start nats-server (${err.message}): install it with \`make nats\` or your package manager`),
        );
      });
    });
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
    stop,
    start,
    async [Symbol.asyncDispose]() {
      await stop("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
