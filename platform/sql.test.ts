/**
 * The PostgreSQL side of the database layer against a real server that is
 * killed and restarted under load: transactions in flight fail as
 * "unavailable" (never as an unhandled error that would crash the process),
 * and the pool serves again once the server is back. Plus the concurrency
 * rule: read-decide-write under `forUpdate` never loses an update.
 */
import net from "node:net";
import { status } from "@grpc/grpc-js";
import { sql } from "kysely";
import { Client as PgClient } from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startPostgres, type TestPostgres } from "../test/postgres.js";
import { migrations, openDatabase } from "./db.js";
import { isDatabaseUnavailable } from "./db-errors.js";
import { toStatusObject } from "./errors.js";
import { IDLE_IN_TRANSACTION_MS, pgPool } from "./pg-pool.js";
import { type Db, postgresDb } from "./sql.js";

let pg: TestPostgres;
let db: Db;
const unhandled: unknown[] = [];
const onUnhandled = (err: unknown) => unhandled.push(err);

beforeAll(async () => {
  pg = await startPostgres();
  const url = await pg.createDatabase("sql");
  const table = "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO counter VALUES (1, 0);";
  db = await openDatabase({ engine: "postgres", url, schema: "s", poolSize: 4 }, migrations([table]));
  process.on("uncaughtException", onUnhandled);
});
afterAll(async () => {
  process.off("uncaughtException", onUnhandled);
  await db.close();
  await pg[Symbol.asyncDispose]();
});

/** Increments the counter by reading it and writing it back: safe only under the row lock. */
const increment = () =>
  db.transaction(async (tx) => {
    const row = await tx.one(sql<{ n: number }>`SELECT n FROM counter WHERE id = 1 ${tx.forUpdate}`);
    await new Promise((r) => setTimeout(r, 2));
    await tx.run(sql`UPDATE counter SET n = ${(row?.n ?? 0) + 1} WHERE id = 1`);
  });

describe("PostgreSQL", () => {
  it("closed before any statement of its own, leaves no connection open (its migrations' was left idle for good)", async () => {
    const url = await pg.createDatabase("unused");
    const unused = await openDatabase(
      { engine: "postgres", url, schema: "unused", poolSize: 2 },
      migrations(["SELECT 1"]),
    );
    await unused.close();
    const client = new PgClient({ connectionString: pg.url });
    await client.connect();
    try {
      const named = async () =>
        (await client.query("SELECT pid FROM pg_stat_activity WHERE application_name = 'unused'")).rowCount;
      await expect.poll(named).toBe(0);
    } finally {
      await client.end();
    }
  });

  it("closed twice at once, by shutdown paths racing, ends its pool once ('Called end on pool more than once' was a rejection)", async () => {
    const url = await pg.createDatabase("twice");
    for (const used of [false, true]) {
      const twice = await openDatabase(
        { engine: "postgres", url, schema: "twice", poolSize: 2 },
        migrations(["SELECT 1"]),
      );
      if (used) await twice.run(sql`SELECT 1`);
      await expect(Promise.all([twice.close(), twice.close()]), used ? "used" : "unused").resolves.toBeDefined();
      await twice.close();
    }
  });

  it("loses no read-decide-write update among 8 concurrent writers", async () => {
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let i = 0; i < 25; i++) await increment();
      }),
    );
    expect((await db.one(sql<{ n: number }>`SELECT n FROM counter WHERE id = 1`))?.n).toBe(200);
  });

  it("survives the server being killed mid-transaction: errors are 'unavailable', nothing unhandled, service resumes", async () => {
    let ok = 0;
    const errors: unknown[] = [];
    let stop = false;
    const workers = Array.from({ length: 4 }, async () => {
      while (!stop) {
        try {
          await increment();
          ok++;
        } catch (err) {
          errors.push(err);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    });
    await new Promise((r) => setTimeout(r, 300));
    await pg.stop("immediate");
    await new Promise((r) => setTimeout(r, 1_000));
    await pg.start();
    const before = ok;
    // The pool reconnects by itself; on a loaded machine that can take a while.
    for (const end = Date.now() + 15_000; ok - before <= 10 && Date.now() < end; ) {
      await new Promise((r) => setTimeout(r, 100));
    }
    stop = true;
    await Promise.all(workers);
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.filter((e) => !isDatabaseUnavailable(e)).map(String)).toEqual([]);
    expect(unhandled.map(String)).toEqual([]);
    expect(ok - before, "transactions commit again after the restart").toBeGreaterThan(10);
  });
});

describe("a transaction left idle (its process frozen)", () => {
  it("is ended by the server after IDLE_IN_TRANSACTION_MS, freeing its row locks; its process, woken, hears 'unavailable' and goes on", async () => {
    let wake!: () => void;
    const woken = new Promise<void>((r) => {
      wake = r;
    });
    let locked!: () => void;
    const holding = new Promise<void>((r) => {
      locked = r;
    });
    // A process that takes the row's lock, then stops between two statements.
    const frozen = db.transaction(async (tx) => {
      await tx.one(sql`SELECT n FROM counter WHERE id = 1 ${tx.forUpdate}`);
      locked();
      await woken;
      await tx.run(sql`UPDATE counter SET n = -1 WHERE id = 1`);
    });
    const outcome = frozen.then(
      () => "committed",
      (err: unknown) => (isDatabaseUnavailable(err) ? "unavailable" : String(err)),
    );
    await holding;
    const started = Date.now();
    await increment(); // another replica: waits for the lock only until the server ends the idle transaction
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThan(IDLE_IN_TRANSACTION_MS - 1_000);
    expect(waited).toBeLessThan(IDLE_IN_TRANSACTION_MS + 5_000);
    wake();
    expect(await outcome).toBe("unavailable");
    await increment(); // the pool replaced the ended connection
    expect((await db.one(sql<{ n: number }>`SELECT n FROM counter WHERE id = 1`))?.n).toBeGreaterThan(0);
    expect(unhandled).toEqual([]);
  }, 20_000);
});

/**
 * A TCP proxy to the test server that cuts one client off, as a network partition or a frozen
 * process would, at the first moment the server reports its session idle outside any transaction
 * (ReadyForQuery "I") after the client asked for the migration lock — or idle inside one ("T"), per
 * `at`. Nothing is forwarded either way after that; the server keeps the session.
 */
async function partitionAfterLock(at: "I" | "T"): Promise<{ port: number; cut: Promise<void>; close(): void }> {
  const sockets: net.Socket[] = [];
  let onCut!: () => void;
  const cut = new Promise<void>((r) => {
    onCut = r;
  });
  const server = net.createServer((client) => {
    const upstream = net.connect(pg.port, "127.0.0.1");
    sockets.push(client, upstream);
    let asked = false;
    let frozen = false;
    let pending = Buffer.alloc(0);
    client.on("data", (b) => {
      if (frozen) return;
      if (b.includes("advisory_xact_lock")) asked = true; // pg_try_advisory_xact_lock first, then the wait
      upstream.write(b);
    });
    upstream.on("data", (b) => {
      if (frozen) return;
      pending = Buffer.concat([pending, b]);
      let end = 0;
      while (pending.length - end >= 5) {
        const len = pending.readInt32BE(end + 1);
        if (pending.length - end < 1 + len) break;
        const type = String.fromCharCode(pending[end] as number);
        const state = String.fromCharCode(pending[end + 5] as number);
        end += 1 + len;
        if (type === "Z" && asked && state === at) {
          frozen = true;
          client.write(pending.subarray(0, end));
          onCut();
          return;
        }
      }
      client.write(pending.subarray(0, end));
      pending = pending.subarray(end);
    });
    for (const s of [client, upstream]) s.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    cut,
    close: () => {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

describe("migrations run by replicas starting together", () => {
  // Each migration adds a row, so one applied twice shows.
  const list = migrations([
    "CREATE TABLE applied (n INTEGER NOT NULL);\nINSERT INTO applied VALUES (1);",
    "INSERT INTO applied VALUES (2);",
    "INSERT INTO applied VALUES (3);",
  ]);
  const second = async (url: string, schema: string) => {
    const started = Date.now();
    const opened = await openDatabase({ engine: "postgres", url, schema, poolSize: 1 }, list);
    try {
      const rows = await opened.all(sql<{ n: number }>`SELECT n FROM applied ORDER BY n`);
      return { waited: Date.now() - started, applied: rows.map((r) => r.n) };
    } finally {
      await opened.close();
    }
  };

  for (const at of ["I", "T"] as const) {
    it(`a replica cut off while ${at === "I" ? "idle between statements" : "inside its migration's transaction"} holds no other replica's start for longer than IDLE_IN_TRANSACTION_MS`, async () => {
      const url = await pg.createDatabase("migrate");
      const proxy = await partitionAfterLock(at);
      const viaProxy = new URL(url);
      viaProxy.port = String(proxy.port);
      const schema = `m_${at.toLowerCase()}`;
      const first = openDatabase({ engine: "postgres", url: viaProxy.toString(), schema, poolSize: 1 }, list).then(
        (d) => d.close(),
        () => {},
      );
      try {
        await proxy.cut;
        const opened = second(url, schema);
        const bound = IDLE_IN_TRANSACTION_MS + 5_000;
        const late = new Promise<"still waiting">((r) => setTimeout(() => r("still waiting"), bound).unref());
        const result = await Promise.race([opened, late]);
        proxy.close(); // ends the cut-off session, so a replica still waiting (the defect) gets the lock
        await opened;
        expect(result).toEqual({ waited: expect.any(Number), applied: [1, 2, 3] });
      } finally {
        proxy.close();
        await first;
      }
    }, 30_000);
  }

  for (const level of ["serializable", "repeatable read"]) {
    it(`replicas waiting on the lock together apply each migration once, the database's default isolation ${level}`, async () => {
      // Review 2026-12-05 (h3), found a defect: in one transaction, a replica's snapshot is taken at its
      // first statement — the lock it waits on — under REPEATABLE READ or SERIALIZABLE (a database's
      // default_transaction_isolation, as some operators set it). The replica that waited saw the schema
      // as it was before the first one committed (version 0) and ran every migration again: "relation
      // already exists", and it did not start. Each migration had its own transaction, begun after the lock.
      const url = await pg.createDatabase("migrate");
      const schema = `m_${level.replace(" ", "_")}`;
      const admin = pgPool(url, "public", 2);
      const holder = await admin.connect();
      try {
        await admin.query(
          `ALTER DATABASE "${new URL(url).pathname.slice(1)}" SET default_transaction_isolation = '${level}'`,
        );
        // Held while both replicas start, so both wait on it: they start together, as replicas do.
        await holder.query("BEGIN");
        await holder.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`shopmesh.migrate.${schema}`]);
        const open = () => openDatabase({ engine: "postgres", url, schema, poolSize: 1 }, list);
        const replicas = Promise.allSettled([open(), open()]);
        const waiting = async () =>
          Number(
            (await admin.query("SELECT COUNT(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"))
              .rows[0]?.n,
          );
        await expect.poll(waiting, { timeout: 15_000 }).toBe(2);
        await holder.query("COMMIT");
        const opened = await replicas;
        for (const r of opened) if (r.status === "fulfilled") await r.value.close();
        expect(opened.map((r) => (r.status === "fulfilled" ? "started" : String(r.reason)))).toEqual([
          "started",
          "started",
        ]);
        const rows = await admin.query(`SELECT n FROM ${schema}.applied ORDER BY n`);
        expect(rows.rows.map((r) => r.n)).toEqual([1, 2, 3]);
      } finally {
        holder.release();
        await admin.end();
      }
    }, 30_000);
  }
});

describe("a server out of connection slots", () => {
  it("is 'unavailable' (UNAVAILABLE to callers, and no failure of a consumer's event), not a bug (it was INTERNAL)", async () => {
    // Replicas' pools that together reach max_connections, or a role's CONNECTION LIMIT: SQLSTATE 53300.
    await db.run(sql`CREATE ROLE crowded LOGIN CONNECTION LIMIT 0`);
    const url = new URL(pg.url);
    url.username = "crowded";
    const crowded = postgresDb(pgPool(url.toString(), "s", 1), url.toString());
    try {
      const err = await crowded.one(sql`SELECT 1 AS one`).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as { code?: string }).code).toBe("53300");
      expect(isDatabaseUnavailable(err)).toBe(true);
      expect(toStatusObject(err)).toEqual({ code: status.UNAVAILABLE, details: "database unavailable; try again" });
    } finally {
      await crowded.close();
    }
  });
});

describe("migrations written once", () => {
  it("PostgreSQL gets SQLite's DDL with its own integer, blob, identity and strictness", async () => {
    const { postgresDialect } = await import("./db.js");
    expect(
      postgresDialect(`CREATE TABLE t (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  n   INTEGER NOT NULL CHECK (n >= 0),
  b   BLOB NOT NULL
) STRICT;
ALTER TABLE t ADD COLUMN at INTEGER NOT NULL DEFAULT 0;`),
    ).toBe(`CREATE TABLE t (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  n   BIGINT NOT NULL CHECK (n >= 0),
  b   BYTEA NOT NULL
);
ALTER TABLE t ADD COLUMN at BIGINT NOT NULL DEFAULT 0;`);
  });
});

describe("LISTEN", () => {
  it("closed while it waits to reconnect (its connection just lost), it opens no connection after", async () => {
    const activity = async () =>
      (
        await db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM pg_stat_activity
          WHERE query = 'LISTEN review_closed' AND pid <> pg_backend_pid()`)
      )?.n ?? 0;
    const listening = await db.listen?.("review_closed", () => {});
    expect(await activity()).toBe(1);
    // The server ends the LISTEN connection (a restart, a failover, an idle timeout)...
    await db.run(sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN review_closed'`);
    await new Promise((r) => setTimeout(r, 40));
    // ... and the service stops (SIGTERM) before the reconnect's backoff (100 ms) has run out.
    await listening?.close();
    await new Promise((r) => setTimeout(r, 1_000));
    expect(await activity(), "a LISTEN connection opened after close").toBe(0);
  });
});
