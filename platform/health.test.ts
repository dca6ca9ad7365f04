/**
 * Readiness (health.ts) against a real PostgreSQL behind a TCP proxy that can silently drop what its
 * open connections carry, as a partition or a lost NAT entry does: the pooled connection's statement
 * then gets no answer and no error for as long as the operating system keeps retransmitting (minutes).
 */
import net from "node:net";
import { sql } from "kysely";
import pgLib from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { tempDir } from "../test/fixtures.js";
import { startPostgres, type TestPostgres } from "../test/postgres.js";
import { migrations, openDatabase } from "./db.js";
import { isDatabaseUnavailable } from "./db-errors.js";
import { watchReadiness } from "./health.js";
import { silentLogger } from "./log.js";
import type { Db } from "./sql.js";

/** A proxy to `port`; `silence()` drops, from then on, everything its connections open now carry. */
async function silencingProxy(port: number) {
  const open = new Set<{ silent: boolean }>();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const conn = { silent: false };
    open.add(conn);
    const up = net.connect(port, "127.0.0.1");
    for (const s of [client, up]) {
      sockets.add(s);
      s.on("error", () => {});
    }
    client.on("data", (d) => conn.silent || up.write(d));
    up.on("data", (d) => conn.silent || client.write(d));
    client.on("close", () => up.destroy());
    up.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    silence: () => {
      for (const c of open) c.silent = true;
    },
    close: () => {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

let pg: TestPostgres;
let proxy: Awaited<ReturnType<typeof silencingProxy>>;
let db: Db;
beforeAll(async () => {
  pg = await startPostgres();
  const direct = new URL(await pg.createDatabase("health"));
  proxy = await silencingProxy(Number(direct.port));
  direct.port = String(proxy.port);
  db = await openDatabase({ engine: "postgres", url: direct.href, schema: "s", poolSize: 4 }, migrations([]));
}, 60_000);
afterAll(async () => {
  proxy?.close();
  await db?.close().catch(() => {});
  await pg?.[Symbol.asyncDispose]();
});

// The ping's wait on PostgreSQL: 1 s, not less. A ping answered while this process stood still for
// longer than its wait (a busy machine, a collection) reads as unanswered once it runs again: a
// readiness change no database caused (shown with an injected stall at 500 ms).
const WAIT_MS = 1_000;

// Found (review, 2026-12-06): the ping took a connection of the traffic's pool, so a pool busy for
// longer than the ping's wait (a lock convoy, a long purge, a burst of slow queries) left it in the
// pool's queue and turned the replica NOT_SERVING while its database answered at once: under a load
// spread over all replicas, every one of them dropped out together.
it("a pool whose every connection stays busy leaves the replica ready while its database answers", async () => {
  const changes: boolean[] = [];
  const readiness = watchReadiness(db, (ready) => changes.push(ready), silentLogger(), {
    everyMs: 100,
    waitMs: WAIT_MS,
  });
  try {
    // Every pooled connection (poolSize 4) busy for 2.5 s: over twice the ping's wait.
    const busy = Array.from({ length: 4 }, () => db.one(sql`SELECT pg_sleep(2.5) AS slept`));
    await new Promise((r) => setTimeout(r, 2_000));
    expect(changes, "readiness while the pool is busy and the database answers").toEqual([]);
    await Promise.all(busy);
  } finally {
    readiness.stop();
  }
}, 30_000);

// Found (review, 2026-12-05): a ping whose connection went silent held readiness NOT_SERVING until
// the operating system gave up on that socket — ~15 minutes, on every replica cut off at once —
// though new connections answered within a second: no other ping was sent while it hung.
it("a ping whose connection went silent makes the replica unready, and the next ping on a new connection ready again", async () => {
  const changes: boolean[] = [];
  const readiness = watchReadiness(db, (ready) => changes.push(ready), silentLogger(), {
    everyMs: 100,
    waitMs: WAIT_MS,
  });
  try {
    await new Promise((r) => setTimeout(r, 300));
    expect(changes).toEqual([]);
    proxy.silence();
    // The next ping (on a new connection) may already have answered by the time this looks: the
    // first change is what the silent ping decided, whatever followed it.
    await expect.poll(() => changes[0], { timeout: 5_000 }).toBe(false);
    // New connections pass: the database answers again.
    await expect.poll(() => changes, { timeout: 5_000 }).toEqual([false, true]);
  } finally {
    readiness.stop();
  }
}, 30_000);

// SQLite has no pool, but the ping took its turn on the one connection behind every transaction
// queued for it: a busy writer read as the database unreachable, the same misreading.
it("on SQLite, a connection held by a long transaction leaves the replica ready", async () => {
  using dir = tempDir();
  const file = await openDatabase({ engine: "sqlite", path: `${dir.path}/health.db` }, migrations([]));
  const changes: boolean[] = [];
  const readiness = watchReadiness(file, (ready) => changes.push(ready), silentLogger(), { everyMs: 50, waitMs: 200 });
  try {
    await file.transaction(() => new Promise((r) => setTimeout(r, 1_000)));
    expect(changes, "readiness while a transaction holds the connection").toEqual([]);
    await file.close();
    await expect.poll(() => changes, { timeout: 2_000 }).toEqual([false]);
  } finally {
    readiness.stop();
  }
});

// Found (review hrev5, 2026-12-06): the ping's own connection, once open, answers whatever happens to
// new ones, so a replica whose pool had no connection left (idle ones closed) and could open none
// (max_connections reached, a role's limit, the database refusing connections) stayed SERVING while
// every call failed; through the pool it turned NOT_SERVING. The database refuses new connections here.
it("a pool holding no connection that cannot open one makes the replica unready", async () => {
  const url = await pg.createDatabase("refusing");
  const name = new URL(url).pathname.slice(1);
  const own = await openDatabase({ engine: "postgres", url, schema: "s", poolSize: 1 }, migrations([]));
  const admin = new pgLib.Client({ connectionString: pg.url });
  await admin.connect();
  const changes: boolean[] = [];
  const readiness = watchReadiness(own, (ready) => changes.push(ready), silentLogger(), {
    everyMs: 100,
    waitMs: WAIT_MS,
  });
  try {
    await expect
      .poll(async () => {
        const { rows } = await admin.query(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND query = 'SELECT 1'",
          [name],
        );
        return rows[0].n;
      })
      .toBe(1);
    await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
    // The pool's idle connection goes (as pg's idle timeout would close it); the ping's stays.
    await admin.query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND query <> 'SELECT 1'",
      [name],
    );
    await expect(own.one(sql`SELECT 1 AS one`)).rejects.toThrow();
    await expect.poll(() => changes, { timeout: 5_000 }).toEqual([false]);
    await admin.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
    await expect.poll(() => changes, { timeout: 5_000 }).toEqual([false, true]);
  } finally {
    readiness.stop();
    await admin.end();
    await own.close().catch(() => {});
  }
}, 30_000);

/** What `p` settled to within `ms`: "hung" when it had not. */
function settledWithin<T>(p: Promise<T>, ms: number): Promise<PromiseSettledResult<T> | "hung"> {
  const late = new Promise<"hung">((r) => setTimeout(() => r("hung"), ms).unref());
  return Promise.race([
    p.then(
      (value) => ({ status: "fulfilled" as const, value }),
      (reason: unknown) => ({ status: "rejected" as const, reason }),
    ),
    late,
  ]);
}

// Found (hostile round hpart, 2026-12-06): the pool's connections had no bound on a statement's answer,
// so once their path went silent (a partition, a lost NAT entry: packets dropped, no reset) every call
// on them waited for as long as the operating system retransmits (~15 min), the calls queued behind
// them too, while new connections passed at once; and readiness said SERVING all along, its ping's new
// connection answering. A statement the server is not running (its answer lost, or it never arrived)
// is never answered: such a connection leaves the pool, the next call gets a new one.
it("a pool whose connections went silent drops them and serves again on new ones", async () => {
  const direct = new URL(await pg.createDatabase("partition"));
  const cut = await silencingProxy(Number(direct.port));
  direct.port = String(cut.port);
  const own = await openDatabase({ engine: "postgres", url: direct.href, schema: "s", poolSize: 3 }, migrations([]));
  const changes: boolean[] = [];
  const readiness = watchReadiness(own, (ready) => changes.push(ready), silentLogger(), {
    everyMs: 100,
    waitMs: WAIT_MS,
  });
  try {
    // The three pooled connections open, one of them inside a transaction; then every one goes silent
    // while new connections through the proxy pass.
    const one = sql<{ one: number }>`SELECT 1 AS one`;
    await Promise.all([1, 2, 3].map(() => own.one(sql`SELECT pg_sleep(0.2)`)));
    let began = () => {};
    let silenced = () => {};
    const begun = new Promise<void>((r) => (began = r));
    const gate = new Promise<void>((r) => (silenced = r));
    const inTransaction = own.transaction(async (tx) => {
      await tx.one(one);
      began();
      await gate;
      return tx.one(one);
    });
    await begun;
    cut.silence();
    silenced();
    const calls = [
      inTransaction,
      own.one(one),
      own.transaction((tx) => tx.one(one)),
      // Queued behind them for a connection of the pool's.
      own.one(one),
    ];
    const [inTx, first, second, third] = await Promise.all(calls.map((c) => settledWithin(c, 5_000)));
    for (const [name, r] of [
      ["statement inside a transaction", inTx],
      ["statement", first],
      ["transaction", second],
    ] as const) {
      expect(r, `${name} on a silent connection`).not.toBe("hung");
      expect(r === "hung" ? r : r?.status, name).toBe("rejected");
      if (r !== "hung" && r?.status === "rejected") {
        expect(isDatabaseUnavailable(r.reason), `${name}: ${String(r.reason)}`).toBe(true);
      }
    }
    expect(third, "call queued behind them").toEqual({ status: "fulfilled", value: { one: 1 } });
    await expect(own.one(sql<{ one: number }>`SELECT 1 AS one`)).resolves.toEqual({ one: 1 });
    // Said unready while the pool could not serve, ready again since.
    expect(changes).toContain(false);
    await expect.poll(() => changes.at(-1), { timeout: 5_000 }).toBe(true);
  } finally {
    readiness.stop();
    cut.close();
    await own.close().catch(() => {});
  }
}, 30_000);
