/**
 * A saga resumed on a trimmed step log (schema.ts, STEP_LOG_KEPT): the order service restarted while
 * a refund is retried through a long payment outage, its log long past its bound. The new process
 * takes the saga over (a new fencing token) and reads the attempts so far from what the log kept;
 * and the fencing invariant the scale-out suites assert (test/invariants.ts) holds of such a log
 * whenever it is read — mid-retry too. Real inventory, payment and order servers; retries of a few ms.
 */
import { join } from "node:path";
import { sql } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Db, DbLocation } from "../../platform/sql.js";
import { postgresUrl, TEST_DB, withDb } from "../../test/db.js";
import { expectFencedStepLog } from "../../test/invariants.js";
import { capturedLogger, type System, startSystem } from "../../test/system.js";
import { type OrderApp, startOrder } from "./app.js";
import { loadConfig as orderConfig } from "./config.js";
import { STEP_LOG_KEPT } from "./schema.js";

const FAST = {
  SAGA_STEP_BUDGET_MS: "300",
  SAGA_RETRY_BASE_MS: "1",
  SAGA_RETRY_MAX_MS: "4",
  PAYMENT_RETRY_MAX_ATTEMPTS: "1",
};
let sys: System;
let replica: OrderApp | undefined;
const captured = capturedLogger();
beforeAll(async () => {
  sys = await startSystem({ order: FAST });
});
afterAll(async () => {
  await replica?.stop();
  await sys[Symbol.asyncDispose]();
});

it("a refund's saga restarted on a trimmed log goes on counting its attempts, and its log stays fenced", async () => {
  await sys.paymentChaos.setFaults({ faults: { down: true } });
  const { order } = await sys.orders.placeOrder(
    { idempotencyKey: "resume-1", items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" },
    sys.as("ria"),
  );
  const id = order?.id ?? "";
  const db = sys.order.store.db;
  const location: DbLocation =
    TEST_DB === "sqlite"
      ? { engine: "sqlite", path: join(sys.dir, "order.db") }
      : await (async () => {
          const name = (await db.one(sql<{ name: string }>`SELECT current_database() AS name`))?.name;
          const url = new URL(postgresUrl());
          url.pathname = `/${name}`;
          return { engine: "postgres", url: url.toString(), schema: "shopmesh_order", poolSize: 2 } as DbLocation;
        })();
  const refundAttempt = async (q: Db = sys.order.store.db) =>
    Number(
      (
        await q.one(
          sql<{
            a: number;
          }>`SELECT MAX(attempt) AS a FROM saga_steps WHERE order_id = ${id} AND name = 'refund_payment'`,
        )
      )?.a ?? 0,
    );
  const lastSeq = async (q: Db = sys.order.store.db) =>
    Number((await q.one(sql<{ s: number }>`SELECT MAX(seq) AS s FROM saga_steps WHERE order_id = ${id}`))?.s ?? 0);
  for (const end = Date.now() + 20_000; (await lastSeq()) < 4 * STEP_LOG_KEPT && Date.now() < end; ) {
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(await lastSeq()).toBeGreaterThanOrEqual(4 * STEP_LOG_KEPT);
  // The order service restarts: its saga is taken over under a new fencing token.
  await sys.order.stop();
  const [atRestart, restartSeq] = await withDb(location, async (d) => [await refundAttempt(d), await lastSeq(d)]);
  replica = await startOrder(
    orderConfig({
      GRPC_HOST: "127.0.0.1",
      GRPC_PORT: "0",
      SHUTDOWN_GRACE_MS: "2000",
      NATS_URL: sys.nats.url,
      ...(location.engine === "sqlite" ? { DB_PATH: location.path } : { DATABASE_URL: location.url }),
      INVENTORY_TARGET: sys.inventory.address,
      PAYMENT_TARGET: sys.payment.address,
      ...FAST,
    }),
    captured.log,
  );
  const q = replica.store.db;
  // Mid-retry, the log read at any moment is fenced: every outcome under its start's token.
  for (const end = Date.now() + 20_000; (await lastSeq(q)) < restartSeq + 2 * STEP_LOG_KEPT && Date.now() < end; ) {
    await expectFencedStepLog(location);
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(await lastSeq(q), JSON.stringify(captured.lines.slice(-8))).toBeGreaterThanOrEqual(
    restartSeq + 2 * STEP_LOG_KEPT,
  );
  // The attempts went on from where they were (one a retry since), not from the few starts the log kept.
  const latest = await q.one(
    sql<{ seq: number; attempt: number }>`SELECT seq, attempt FROM saga_steps WHERE order_id = ${id}
      AND name = 'refund_payment' AND status = 'STARTED' ORDER BY seq DESC LIMIT 1`,
  );
  // Two entries a retry (STARTED, FAILED), give or take the one the stop left.
  const since = Number(latest?.seq) - restartSeq;
  expect(Number(latest?.attempt)).toBeGreaterThanOrEqual(atRestart + Math.floor(since / 2));
  expect(Number(latest?.attempt)).toBeLessThanOrEqual(atRestart + Math.ceil((since + 1) / 2));
  const { handedOver } = await expectFencedStepLog(location);
  expect(handedOver).toBeGreaterThanOrEqual(1);
  await sys.paymentChaos.setFaults({ faults: {} });
  for (const end = Date.now() + 20_000; Date.now() < end; ) {
    const o = await replica.store.get(id);
    if (o?.status === "CANCELLED" && o.payment === "undone") break;
    await new Promise((r) => setTimeout(r, 50));
  }
  expect((await replica.store.get(id))?.payment).toBe("undone");
  await expectFencedStepLog(location);
}, 90_000);
