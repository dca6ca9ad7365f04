/**
 * The configuration round, with real processes: a start refused for good (a variable out of its
 * allowed values, a database written by a newer build) is said once, in a line naming what to
 * change, and never retried by `make run`'s runner, which had restarted it with backoff for ever.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import Database from "better-sqlite3";
import pg from "pg";
import { afterEach, expect, it } from "vitest";
import { SYSTEM } from "../scripts/layout.js";
import { built, freePort, ROOT, tempDir } from "./fixtures.js";
import { startPostgres } from "./postgres.js";

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
  const { code, out } = await exitOf(built("services/payment/main.ts"), {
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

it("so is a PostgreSQL schema a newer build migrated, naming the schema", async () => {
  await using server = await startPostgres();
  const url = await server.createDatabase();
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query("CREATE SCHEMA shopmesh_payment");
  await client.query("CREATE TABLE shopmesh_payment.schema_version (version INTEGER NOT NULL)");
  await client.query("INSERT INTO shopmesh_payment.schema_version VALUES (999)");
  await client.end();
  const { code, out } = await exitOf(built("services/payment/main.ts"), {
    DATABASE_URL: url,
    NATS_URL: "off",
    GRPC_PORT: "0",
    METRICS_PORT: "",
  });
  expect(code, out).toBe(78);
  expect(out).toContain("the database schema shopmesh_payment: its schema version 999 is newer than this build knows");
  expect(out).not.toMatch(/\n\s+at |"stack"/);
}, 60_000);

it("addresses a process cannot use are refused at start, each named in a line: exit 78, no stack trace", async () => {
  using dir = tempDir();
  const order = built("services/order/main.ts");
  const base = { DB_PATH: join(dir.path, "order.db"), GRPC_PORT: "0", METRICS_PORT: "", LOG_FORMAT: "json" };
  // Before: a NATS port past 65535 and "ipv4:" each died with a TypeError's stack and exit 1 (restarted
  // for ever), DATABASE_URL=" " opened PostgreSQL at host "base", and a target's port past 65535 ran on
  // with every call to it failing.
  const bad = await exitOf(order, {
    ...base,
    NATS_URL: "nats://127.0.0.1:99999",
    INVENTORY_TARGET: "ipv4:",
    PAYMENT_TARGET: "127.0.0.1:99999",
    DATABASE_URL: "mysql://shop:hunter2@db/shop",
    SHUTDOWN_GRACE_MS: "0x10",
    OTEL_EXPORTER_OTLP_ENDPOINT: "otel-collector:4318",
  });
  expect(bad.code, bad.out).toBe(78);
  const named = ["NATS_URL", "INVENTORY_TARGET", "PAYMENT_TARGET", "DATABASE_URL", "SHUTDOWN_GRACE_MS"];
  for (const v of [...named, "OTEL_EXPORTER_OTLP_ENDPOINT"]) {
    expect(bad.out).toMatch(new RegExp(`^  ${v}\\b`, "m"));
  }
  expect(bad.out).not.toContain("hunter2");
  expect(bad.out).not.toMatch(/\n\s+at /);
  // A registry target with the bus off can never find an instance: refused, naming both variables.
  const registry = await exitOf(order, { ...base, NATS_URL: "off", INVENTORY_TARGET: "registry:///inventory" });
  expect(registry.code, registry.out).toBe(78);
  expect(registry.out).toMatch(/INVENTORY_TARGET=registry:\/\/\/inventory needs the event bus, and NATS_URL is off/);
  expect(registry.out).not.toMatch(/\n\s+at /);
}, 60_000);

it("make run's own numbers are decimal, as the services': GATEWAY_PORT=0x4A39 is refused, not read as 19001", async () => {
  using dir = tempDir();
  for (const [variable, raw, line] of [
    ["GATEWAY_PORT", "0x4A39", 'GATEWAY_PORT must be a port (1..65535), got "0x4A39"'],
    ["NATS_PORT", "4222.0", 'NATS_PORT must be a port (1..65535), got "4222.0"'],
    ["PAYMENT_REPLICAS", "0x2", 'PAYMENT_REPLICAS must be 1..5, got "0x2"'],
    ["PAYMENT_REPLICAS", " ", 'PAYMENT_REPLICAS must be 1..5, got " "'],
  ] as const) {
    const { code, out } = await exitOf(
      built("scripts/run.ts"),
      {
        ...(await ports()),
        DATA_DIR: dir.path,
        [variable]: raw,
      },
      20_000,
    );
    expect(out, `${variable}=${raw}`).toBe(`${line}\n`);
    expect(code).toBe(2);
  }
}, 120_000);

it("the gateway refuses a JWKS URL or a public key it cannot use in a line, exit 78 (a stack trace, exit 1, before)", async () => {
  const gateway = built("gateway/main.ts");
  const base = { HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", METRICS_PORT: "", NATS_URL: "off", LOG_FORMAT: "json" };
  for (const [env, line] of [
    [{ JWT_JWKS_URL: "notaurl" }, 'JWT_JWKS_URL="notaurl" must be an http:// or https:// URL'],
    [{ JWT_PUBLIC_KEY: "garbage" }, "JWT_PUBLIC_KEY is not a PEM public key (-----BEGIN PUBLIC KEY-----) for RS256"],
  ] as const) {
    const { code, out } = await exitOf(gateway, { ...base, ...env });
    expect(code, out).toBe(78);
    expect(out).toContain(line);
    expect(out).not.toMatch(/\n\s+at |"stack"/);
  }
}, 60_000);

it("a service whose NATS_URL answers nothing says so while it waits, naming the URL (it waited without a word)", async () => {
  using dir = tempDir();
  const url = `nats://127.0.0.1:${await freePort()}`;
  const child = spawn(process.execPath, built("services/payment/main.ts"), {
    cwd: ROOT,
    env: { ...process.env, DB_PATH: join(dir.path, "p.db"), GRPC_PORT: "0", METRICS_PORT: "", NATS_URL: url },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.push(child);
  let out = "";
  const said = new Promise<void>((resolve) => {
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes(`NATS at ${url} does not answer yet`)) resolve();
    });
  });
  await Promise.race([said, new Promise((r) => setTimeout(r, 15_000))]);
  expect(out).toContain(`NATS at ${url} does not answer yet: waiting (NATS_URL)`);
}, 30_000);

it("NATS_URL=ws:// is refused at start in a line, exit 78 (the Node client refused it at connect: a stack trace, exit 1)", async () => {
  using dir = tempDir();
  const payment = built("services/payment/main.ts");
  const base = { DB_PATH: join(dir.path, "p.db"), GRPC_PORT: "0", METRICS_PORT: "", LOG_FORMAT: "json" };
  for (const url of ["ws://127.0.0.1:1", "wss://127.0.0.1:1"]) {
    const { code, out } = await exitOf(payment, { ...base, NATS_URL: url }, 30_000);
    expect(code, out).toBe(78);
    expect(out).toMatch(/^ {2}NATS_URL=.* must be off or NATS server URLs/m);
    expect(out).not.toMatch(/\n\s+at |"stack"/);
  }
}, 60_000);

it("a refused URL's password is not printed even when it holds a '/', as a generated base64 one does", async () => {
  using dir = tempDir();
  const { code, out } = await exitOf(built("services/payment/main.ts"), {
    DB_PATH: join(dir.path, "p.db"),
    GRPC_PORT: "0",
    METRICS_PORT: "",
    // Unencoded, so neither parses: each is refused, and its problem quotes it.
    NATS_URL: "nats://payment:Zm9v/YmFy@127.0.0.1:4222",
    DATABASE_URL: "postgres://payment:cXV4/eg+@db/shop",
  });
  expect(code, out).toBe(78);
  expect(out).toMatch(/^ {2}NATS_URL=/m);
  expect(out).toMatch(/^ {2}DATABASE_URL /m);
  expect(out).not.toContain("Zm9v");
  expect(out).not.toContain("cXV4");
}, 60_000);

it("the streams' provisioner refuses NATS_URL=off in a line, exit 78: it dialled a host named 'off' for ever", async () => {
  const { code, out } = await exitOf(
    built("contracts/provision-bus.ts"),
    { NATS_URL: "off", LOG_FORMAT: "json" },
    20_000,
  );
  expect(code, out).toBe(78);
  expect(out).toMatch(/^NATS_URL=off: .*needs the bus/m);
  expect(out).not.toContain("does not answer yet");
}, 30_000);

it("make run waits for a stopping service as long as the service reads SHUTDOWN_GRACE_MS: only spaces is its default, 10 s", async () => {
  using dir = tempDir();
  // Spaces: each service drains up to its default 10 s; the runner read 0 and killed it at 1 s (its
  // margin past the grace, RUN_STOP_MARGIN_MS, set short here), not 11.
  const child = spawn(process.execPath, built("scripts/run.ts"), {
    cwd: ROOT,
    env: {
      ...process.env,
      ...(await ports()),
      DATA_DIR: dir.path,
      SHUTDOWN_GRACE_MS: "   ",
      RUN_STOP_MARGIN_MS: "1000",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.push(child);
  let out = "";
  const payment = new Promise<number>((resolve) => {
    const seen = (d: Buffer) => {
      out += d.toString();
      const m = /payment +\| started \(pid (\d+)\)/.exec(out);
      if (m) resolve(Number(m[1]));
    };
    child.stdout.on("data", seen);
    child.stderr.on("data", seen);
  });
  const pid = await payment;
  await new Promise((r) => setTimeout(r, 2_000));
  process.kill(pid, "SIGSTOP"); // a service that does not stop: the runner's deadline is what it meets
  child.kill("SIGINT");
  await new Promise((r) => child.once("exit", r));
  try {
    process.kill(pid, "SIGKILL"); // killed by the runner already, unless it failed to
  } catch {}
  expect(out.split("\n").filter((l) => /stop/.test(l))).toContain("payment did not stop within 11 s: killed");
}, 90_000);

it("a retry backoff whose largest wait is below its first is refused at start, both named: exit 78 (found 2026-12-05, the time round)", async () => {
  using dir = tempDir();
  // SAGA_RETRY_MAX_MS=5 meant as seconds: every wait was 5 ms, a failing step retried 200 times a
  // second against a participant that was down, each retry a write to the step log.
  const order = await exitOf(
    built("services/order/main.ts"),
    {
      DB_PATH: join(dir.path, "order.db"),
      GRPC_PORT: "0",
      METRICS_PORT: "",
      NATS_URL: "off",
      SAGA_RETRY_MAX_MS: "5",
      PAYMENT_RETRY_INITIAL_DELAY_MS: "2000",
      PAYMENT_RETRY_MAX_DELAY_MS: "2",
    },
    10_000,
  );
  expect(order.code, order.out).toBe(78);
  expect(order.out).toMatch(/^ {2}SAGA_RETRY_MAX_MS=5 is below SAGA_RETRY_BASE_MS=200/m);
  expect(order.out).toMatch(/^ {2}PAYMENT_RETRY_MAX_DELAY_MS=2 is below PAYMENT_RETRY_INITIAL_DELAY_MS=2000/m);
  expect(order.out).not.toMatch(/\n\s+at /);
  const gateway = await exitOf(
    built("gateway/main.ts"),
    { HTTP_PORT: "0", METRICS_PORT: "", NATS_URL: "off", UPSTREAM_RETRY_MAX_DELAY_MS: "1" },
    10_000,
  );
  expect(gateway.code, gateway.out).toBe(78);
  expect(gateway.out).toMatch(/^ {2}UPSTREAM_RETRY_MAX_DELAY_MS=1 is below UPSTREAM_RETRY_INITIAL_DELAY_MS=50/m);
}, 60_000);
