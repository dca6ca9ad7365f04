/**
 * The configuration round, with real processes: a start refused for good (a variable out of its
 * allowed values, a database written by a newer build) is said once, in a line naming what to
 * change, and never retried by `make run`'s runner, which had restarted it with backoff for ever.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, expect, it } from "vitest";
import { SYSTEM } from "../scripts/layout.js";
import { freePort, ROOT, tempDir } from "./fixtures.js";

const running: ChildProcess[] = [];
afterEach(async () => {
  for (const c of running.splice(0)) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    c.kill("SIGINT");
    await new Promise((r) => c.once("exit", r));
  }
});

/** Runs `cmd args` with `env` until it exits (or `ms` passes: then it is interrupted); its code and output. */
async function exitOf(args: string[], env: Record<string, string>, ms = 90_000) {
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.push(child);
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill("SIGINT"), ms);
  const code = await new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  clearTimeout(timer);
  return { code, out };
}

/** Env moving every port of `make run` to a free one. */
async function ports(): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  for (const { name } of SYSTEM) {
    env[`${name.toUpperCase()}_PORT`] = String(await freePort());
    env[`${name.toUpperCase()}_METRICS_PORT`] = String(await freePort());
  }
  env.NATS_PORT = String(await freePort());
  env.NATS_MONITOR_PORT = String(await freePort());
  return env;
}

it("make run stops at a service that refuses its configuration (exit 78): said once, not restarted", async () => {
  execFileSync("make", ["-s", "build"], { cwd: ROOT, stdio: "pipe" });
  using dir = tempDir();
  // Before: order exited 78 with the line below, and the runner restarted it every 1, 2, 4 ... 30 s for ever.
  const { code, out } = await exitOf([join(ROOT, "dist", "scripts", "run.js")], {
    ...(await ports()),
    DATA_DIR: dir.path,
    SAGA_DEFAULT_MODE: "sideways",
  });
  expect(out).toContain('SAGA_DEFAULT_MODE="sideways" must be one of ORCHESTRATION, CHOREOGRAPHY');
  expect(out).not.toMatch(/order +\| .*restarting in/);
  expect(out.match(/order refused to start \(exit 78/g), out).toHaveLength(1);
  expect(code, out).toBe(78);
  expect(out).toContain("all stopped");
}, 120_000);

it("a database written by a newer build is refused in one line naming it, exit 78, no stack trace", async () => {
  using dir = tempDir();
  const file = join(dir.path, "payment.db");
  const db = new Database(file);
  db.pragma("user_version = 999");
  db.close();
  const { code, out } = await exitOf(["--import", "tsx", join(ROOT, "services", "payment", "main.ts")], {
    DB_PATH: file,
    NATS_URL: "off",
    GRPC_PORT: "0",
    METRICS_PORT: "",
    LOG_FORMAT: "json",
  });
  expect(code, out).toBe(78);
  expect(out).toContain(`${file}: its schema version 999 is newer than this build knows`);
  expect(out).not.toMatch(/\n\s+at |"stack"/);
}, 60_000);
