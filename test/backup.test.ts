/**
 * `make backup` (scripts/backup.ts) on a running system: copies taken while orders flow are each one
 * commit's state — every order with the step log and the outbox rows its state says it wrote, stock
 * conserved, no order charged twice — and a store missing is named, not copied as an empty one.
 */
import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AckPolicy } from "@nats-io/jetstream";
import Database from "better-sqlite3";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { busAuthOf, connectBus } from "../platform/bus.js";
import { BUS_ADMIN } from "../platform/bus-access.js";
import { silentLogger } from "../platform/log.js";
import { holdDataDir, stopLeftovers } from "../scripts/data-dir.js";
import { SERVICE_NAMES } from "../scripts/layout.js";
import { answers, localBusEnv, natsServerArgs } from "../scripts/nats.js";
import { ensureDatabase, postgresBinDir } from "../scripts/postgres.js";
import { startHistory } from "../services/history/app.js";
import { loadConfig as historyConfig } from "../services/history/config.js";
import { DEMO_CATALOGUE } from "../services/inventory/catalogue.js";
import { startNotification } from "../services/notification/app.js";
import { loadConfig as notificationConfig } from "../services/notification/config.js";
import { consumerSettled } from "./events.js";
import { built, exited, freePort, outputReady, runToEnd, tempDir } from "./fixtures.js";
import { startPostgres } from "./postgres.js";
import { type System, startSystem } from "./system.js";

const CATALOGUE_IDS = DEMO_CATALOGUE.map((p) => p.id);

/** `scripts/backup.ts` run on the stores in `dataDir`, into `backupDir`. */
function backup(dataDir: string, backupDir: string, env: Record<string, string> = { DB: "" }) {
  return runToEnd(process.execPath, built("scripts/backup.ts"), {
    env: { ...process.env, DATA_DIR: dataDir, BACKUP_DIR: backupDir, ...env },
  });
}

/** `scripts/restore.ts` of `service` from backup `from`, on the stores in `sys`'s directory and its NATS. */
function restore(sys: System, service: string, from: string) {
  return runToEnd(process.execPath, built("scripts/restore.ts"), {
    env: { ...process.env, DATA_DIR: sys.dir, NATS_URL: sys.nats.url, SERVICE: service, FROM: from, DB: "" },
  });
}

/** Places `n` orders of both modes, some declined, as `customer`, and waits for each to end. */
async function ordersSettled(sys: System, customer: string, n: number): Promise<void> {
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const { order } = await sys.orders.placeOrder(
        {
          idempotencyKey: `${customer}-${i}`,
          items: [{ productId: CATALOGUE_IDS[i % CATALOGUE_IDS.length] as string, quantity: 1 }],
          cardToken: i % 4 === 3 ? "tok_decline" : "tok_visa",
          sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
        },
        sys.as(customer),
      );
      await sys.settle(order?.id ?? "", customer);
    }),
  );
}

/** Rows of `table` in the store of `service` in `sys`, less the columns that say when it was applied. */
function rows(sys: System, service: string, sqlText: string): string[] {
  const db = new Database(join(sys.dir, `${service}.db`), { readonly: true });
  try {
    return (db.prepare(sqlText).all() as unknown[]).map((r) => JSON.stringify(r)).sort();
  } finally {
    db.close();
  }
}
const VIEW = "SELECT * FROM order_history";
const NOTIFIED = "SELECT event_id, customer_id, order_id, kind, message FROM notifications";

/** The ids of the orders that ended, from the order service's store. */
const ended = (sys: System) =>
  rows(sys, "order", "SELECT id FROM orders WHERE status IN ('CONFIRMED', 'CANCELLED')").map(
    (r) => (JSON.parse(r) as { id: string }).id,
  );

/** Waits until history's view and notification hold every ended order of `sys`. */
async function caughtUp(sys: System): Promise<void> {
  const all = () => {
    const want = ended(sys);
    const viewed = new Set(
      rows(sys, "history", "SELECT order_id FROM order_history WHERE status IN ('CONFIRMED', 'CANCELLED')").map(
        (r) => (JSON.parse(r) as { order_id: string }).order_id,
      ),
    );
    const told = new Set(
      rows(
        sys,
        "notification",
        "SELECT order_id FROM notifications WHERE kind IN ('ORDER_CONFIRMED', 'ORDER_CANCELLED')",
      ).map((r) => (JSON.parse(r) as { order_id: string }).order_id),
    );
    return want.filter((id) => !viewed.has(id) || !told.has(id));
  };
  await expect.poll(all, { timeout: 30_000, interval: 200 }).toEqual([]);
  // The ended orders seen are not all their events: a payment's or a stock release's may still wait in
  // its service's outbox, or in history's or notification's other durables.
  const unsent = () =>
    ["order", "inventory", "payment"].flatMap((s) => rows(sys, s, "SELECT seq FROM outbox WHERE sent_at IS NULL"));
  await expect.poll(unsent, { timeout: 30_000, interval: 200 }).toEqual([]);
  const bus = await connectBus(sys.nats.url, "backup-test", silentLogger(), { streams: EVENTS.streams });
  try {
    for (const { name: stream } of EVENTS.streams) {
      for await (const c of bus.jsm.consumers.list(stream)) {
        if (/^(history|notification)-/.test(c.name)) await consumerSettled(bus, stream, c.name, 30_000);
      }
    }
  } finally {
    await bus.close();
  }
}

/** What must hold in any one commit's state of the three saga stores copied to `dir`; the orders it holds. */
function expectConsistentCopy(dir: string): number {
  const open = (name: string) => new Database(join(dir, `${name}.db`), { readonly: true });
  const order = open("order");
  try {
    expect(order.pragma("integrity_check", { simple: true })).toBe("ok");
    expect(order.pragma("foreign_key_check")).toEqual([]);
    // Every change of an order (version + 1) writes its step-log entry in the same transaction, and
    // placing it, becoming CONFIRMED or CANCELLED write their events in it too (the outbox).
    const torn = order
      .prepare(`SELECT o.id, o.status, o.version,
          (SELECT COUNT(*) FROM saga_steps s WHERE s.order_id = o.id) AS steps,
          (SELECT COUNT(*) FROM outbox x WHERE x.order_id = o.id AND x.type LIKE '%OrderPlaced') AS placed,
          (SELECT COUNT(*) FROM outbox x WHERE x.order_id = o.id
             AND x.type LIKE '%Order' || CASE o.status WHEN 'CONFIRMED' THEN 'Confirmed' ELSE 'Cancelled' END) AS ended
        FROM orders o`)
      .all() as { id: string; status: string; version: number; steps: number; placed: number; ended: number }[];
    const wrong = torn.filter(
      (o) =>
        o.steps !== o.version ||
        o.placed !== 1 ||
        o.ended !== (o.status === "CONFIRMED" || o.status === "CANCELLED" ? 1 : 0),
    );
    expect(wrong, "an order without the step log or events its state says it wrote").toEqual([]);
    const inventory = open("inventory");
    try {
      const stock = inventory.prepare("SELECT id, available + reserved AS total FROM products").all() as {
        id: string;
        total: number;
      }[];
      for (const p of DEMO_CATALOGUE) {
        expect(stock.find((s) => s.id === p.id)?.total, `${p.id} conserved`).toBe(p.available);
      }
    } finally {
      inventory.close();
    }
    const payment = open("payment");
    try {
      const twice = payment
        .prepare("SELECT order_id FROM payments WHERE status = 'CAPTURED' GROUP BY order_id HAVING COUNT(*) > 1")
        .all();
      expect(twice, "no order charged twice").toEqual([]);
    } finally {
      payment.close();
    }
    for (const name of ["notification", "history"]) {
      const db = open(name);
      try {
        expect(db.pragma("integrity_check", { simple: true })).toBe("ok");
      } finally {
        db.close();
      }
    }
    return torn.length;
  } finally {
    order.close();
  }
}

describe("make backup", () => {
  it("copies every store consistently while orders flow", async () => {
    await using sys = await startSystem();
    using out = tempDir();
    let placing = true;
    let placed = 0;
    const load = Promise.all(
      Array.from({ length: 4 }, async (_, w) => {
        for (let i = 0; placing; i++) {
          await sys.orders.placeOrder(
            {
              idempotencyKey: `load-${w}-${i}`,
              items: [{ productId: CATALOGUE_IDS[i % CATALOGUE_IDS.length] as string, quantity: 1 }],
              cardToken: i % 5 === 0 ? "tok_decline" : "tok_visa",
              sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
            },
            sys.as(`buyer-${w}`),
          );
          placed++;
        }
      }),
    );
    try {
      // Orders placed before the first copy, so it holds some: waited for, not slept for (a second of a
      // loaded machine may see none placed).
      await expect.poll(() => placed, { timeout: 30_000 }).toBeGreaterThanOrEqual(8);
      const runs = [];
      for (let n = 0; n < 3; n++) runs.push(await backup(sys.dir, out.path));
      for (const run of runs) {
        expect(run.code, run.out).toBe(0);
        expect(run.out).toMatch(/order: \d+ KiB, schema \d+, integrity ok/);
      }
      // And one placed after the last copy: of the 4 writers, at most 4 were placing when it ended, so
      // the 5th order answered since was begun after it. Else the last copy may hold every order placed.
      const atLast = placed;
      await expect.poll(() => placed, { timeout: 30_000 }).toBeGreaterThan(atLast + 4);
    } finally {
      placing = false;
      await load;
    }
    const dirs = readdirSync(out.path).sort();
    expect(dirs).toHaveLength(3);
    const held = dirs.map((d) => expectConsistentCopy(join(out.path, d)));
    // Taken while orders were placed: each holds some, the later ones more, and none all of them.
    expect(held[0]).toBeGreaterThan(0);
    expect(held[2]).toBeGreaterThanOrEqual(held[0] ?? 0);
    expect(held[2]).toBeLessThan(placed);
    const manifest = JSON.parse(readFileSync(join(out.path, dirs[0] as string, "backup.json"), "utf8"));
    expect(Object.keys(manifest.stores).sort()).toEqual(["history", "inventory", "notification", "order", "payment"]);
  }, 60_000);

  it("names a store that is missing, keeps no partial backup as a whole one, and exits 1", async () => {
    using data = tempDir();
    using out = tempDir();
    const run = await backup(data.path, out.path);
    expect(run.code).toBe(1);
    expect(run.out).toMatch(/order: FAILED: no store at .*order\.db/);
    expect(run.out).toMatch(/backup incomplete/);
    expect(readdirSync(out.path)).toEqual([]);
    expect(existsSync(join(data.path, "order.db")), "no empty store made in its place").toBe(false);
  });
});

describe("make backup whose output's reader is gone (make backup | head -1)", () => {
  // Its next line met EPIPE: an uncaught error, a stack trace and exit 1, the backup taken all the same.
  it("takes the whole backup, says nothing of it, and exits 0", async () => {
    using data = tempDir();
    using out = tempDir();
    for (const name of SERVICE_NAMES) {
      const db = new Database(join(data.path, `${name}.db`));
      db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
      db.close();
    }
    const child = spawn(process.execPath, built("scripts/backup.ts"), {
      env: { ...process.env, DATA_DIR: data.path, BACKUP_DIR: out.path, DB: "" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.destroy();
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    expect(await exited(child), err).toBe(0);
    expect(err).toBe("");
    const [dir, ...more] = readdirSync(out.path);
    expect(more, "one backup").toEqual([]);
    expect(dir).not.toMatch(/\.partial$/);
    expect(readdirSync(join(out.path, dir as string)).sort()).toEqual(
      ["backup.json", ...SERVICE_NAMES.map((n) => `${n}.db`)].sort(),
    );
  });
});

/** A store `name` in `dir` of `rows` random 4 KiB rows (5,000: a copy that takes a while). */
function storeOf(dir: string, name: string, rows: number): void {
  const db = new Database(join(dir, `${name}.db`));
  db.exec(`CREATE TABLE t (x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${rows})
    INSERT INTO t SELECT randomblob(4096) FROM n`);
  db.close();
}

/**
 * `make backup` of `data` into `out`, started as a terminal's job (a process group of its own, which a
 * Ctrl-C reaches whole) and sent SIGINT once it has said a line like `after`: its exit and what it said.
 */
async function backupCtrlC(data: string, out: string, after: RegExp) {
  const child = spawn(process.execPath, built("scripts/backup.ts"), {
    env: { ...process.env, DATA_DIR: data, BACKUP_DIR: out, DB: "" },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  try {
    const code = exited(child);
    let said = "";
    child.stdout.on("data", (d: Buffer) => (said += d.toString()));
    child.stderr.on("data", (d: Buffer) => (said += d.toString()));
    await expect.poll(() => said, { timeout: 20_000, interval: 1 }).toMatch(after);
    process.kill(-(child.pid ?? 0), "SIGINT");
    return { code: await code, said };
  } finally {
    try {
      process.kill(-(child.pid ?? 0), "SIGKILL");
    } catch {}
  }
}

describe("make backup ended by a Ctrl-C (SIGINT to its process group)", () => {
  // Killed at once, it left `<time>.partial` behind, for someone to find and delete.
  it("stops after the store it is copying, keeps nothing, says so and exits 130", async () => {
    using data = tempDir();
    using out = tempDir();
    // Large enough that each copy takes a while: the Ctrl-C lands with stores left to copy.
    for (const name of SERVICE_NAMES) storeOf(data.path, name, 5_000);
    const { code, said } = await backupCtrlC(data.path, out.path, /integrity ok/);
    expect(code, said).toBe(130);
    expect(said).toContain("backup: ended by SIGINT; nothing kept");
    expect(said.match(/integrity ok/g)?.length ?? 0, "stores copied").toBeLessThan(SERVICE_NAMES.length);
    expect(readdirSync(out.path), "no backup, whole or partial").toEqual([]);
  }, 60_000);

  // The missing store's "backup incomplete" won over the Ctrl-C: the copies were kept in <time>.partial.
  it("during its last store, one store missing: keeps nothing, says so and exits 130", async () => {
    using data = tempDir();
    using out = tempDir();
    // Each small but the last, whose copy the Ctrl-C lands in. The first is missing.
    const last = SERVICE_NAMES.at(-1);
    for (const name of SERVICE_NAMES.slice(1)) storeOf(data.path, name, name === last ? 20_000 : 10);
    const { code, said } = await backupCtrlC(
      data.path,
      out.path,
      new RegExp(`  ${SERVICE_NAMES.at(-2)}: .*integrity ok`),
    );
    expect(code, said).toBe(130);
    expect(said).toContain("backup: ended by SIGINT; nothing kept");
    expect(readdirSync(out.path), "no backup, whole or partial").toEqual([]);
  }, 60_000);
});

describe("make backup DB=postgres", () => {
  it("dumps make run's database, every schema in one snapshot, and says so when it is down", async () => {
    await using server = await startPostgres();
    const url = await ensureDatabase(server.url, "shopmesh");
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query(`CREATE SCHEMA shopmesh_order; CREATE TABLE shopmesh_order.orders (id TEXT);
        CREATE SCHEMA shopmesh_payment; CREATE TABLE shopmesh_payment.payments (id TEXT)`);
    } finally {
      await client.end();
    }
    using data = tempDir();
    using out = tempDir();
    const run = await backup(data.path, out.path, { DB: "postgres", PG_PORT: String(server.port) });
    expect(run.code, run.out).toBe(0);
    const [taken] = readdirSync(out.path);
    // Its last line says how to take a schema back, as SQLite's does (it named no restore, which had none then).
    expect(run.out).toContain(
      `done: ${join(out.path, taken as string)} (restore one consumer's schema: make restore DB=postgres SERVICE=history FROM=${join(out.path, taken as string)})\n`,
    );
    const listed = execFileSync(
      join(postgresBinDir(), "pg_restore"),
      ["-l", join(out.path, taken as string, "shopmesh.dump")],
      {
        encoding: "utf8",
      },
    );
    expect(listed).toMatch(/TABLE shopmesh_order orders/);
    expect(listed).toMatch(/TABLE shopmesh_payment payments/);
    const down = await backup(data.path, out.path, { DB: "postgres", PG_PORT: String(await freePort()) });
    expect(down.code).toBe(1);
    expect(down.out).toMatch(/backup failed: pg_dump: .*(refused|could not connect)/);
    // One line, said once: pg_dump's own "pg_dump: error:" prefix and its second, tab-indented line
    // made it "pg_dump: pg_dump: error: …" over two.
    expect(down.out).toMatch(/^backup failed: pg_dump: [^\n]*\(is make run DB=postgres up\?\)\n$/m);
    expect(down.out).not.toContain("pg_dump: pg_dump:");
    expect(readdirSync(out.path)).toEqual([taken]);
  }, 60_000);
});

describe("make backup DB=postgres ended by a signal during pg_dump", () => {
  // A SIGTERM to the backup alone (pg_dump ran on): it kept its dump, said done and exited 0. A Ctrl-C (pg_dump
  // killed too): "backup failed: pg_dump: terminated by user (is make run DB=postgres up?)", exit 1.
  it.each([
    { signal: "SIGTERM", to: "the backup alone", group: false, code: 1 },
    { signal: "SIGINT", to: "its process group (a Ctrl-C)", group: true, code: 130 },
  ] as const)(
    "$signal to $to: keeps nothing, says so and exits $code",
    async ({ signal, group, code: expected }) => {
      await using server = await startPostgres();
      const locker = new pg.Client({ connectionString: await ensureDatabase(server.url, "shopmesh") });
      await locker.connect();
      using data = tempDir();
      using out = tempDir();
      let child: ReturnType<typeof spawn> | undefined;
      try {
        // Held until the SIGTERM is sent: pg_dump waits for the table's lock, the dump under way.
        await locker.query("CREATE SCHEMA shopmesh_order; CREATE TABLE shopmesh_order.orders (id TEXT)");
        await locker.query("BEGIN; LOCK TABLE shopmesh_order.orders IN ACCESS EXCLUSIVE MODE");
        child = spawn(process.execPath, built("scripts/backup.ts"), {
          env: {
            ...process.env,
            DATA_DIR: data.path,
            BACKUP_DIR: out.path,
            DB: "postgres",
            PG_PORT: String(server.port),
          },
          stdio: ["ignore", "pipe", "pipe"],
          detached: true,
        });
        const code = exited(child);
        let said = "";
        child.stdout?.on("data", (d: Buffer) => (said += d.toString()));
        child.stderr?.on("data", (d: Buffer) => (said += d.toString()));
        const waiting = async () => {
          // Read in a transaction, pg_stat_activity stays its first reading: cleared each time.
          await locker.query("SELECT pg_stat_clear_snapshot()");
          const sql = "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'";
          return (await locker.query(sql)).rowCount;
        };
        await expect.poll(waiting, { timeout: 20_000, interval: 20 }).toBe(1);
        process.kill(group ? -(child.pid ?? 0) : (child.pid ?? 0), signal);
        await new Promise((r) => setTimeout(r, 200));
        await locker.query("ROLLBACK");
        expect(await code, said).toBe(expected);
        expect(said).toContain(`backup: ended by ${signal}; nothing kept`);
        expect(said).not.toContain("done:");
        expect(readdirSync(out.path), "no backup, whole or partial").toEqual([]);
      } finally {
        await locker.end().catch(() => {});
        try {
          process.kill(-(child?.pid ?? 0), "SIGKILL");
        } catch {}
      }
    },
    60_000,
  );
});

/**
 * A data directory, a backup of history's store (an empty one) and a port for the NATS a
 * `make restore SERVICE=history` of it starts: `env` runs that restore.
 */
async function historyRestore() {
  const data = tempDir();
  const copy = tempDir();
  new Database(join(copy.path, "history.db")).close();
  writeFileSync(join(copy.path, "backup.json"), JSON.stringify({ at: new Date().toISOString() }));
  const port = await freePort();
  const env = { ...process.env, DATA_DIR: data.path, NATS_PORT: String(port), SERVICE: "history", FROM: copy.path };
  return {
    data: data.path,
    port,
    env,
    [Symbol.dispose]() {
      copy[Symbol.dispose]();
      data[Symbol.dispose]();
    },
  };
}

/**
 * `make restore SERVICE=history` of `r`, sent `signal` to its process group (a terminal's job) while the
 * NATS it started is frozen, so before any durable is deleted; `outputGone`: its stdout and stderr closed
 * first (the terminal gone: what it says next fails, EIO on a terminal, EPIPE here). Its exit (or "still
 * running" after 20 s), what it said, and whether its NATS still answered once it ended.
 */
async function signalledMidRestore(
  r: Awaited<ReturnType<typeof historyRestore>>,
  signal: NodeJS.Signals,
  { outputGone = false } = {},
) {
  const child = spawn(process.execPath, built("scripts/restore.ts"), {
    env: { ...r.env, DB: "" },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const code = exited(child);
  try {
    await outputReady(child, "started NATS", "make restore", 20_000);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    // The signal reaches NATS too if it is in the restore's process group (it stopped at once on SIGINT).
    const nats = Number(
      readFileSync(join(r.data, "run.children"), "utf8")
        .split("\n")
        .find((l) => l.endsWith(" nats"))
        ?.split(" ")[0],
    );
    process.kill(nats, "SIGSTOP");
    if (outputGone) {
      child.stdout.destroy();
      child.stderr.destroy();
    }
    process.kill(-(child.pid ?? 0), signal);
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(nats, "SIGCONT");
    const still = new Promise((resolve) => setTimeout(resolve, 20_000, "still running"));
    const ended = await Promise.race([code, still]);
    return { code: ended, out, natsLeft: await answers("127.0.0.1", r.port) };
  } finally {
    try {
      process.kill(-(child.pid ?? 0), "SIGKILL");
    } catch {}
    await stopLeftovers(r.data, () => {}); // its NATS, in a process group of its own
  }
}

describe("make restore", () => {
  it("puts history and notification back to a backup and has them catch up on every event since, once", async () => {
    await using sys = await startSystem();
    using out = tempDir();
    const env = { GRPC_HOST: "127.0.0.1", GRPC_PORT: "0", SHUTDOWN_GRACE_MS: "2000", NATS_URL: sys.nats.url };
    const consumers = () =>
      Promise.all([
        startHistory(historyConfig({ ...env, DB_PATH: join(sys.dir, "history.db") }), silentLogger()),
        startNotification(notificationConfig({ ...env, DB_PATH: join(sys.dir, "notification.db") }), silentLogger()),
      ]);
    const stopAll = (apps: readonly { stop(): Promise<void> }[]) => Promise.all(apps.map((a) => a.stop()));

    await ordersSettled(sys, "before", 6);
    await caughtUp(sys);
    expect((await backup(sys.dir, out.path)).code).toBe(0);
    const [taken] = readdirSync(out.path);
    const from = join(out.path, taken as string);
    await ordersSettled(sys, "after", 6);
    await caughtUp(sys);
    // What consumers that never lost anything hold.
    const view = rows(sys, "history", VIEW);
    const notified = rows(sys, "notification", NOTIFIED);
    expect(view.length).toBe(12);

    // The stores put back by hand, the others going on: their durables are past the 6 orders after the
    // backup, which they never apply.
    await stopAll([sys.history, sys.notification]);
    for (const name of ["history", "notification"]) {
      for (const f of ["", "-wal", "-shm"]) rmSync(join(sys.dir, `${name}.db${f}`), { force: true });
      copyFileSync(join(from, `${name}.db`), join(sys.dir, `${name}.db`));
    }
    let apps = await consumers();
    await ordersSettled(sys, "during", 2);
    await expect.poll(() => rows(sys, "history", VIEW).length, { timeout: 30_000 }).toBe(8);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(rows(sys, "history", VIEW).length, "the orders after the backup never come back").toBe(8);
    await stopAll(apps);

    // make restore: the same copies, and the durables made again.
    await ordersSettled(sys, "down", 2);
    for (const name of ["history", "notification"]) {
      const run = await restore(sys, name, from);
      expect(run.code, run.out).toBe(0);
      expect(run.out).toMatch(new RegExp(`deleted durable ${name}-order: made again at ${name}'s start`));
    }
    apps = await consumers();
    try {
      await caughtUp(sys);
      const all = rows(sys, "history", VIEW);
      expect(all.length).toBe(16);
      // Equal to what the never-restored consumers held, for every order they had seen...
      expect(all.filter((r) => view.some((v) => v.includes(JSON.parse(r).order_id)))).toEqual(view);
      // ... and each event notified once: the replay skipped what the copy had applied.
      const now = rows(sys, "notification", NOTIFIED);
      expect(now.filter((n) => notified.includes(n))).toEqual(notified);
      const counts = new Map<string, number>();
      for (const n of now) {
        const { order_id, kind } = JSON.parse(n) as { order_id: string; kind: string };
        counts.set(`${order_id} ${kind}`, (counts.get(`${order_id} ${kind}`) ?? 0) + 1);
      }
      expect([...counts].filter(([, c]) => c !== 1)).toEqual([]);
      expect(new Set(now.map((n) => JSON.parse(n).order_id)).size).toBe(16);
    } finally {
      await stopAll(apps);
    }
  }, 120_000);

  it("refuses the saga's services, a backup that is not one, and a history service running", async () => {
    await using sys = await startSystem();
    using empty = tempDir();
    const saga = await restore(sys, "payment", empty.path);
    expect(saga.code).toBe(2);
    expect(saga.out).toMatch(/order, inventory and payment are restored by hand/);
    const none = await restore(sys, "notification", empty.path);
    expect(none.code).toBe(1);
    expect(none.out).toMatch(/notification\.db does not exist/);
    using out = tempDir();
    expect((await backup(sys.dir, out.path)).code).toBe(0);
    const from = join(out.path, readdirSync(out.path)[0] as string);
    const running = await restore(sys, "history", from);
    expect(running.code).toBe(1);
    expect(running.out).toMatch(/in use by a history service/);
  }, 60_000);

  it("its output's reader gone (make restore | head -1): restores all the same, stops its NATS and exits 0 (died of EPIPE part-way, a stack trace, NATS left running)", async () => {
    using r = await historyRestore();
    const { data, port } = r;
    const child = spawn(process.execPath, built("scripts/restore.ts"), {
      env: { ...r.env, DB: "" },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    try {
      const code = exited(child);
      child.stdout.destroy();
      let err = "";
      child.stderr.on("data", (d: Buffer) => (err += d.toString()));
      expect(await code, err).toBe(0);
      expect(err).toBe("");
      expect(existsSync(join(data, "history.db")), "the copy put in place").toBe(true);
      expect(await answers("127.0.0.1", port), "the NATS it started is stopped").toBe(false);
    } finally {
      try {
        process.kill(-(child.pid ?? 0), "SIGKILL");
      } catch {}
    }
  }, 60_000);

  it("its terminal closed (SIGHUP to its process group) mid-restore: stops the NATS it started, changes nothing, says so and exits 129 (it died, NATS left running on make run's store)", async () => {
    using r = await historyRestore();
    const { code, out, natsLeft } = await signalledMidRestore(r, "SIGHUP");
    expect(code, out).toBe(129);
    expect(out).toContain("restore: ended by SIGHUP; nothing changed");
    expect(existsSync(join(r.data, "history.db")), "the live store untouched").toBe(false);
    expect(natsLeft, "the NATS it started is stopped").toBe(false);
  }, 60_000);

  it("its terminal closed and gone (SIGHUP, its output unwritable) mid-restore: stops the NATS it started and exits 129 (its last line's EPIPE ended it before that, exit 1, NATS left running)", async () => {
    using r = await historyRestore();
    const { code, natsLeft } = await signalledMidRestore(r, "SIGHUP", { outputGone: true });
    expect(code).toBe(129);
    expect(existsSync(join(r.data, "history.db")), "the live store untouched").toBe(false);
    expect(natsLeft, "the NATS it started is stopped").toBe(false);
  }, 60_000);

  it("Ctrl-C at its terminal (SIGINT to its process group) mid-restore: changes nothing, stops its NATS, says so and exits 130 (the NATS it started, in its group, died of the Ctrl-C and the restore waited for it for ever)", async () => {
    using r = await historyRestore();
    const { code, out, natsLeft } = await signalledMidRestore(r, "SIGINT");
    expect(code, out).toBe(130);
    expect(out).toContain("restore: ended by SIGINT; nothing changed");
    expect(existsSync(join(r.data, "history.db")), "the live store untouched").toBe(false);
    expect(natsLeft, "the NATS it started is stopped").toBe(false);
  }, 60_000);

  it("with make run stopped, starts its NATS for the restore and deletes the durables as the bus's administrator", async () => {
    using r = await historyRestore();
    const { data, port } = r;
    const madeRunNats = async () => {
      const child = spawn("nats-server", natsServerArgs(data, port), { stdio: ["ignore", "pipe", "pipe"] });
      await outputReady(child, "Server is ready", "nats-server", 10_000);
      const { NATS_USER = "", NATS_PASSWORD = "" } = localBusEnv(data, BUS_ADMIN);
      const bus = await connectBus(`nats://127.0.0.1:${port}`, "restore-test", silentLogger(), {
        streams: EVENTS.streams,
        ...busAuthOf({ NATS_USER, NATS_PASSWORD }),
      });
      return {
        bus,
        async [Symbol.asyncDispose]() {
          await bus.close();
          const done = exited(child);
          child.kill("SIGTERM");
          await done;
        },
      };
    };
    {
      await using nats = await madeRunNats();
      for (const durable of ["history-order", "notification-order"]) {
        await nats.bus.jsm.consumers.add("ORDER", { durable_name: durable, ack_policy: AckPolicy.Explicit });
      }
    }
    const { env } = r;
    const restored = await runToEnd(process.execPath, built("scripts/restore.ts"), { env });
    expect(restored.code, restored.out).toBe(0);
    expect(restored.out).toContain(`started NATS on port ${port} with make run's streams`);
    expect(restored.out).toContain("deleted durable history-order");
    expect(await answers("127.0.0.1", port), "the NATS it started is stopped").toBe(false);
    expect(existsSync(join(data, "history.db")), "the copy put in place").toBe(true);
    await using nats = await madeRunNats();
    const left = [];
    for await (const c of nats.bus.jsm.consumers.list("ORDER")) left.push(c.name);
    expect(left, "another service's durable is left as it was").toEqual(["notification-order"]);

    // While a make run holds the data directory: refused, nothing changed.
    const release = holdDataDir(data);
    try {
      const refused = await runToEnd(process.execPath, built("scripts/restore.ts"), { env });
      expect(refused.code).toBe(1);
      expect(refused.out).toMatch(/is using .*: stop it first/);
    } finally {
      if (typeof release === "function") release();
    }
  }, 60_000);
});
