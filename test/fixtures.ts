/**
 * Test fixtures over real things: temp directories, services on ephemeral
 * ports, child processes, and the `buf curl` client. Each is disposable:
 * `await using x = await ...` tears it down even when the test fails.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { nodeCommand } from "../scripts/layout.js";

/** Repository root. */
export const ROOT = resolve(import.meta.dirname, "..");

/**
 * A temporary directory removed on dispose, named after the test file that made it (shopmesh-saga-XXXXXX)
 * so that one left behind says where it came from.
 */
export function tempDir(prefix = "shopmesh-"): { path: string } & Disposable {
  const path = mkdtempSync(join(tmpdir(), `${prefix}${madeBy()}`));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

/** The test file on the stack ("saga-" for services/order/saga.test.ts), or nothing. */
function madeBy(): string {
  const file = new Error().stack?.match(/([\w.-]+)\.test\.ts/)?.[1];
  return file ? `${file}-` : "";
}

/**
 * What calls past a rate limit's burst, made one after another since `since`, should have answered:
 * 429 each, but for as many as the limit refilled meanwhile (one token a second), which may answer
 * `passed` — a machine paused past a second lets one more through, with no fault in the limiter.
 */
export function refusedBut(got: readonly number[], passed: number, since: number): number[] {
  let refilled = Math.floor((Date.now() - since) / 1000);
  return got.map((status) => (status === passed && refilled-- > 0 ? passed : 429));
}

/** Every port {@link freePort} has handed out in this process. */
const handedOut = new Set<number>();

/** Ports a slot of {@link freePort} hands out, from {@link SLOTS_FROM} up: one slot per test worker. */
const SLOT_SIZE = 2_000;
const SLOTS_FROM = 20_000;

/**
 * A TCP port free on 127.0.0.1 right now, and never one this process was given before: the kernel may
 * hand a port just closed out again, and two of one system's ports picked in a row were once the same
 * (CI: make run's NATS and gateway on one port, the gateway refused "port in use").
 *
 * A port is picked to be bound seconds later, by a process started meanwhile (make run's services,
 * nats-server, PostgreSQL), so nothing else may bind it in between. It comes from below the kernel's
 * ephemeral range (where every `listen(0)` and outgoing connection takes its port), from this test
 * worker's own slot (VITEST_POOL_ID: at most one file runs per worker; 0 for vitest's own process):
 * no other suite, running beside this one, picks or binds there. Before, ports came from the ephemeral
 * range, and suites picking ports had to run alone (another suite's server once took one in between).
 */
export async function freePort(): Promise<number> {
  const [from, to] = workerSlot();
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = from < to ? from + Math.floor(Math.random() * (to - from)) : await anyFreePort();
    if (port > 0 && !handedOut.has(port) && (await bindable(port))) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("no free port this process was not given before, in 100 tries");
}

/** This worker's [from, to) ports; empty when the ephemeral range leaves no room for its slot. */
function workerSlot(): [number, number] {
  const worker = Number(process.env.VITEST_POOL_ID ?? 0);
  const from = SLOTS_FROM + worker * SLOT_SIZE;
  let ephemeralFrom = 32_768;
  try {
    ephemeralFrom = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").split(/\s+/)[0]);
  } catch {} // not Linux: its usual range
  return Number.isInteger(worker) && from + SLOT_SIZE <= ephemeralFrom ? [from, from + SLOT_SIZE] : [0, 0];
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

function anyFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => resolve(typeof addr === "object" && addr ? addr.port : 0));
    });
  });
}

/**
 * Runs `cmd` to its end without blocking this process (a system under test may live here): its exit
 * code (or the signal that ended it) and everything it wrote, stdout and stderr interleaved as they
 * came. Resolves on 'close', after the last output is read ('exit' can come first). `onStart` sees
 * the child (to kill its process group on a failed test, say).
 */
export function runToEnd(
  cmd: string,
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; detached?: boolean; onStart?: (child: ChildProcess) => void } = {},
): Promise<{ code: number | string; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: ROOT,
      env: options.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: options.detached,
    });
    options.onStart?.(child);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.once("error", reject);
    child.once("close", (code, signal) => resolve({ code: code ?? signal ?? -1, out }));
  });
}

/**
 * Resolves once `child` has written `ready` (stdout or stderr); rejects with
 * its output if it exits first, cannot start, or takes longer than `timeoutMs`.
 */
export function outputReady(child: ChildProcess, ready: string, what: string, timeoutMs: number): Promise<void> {
  let out = "";
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not start:\n${out}`)), timeoutMs);
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.includes(ready)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited ${code}:\n${out}`));
    });
    child.once("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${what}: ${err.message}`));
    });
  });
}

/** A service started as its own Node process (`services/<name>/main.ts`, from its build in dist/). */
export interface ServiceProcess extends AsyncDisposable {
  readonly child: ChildProcess;
  /** Port from the "gRPC server listening" log line. */
  readonly port: number;
  readonly address: string;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** Resolves with the first JSON log line whose `msg` equals `msg` (waiting up to `timeoutMs`). */
  logLine(msg: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Sends `signal` and resolves with the exit code (or the signal name). */
  kill(signal?: NodeJS.Signals): Promise<number | string>;
}

/**
 * Resolves when the child has exited and its output has been read to the end: its code, or the
 * signal that ended it. ('exit' can come before the last chunk of stdout; 'close' follows it, unless
 * a process the child started still holds the pipes, so that wait is capped at 2 s.)
 */
export function exited(child: ChildProcess): Promise<number | string> {
  const outputRead = (result: number | string) =>
    new Promise<number | string>((res) => {
      if ([child.stdout, child.stderr].every((s) => !s || s.closed)) return res(result);
      const cap = setTimeout(() => res(result), 2_000);
      child.once("close", () => {
        clearTimeout(cap);
        res(result);
      });
    });
  if (child.exitCode !== null) return outputRead(child.exitCode);
  if (child.signalCode !== null) return outputRead(child.signalCode);
  return new Promise((res) => child.once("exit", (code, signal) => res(outputRead(code ?? signal ?? -1))));
}

/** node's arguments that run `source` (e.g. `scripts/events.ts`) from its build in dist/, as make does. */
export const built = (source: string, nodeArgs: readonly string[] = []): string[] => nodeCommand(source, nodeArgs)[1];

/**
 * Spawns `services/<name>/main.ts`, from its build in dist/ as make run does, with `env` (GRPC_PORT
 * defaults to 0) and waits until it listens. Rejects with its output if it exits first or takes
 * longer than `timeoutMs`. `nodeArgs` go to node itself (e.g. `--cpu-prof`).
 */
export function spawnService(
  name: string,
  env: Record<string, string>,
  timeoutMs = 20_000,
  nodeArgs: readonly string[] = [],
): Promise<ServiceProcess> {
  return spawnMain(
    name,
    join("services", name, "main.ts"),
    { GRPC_PORT: "0", ...env },
    "gRPC server listening",
    timeoutMs,
    nodeArgs,
  );
}

/** Spawns the gateway (`gateway/main.ts`) with `env` (HTTP_PORT defaults to 0) and waits until it listens; `nodeArgs` go to node. */
export function spawnGateway(
  env: Record<string, string>,
  timeoutMs = 20_000,
  nodeArgs: readonly string[] = [],
): Promise<ServiceProcess> {
  return spawnMain(
    "gateway",
    join("gateway", "main.ts"),
    { HTTP_PORT: "0", ...env },
    "gateway listening",
    timeoutMs,
    nodeArgs,
  );
}

/**
 * The Node the spawned services and gateways run on, when not this one: the node24 project's
 * (vitest.config.ts, `make node24`), the image's Node, while the suites themselves run on this one.
 */
function testNode(): string | undefined {
  const node = process.env.SHOPMESH_TEST_NODE;
  if (node && !existsSync(node)) throw new Error(`${node} is missing: run \`make node24\` (make test does)`);
  return node || undefined;
}

/** Children still running: killed if this test process exits first (a timed-out test never disposes them). */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of running) c.kill("SIGKILL");
});

async function spawnMain(
  name: string,
  main: string,
  env: Record<string, string>,
  ready: string,
  timeoutMs: number,
  nodeArgs: readonly string[] = [],
): Promise<ServiceProcess> {
  // From the build, as make run starts it (nodeCommand): under tsx each start took ~2.5 s more CPU,
  // and the suites start a few hundred. vitest.config.ts builds dist/ first when a source is newer.
  const [node, args] = nodeCommand(main, nodeArgs);
  const child = spawn(testNode() ?? node, args, {
    cwd: ROOT,
    // No bus unless the test starts one and passes its NATS_URL.
    env: { ...process.env, LOG_FORMAT: "json", LOG_LEVEL: "info", NATS_URL: "off", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  let out = "";
  child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (out += d.toString()));
  const port = await new Promise<number>((res, rej) => {
    // Killed as it is given up on: a test failing here never disposes it, and a worker ended by vitest
    // runs no 'exit' handler (one inventory outlived its run by 28 minutes).
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rej(new Error(`${name} did not start within ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    const onData = () => {
      for (const line of out.split("\n")) {
        if (!line.includes(ready)) continue;
        clearTimeout(timer);
        child.stdout?.off("data", onData);
        res((JSON.parse(line) as { port: number }).port);
        return;
      }
    };
    child.stdout?.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      rej(new Error(`${name} exited with ${code} before listening:\n${out}`));
    });
  });
  const kill = (signal: NodeJS.Signals = "SIGTERM") => {
    const done = exited(child);
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return done;
  };
  return {
    child,
    port,
    address: `127.0.0.1:${port}`,
    output: () => out,
    async logLine(msg, waitMs = 10_000) {
      const until = Date.now() + waitMs;
      for (;;) {
        // Whole lines only: the last may still be arriving.
        for (const line of out.slice(0, out.lastIndexOf("\n") + 1).split("\n")) {
          if (!line.startsWith("{")) continue;
          const entry = JSON.parse(line) as Record<string, unknown>;
          if (entry.msg === msg) return entry;
        }
        if (Date.now() > until) throw new Error(`${name} never logged "${msg}":\n${out}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    kill,
    [Symbol.asyncDispose]: async () => {
      await kill("SIGKILL");
    },
  };
}

const execFileP = promisify(execFile);

/**
 * Runs `buf curl` (the @bufbuild/buf CLI, a gRPC client nobody here wrote)
 * against a plaintext server with `protocol`. Returns stdout; rejects with stderr on a
 * non-zero exit.
 */
export async function bufCurl(
  args: readonly string[],
  protocol: "grpc" | "grpcweb" | "connect" = "grpc",
): Promise<{ stdout: string; stderr: string }> {
  const buf = join(ROOT, "node_modules", ".bin", "buf");
  // gRPC needs HTTP/2; gRPC-Web and Connect go over HTTP/1.1 like a browser.
  const http2 = protocol === "grpc" ? ["--http2-prior-knowledge"] : [];
  try {
    return await execFileP(buf, ["curl", "--protocol", protocol, ...http2, ...args], { cwd: ROOT });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; code?: number };
    throw new Error(`buf curl exited ${e.code}: ${e.stderr ?? ""}${e.stdout ?? ""}`);
  }
}
