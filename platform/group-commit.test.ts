/**
 * Group commit of whole transactions (group-commit.ts) on a real SQLite file: transactions asked
 * for together share one commit, yet each keeps what a commit of its own gives it — it runs alone
 * (in order, seeing the ones before it), one that throws undoes only its own writes and hooks and
 * is rejected alone, and a transaction that fails whole rejects everything in it.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { join } from "node:path";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { tempDir } from "../test/fixtures.js";
import { openDatabase } from "./db.js";
import type { Db } from "./sql.js";

const SCHEMA = ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)"];

async function withDb(fn: (db: Db) => Promise<void>): Promise<void> {
  using dir = tempDir();
  const db = await openDatabase(
    { engine: "sqlite", path: join(dir.path, "g.db") },
    { sqlite: SCHEMA, postgres: SCHEMA },
  );
  try {
    await fn(db);
  } finally {
    await db.close();
  }
}

const count = async (db: Db) => (await db.one(sql<{ n: number }>`SELECT count(*) AS n FROM t`))?.n;

describe("GroupCommit", () => {
  it("runs concurrent transactions one after another, each seeing the ones before it", async () => {
    await withDb(async (db) => {
      const seen = await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          db.transaction(async (tx) => {
            const before = await tx.one(sql<{ n: number }>`SELECT count(*) AS n FROM t`);
            await tx.run(sql`INSERT INTO t (v) VALUES (${`v${i}`})`);
            return before?.n;
          }),
        ),
      );
      expect(seen).toEqual(Array.from({ length: 50 }, (_, i) => i));
      expect(await count(db)).toBe(50);
    });
  });

  it("a transaction that throws undoes only its own writes and hooks, and is rejected alone", async () => {
    await withDb(async (db) => {
      const hooks: string[] = [];
      const results = await Promise.allSettled(
        ["a", "b", "c"].map((v) =>
          db.transaction(async (tx) => {
            await tx.run(sql`INSERT INTO t (v) VALUES (${v})`);
            tx.afterCommit(() => hooks.push(v));
            if (v === "b") throw new Error("b fails");
            return v;
          }),
        ),
      );
      expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
      expect((results[1] as PromiseRejectedResult).reason).toMatchObject({ message: "b fails" });
      expect(hooks).toEqual(["a", "c"]);
      expect((await db.all(sql<{ v: string }>`SELECT v FROM t ORDER BY v`)).map((r) => r.v)).toEqual(["a", "c"]);
    });
  });

  it("a constraint violation in one transaction leaves the others committed, their savepoints nested or not", async () => {
    await withDb(async (db) => {
      await db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('taken')`));
      const results = await Promise.allSettled([
        db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('x')`)),
        db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('taken')`)),
        db.transaction(async (tx) => {
          await tx.run(sql`INSERT INTO t (v) VALUES ('y')`);
          await tx.savepoint(() => tx.run(sql`INSERT INTO t (v) VALUES ('taken')`)).catch(() => 0);
          return tx.run(sql`INSERT INTO t (v) VALUES ('z')`);
        }),
      ]);
      expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
      expect((await db.all(sql<{ v: string }>`SELECT v FROM t ORDER BY v`)).map((r) => r.v)).toEqual([
        "taken",
        "x",
        "y",
        "z",
      ]);
    });
  });

  it("a transaction SQLite rolls back whole rejects every one in it with the error that did it", async () => {
    await withDb(async (db) => {
      // As SQLite does by itself on a full disk or an I/O error: the transaction is gone, savepoints and all.
      const results = await Promise.allSettled(
        ["a", "b", "c"].map((v) =>
          db.transaction(async (tx) => {
            await tx.run(sql`INSERT INTO t (v) VALUES (${v})`);
            if (v === "b") {
              await tx.run(sql`ROLLBACK`);
              throw new Error("database or disk is full");
            }
            return v;
          }),
        ),
      );
      expect(results.map((r) => r.status)).toEqual(["rejected", "rejected", "rejected"]);
      for (const r of results) {
        expect((r as PromiseRejectedResult).reason).toMatchObject({ message: "database or disk is full" });
      }
      expect(await count(db)).toBe(0);
      // And the connection goes on.
      await db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('after')`));
      expect(await count(db)).toBe(1);
    });
  });

  it("a transaction alone that throws rolls back whole", async () => {
    await withDb(async (db) => {
      await expect(
        db.transaction(async (tx) => {
          await tx.run(sql`INSERT INTO t (v) VALUES ('alone')`);
          throw new Error("no");
        }),
      ).rejects.toThrow("no");
      expect(await count(db)).toBe(0);
    });
  });

  it("a statement outside a transaction waits for the one holding the connection: no uncommitted read, no write rolled back with it", async () => {
    await withDb(async (db) => {
      let entered = () => {};
      const inside = new Promise<void>((r) => {
        entered = r;
      });
      let leave = () => {};
      const gate = new Promise<void>((r) => {
        leave = r;
      });
      const held = db.transaction(async (tx) => {
        await tx.run(sql`INSERT INTO t (v) VALUES ('held')`);
        entered();
        await gate;
        throw new Error("rolled back");
      });
      await inside;
      const read = count(db);
      const write = db.run(sql`INSERT INTO t (v) VALUES ('outside')`);
      const failing = expect(db.run(sql`INSERT INTO nope (v) VALUES ('x')`)).rejects.toThrow("no such table");
      leave();
      await expect(held).rejects.toThrow("rolled back");
      expect(await read).toBe(0);
      expect(await write).toBe(1);
      await failing;
      expect((await db.all(sql<{ v: string }>`SELECT v FROM t`)).map((r) => r.v)).toEqual(["outside"]);
    });
  });

  it("close closes the connection: a statement after it is refused, not run", async () => {
    using dir = tempDir();
    const db = await openDatabase(
      { engine: "sqlite", path: join(dir.path, "c.db") },
      { sqlite: SCHEMA, postgres: SCHEMA },
    );
    await db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('kept')`));
    await db.close();
    await expect(count(db)).rejects.toThrow("not open");
    await expect(
      db.transaction((tx) => tx.run(sql`INSERT INTO t (v) VALUES ('late')`), { durable: false }),
    ).rejects.toThrow("not open");
  });

  it("each transaction runs in its caller's asynchronous context, not in that of the group's first caller", async () => {
    const caller = new AsyncLocalStorage<string>();
    await withDb(async (db) => {
      const seen = await Promise.all(
        ["a", "b", "c"].map((v) =>
          caller.run(v, () =>
            db.transaction(async (tx) => {
              await tx.run(sql`INSERT INTO t (v) VALUES (${v})`);
              return caller.getStore();
            }),
          ),
        ),
      );
      expect(seen).toEqual(["a", "b", "c"]);
      expect(await count(db)).toBe(3);
    });
  });
});
