/**
 * `make history-rebuild` as the docs run it, with `make run` stopped: it
 * starts make run's NATS on make run's streams (DATA_DIR/nats) for the
 * rebuild and stops it after (it used to fail: nothing answered at 4222);
 * when NATS is up it uses it and leaves it running. With DB=postgres it
 * does the same for make run's PostgreSQL, on that mode's own streams
 * (DATA_DIR/nats/postgres).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, existsSync, lstatSync, mkdirSync, realpathSync, statSync, symlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterEach, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { OrderConfirmedSchema, OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { busAuthOf, connectBus } from "../platform/bus.js";
import { BUS_ADMIN } from "../platform/bus-access.js";
import { silentLogger } from "../platform/log.js";
import { answers, localBusEnv, natsServerArgs } from "../scripts/nats.js";
import { ownDir } from "../scripts/postgres.js";
import { asideOf, lockRebuild } from "../services/history/rebuild-aside.js";
import { HistoryStore } from "../services/history/store.js";
import { snapshot, withDb } from "./db.js";
import { event, publishEvents, until } from "./events.js";
import { built, exited, freePort, outputReady, runToEnd, tempDir } from "./fixtures.js";

const groups: ChildProcess[] = [];
afterEach(() => {
  for (const c of groups.splice(0)) {
    try {
      process.kill(-(c.pid ?? 0), "SIGKILL");
    } catch {}
  }
});

/** make run's NATS, as scripts/run.ts starts it for database `db`, on `dataDir` and `port`; stops on dispose. */
async function runNats(dataDir: string, port: number, db = "sqlite") {
  const child = spawn("nats-server", natsServerArgs(dataDir, port, undefined, db), {
    stdio: ["ignore", "pipe", "pipe"],
  });
  await outputReady(child, "Server is ready", "nats-server", 10_000);
  return {
    url: `nats://127.0.0.1:${port}`,
    async [Symbol.asyncDispose]() {
      const done = exited(child);
      child.kill("SIGTERM");
      await done;
    },
  };
}

/**
 * `make -s history-rebuild` with `env` and no inherited database or bus variables; node_modules counts
 * as installed (a make here must not start `npm ci` under the suites running beside it).
 */
/** This process's environment without what chooses a bus or a database, so that `env` alone does. */
function cleanEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const base = { ...process.env };
  for (const k of ["NATS_URL", "NATS_PORT", "DB", "DB_PATH", "DATABASE_URL", "PG_PORT"]) delete base[k];
  return { ...base, ...env };
}

async function makeRebuild(env: Record<string, string>): Promise<{ code: number | string; out: string }> {
  return runToEnd("make", ["-s", "-o", "node_modules/.package-lock.json", "history-rebuild"], {
    env: cleanEnv(env),
    detached: true,
    onStart: (child) => groups.push(child),
  });
}

/** The rebuild's script started as a terminal's job would be: a process group of its own, output piped. */
function spawnRebuild(env: Record<string, string>) {
  const child = spawn(process.execPath, built("scripts/history-rebuild.ts"), {
    env: cleanEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  groups.push(child);
  return child;
}

/** Stores one confirmed order on the streams of make run's NATS on `dataDir` at `url`, as its administrator. */
async function storeOrder(url: string, dataDir: string, orderId: string): Promise<void> {
  const { NATS_USER = "", NATS_PASSWORD = "" } = localBusEnv(dataDir, BUS_ADMIN);
  const bus = await connectBus(url, "history-rebuild-test", silentLogger(), {
    streams: EVENTS.streams,
    ...busAuthOf({ NATS_USER, NATS_PASSWORD }),
  });
  try {
    await publishEvents(bus, [
      event(OrderPlacedSchema, orderId, { customerId: "lea", items: [{ productId: "paper-filters", quantity: 1 }] }),
      event(OrderConfirmedSchema, orderId, { customerId: "lea", total: { currencyCode: "USD", amountMinor: 400n } }),
    ]);
  } finally {
    await bus.close();
  }
}

/** Stores on ORDER an OrderPlaced whose payload no decoder reads, as make run's bus administrator. */
async function storePoison(url: string, dataDir: string): Promise<void> {
  const { NATS_USER = "", NATS_PASSWORD = "" } = localBusEnv(dataDir, BUS_ADMIN);
  const bus = await connectBus(url, "history-rebuild-test", silentLogger(), {
    streams: EVENTS.streams,
    ...busAuthOf({ NATS_USER, NATS_PASSWORD }),
  });
  try {
    const h = natsHeaders();
    h.set("ce-type", "shopmesh.order.v1.OrderPlaced");
    h.set("ce-id", "evt_poison");
    await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff]), { headers: h });
  } finally {
    await bus.close();
  }
}

describe("make history-rebuild", () => {
  it("with make run stopped, starts make run's NATS on its streams for the rebuild and stops it after", async () => {
    using dir = tempDir();
    const port = await freePort();
    {
      await using nats = await runNats(dir.path, port);
      await storeOrder(nats.url, dir.path, "ord-r1");
    }
    expect(await answers("127.0.0.1", port)).toBe(false);

    const run = await makeRebuild({ DATA_DIR: dir.path, NATS_PORT: String(port) });
    expect(run.code, run.out).toBe(0);
    expect(run.out).toContain(`started NATS on port ${port} with make run's streams (${join(dir.path, "nats")})`);
    expect(run.out).toContain("ORDER: 2 events (2 applied, 0 duplicates, 0 skipped)");
    expect(run.out).toMatch(/total: 2 events .*; 1 orders in the view/);
    expect(await answers("127.0.0.1", port)).toBe(false);
    const view = await withDb({ engine: "sqlite", path: join(dir.path, "history.db") }, (db) =>
      snapshot(db, ["order_history"]),
    );
    expect(view).toContain("ord-r1");

    // With make run's NATS up, the rebuild uses it and leaves it running.
    await using nats = await runNats(dir.path, port);
    await storeOrder(nats.url, dir.path, "ord-r2");
    await storePoison(nats.url, dir.path);
    const again = await makeRebuild({ DATA_DIR: dir.path, NATS_PORT: String(port) });
    expect(again.code, again.out).toBe(0);
    expect(again.out).not.toContain("started NATS");
    expect(again.out).toMatch(/; 2 orders in the view/);
    // The event it skips is said in a line for people, as its own lines are: it was a pino JSON object.
    expect(again.out).toContain("1 skipped");
    expect(again.out).toMatch(/^\[[\d:.]+\] WARN: event skipped \{"stream":"ORDER","seq":5,"reason":"undecodable /m);
    expect(again.out).not.toMatch(/^\{"level"/m);
    expect(await answers("127.0.0.1", port)).toBe(true);
  }, 90_000);

  it("its output's reader gone (make history-rebuild | head -1): rebuilds all the same, stops its NATS and exits 0 (died of EPIPE, a stack trace, NATS left running)", async () => {
    using dir = tempDir();
    const port = await freePort();
    {
      await using nats = await runNats(dir.path, port);
      await storeOrder(nats.url, dir.path, "ord-p1");
    }
    const child = spawnRebuild({ DATA_DIR: dir.path, NATS_PORT: String(port) });
    const code = exited(child);
    child.stdout.destroy();
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    expect(await code, err).toBe(0);
    expect(err).toBe("");
    expect(await answers("127.0.0.1", port), "its NATS stopped").toBe(false);
    const view = await withDb({ engine: "sqlite", path: join(dir.path, "history.db") }, (db) =>
      snapshot(db, ["order_history"]),
    );
    expect(view).toContain("ord-p1");
  }, 60_000);

  it("its terminal closed (SIGHUP to its process group) mid-rebuild: stops the NATS it started, says so and exits 129 (it died, NATS left running on make run's store)", async () => {
    using dir = tempDir();
    const port = await freePort();
    {
      await using nats = await runNats(dir.path, port);
      await storeOrder(nats.url, dir.path, "ord-h1");
    }
    // As a terminal's foreground job: a process group of its own, which the hang-up reaches whole.
    const child = spawnRebuild({ DATA_DIR: dir.path, NATS_PORT: String(port) });
    const code = exited(child);
    await outputReady(child, "started NATS", "make history-rebuild", 20_000);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    process.kill(-(child.pid ?? 0), "SIGHUP");
    expect(await code, out).toBe(129);
    expect(out).toMatch(/history rebuild: ended by SIGHUP/);
    expect(
      await until(
        () => answers("127.0.0.1", port),
        (up) => !up,
        5_000,
      ),
      "its NATS stopped",
    ).toBe(false);
  }, 60_000);

  it("never leaves a part-built view: one killed part-way leaves the view as it was; one at a time; none that lost orders unless told", async () => {
    using dir = tempDir();
    const port = await freePort();
    const env = { DATA_DIR: dir.path, NATS_PORT: String(port) };
    const history = { engine: "sqlite", path: join(dir.path, "history.db") } as const;
    const view = () => withDb(history, (db) => snapshot(db, ["order_history"]));
    await using nats = await runNats(dir.path, port);
    await storeOrder(nats.url, dir.path, "ord-k1");
    expect((await makeRebuild(env)).code).toBe(0);
    const before = await view();
    expect(before).toContain("ord-k1");

    // Killed after 3 of ORDER's 6 events: the view it replaces stays whole (it used to be emptied first).
    await storeOrder(nats.url, dir.path, "ord-k2");
    await storeOrder(nats.url, dir.path, "ord-k3");
    const killed = await makeRebuild({ ...env, FAULT_REBUILD_CRASH_AFTER: "3" });
    expect(killed.code, killed.out).not.toBe(0);
    expect(killed.out).toContain("ended by SIGKILL part-way; the view is the old one");
    expect(await view()).toEqual(before);

    // Another rebuild running (this process holds its lock, as it would): refused, nothing touched.
    const held = await lockRebuild(history);
    try {
      const second = await makeRebuild(env);
      expect(second.code, second.out).not.toBe(0);
      expect(second.out).toContain(
        `history rebuild refused: the view ${history.path} is in use by a history service or another rebuild`,
      );
      expect(await view()).toEqual(before);
    } finally {
      await held.release();
    }
    // The killed rebuild's lock went with its process.
    const done = await makeRebuild(env);
    expect(done.code, done.out).toBe(0);
    expect(done.out).toMatch(/; 3 orders in the view, now /);
    for (const id of ["ord-k1", "ord-k2", "ord-k3"]) expect(await view()).toContain(id);
    const rebuilt = await view();

    // ORDER's events aged out (its retention cut to a second here): the view rebuilt from what is left
    // would lack those orders, so it is not swapped in unless ALLOW_LOSS=1.
    const { NATS_USER = "", NATS_PASSWORD = "" } = localBusEnv(dir.path, BUS_ADMIN);
    const bus = await connectBus(nats.url, "history-rebuild-test", silentLogger(), {
      ...busAuthOf({ NATS_USER, NATS_PASSWORD }),
    });
    try {
      const { config } = await bus.jsm.streams.info("ORDER");
      await bus.jsm.streams.update("ORDER", { ...config, max_age: 1e9, duplicate_window: 1e9 });
      await until(
        async () => (await bus.jsm.streams.info("ORDER")).state.first_seq,
        (seq) => seq > 1,
        10_000,
      );
    } finally {
      await bus.close();
    }
    const aged = await makeRebuild(env);
    expect(aged.code, aged.out).not.toBe(0);
    expect(aged.out).toMatch(/history rebuild refused: the rebuilt view lacks 3 of the view's orders/);
    expect(await view()).toEqual(rebuilt);
    expect(existsSync(`${history.path}.rebuilding`)).toBe(false);
    const lossy = await makeRebuild({ ...env, ALLOW_LOSS: "1" });
    expect(lossy.code, lossy.out).toBe(0);
    expect(lossy.out).toMatch(/; 0 orders in the view, now .* \(3 of the old view's dropped or cut: ALLOW_LOSS=1\)/);
  }, 180_000);

  it("a view whose DB_PATH is a link is replaced where the link points, the link kept and the file's mode too", async () => {
    using dir = tempDir();
    const file = join(realpathSync(dir.path), "disk", "history.db"); // where /tmp is itself a link, too
    mkdirSync(dirname(file));
    const link = join(dir.path, "history.db");
    symlinkSync(file, link);
    const live = { engine: "sqlite" as const, path: link };
    const placed = (orderId: string) => ({
      eventId: `evt_${orderId}`,
      type: "shopmesh.order.v1.OrderPlaced",
      orderId,
      occurredAt: 1,
      customerId: "kim",
      status: "PENDING" as const,
    });
    const write = async (location: { engine: "sqlite"; path: string }, orderId: string) => {
      const store = await HistoryStore.open(location);
      await store.apply(placed(orderId));
      await store.close();
    };
    await write(live, "ord-old");
    chmodSync(file, 0o600);
    const aside = asideOf(live);
    expect(aside).toEqual({ engine: "sqlite", path: `${file}.rebuilding` }); // beside the file: a rename, not a copy
    // A link to nothing: built beside the link, the view was then swapped beside the file the check made.
    const nowhere = join(dir.path, "nowhere.db");
    symlinkSync(join(dir.path, "disk", "missing.db"), nowhere);
    expect(() => asideOf({ engine: "sqlite", path: nowhere })).toThrow(/DB_PATH .*nowhere\.db is a link to nothing/);
    await write(aside as typeof live, "ord-new");
    const lock = await lockRebuild(live);
    try {
      await lock.swapIn(aside);
    } finally {
      await lock.release();
    }
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(existsSync(`${file}.rebuilding`)).toBe(false);
    const view = await HistoryStore.open(live);
    try {
      expect((await view.all()).map((v) => v.orderId)).toEqual(["ord-new"]);
    } finally {
      await view.close();
    }
  });

  it("with DB=postgres, starts make run's PostgreSQL too when it is down, and stops it after; its streams are its own", async () => {
    using dir = tempDir();
    ownDir(dir.path); // as root, PostgreSQL runs as its own user, which must reach its data dir (make run's is .data)
    const port = await freePort();
    const pgPort = await freePort();
    // An order of each mode, on each mode's streams: the SQLite one must not reach PostgreSQL's view.
    for (const [db, orderId] of [
      ["sqlite", "ord-sq1"],
      ["postgres", "ord-pg1"],
    ] as const) {
      await using nats = await runNats(dir.path, port, db);
      await storeOrder(nats.url, dir.path, orderId);
    }
    const env = { DATA_DIR: dir.path, NATS_PORT: String(port), DB: "postgres", PG_PORT: String(pgPort) };
    const run = await makeRebuild(env);
    expect(run.code, run.out).toBe(0);
    expect(run.out).toContain(`started PostgreSQL on port ${pgPort}`);
    expect(run.out).toContain(`with make run's streams (${join(dir.path, "nats", "postgres")})`);
    expect(run.out).toContain("rebuilding schema shopmesh_history from");
    expect(run.out).toMatch(/; 1 orders in the view/);
    expect(await answers("127.0.0.1", pgPort)).toBe(false);
    expect(await answers("127.0.0.1", port)).toBe(false);
  }, 120_000);
});
