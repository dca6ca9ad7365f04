/**
 * An order's step log that grew before the stored log was bounded (a refund retried through a long
 * payment outage: two rows a retry, 34,560 a day at the default backoff) is bounded by the upgrade,
 * not only once its saga writes again: a settled order's saga never does, and every GetOrder,
 * WatchOrder and ListOrders page read all its rows for good. Its answer and its saga's attempt
 * numbers stay as they were. Real store, SQLite or PostgreSQL per the run.
 */

import { sql } from "kysely";
import { afterAll, expect, it } from "vitest";
import { openDatabase } from "../../platform/db.js";
import { TestDatabases } from "../../test/db.js";
import { tempDir } from "../../test/fixtures.js";
import { orderMessage } from "./api.js";
import { MIGRATIONS, type OrderRow, STEP_LOG_KEPT, type StoredStep, toOrder } from "./schema.js";
import { StepStarts } from "./step-log.js";
import { OrderStore } from "./store.js";

const dir = tempDir();
afterAll(() => dir[Symbol.dispose]());

/** The schema as it was before the stored step log was bounded (its first 8 migrations). */
const BEFORE = { sqlite: MIGRATIONS.sqlite.slice(0, 8), postgres: MIGRATIONS.postgres.slice(0, 8) };

it("a step log grown before the bound is bounded by the upgrade, its answer and attempt numbers unchanged", async () => {
  const location = await new TestDatabases(dir.path).location("order");
  const RETRIES = 600;
  const old = await openDatabase(location, BEFORE);
  try {
    await old.transaction(async (tx) => {
      for (const [id, status, payment] of [
        ["ord_long", "CANCELLED", "undone"],
        ["ord_short", "CONFIRMED", "done"],
      ] as const) {
        await tx.run(sql`INSERT INTO orders (id, customer_id, idempotency_key, fingerprint, status, saga_mode, items,
            card_token, created_at, updated_at, payment, stock, fence)
          VALUES (${id}, 'ria', ${id}, 'f', ${status}, 'ORCHESTRATION', '[]', 'tok_visa', 1, 1, ${payment}, 'undone', 1)`);
      }
      const long: [string, string, number][] = [
        ["reserve_stock", "STARTED", 1],
        ["reserve_stock", "SUCCEEDED", 1],
        ["charge_payment", "STARTED", 1],
        ["charge_payment", "FAILED", 1],
        ["release_stock", "STARTED", 1],
        ["release_stock", "COMPENSATED", 1],
        ["cancel_order", "SUCCEEDED", 1],
      ];
      for (let a = 1; a <= RETRIES; a++) long.push(["refund_payment", "STARTED", a], ["refund_payment", "FAILED", a]);
      long.push(["refund_payment", "STARTED", RETRIES + 1], ["refund_payment", "COMPENSATED", RETRIES + 1]);
      const short: [string, string, number][] = [
        ["reserve_stock", "STARTED", 1],
        ["reserve_stock", "SUCCEEDED", 1],
        ["charge_payment", "STARTED", 1],
        ["charge_payment", "SUCCEEDED", 1],
        ["confirm_order", "SUCCEEDED", 1],
      ];
      for (const [id, log] of [
        ["ord_long", long],
        ["ord_short", short],
      ] as const) {
        for (const [i, [name, status, attempt]] of log.entries()) {
          await tx.run(sql`INSERT INTO saga_steps (order_id, seq, name, status, detail, attempt, at, fence)
            VALUES (${id}, ${i + 1}, ${name}, ${status}, '', ${attempt}, ${1000 + i}, 1)`);
        }
      }
    });
  } catch (err) {
    await old.close();
    throw err;
  }
  // What the answer and a resumed saga made of the whole log, before the upgrade.
  const whole = async (id: string) => {
    const row = await old.one(sql<OrderRow>`SELECT * FROM orders WHERE id = ${id}`);
    const log = await old.all(
      sql<StoredStep>`SELECT seq, name, status, detail, attempt, at, fence FROM saga_steps WHERE order_id = ${id} ORDER BY seq`,
    );
    return { o: toOrder(row as OrderRow), log };
  };
  const long = await whole("ord_long");
  const short = await whole("ord_short");
  await old.close();
  expect(long.log).toHaveLength(2 * RETRIES + 9);
  const asAnswer = orderMessage(long.o, long.log);
  expect(asAnswer.stepsOmitted).toBe(2 * RETRIES + 9 - STEP_LOG_KEPT);
  const starts = new StepStarts(() => 0);
  starts.load(long.log);
  // The upgrade: the service starts on the new code.
  const store = await OrderStore.open(location);
  try {
    expect(Number(await rowsOf(store, "ord_long"))).toBeLessThanOrEqual(STEP_LOG_KEPT + 6);
    const after = await store.steps("ord_long");
    expect(orderMessage(long.o, after)).toEqual(asAnswer);
    const resumed = new StepStarts(() => 0);
    resumed.load(after);
    for (const step of ["reserve_stock", "charge_payment", "release_stock", "refund_payment"] as const) {
      expect(resumed.next(long.o, step), step).toEqual(starts.next(long.o, step));
    }
    expect(await store.steps("ord_short")).toEqual(short.log);
  } finally {
    await store.close();
  }
});

const rowsOf = async (store: OrderStore, id: string) =>
  (await store.db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM saga_steps WHERE order_id = ${id}`))?.n;
