/**
 * `make restore` with DB=postgres (scripts/restore-postgres.ts): the real system on a PostgreSQL of its
 * own (database shopmesh, a schema a service, as make run DB=postgres), backed up with make backup's
 * pg_dump, history's schema then lost and notification's rows with it; restored, both catch up on every
 * event since and end equal to consumers that never lost anything, no event applied twice. Then what an
 * operator may get wrong, each refused before anything changes.
 */
import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { connectBus } from "../platform/bus.js";
import { silentLogger } from "../platform/log.js";
import { holdDataDir, stopLeftovers } from "../scripts/data-dir.js";
import { answers } from "../scripts/nats.js";
import {
  clientTool,
  ensureDatabase,
  initCluster,
  ownDir,
  serverArgs,
  serverCommand,
  stopCluster,
  waitForPostgres,
} from "../scripts/postgres.js";
import { startHistory } from "../services/history/app.js";
import { loadConfig as historyConfig } from "../services/history/config.js";
import { HistoryStore } from "../services/history/store.js";
import { DEMO_CATALOGUE } from "../services/inventory/catalogue.js";
import { startNotification } from "../services/notification/app.js";
import { loadConfig as notificationConfig } from "../services/notification/config.js";
import { NotificationStore } from "../services/notification/store.js";
import { consumerSettled } from "./events.js";
import { built, exited, freePort, ROOT, runToEnd, tempDir } from "./fixtures.js";
import { startNats } from "./nats.js";
import { startPostgres } from "./postgres.js";
import { type System, startSystem } from "./system.js";

/** Runs `sqlText` on the database at `url`; its rows as JSON, sorted. */
async function rows(url: string, sqlText: string): Promise<string[]> {
  // Named as the order service's connections are, which the restore's check of who may use a consumer's
  // schema passes over: unnamed, a poll of the test's own (waiting for the restore to wait on a lock) was
  // counted by that check when the two met, and the restore refused ("1 connection(s) of (unnamed)").
  const client = new pg.Client({ connectionString: url, application_name: "shopmesh_order" });
  await client.connect();
  try {
    return (await client.query(sqlText)).rows.map((r) => JSON.stringify(r)).sort();
  } finally {
    await client.end();
  }
}
/**
 * The processes of process group `group` that a SIGINT sent to it has not reached yet: pending in
 * /proc/<pid>/status (SIGINT is signal 2, bit 1 of the masks). A process leaves the list once the signal
 * is delivered: ended by it, or in its handler.
 */
function sigintPending(group: number): number[] {
  const pending: number[] = [];
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      // After the command's name in parentheses: state, parent, process group.
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[2]) !== group) continue;
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      const masks = [...status.matchAll(/^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)$/gm)].map((m) => BigInt(`0x${m[1]}`));
      if (masks.some((mask) => (mask & 2n) !== 0n)) pending.push(Number(pid));
    } catch {
      // Ended between the listing and the read.
    }
  }
  return pending;
}

const VIEW = "SELECT * FROM shopmesh_history.order_history";
const NOTIFIED = "SELECT event_id, customer_id, order_id, kind, message FROM shopmesh_notification.notifications";

/** `scripts/<script>` with DB=postgres on the server at `port`, the data directory and NATS of `sys`. */
const command = (script: string, port: number, env: Record<string, string>) =>
  runToEnd(process.execPath, built(script), {
    env: { ...process.env, DB: "postgres", PG_PORT: String(port), ...env },
  });

/** Places `n` orders of both modes, some declined, as `customer`, and waits for each to end. */
async function ordersSettled(sys: System, customer: string, n: number): Promise<void> {
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const { order } = await sys.orders.placeOrder(
        {
          idempotencyKey: `${customer}-${i}`,
          items: [{ productId: DEMO_CATALOGUE[i % DEMO_CATALOGUE.length]?.id as string, quantity: 1 }],
          cardToken: i % 4 === 3 ? "tok_decline" : "tok_visa",
          sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
        },
        sys.as(customer),
      );
      await sys.settle(order?.id ?? "", customer);
    }),
  );
}

/** Waits until history and notification hold every ended order, every outbox is sent and their durables are settled. */
async function caughtUp(sys: System, url: string): Promise<void> {
  const ids = async (q: string) => (await rows(url, q)).map((r) => (JSON.parse(r) as { id: string }).id);
  const missing = async () => {
    const ended = await ids("SELECT id FROM shopmesh_order.orders WHERE status IN ('CONFIRMED', 'CANCELLED')");
    const viewed = new Set(
      await ids("SELECT order_id AS id FROM shopmesh_history.order_history WHERE status IN ('CONFIRMED', 'CANCELLED')"),
    );
    const told = new Set(
      await ids(
        "SELECT order_id AS id FROM shopmesh_notification.notifications WHERE kind IN ('ORDER_CONFIRMED', 'ORDER_CANCELLED')",
      ),
    );
    return ended.filter((id) => !viewed.has(id) || !told.has(id));
  };
  await expect.poll(missing, { timeout: 30_000, interval: 200 }).toEqual([]);
  const unsent = async () =>
    (
      await Promise.all(
        ["order", "inventory", "payment"].map((s) =>
          rows(url, `SELECT seq FROM shopmesh_${s}.outbox WHERE sent_at IS NULL`),
        ),
      )
    ).flat();
  await expect.poll(unsent, { timeout: 30_000, interval: 200 }).toEqual([]);
  const bus = await connectBus(sys.nats.url, "restore-test", silentLogger(), { streams: EVENTS.streams });
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

describe("make restore DB=postgres", () => {
  it("puts history's and notification's schemas back to a pg_dump and has them catch up on every event since, once", async () => {
    await using server = await startPostgres();
    const url = await ensureDatabase(server.url, "shopmesh");
    const onPg = { DATABASE_URL: url };
    await using sys = await startSystem({
      inventory: onPg,
      payment: onPg,
      order: onPg,
      notification: onPg,
      history: onPg,
    });
    using out = tempDir();
    const env = { GRPC_HOST: "127.0.0.1", GRPC_PORT: "0", SHUTDOWN_GRACE_MS: "2000", NATS_URL: sys.nats.url, ...onPg };
    const consumers = () =>
      Promise.all([
        startHistory(historyConfig(env), silentLogger()),
        startNotification(notificationConfig(env), silentLogger()),
      ]);
    const stopAll = (apps: readonly { stop(): Promise<void> }[]) => Promise.all(apps.map((a) => a.stop()));
    const where = { DATA_DIR: sys.dir, NATS_URL: sys.nats.url, BACKUP_DIR: out.path };

    await ordersSettled(sys, "before", 6);
    await caughtUp(sys, url);
    const made = await command("scripts/backup.ts", server.port, where);
    expect(made.code, made.out).toBe(0);
    const from = join(out.path, readdirSync(out.path)[0] as string);
    await ordersSettled(sys, "after", 6);
    await caughtUp(sys, url);
    // What consumers that never lost anything hold.
    const view = await rows(url, VIEW);
    const notified = await rows(url, NOTIFIED);
    expect(view.length).toBe(12);

    // Both stopped, then history's schema lost whole and notification's records: and orders go on.
    await stopAll([sys.history, sys.notification]);
    await rows(url, "DROP SCHEMA shopmesh_history CASCADE");
    await rows(url, "DELETE FROM shopmesh_notification.notifications");
    await ordersSettled(sys, "down", 2);
    for (const service of ["history", "notification"]) {
      const run = await command("scripts/restore.ts", server.port, { ...where, SERVICE: service, FROM: from });
      expect(run.code, run.out).toBe(0);
      expect(run.out).toMatch(new RegExp(`deleted durable ${service}-order: made again at ${service}'s start`));
      expect(run.out).toMatch(
        new RegExp(`schema shopmesh_${service} of make run's PostgreSQL .* is the backup's copy now`),
      );
    }
    expect((await rows(url, VIEW)).length, "history's schema is the backup's: the 6 orders before it").toBe(6);
    const apps = await consumers();
    try {
      await caughtUp(sys, url);
      const all = await rows(url, VIEW);
      expect(all.length).toBe(14);
      // Equal to what the never-restored consumers held, for every order they had seen...
      expect(all.filter((r) => view.some((v) => v.includes(JSON.parse(r).order_id)))).toEqual(view);
      // ... and each event notified once: the replay skipped what the copy had applied.
      const now = await rows(url, NOTIFIED);
      expect(now.filter((n) => notified.includes(n))).toEqual(notified);
      const counts = new Map<string, number>();
      for (const n of now) {
        const { order_id, kind } = JSON.parse(n) as { order_id: string; kind: string };
        counts.set(`${order_id} ${kind}`, (counts.get(`${order_id} ${kind}`) ?? 0) + 1);
      }
      expect([...counts].filter(([, c]) => c !== 1)).toEqual([]);
      expect(new Set(now.map((n) => JSON.parse(n).order_id)).size).toBe(14);
    } finally {
      await stopAll(apps);
    }
  }, 120_000);
});

/** Makes history's and notification's schemas in database `name` of `server` as their services do; its URL. */
async function storesIn(adminUrl: string, name: string): Promise<string> {
  const url = await ensureDatabase(adminUrl, name);
  const at = (schema: string) => ({ engine: "postgres", url, schema, poolSize: 1 }) as const;
  await (await HistoryStore.open(at("shopmesh_history"))).close();
  await (await NotificationStore.open(at("shopmesh_notification"))).close();
  return url;
}

/** pg_dump of the database at `url` into a backup directory `dir` (with backup.json, as make backup writes). */
function dumpInto(url: string, dir: string): string {
  mkdirSync(dir, { recursive: true });
  execFileSync(clientTool("pg_dump"), ["-Fc", "-f", join(dir, "shopmesh.dump"), url]);
  writeFileSync(join(dir, "backup.json"), JSON.stringify({ at: new Date().toISOString(), pgDump: "shopmesh.dump" }));
  return dir;
}

const MARK = `INSERT INTO shopmesh_history.order_history (order_id, items, reason, last_event_at, last_event_type, last_event_id)
  VALUES ('after-the-backup', '[]', '', 0, 'x', 'x')`;
const MARKED = "SELECT order_id FROM shopmesh_history.order_history WHERE order_id = 'after-the-backup'";

describe("make restore DB=postgres, given what will not do", () => {
  it("refuses each before it deletes a durable or touches the schema, saying what is wrong", async () => {
    await using server = await startPostgres();
    const url = await storesIn(server.url, "shopmesh");
    using out = tempDir();
    using data = tempDir();
    const good = dumpInto(url, join(out.path, "good"));
    await rows(url, MARK);
    const like = (name: string, spoil: (dir: string) => void) => {
      const dir = join(out.path, name);
      mkdirSync(dir);
      for (const f of readdirSync(good)) copyFileSync(join(good, f), join(dir, f));
      spoil(dir);
      return dir;
    };
    const other = await ensureDatabase(server.url, "other");
    await rows(other, "CREATE SCHEMA shopmesh_order");
    await rows(other, "CREATE TABLE shopmesh_order.orders (id TEXT)");
    const newer = await storesIn(server.url, "newer");
    await rows(newer, "UPDATE shopmesh_history.schema_version SET version = 99");
    // Notification's tables in history's schema.
    const mixed = await ensureDatabase(server.url, "mixed");
    await (
      await NotificationStore.open({ engine: "postgres", url: mixed, schema: "shopmesh_history", poolSize: 1 })
    ).close();
    // A view of 20 000 orders, its dump then cut short: its list of contents and first tables read well.
    const big = await storesIn(server.url, "big");
    await rows(
      big,
      `INSERT INTO shopmesh_history.order_history (order_id, items, reason, last_event_at, last_event_type, last_event_id)
        SELECT md5(g::text), '[]', '', 0, 'x', 'x' FROM generate_series(1, 20000) g`,
    );
    const cutShort = (dir: string) => {
      const file = join(dir, "shopmesh.dump");
      truncateSync(file, Math.floor(statSync(file).size * 0.9));
      return dir;
    };
    const cases: [string, string, string, RegExp][] = [
      [
        "history",
        "a SQLite backup",
        like("sqlite", (d) => {
          writeFileSync(join(d, "history.db"), "");
          execFileSync("rm", [join(d, "shopmesh.dump")]);
        }),
        /shopmesh\.dump does not exist: .*restore it without DB=postgres/,
      ],
      [
        "history",
        "no backup.json",
        like("bare", (d) => execFileSync("rm", [join(d, "backup.json")])),
        /no backup\.json/,
      ],
      [
        "history",
        "no dump",
        like("text", (d) => writeFileSync(join(d, "shopmesh.dump"), "hello")),
        /is not a dump make backup wrote, or is damaged: pg_restore: .*/,
      ],
      [
        "history",
        "a dump cut short",
        cutShort(dumpInto(big, join(out.path, "short"))),
        /shopmesh\.dump is damaged \(pg_restore: .*\): use another backup/,
      ],
      [
        "history",
        "another database's",
        dumpInto(other, join(out.path, "other")),
        /holds no schema shopmesh_history: it is no dump of make run's database/,
      ],
      [
        "history",
        "a newer schema",
        dumpInto(newer, join(out.path, "newer")),
        /schema shopmesh_history: its schema version 99 is newer than this build knows \(\d+\)/,
      ],
      [
        "history",
        "another service's tables",
        dumpInto(mixed, join(out.path, "mixed")),
        /schema shopmesh_history is not history's store: it holds tables .*notifications/,
      ],
    ];
    const env = { DATA_DIR: data.path, NATS_URL: "nats://192.0.2.1:4222" };
    for (const [service, what, from, said] of cases) {
      const run = await command("scripts/restore.ts", server.port, { ...env, SERVICE: service, FROM: from });
      expect(run.code, `${what}: ${run.out}`).toBe(1);
      expect(run.out, what).toMatch(said);
      expect(run.out, what).not.toMatch(/\n\s+at /); // no stack trace
    }
    const sqlite = await command("scripts/restore.ts", server.port, { ...env, DB: "", SERVICE: "history", FROM: good });
    expect(sqlite.out).toMatch(/history\.db does not exist: .*restore it with DB=postgres/);
    expect(sqlite.code).toBe(1);
    const saga = await command("scripts/restore.ts", server.port, { ...env, SERVICE: "payment", FROM: good });
    expect(saga.code).toBe(2);
    expect(saga.out).toMatch(/order, inventory and payment are restored by hand/);

    // A service using its schema, started by hand: history (its lock), notification (its connections).
    const appEnv = { GRPC_HOST: "127.0.0.1", GRPC_PORT: "0", SHUTDOWN_GRACE_MS: "2000", DATABASE_URL: url };
    const nats = await startNats();
    try {
      const history = await startHistory(historyConfig({ ...appEnv, NATS_URL: nats.url }), silentLogger());
      try {
        const run = await command("scripts/restore.ts", server.port, { ...env, SERVICE: "history", FROM: good });
        expect(run.code, run.out).toBe(1);
        expect(run.out).toMatch(/in use by a history service/);
      } finally {
        await history.stop();
      }
      // Nothing else connected as notification: the refusal below is the service's.
      const named = "SELECT pid FROM pg_stat_activity WHERE application_name = 'shopmesh_notification'";
      expect(await rows(url, named)).toEqual([]);
      const notification = await startNotification(
        notificationConfig({ ...appEnv, NATS_URL: nats.url }),
        silentLogger(),
      );
      try {
        const run = await command("scripts/restore.ts", server.port, { ...env, SERVICE: "notification", FROM: good });
        expect(run.code, run.out).toBe(1);
        expect(run.out).toMatch(
          /schema shopmesh_notification may be in use: \d+ connection\(s\) of shopmesh_notification \(a notification service,/,
        );
      } finally {
        await notification.stop();
      }
      // Its URL naming its connections (the URL's name wins), or a session of no service's: either may
      // use the schema, and were not seen (the restore went on to replace it under them).
      const urlNamed = new URL(url);
      urlNamed.searchParams.set("application_name", "notification-eu");
      const renamed = await startNotification(
        notificationConfig({ ...appEnv, DATABASE_URL: urlNamed.toString(), NATS_URL: nats.url }),
        silentLogger(),
      );
      try {
        const run = await command("scripts/restore.ts", server.port, { ...env, SERVICE: "notification", FROM: good });
        expect(run.code, run.out).toBe(1);
        expect(run.out).toMatch(/schema shopmesh_notification may be in use: \d+ connection\(s\) of notification-eu/);
      } finally {
        await renamed.stop();
      }
      const session = new pg.Client({ connectionString: url });
      await session.connect();
      try {
        await session.query("SET search_path TO shopmesh_notification");
        const run = await command("scripts/restore.ts", server.port, { ...env, SERVICE: "notification", FROM: good });
        expect(run.code, run.out).toBe(1);
        expect(run.out).toMatch(/schema shopmesh_notification may be in use: 1 connection\(s\) of \(unnamed\)/);
      } finally {
        await session.end();
      }
    } finally {
      await nats[Symbol.asyncDispose]();
    }
    expect(await rows(url, MARKED), "the live schema as it was").toHaveLength(1);
  }, 60_000);
});

describe("make restore DB=postgres with make run stopped", () => {
  it("starts make run's PostgreSQL and NATS for the restore and stops them after, refused or failed leaving the schema whole", async () => {
    using data = tempDir();
    using out = tempDir();
    // What a restore killed below started and left running on the data directory (its PostgreSQL, its
    // NATS) is stopped before the directory is removed, as the next restore would: also when the test
    // fails before that restore ran. Else both outlive the run, on a data directory deleted under them.
    await using _leftovers = {
      async [Symbol.asyncDispose]() {
        const release = holdDataDir(data.path);
        if (typeof release !== "function") return;
        try {
          await stopLeftovers(data.path, () => {});
        } finally {
          release();
        }
      },
    };
    ownDir(data.path);
    const pgData = join(data.path, "postgres");
    initCluster(pgData);
    const [port, natsPort] = [await freePort(), await freePort()];
    const admin = `postgres://postgres@127.0.0.1:${port}/postgres`;
    /** make run's PostgreSQL, as make run starts it (and stops it when it stops). */
    const upWhile = async <T>(fn: () => Promise<T>): Promise<T> => {
      const [cmd, args] = serverCommand("postgres", serverArgs(pgData, port, pgData, false));
      const child = spawn(cmd, args, { stdio: "ignore" });
      try {
        await waitForPostgres(admin);
        return await fn();
      } finally {
        const done = exited(child);
        stopCluster(pgData);
        await done;
      }
    };
    const env = { DATA_DIR: data.path, NATS_URL: `nats://127.0.0.1:${natsPort}`, BACKUP_DIR: out.path };
    const url = await upWhile(async () => {
      const made = await storesIn(admin, "shopmesh");
      const backup = await command("scripts/backup.ts", port, env);
      expect(backup.code, backup.out).toBe(0);
      await rows(made, MARK);
      return made;
    });
    const restore = { ...env, SERVICE: "history", FROM: join(out.path, readdirSync(out.path)[0] as string) };
    const bothStopped = async () => {
      expect(await answers("127.0.0.1", port), "the PostgreSQL it started is stopped").toBe(false);
      expect(await answers("127.0.0.1", natsPort), "the NATS it started is stopped").toBe(false);
    };

    // A NATS_USER/NATS_PASSWORD of another system's NATS left in the shell.
    const refused = await command("scripts/restore.ts", port, { ...restore, NATS_USER: "admin", NATS_PASSWORD: "no" });
    expect(refused.out).toMatch(/started PostgreSQL on port \d+ .*; it stops after the restore/);
    expect(refused.out).toMatch(
      /cannot reach NATS at .* as its administrator: .*Authorization Violation.*nothing changed/,
    );
    expect(refused.code).toBe(1);
    await bothStopped();
    expect(await upWhile(() => rows(url, MARKED)), "the live schema as it was").toHaveLength(1);

    // A session left in a transaction on the schema: refused before a durable is deleted (a psql's may use
    // it); one the check cannot tell from another service's makes the restore wait 10 s for its lock,
    // then fail, undone.
    await upWhile(async () => {
      for (const name of ["", "shopmesh_order"]) {
        const idle = new pg.Client({ connectionString: url, application_name: name });
        await idle.connect();
        try {
          await idle.query("BEGIN; LOCK TABLE shopmesh_history.order_history IN ACCESS SHARE MODE");
          const failed = await command("scripts/restore.ts", port, restore);
          expect(failed.out).toMatch(
            name
              ? /restore failed: .*lock timeout.*; history's store is still the old one, whole/
              : /restore: schema shopmesh_history may be in use: 1 connection\(s\) of \(unnamed\)/,
          );
          expect(failed.code).toBe(1);
        } finally {
          await idle.end();
        }
      }
      expect(await rows(url, MARKED), "the live schema as it was").toHaveLength(1);
    });

    const restored = await command("scripts/restore.ts", port, restore);
    expect(restored.code, restored.out).toBe(0);
    expect(restored.out).toMatch(/started PostgreSQL on port \d+ .*; it stops after the restore/);
    expect(restored.out).toMatch(/started NATS on port \d+ with make run's streams/);
    expect(restored.out).toMatch(/schema shopmesh_history of make run's PostgreSQL .* is the backup's copy now/);
    await bothStopped();
    expect(await upWhile(() => rows(url, MARKED)), "the backup's schema, without what came after").toEqual([]);

    // Something else on PG_PORT: said, no stack trace.
    const squatter = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => squatter.listen(port, "127.0.0.1", resolve));
    try {
      const got = await command("scripts/restore.ts", port, restore);
      expect(got.out).toMatch(/what answers on 127\.0\.0\.1:\d+ \(PG_PORT\) is no PostgreSQL of make run's/);
      expect(got.out).not.toMatch(/\n\s+at /);
      expect(got.code).toBe(1);
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }

    // Another cluster on PG_PORT (another checkout's make run, one started by hand): not make run's database,
    // which was restored as it was, exit 0.
    using elsewhere = tempDir();
    ownDir(elsewhere.path);
    const otherData = join(elsewhere.path, "postgres");
    initCluster(otherData);
    const [oCmd, oArgs] = serverCommand("postgres", serverArgs(otherData, port, otherData, false));
    const other = spawn(oCmd, oArgs, { stdio: "ignore" });
    try {
      await waitForPostgres(admin);
      const theirs = await storesIn(admin, "shopmesh");
      await rows(theirs, MARK);
      const wrong = await command("scripts/restore.ts", port, restore);
      expect(wrong.out).toMatch(
        /what answers on 127\.0\.0\.1:\d+ \(PG_PORT\) is another PostgreSQL \(data .*\), not make run's \(.*postgres\)/,
      );
      expect(wrong.code).toBe(1);
      expect(await rows(theirs, MARKED), "the other's schema as it was").toHaveLength(1);
    } finally {
      const done = exited(other);
      stopCluster(otherData);
      await done;
    }

    // Killed (SIGKILL: no finally) once it has started PostgreSQL: the next restore stops that server
    // (it was left running on the data directory) and restores, then stops what it started.
    const killed = spawn(process.execPath, built("scripts/restore.ts"), {
      env: { ...process.env, DB: "postgres", PG_PORT: String(port), ...restore },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const ended = exited(killed);
    let said = "";
    killed.stdout.on("data", (d: Buffer) => (said += d.toString()));
    await expect.poll(() => said, { timeout: 30_000 }).toMatch(/started PostgreSQL on port/);
    killed.kill("SIGKILL");
    await ended;
    expect(await answers("127.0.0.1", port), "the killed restore's PostgreSQL, left running").toBe(true);
    const again = await command("scripts/restore.ts", port, restore);
    expect(again.out).toMatch(/stopping postgres \(pid \d+\), left running on .* by a holder that was killed/);
    expect(again.code, again.out).toBe(0);
    await bothStopped();
  }, 120_000);
});

describe("make restore DB=postgres on the deployment's roles", () => {
  it("leaves the schema and its tables owned by the service's role, which runs on them as before", async () => {
    await using server = await startPostgres();
    const url = await ensureDatabase(server.url, "shopmesh");
    // The deployment's roles.sh: notification's role owns its schema, and is no superuser.
    execFileSync(
      "bash",
      ["-c", `set -Eeo pipefail\n${readFileSync(join(ROOT, "deploy/kubernetes/base/postgres/roles.sh"), "utf8")}`],
      {
        env: {
          ...process.env,
          ...Object.fromEntries(
            ["inventory", "payment", "order", "notification", "history"].map((s) => [
              `${s.toUpperCase()}_DB_PASSWORD`,
              "pw",
            ]),
          ),
          POSTGRES_USER: "postgres",
          POSTGRES_DB: "shopmesh",
          PGHOST: "127.0.0.1",
          PGPORT: String(server.port),
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const asRole = new URL(url);
    asRole.username = "notification";
    asRole.password = "pw";
    const at = { engine: "postgres", url: asRole.toString(), schema: "shopmesh_notification", poolSize: 1 } as const;
    await (await NotificationStore.open(at)).close();
    const owners = () =>
      rows(
        url,
        `SELECT nspowner::regrole::text AS owner FROM pg_namespace WHERE nspname = 'shopmesh_notification'
          UNION ALL SELECT tableowner FROM pg_tables WHERE schemaname = 'shopmesh_notification'`,
      );
    const before = await owners();
    expect(new Set(before)).toEqual(new Set([JSON.stringify({ owner: "notification" })]));
    using out = tempDir();
    using data = tempDir();
    const from = dumpInto(url, join(out.path, "roles"));
    await using nats = await startNats();
    const run = await command("scripts/restore.ts", server.port, {
      DATA_DIR: data.path,
      NATS_URL: nats.url,
      SERVICE: "notification",
      FROM: from,
    });
    expect(run.code, run.out).toBe(0);
    expect(await owners()).toEqual(before);
    // The service, as its role, on the restored schema: it was "permission denied for schema".
    const store = await NotificationStore.open(at);
    await store.close();
    expect(await rows(asRole.toString(), "SELECT count(*)::int AS n FROM shopmesh_notification.notifications")).toEqual(
      [JSON.stringify({ n: 0 })],
    );
  }, 60_000);
});

/** How long a command may take to reach a lock wait (a loaded machine: its checks read the dump thrice). */
const WAIT = { timeout: 30_000, interval: 100 };
/** `run`'s output once it has ended (it should not have: the poll then fails showing it), else undefined. */
const settled = (run: Promise<{ out: string }>) =>
  Promise.race([run.then((r) => r.out), new Promise<undefined>((r) => setImmediate(() => r(undefined)))]);

describe("make restore DB=postgres while a make backup dumps", () => {
  it("a pg_dump begun during the replace undoes it, and copies the schema as it was, whole", async () => {
    await using server = await startPostgres();
    const url = await storesIn(server.url, "shopmesh");
    await rows(
      url,
      `INSERT INTO shopmesh_history.order_history (order_id, items, reason, last_event_at, last_event_type, last_event_id)
        SELECT 'o' || g, '[]', '', 0, 'x', 'x' FROM generate_series(1, 3) g`,
    );
    using out = tempDir();
    using data = tempDir();
    const good = dumpInto(url, join(out.path, "good"));
    await rows(url, MARK);
    await using nats = await startNats();
    const where = { DATA_DIR: data.path, NATS_URL: nats.url };
    const waiting = (name: string) =>
      rows(url, `SELECT pid FROM pg_stat_activity WHERE application_name = '${name}' AND wait_event_type = 'Lock'`);
    // A session the check takes for order's holds a lock on the view: the restore's DROP waits for it,
    // and a make backup begun then waits behind the DROP, its snapshot taken before the COMMIT.
    const holder = new pg.Client({ connectionString: url, application_name: "shopmesh_order" });
    holder.on("error", () => {}); // the server stopped under it when the test fails
    await holder.connect();
    await holder.query("BEGIN; LOCK TABLE shopmesh_history.order_history IN ACCESS SHARE MODE");
    const restore = command("scripts/restore.ts", server.port, { ...where, SERVICE: "history", FROM: good });
    await expect.poll(async () => (await settled(restore)) ?? (await waiting("shopmesh-restore")).length, WAIT).toBe(1);
    const during = join(out.path, "during");
    const backup = command("scripts/backup.ts", server.port, { ...where, BACKUP_DIR: during });
    await expect.poll(async () => (await settled(backup)) ?? (await waiting("pg_dump")).length, WAIT).toBe(1);
    await holder.end();
    const [restored, backedUp] = await Promise.all([restore, backup]);
    // Committed under it, the dump failed (its snapshot's tables gone: "cache lookup failed"), or, of
    // tables without constraints or indexes, wrote them empty, exit 0 (tried by hand).
    expect(restored.out).toMatch(/restore failed: .*schema shopmesh_history came into use during the restore/);
    expect(restored.code).toBe(1);
    expect(await rows(url, MARKED), "the live schema as it was").toHaveLength(1);
    expect(backedUp.code, backedUp.out).toBe(0);
    const dump = join(during, readdirSync(during)[0] as string, "shopmesh.dump");
    const script = execFileSync(
      clientTool("pg_restore"),
      ["-a", "-n", "shopmesh_history", "-t", "order_history", "-f", "-", dump],
      {
        encoding: "utf8",
      },
    ).split("\n");
    const copyAt = script.findIndex((l) => l.startsWith("COPY shopmesh_history.order_history "));
    expect(script.indexOf("\\.", copyAt) - copyAt - 1, "its view's rows: 3 and the mark").toBe(4);
  }, 60_000);
});

describe("make restore DB=postgres with its pg_restore killed mid-script", () => {
  it("sends no COMMIT: the old schema stays whole and the restore fails, saying so", async () => {
    await using server = await startPostgres();
    const url = await storesIn(server.url, "shopmesh");
    // A view big enough that pg_restore is still writing, held back by psql, when it is killed.
    await rows(
      url,
      `INSERT INTO shopmesh_history.order_history (order_id, items, reason, last_event_at, last_event_type, last_event_id)
        SELECT md5(g::text), repeat('x', 200), '', 0, 'x', 'x' FROM generate_series(1, 300000) g`,
    );
    using out = tempDir();
    using data = tempDir();
    const good = dumpInto(url, join(out.path, "big"));
    await rows(url, MARK);
    await using nats = await startNats();
    const restore = command("scripts/restore.ts", server.port, {
      DATA_DIR: data.path,
      NATS_URL: nats.url,
      SERVICE: "history",
      FROM: good,
    });
    // The restore's pg_restore writing the script (`-f -`), not its checks (`-f /dev/null`, `-l`).
    const writing = () =>
      execFileSync("ps", ["-eo", "pid=,args="], { encoding: "utf8" })
        .split("\n")
        .filter((l) => l.includes("pg_restore --no-owner") && l.includes(good))
        .map((l) => Number.parseInt(l.trim(), 10));
    await expect.poll(writing, { timeout: 30_000, interval: 20 }).toHaveLength(1);
    process.kill(writing()[0] as number, "SIGKILL");
    const run = await restore;
    expect(run.out).toMatch(
      /restore failed: restoring schema shopmesh_history .*; history's store is still the old one, whole/,
    );
    expect(run.code).toBe(1);
    expect(await rows(url, MARKED), "the live schema as it was").toHaveLength(1);
    expect(await rows(url, "SELECT count(*)::int AS n FROM shopmesh_history.order_history")).toEqual([
      JSON.stringify({ n: 300001 }),
    ]);
  }, 120_000);
});

describe("make restore DB=postgres with a service started while it replaces the schema", () => {
  it("undoes the replace: the service came after the check, and would have run on a schema swapped under it", async () => {
    await using server = await startPostgres();
    const url = await storesIn(server.url, "shopmesh");
    using out = tempDir();
    using data = tempDir();
    const good = dumpInto(url, join(out.path, "good"));
    await rows(url, "CREATE TABLE shopmesh_notification.after_the_backup (x INT)");
    await using nats = await startNats();
    // A session the check takes for order's holds a lock: the restore's DROP waits for it.
    const holder = new pg.Client({ connectionString: url, application_name: "shopmesh_order" });
    holder.on("error", () => {}); // the server stopped under it when the test fails
    await holder.connect();
    await holder.query("BEGIN; LOCK TABLE shopmesh_notification.notifications IN ACCESS SHARE MODE");
    const restore = command("scripts/restore.ts", server.port, {
      DATA_DIR: data.path,
      NATS_URL: nats.url,
      SERVICE: "notification",
      FROM: good,
    });
    const waiting =
      "SELECT pid FROM pg_stat_activity WHERE application_name = 'shopmesh-restore' AND wait_event_type = 'Lock'";
    await expect.poll(async () => (await settled(restore)) ?? (await rows(url, waiting)).length, WAIT).toBe(1);
    // Notification starting now (its connections carry its schema's name), past the restore's check.
    const started = new pg.Client({ connectionString: url, application_name: "shopmesh_notification" });
    await started.connect();
    try {
      await holder.end();
      const run = await restore;
      expect(run.out).toMatch(/restore failed: .*schema shopmesh_notification came into use during the restore/);
      expect(run.code).toBe(1);
    } finally {
      await started.end();
    }
    expect(await rows(url, "SELECT to_regclass('shopmesh_notification.after_the_backup') IS NOT NULL AS kept")).toEqual(
      [JSON.stringify({ kept: true })],
    );
  }, 60_000);
});

describe("make restore DB=postgres, Ctrl-C at its terminal during the replace", () => {
  it("lets the replace finish, as on SQLite: the schema is the backup's and the restore exits 0 (psql, in the restore's process group, died of the Ctrl-C and the restore failed)", async () => {
    await using server = await startPostgres();
    const url = await storesIn(server.url, "shopmesh");
    using out = tempDir();
    using data = tempDir();
    const good = dumpInto(url, join(out.path, "good"));
    await rows(url, MARK);
    await using nats = await startNats();
    // A session the check takes for order's holds a lock on the view: the restore's DROP waits for it,
    // so the Ctrl-C comes while the replace is under way.
    const holder = new pg.Client({ connectionString: url, application_name: "shopmesh_order" });
    holder.on("error", () => {}); // the server stopped under it when the test fails
    await holder.connect();
    await holder.query("BEGIN; LOCK TABLE shopmesh_history.order_history IN ACCESS SHARE MODE");
    let group = 0;
    const restore = runToEnd(process.execPath, built("scripts/restore.ts"), {
      env: {
        ...process.env,
        DB: "postgres",
        PG_PORT: String(server.port),
        DATA_DIR: data.path,
        NATS_URL: nats.url,
        SERVICE: "history",
        FROM: good,
      },
      detached: true, // as a terminal's job: a process group of its own, which a Ctrl-C reaches whole
      onStart: (child) => (group = child.pid ?? 0),
    });
    try {
      const waiting =
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'shopmesh-restore' AND wait_event_type = 'Lock'";
      await expect.poll(async () => (await settled(restore)) ?? (await rows(url, waiting)).length, WAIT).toBe(1);
      process.kill(-group, "SIGINT");
      // The lock let go only once the Ctrl-C has reached each process of the restore's group: before,
      // the replace could end before a process it would kill (a psql in the group) had it.
      await expect.poll(() => sigintPending(group), WAIT).toEqual([]);
      await holder.end();
      const run = await restore;
      expect(run.out).toContain("is the backup's copy now");
      expect(run.code, run.out).toBe(0);
      expect(await rows(url, MARKED), "the backup's schema").toHaveLength(0);
    } finally {
      try {
        process.kill(-group, "SIGKILL");
      } catch {}
    }
  }, 60_000);
});
