/**
 * Inventory's consumer against reservation calls on a real PostgreSQL (postgres project only: on
 * SQLite one writer holds the whole database). Orders share products, so a batch of choreographed
 * orders that locked each order's products as it came to it could hold one product while waiting
 * for another that a reservation call holds, the call waiting for the first: a deadlock, which
 * PostgreSQL breaks only after a second. The batch locks all its products first, by id, as each
 * call does, so the two wait for each other in one direction only.
 */

import { sql } from "kysely";
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import { OrderPlacedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import { connectBus } from "../../platform/bus.js";
import { startConsumer } from "../../platform/consumer.js";
import { silentLogger } from "../../platform/log.js";
import { lockWaits, TestDatabases } from "../../test/db.js";
import { event, publishEvents, until } from "../../test/events.js";
import { tempDir } from "../../test/fixtures.js";
import { startNats } from "../../test/nats.js";
import { DEMO_CATALOGUE } from "./catalogue.js";
import { inventoryConsumers } from "./events.js";
import { InventoryStore } from "./store.js";

const dir = tempDir();
let store: InventoryStore;
let run = 0;

beforeAll(async () => {
  store = await InventoryStore.open(await new TestDatabases(dir.path).location("inventory"));
  await store.seedIfEmpty(DEMO_CATALOGUE);
});
afterAll(async () => {
  await store?.close();
  dir[Symbol.dispose]();
});

/**
 * A batch of two choreographed orders — coffee beans, then a mug — while a reservation call that
 * holds the mug goes on to lock the beans (in id order: ceramic-mug < coffee-beans). Returns the
 * deadlocks: the call's, or the batch's (which it logs, then applies its events one by one).
 */
async function batchAgainstCall(lockFirst: boolean): Promise<number> {
  const tag = `ord-inv-lock-${++run}`;
  // A NATS of its own: the consumer's first batch is these two events, nothing an earlier run left.
  await using nats = await startNats();
  const bus = await connectBus(nats.url, tag, silentLogger(), { streams: EVENTS.streams });
  const lines: { msg: string; err?: string }[] = [];
  const [spec] = inventoryConsumers(store);
  if (!spec) throw new Error("inventory has no consumer");
  let locked = false;
  const consumer = await startConsumer({
    ...spec,
    // With it, the two events must have come in one batch (it runs for batches of several only).
    lockFirst: lockFirst
      ? (tx, events) => {
          expect(events).toHaveLength(2);
          locked = true;
          return spec.lockFirst?.(tx, events) ?? Promise.resolve();
        }
      : undefined,
    durable: `${tag}-inventory`,
    lingerMs: 200, // both events in one batch
    catalogue: EVENTS,
    bus,
    db: store.db,
    log: pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) }),
  });
  let deadlocks = 0;
  await store.db
    .transaction(
      async (tx) => {
        await store.lockForBatch(tx, ["ceramic-mug"], []); // the call has locked its first product
        const order = (n: number, productId: string) =>
          event(OrderPlacedSchema, `${tag}-${n}`, {
            customerId: "c",
            items: [{ productId, quantity: 1 }],
            sagaMode: SagaMode.CHOREOGRAPHY,
          });
        await publishEvents(bus, [order(1, "coffee-beans"), order(2, "ceramic-mug")]);
        await until(
          () => lockWaits(store.db),
          (n) => n === 1,
        ); // the batch waits for the mug
        const call = [
          { productId: "ceramic-mug", quantity: 1 },
          { productId: "coffee-beans", quantity: 1 },
        ];
        const r = await store.reserve(`${tag}-call`, "fp", `${tag}-call`, call, SagaMode.ORCHESTRATION, tx);
        expect(r.kind).toBe("reserved");
      },
      { rerunOnConflict: false },
    )
    .catch((err: { code?: string }) => {
      if (err.code !== "40P01") throw err;
      deadlocks++; // the call's transaction was the one PostgreSQL broke
    });
  const reserved = await until(
    () =>
      store.db.all(sql`SELECT order_id FROM reservations WHERE order_id LIKE ${`${tag}-_`} AND status = 'RESERVED'`),
    (rows) => rows.length === 2,
  );
  await consumer.stop();
  await bus.close();
  expect(reserved).toHaveLength(2);
  expect(locked).toBe(lockFirst);
  return deadlocks + lines.filter((l) => l.msg.startsWith("batch conflicted") && l.err?.includes("deadlock")).length;
}

it("a batch of orders locks all its products first, by id: no deadlock with a reservation call; without, one", async () => {
  expect(await batchAgainstCall(true)).toBe(0);
  // The control: locking each order's products as it comes to them, the same batch deadlocks.
  expect(await batchAgainstCall(false)).toBe(1);
});

/** A transaction that takes the last print and holds its row until `commit()` (then `done`); resolves once it holds it. */
async function takeLastPrint(): Promise<{ commit: () => void; done: Promise<void> }> {
  let commit = () => {};
  const held = new Promise<void>((r) => {
    commit = r;
  });
  let took = () => {};
  const taken = new Promise<void>((r) => {
    took = r;
  });
  const done = store.db.transaction(async (tx) => {
    await tx.run(sql`UPDATE products SET available = 0, reserved = reserved + 1 WHERE id = 'limited-print'`);
    took();
    await held;
  });
  await taken;
  return { commit, done };
}

it("a reservation whose stock is taken between its read and its update runs again on locked rows: rejected, nothing oversold", async () => {
  const tag = `ord-inv-moved-${++run}`;
  const [before] = await store.db.all(sql<{ available: number; reserved: number }>`SELECT available, reserved
    FROM products WHERE id = 'limited-print'`);
  expect(before).toEqual({ available: 1, reserved: 0 });
  // Another transaction takes the last print and holds its row while the reservation runs.
  const holder = await takeLastPrint();
  // The reservation read the print as available (last committed) and now waits for its row.
  const reserving = store.reserve(`${tag}-key`, "fp", tag, [{ productId: "limited-print", quantity: 1 }]);
  await until(
    () => lockWaits(store.db),
    (n) => n === 1,
  );
  holder.commit();
  await holder.done;
  expect(await reserving).toEqual({
    kind: "rejected",
    shortages: [{ productId: "limited-print", requested: 1, available: 0 }],
    replayed: false,
  });
  expect(await store.db.all(sql`SELECT available, reserved FROM products WHERE id = 'limited-print'`)).toEqual([
    { available: 0, reserved: 1 },
  ]);
  // What the first run wrote is gone: one rejected reservation, announced once, as rejected.
  expect(await store.db.all(sql`SELECT status FROM reservations WHERE order_id = ${tag}`)).toEqual([
    { status: "REJECTED" },
  ]);
  expect(await store.db.all(sql`SELECT type FROM outbox WHERE order_id = ${tag}`)).toEqual([
    { type: "shopmesh.inventory.v1.StockRejected" },
  ]);
  await store.db.run(sql`UPDATE products SET available = 1, reserved = 0 WHERE id = 'limited-print'`);
});

it("a reservation in a caller's transaction (a consumer's) locks its products first: it runs once, whatever moves", async () => {
  const tag = `ord-inv-caller-${++run}`;
  const holder = await takeLastPrint();
  // A rerun of the caller's transaction calls reserve afresh: planned unlocked, it could fail each time.
  let runs = 0;
  const reserving = store.db.transaction((tx) => {
    runs++;
    return store.reserve(
      `${tag}-key`,
      "fp",
      tag,
      [{ productId: "limited-print", quantity: 1 }],
      SagaMode.CHOREOGRAPHY,
      tx,
    );
  });
  await until(
    () => lockWaits(store.db),
    (n) => n === 1,
  );
  holder.commit();
  await holder.done;
  expect(await reserving).toMatchObject({
    kind: "rejected",
    shortages: [{ productId: "limited-print", available: 0 }],
  });
  expect(runs).toBe(1);
  await store.db.run(sql`UPDATE products SET available = 1, reserved = 0 WHERE id = 'limited-print'`);
});
