/**
 * Consumers whose batches lock rows, on a real PostgreSQL (postgres project only: on SQLite one
 * writer holds the whole database, so no two transactions ever hold row locks at once). Two batches
 * that lock the same rows in opposite orders deadlock, and PostgreSQL breaks a deadlock only after
 * a second's wait: a consumer's `lockKey` makes them lock in one order, and a batch that deadlocks
 * anyway is applied event by event rather than run again whole into the same deadlock.
 */
import { sql } from "kysely";
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { lockWaits, TestDatabases } from "../test/db.js";
import { event, publishEvents, until } from "../test/events.js";
import { tempDir } from "../test/fixtures.js";
import { startNats, type TestNats } from "../test/nats.js";
import { type Bus, connectBus } from "./bus.js";
import { startConsumer } from "./consumer.js";
import { migrations, openDatabase } from "./db.js";
import { INBOX_FAILURES_MIGRATION, INBOX_MIGRATION, Inbox, on } from "./inbox.js";
import { silentLogger } from "./log.js";
import type { Db, Tx } from "./sql.js";

const log = silentLogger();
const dir = tempDir();
let nats: TestNats;
let bus: Bus;
let db: Db;
let run = 0;

beforeAll(async () => {
  nats = await startNats();
  bus = await connectBus(nats.url, "lock-order-test", log, { streams: EVENTS.streams });
  const rows = "CREATE TABLE rows (key TEXT PRIMARY KEY, event_id TEXT NOT NULL);";
  db = await openDatabase(
    await new TestDatabases(dir.path).location("locks"),
    migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION, rows]),
  );
});
afterAll(async () => {
  await db?.close();
  await bus?.close();
  await nats?.[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

/**
 * Two consumers of the same 20 events, each applying them in one batch, both at once: the first
 * locks row i for event i, the second row 19-i, so in arrival order they lock the rows in opposite
 * orders. Returns the batches a deadlock broke (the consumers log each).
 */
async function opposite(withLockKey: boolean): Promise<number> {
  const tag = `ord-lock-${++run}`;
  const row = (orderId: string, mirrored: boolean) => {
    const i = Number(orderId.split("-").at(-1));
    return `${tag}-row-${String(mirrored ? 19 - i : i).padStart(2, "0")}`;
  };
  for (let i = 0; i < 20; i++) await db.run(sql`INSERT INTO rows (key, event_id) VALUES (${row(`-${i}`, false)}, '')`);
  const lines: { msg: string; err?: string }[] = [];
  const logs = pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) });
  let applied = 0;
  const start = (mirrored: boolean) =>
    startConsumer({
      catalogue: EVENTS,
      bus,
      db,
      log: logs,
      stream: "ORDER",
      durable: `${tag}-${mirrored ? "b" : "a"}`,
      lingerMs: 200, // all 20 in one batch
      ...(withLockKey
        ? { lockKey: (e: unknown) => row((e as { meta?: { orderId: string } }).meta?.orderId ?? "", mirrored) }
        : {}),
      handlers: [
        on(OrderPlacedSchema, async (e, ctx, tx) => {
          const orderId = e.meta?.orderId ?? "";
          if (!orderId.startsWith(`${tag}-`)) return;
          const key = row(orderId, mirrored);
          await tx.one(sql`SELECT * FROM rows WHERE key = ${key} FOR UPDATE`);
          await new Promise((r) => setTimeout(r, 10)); // a handler's work, while it holds the row
          await tx.run(sql`UPDATE rows SET event_id = ${ctx.eventId} WHERE key = ${key}`);
          tx.afterCommit(() => applied++);
        }),
      ],
    });
  const consumers = await Promise.all([start(false), start(true)]);
  const items = [{ productId: "p", quantity: 1 }];
  await publishEvents(
    bus,
    Array.from({ length: 20 }, (_, i) => event(OrderPlacedSchema, `${tag}-${i}`, { customerId: "c", items })),
  );
  const done = await until(
    () => applied,
    (k) => k >= 40,
    30_000,
  );
  for (const c of consumers) await c.stop();
  expect(done).toBe(40);
  return lines.filter((l) => l.msg.startsWith("batch conflicted") && l.err?.includes("deadlock")).length;
}

it("lock in lockKey's order: two batches over the same rows wait for each other; without it, one deadlock, then event by event", async () => {
  expect(await opposite(true)).toBe(0);
  // The control: in arrival order, the same batches deadlock — once. The batch PostgreSQL broke is
  // applied event by event, not run again whole to meet the other batch again.
  expect(await opposite(false)).toBe(1);
});

it("an event one replica applies alone while another's batch holds its order's row: no deadlock, the one alone fails on the inbox key", async () => {
  const tag = `ord-inbox-race-${++run}`;
  await db.run(sql`INSERT INTO rows (key, event_id) VALUES (${tag}, '')`);
  const inbox = new Inbox(db, `${tag}-consumer`);
  const lockRow = async (tx: Tx) => {
    await tx.run(sql`UPDATE rows SET event_id = ${tag} WHERE key = ${tag}`);
  };
  const outcome = (p: Promise<unknown>) =>
    p.then(
      () => "committed",
      (err: { code?: string }) => err.code ?? String(err),
    );
  let goOn = () => {};
  const paused = new Promise<void>((r) => {
    goOn = r;
  });
  let locked = () => {};
  const holding = new Promise<void>((r) => {
    locked = r;
  });
  // The batch: an earlier event of the order has locked its row; the same event as the other's is next.
  const batch = outcome(
    db.transaction(
      async (tx) => {
        await lockRow(tx);
        locked();
        await paused;
        await inbox.onceIn(tx, `${tag}-e`, "t", lockRow);
      },
      { rerunOnConflict: false },
    ),
  );
  await holding;
  // The same event alone, on another replica (a redelivery): it waits for the order's row.
  const alone = outcome(db.transaction((tx) => inbox.onceIn(tx, `${tag}-e`, "t", lockRow), { rerunOnConflict: false }));
  await until(
    () => lockWaits(db),
    (n) => n === 1,
  );
  goOn();
  // Had the one alone taken the inbox key first, the batch would wait for it: a deadlock (40P01).
  expect(await batch).toBe("committed");
  expect(await alone).toBe("23505");
  // Run again, as Db.transaction does, it finds the event applied.
  expect(await db.transaction((tx) => inbox.onceIn(tx, `${tag}-e`, "t", lockRow))).toBe(false);
});
