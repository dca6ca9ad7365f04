/**
 * A hostile round against the event pipeline (2026-12-04): a consumer's database locked or refused
 * for a while, a consumer killed between its dead letter and its message's termination. Real
 * nats-server, real databases, real processes for the lock and the kill. Each `describe` is one
 * suspicion; a test that found a defect says so.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { type Bus, connectBus } from "../platform/bus.js";
import { startConsumer } from "../platform/consumer.js";
import { migrations, openDatabase } from "../platform/db.js";
import { INBOX_FAILURES_MIGRATION, INBOX_MIGRATION, INBOX_PURGE_MIGRATION, on } from "../platform/inbox.js";
import { silentLogger } from "../platform/log.js";
import { OUTBOX_CLAIMS_MIGRATION, OUTBOX_INDEXES_MIGRATION, OUTBOX_MIGRATION, Outbox } from "../platform/outbox.js";
import { OutboxRelay } from "../platform/relay.js";
import type { Db } from "../platform/sql.js";
import { TEST_DB } from "./db.js";
import { until } from "./events.js";
import { exited, outputReady, ROOT, tempDir } from "./fixtures.js";
import { startNats, type TestNats } from "./nats.js";

const log = silentLogger();
let nats: TestNats;
let bus: Bus;
const dir = tempDir();
let n = 0;

beforeAll(async () => {
  nats = await startNats();
  bus = await connectBus(nats.url, "hostile-events", log, { streams: EVENTS.streams });
});
afterAll(async () => {
  await bus.close();
  await nats[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

const EFFECTS = "CREATE TABLE effects (order_id TEXT NOT NULL, event_id TEXT NOT NULL);";
const MIGRATIONS = migrations([
  OUTBOX_MIGRATION,
  OUTBOX_CLAIMS_MIGRATION,
  OUTBOX_INDEXES_MIGRATION,
  INBOX_MIGRATION,
  INBOX_FAILURES_MIGRATION,
  INBOX_PURGE_MIGRATION,
  EFFECTS,
]);

/** A SQLite service database at a new path. */
async function sqliteService(): Promise<{ db: Db; path: string }> {
  const path = join(dir.path, `svc_${++n}.db`);
  return { db: await openDatabase({ engine: "sqlite", path }, MIGRATIONS), path };
}

/** Publishes one OrderPlaced about `orderId` through a real outbox and relay; its event id. */
async function publishPlaced(orderId: string): Promise<string> {
  const { db } = await sqliteService();
  const outbox = new Outbox("test", EVENTS);
  const relay = new OutboxRelay({ db, outbox, bus, source: "test", log });
  relay.start();
  const id = await db.transaction((tx) =>
    outbox.add(
      tx,
      OrderPlacedSchema,
      { orderId, sagaMode: SagaMode.ORCHESTRATION },
      { customerId: "alice", items: [{ productId: "p", quantity: 1 }], cardToken: "tok" },
    ),
  );
  await until(
    async () => (await relay.backlog()).count,
    (c) => c === 0,
  );
  await relay.stop();
  await db.close();
  return id;
}

/** The ce-ids of the messages dead-lettered by `durable`, in DLQ order. */
async function lettered(durable: string): Promise<string[]> {
  const info = await bus.jsm.streams.info("DLQ");
  const out: string[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const m = await bus.jsm.streams.getMessage("DLQ", { seq }).catch(() => null);
    if (m?.subject === `dlq.${durable}`) out.push(m.header.get("ce-id"));
  }
  return out;
}

/** Another process holding `path`'s write lock (BEGIN IMMEDIATE) for `ms`, then letting go. */
async function lockHolder(path: string, ms: number): Promise<ChildProcess> {
  const script = `const D = require("better-sqlite3"); const db = new D(process.argv[1]);
    db.exec("BEGIN IMMEDIATE"); console.log("locked");
    setTimeout(() => { db.exec("ROLLBACK"); db.close(); }, Number(process.argv[2]));`;
  const child = spawn(process.execPath, ["-e", script, path, String(ms)], { cwd: ROOT, stdio: "pipe" });
  await outputReady(child, "locked", "lock holder", 10_000);
  return child;
}

describe.skipIf(TEST_DB !== "sqlite")("a consumer whose SQLite file another process holds locked", () => {
  it("never dead-letters an event for the lock, and still dead-letters one that fails on its own", async () => {
    const waits = await publishPlaced("ord-waits-out-lock");
    const bad = await publishPlaced("ord-always-fails");
    const consumer = await sqliteService();
    const durable = `locked-${n}`;
    const attempts: string[] = [];
    let deliveries = 0;
    // Locked for more than maxDeliver busy timeouts (5 s each): counted, the waiting event would be lettered.
    const holder = await lockHolder(consumer.path, 16_000);
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable,
      maxDeliver: 2,
      handlers: [
        on(OrderPlacedSchema, async (e, ctx, tx) => {
          attempts.push(ctx.eventId);
          if (ctx.eventId === waits) deliveries = ctx.deliveryCount;
          if (ctx.eventId === bad) throw new Error("a rule that fails");
          await tx.run(sql`INSERT INTO effects (order_id, event_id) VALUES (${e.meta?.orderId ?? ""}, ${ctx.eventId})`);
        }),
      ],
    });
    try {
      await exited(holder);
      const effects = await until(
        async () =>
          (await consumer.db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM effects WHERE event_id = ${waits}`))?.n,
        (x) => x === 1,
        15_000,
      );
      expect(effects).toBe(1);
      // It met the lock more often than its limit (each a busy timeout), without spinning.
      expect(deliveries).toBeGreaterThan(2);
      expect(deliveries).toBeLessThan(10);
      const letters = await until(
        () => lettered(durable),
        (l) => l.includes(bad),
        15_000,
      );
      expect(letters.filter((id) => id === waits)).toEqual([]);
      expect(letters.filter((id) => id === bad)).toEqual([bad]);
      // The failing handler ran only once the lock was gone: twice, its limit.
      expect(attempts.filter((id) => id === bad)).toHaveLength(2);
    } finally {
      await c.stop();
      await consumer.db.close();
    }
  }, 60_000);
});

describe("relays whose claims run out mid-batch on a very slow NATS", () => {
  /** `bus` with every publish delayed `ms()` before it is sent and again before its acknowledgement is seen. */
  let publishes = 0;
  function slowBus(ms: () => number): Bus {
    const js = new Proxy(bus.js, {
      get(target, prop, receiver) {
        if (prop !== "publish") return Reflect.get(target, prop, receiver);
        return async (...args: Parameters<Bus["js"]["publish"]>) => {
          await new Promise((r) => setTimeout(r, ms()));
          publishes++;
          const ack = await target.publish(...args);
          await new Promise((r) => setTimeout(r, ms()));
          return ack;
        };
      },
    });
    return { ...bus, js };
  }

  it("lose no event and keep each order's events in order, though they publish the same rows", async () => {
    const { db } = await sqliteService();
    const outbox = new Outbox("test", EVENTS);
    const ids = new Map<string, string[]>();
    // 8 orders, 12 events each, interleaved: a batch of many waves, one order's events in several.
    for (let e = 0; e < 12; e++) {
      for (let o = 0; o < 8; o++) {
        const orderId = `ord-slow-${n}-${o}`;
        const id = await db.transaction((tx) =>
          outbox.add(tx, OrderPlacedSchema, { orderId, sagaMode: SagaMode.CHOREOGRAPHY }, { customerId: "alice" }),
        );
        ids.set(orderId, [...(ids.get(orderId) ?? []), id]);
      }
    }
    // Claims of 1.2 s; each publish takes 40-240 ms, each wave of 8 as long as its slowest: a batch of 12
    // waves (2.4-2.9 s) outlives its claim twice, and the relays take each other's rows. A claim renewed
    // once half of it has passed (checked between waves) has ~350 ms left after the longest wave.
    const relays = [0, 1, 2].map(
      () =>
        new OutboxRelay({
          db,
          outbox,
          bus: slowBus(() => 20 + Math.random() * 100),
          source: "test",
          log,
          sweepMs: 30,
          claimMs: 1_200,
        }),
    );
    for (const r of relays) r.start();
    try {
      const left = await until(
        async () => (await (relays[0] as OutboxRelay).backlog()).count,
        (c) => c === 0,
        30_000,
      );
      expect(left).toBe(0);
    } finally {
      for (const r of relays) await r.stop();
    }
    // What the stream holds, first copy of each id (JetStream drops the later ones within its window).
    const info = await bus.jsm.streams.info("ORDER");
    const stored: string[] = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      const m = await bus.jsm.streams.getMessage("ORDER", { seq }).catch(() => null);
      const id = m?.header.get("ce-id") ?? "";
      if (m?.subject === "order.order.placed.choreography" && !stored.includes(id)) stored.push(id);
    }
    for (const [orderId, want] of ids) {
      expect(
        stored.filter((id) => want.includes(id)),
        orderId,
      ).toEqual(want);
    }
    // A claim kept while its batch goes out: the relays share the work instead of each redoing the
    // others' (144-168 publishes of the 96 rows when only the marks were fixed, 96 with the claim kept).
    expect(publishes).toBeLessThan(1.25 * 96);
  }, 60_000);

  it("a claim renewed mid-batch takes no row outside the batch (one this relay let go of earlier keeps its name)", async () => {
    const { db } = await sqliteService();
    const outbox = new Outbox("test", EVENTS);
    const add = (orderId: string) =>
      db.transaction((tx) =>
        outbox.add(tx, OrderPlacedSchema, { orderId, sagaMode: SagaMode.CHOREOGRAPHY }, { customerId: "a" }),
      );
    const y = `ord-y-${++n}`;
    await add(y); // seq 1: another relay's
    await add(y); // seq 2: let go of by this relay earlier (a failed publish), waiting behind seq 1
    for (let i = 0; i < 4; i++) await add(`ord-x-${n}`); // seq 3..6: one order, four waves
    const relay = new OutboxRelay({
      db,
      outbox,
      bus: slowBus(() => 75),
      source: "test",
      log,
      claimMs: 200,
      sweepMs: 60_000,
    });
    const id = (relay as unknown as { id: string }).id;
    const [first, second] = (await db.all(sql<{ seq: number }>`SELECT seq FROM outbox ORDER BY seq`)).map((r) => r.seq);
    await db.run(
      sql`UPDATE outbox SET claimed_by = 'other', claimed_until = ${Date.now() + 60_000} WHERE seq = ${first}`,
    );
    await db.run(sql`UPDATE outbox SET claimed_by = ${id}, claimed_until = NULL WHERE seq = ${second}`);
    relay.start();
    try {
      const sent = () => db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM outbox WHERE sent_at IS NOT NULL`);
      expect((await until(sent, (r) => r?.n === 4, 10_000))?.n).toBe(4);
      // Before: renewed with the batch, it was held by a relay that would never publish it (nor let it go).
      const row = await db.one(
        sql<{ claimed_until: number | null }>`SELECT claimed_until FROM outbox WHERE seq = ${second}`,
      );
      expect(row?.claimed_until ?? null).toBeNull();
    } finally {
      await relay.stop();
      await db.close();
    }
  }, 30_000);
});

describe.skipIf(TEST_DB !== "sqlite")("a consumer killed between its dead letter and its message's termination", () => {
  /** The consumer process of test/fixtures/dead-letter-crash.ts. */
  const consumerProcess = (env: Record<string, string>) => {
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "test/fixtures/dead-letter-crash.ts")], {
      cwd: ROOT,
      env: { ...process.env, NATS_URL: nats.url, ...env },
      stdio: "pipe",
    });
    return child;
  };

  it("letters the event once: its restart (or another replica) does not letter it again", async () => {
    const id = await publishPlaced("ord-lettered-once");
    const durable = `crash-letter-${++n}`;
    const env = { DB_PATH: join(dir.path, `crash_${n}.db`), DURABLE: durable, ORDER_ID: "ord-lettered-once" };
    const first = consumerProcess({ ...env, CRASH_AFTER_LETTER: "1" });
    expect(await exited(first)).toBe("SIGKILL");
    expect(await lettered(durable)).toEqual([id]);
    // Restarted: the message, never terminated, comes back after the ack wait (10 s).
    const second = consumerProcess(env);
    try {
      await outputReady(second, "consuming", "consumer", 20_000);
      // Delivered again (after the ack wait, 10 s), lettered again, terminated: settled.
      const info = await until(
        () => bus.jsm.consumers.info("ORDER", durable),
        (i) => i.num_redelivered === 0 && i.num_ack_pending === 0 && i.delivered.stream_seq > 0,
        25_000,
      );
      expect(info.num_ack_pending).toBe(0);
      expect(await lettered(durable)).toEqual([id]);
    } finally {
      second.kill("SIGKILL");
      await exited(second);
    }
  }, 60_000);
});

describe.skipIf(TEST_DB !== "sqlite")("an event that waited in the consumer past its ack wait", () => {
  /**
   * A consumer of ORDER whose handler holds `slow` until JetStream has sent every event the consumer
   * holds again (past the ack wait, 10 s), and always fails `failing`.
   */
  const consuming = async (
    events: { slow?: string; failing?: string },
    attempts: { at: number; delivery: number }[],
  ) => {
    const consumer = await sqliteService();
    const durable = `stale-${++n}`;
    let slowBegun = () => {};
    const begun = new Promise<void>((r) => {
      slowBegun = r;
    });
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable,
      handlers: [
        on(OrderPlacedSchema, async (_e, ctx) => {
          if (ctx.eventId === events.slow) {
            slowBegun();
            // Past the ack wait (10 s): until JetStream has sent each event this consumer holds again.
            await until(
              () => bus.jsm.consumers.info("ORDER", durable),
              (i) => i.num_pending === 0 && i.num_ack_pending > 0 && i.num_redelivered === i.num_ack_pending,
              25_000,
            );
          }
          if (ctx.eventId !== events.failing) return;
          attempts.push({ at: Date.now(), delivery: ctx.deliveryCount });
          throw new Error("what it needs is not there yet");
        }),
      ],
    });
    return { c, begun };
  };
  /** Whether each of the first three retries came after its backoff (0.1 s, 0.2 s, 0.4 s; some leeway). */
  const backedOff = (attempts: { at: number }[]) =>
    attempts.slice(1, 4).map((a, i) => a.at - (attempts[i] as { at: number }).at >= 100 * 2 ** i * 0.8);

  it("is retried after its backoff, not at once by the copy JetStream sent meanwhile (it was in the slow batch)", async () => {
    const slow = await publishPlaced(`ord-slow-handler-${n}`);
    const failing = await publishPlaced(`ord-failing-beside-${n}`);
    const attempts: { at: number; delivery: number }[] = [];
    const { c } = await consuming({ slow, failing }, attempts);
    try {
      await until(
        () => attempts.length,
        (x) => x >= 4,
        25_000,
      );
      expect(backedOff(attempts)).toEqual([true, true, true]);
    } finally {
      await c.stop();
    }
  }, 60_000);

  it("is retried after its backoff when both copies wait behind the slow batch and arrive in one batch", async () => {
    const slow = await publishPlaced(`ord-slow-handler-${n}`);
    const events: { slow: string; failing?: string } = { slow };
    const attempts: { at: number; delivery: number }[] = [];
    const { c, begun } = await consuming(events, attempts);
    try {
      await begun;
      events.failing = await publishPlaced(`ord-failing-behind-${n}`);
      await until(
        () => attempts.length,
        (x) => x >= 4,
        25_000,
      );
      expect(backedOff(attempts)).toEqual([true, true, true]);
    } finally {
      await c.stop();
    }
  }, 60_000);
});
