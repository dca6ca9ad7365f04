/**
 * The step-log check of test/invariants.ts, on hand-written logs: it must tell a step two owners
 * wrote from a compensation an adopting owner finished (as hostile-race saw, the lease run out
 * under load between cancel_order's STARTED and its SUCCEEDED).
 */
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { tempDir } from "./fixtures.js";
import { expectFencedStepLog, forward } from "./invariants.js";

type Entry = readonly [seq: number, name: string, status: string, fence: number];

/** A database holding one orchestrated order with `log` as its step log; its location. */
function withLog(path: string, log: readonly Entry[]) {
  const db = new Database(path);
  db.exec(`CREATE TABLE orders (id TEXT PRIMARY KEY, saga_mode TEXT NOT NULL);
    CREATE TABLE saga_steps (order_id TEXT, seq INTEGER, name TEXT, status TEXT, fence INTEGER);
    INSERT INTO orders VALUES ('o1', 'ORCHESTRATION');`);
  const add = db.prepare("INSERT INTO saga_steps VALUES ('o1', ?, ?, ?, ?)");
  for (const e of log) add.run(...e);
  db.close();
  return { engine: "sqlite", path } as const;
}

describe("expectFencedStepLog", () => {
  it("passes a compensation closed by the owner that adopted it mid-way", async () => {
    using dir = tempDir();
    const at = withLog(`${dir.path}/order.db`, [
      [1, "reserve_stock", "STARTED", 1],
      [2, "reserve_stock", "SUCCEEDED", 1],
      [3, "cancel_order", "STARTED", 2],
      [4, "release_stock", "STARTED", 2],
      [5, "release_stock", "STARTED", 3],
      [6, "release_stock", "COMPENSATED", 3],
      [7, "cancel_order", "SUCCEEDED", 3],
    ]);
    expect((await expectFencedStepLog(at)).handedOver).toBe(1);
  });

  it("fails a call step whose outcome another owner wrote", async () => {
    using dir = tempDir();
    const at = withLog(`${dir.path}/order.db`, [
      [1, "reserve_stock", "STARTED", 1],
      [2, "reserve_stock", "SUCCEEDED", 2],
    ]);
    await expect(expectFencedStepLog(at)).rejects.toThrow(/two owners/);
  });
});

describe("forward", () => {
  it("takes statuses that never go back and end in one terminal state, and nothing else", () => {
    expect(forward(["PENDING", "CONFIRMED"])).toBe(true);
    expect(forward(["PENDING", "COMPENSATING", "CANCELLED"])).toBe(true);
    expect(forward(["CANCELLED"])).toBe(true);
    expect(forward(["COMPENSATING", "PENDING", "CANCELLED"])).toBe(false);
    expect(forward(["PENDING", "COMPENSATING"])).toBe(false);
    expect(forward(["PENDING", "CONFIRMED", "CANCELLED"])).toBe(false);
    expect(forward(["PENDING", "?", "CONFIRMED"])).toBe(false);
    expect(forward([])).toBe(false);
  });
});
