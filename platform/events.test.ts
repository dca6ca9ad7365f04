/**
 * The event bus against a real nats-server (bus.ts, outbox.ts, inbox.ts):
 * outbox relay (prompt, ordered, crash-safe), JetStream dedup, idempotent
 * inbox, and dead letters.
 */
import { create, type DescMessage, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AckPolicy } from "@nats-io/jetstream";
import { headers as natsHeaders, TimeoutError } from "@nats-io/transport-node";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { StockReservedSchema } from "../gen/shopmesh/inventory/v1/events_pb.js";
import { ProductSchema } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderConfirmedSchema, OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { TEST_DB, TestDatabases } from "../test/db.js";
import { event, publishEvents } from "../test/events.js";
import { tempDir } from "../test/fixtures.js";
import { rawPublish, startNats, type TestNats } from "../test/nats.js";
import { startPostgres } from "../test/postgres.js";
import { capturedLogger } from "../test/system.js";
import { type Bus, connectBus } from "./bus.js";
import { NO_ORDER } from "./catalogue.js";
import type { FaultInjector } from "./chaos.js";
import { startConsumer } from "./consumer.js";
import { locationOf, migrations, openDatabase } from "./db.js";
import { deadLetter } from "./dead-letter.js";
import { InvalidArgumentError } from "./errors.js";
import { startEventing } from "./eventing.js";
import {
  INBOX_FAILURES_MIGRATION,
  INBOX_KEEP_MS,
  INBOX_MIGRATION,
  INBOX_PURGE_MIGRATION,
  Inbox,
  on,
  purgeRegularly,
} from "./inbox.js";
import { silentLogger } from "./log.js";
import { OUTBOX_CLAIMS_MIGRATION, OUTBOX_INDEXES_MIGRATION, OUTBOX_MIGRATION, Outbox } from "./outbox.js";
import { OutboxRelay } from "./relay.js";
import type { Db } from "./sql.js";

const log = silentLogger();
let nats: TestNats;
let bus: Bus;
const dir = tempDir();
/**
 * The file's databases: on PostgreSQL one database, a schema per service() (shopmesh_svc_1, ...), as
 * a system's services share one. A database each was 59 CREATE DATABASEs, each a copy of the template
 * (0.47 s by psql here, a schema 0.14 s): much of why this file took 2.5 times as long as on SQLite.
 */
const databases = new TestDatabases(dir.path);
let n = 0;

beforeAll(async () => {
  nats = await startNats();
  bus = await connectBus(nats.url, "events-test", log, { streams: EVENTS.streams });
});
afterAll(async () => {
  await bus.close();
  await nats[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

const open: Db[] = [];
afterAll(async () => {
  for (const db of open) await db.close();
});

/** A service's database with an outbox, an inbox and an effects table (on the run's engine). */
async function service() {
  const effects = "CREATE TABLE effects (order_id TEXT NOT NULL, event_id TEXT NOT NULL);";
  const location = await databases.location(`svc_${++n}`);
  const db = await openDatabase(
    location,
    migrations([
      OUTBOX_MIGRATION,
      OUTBOX_CLAIMS_MIGRATION,
      OUTBOX_INDEXES_MIGRATION,
      INBOX_MIGRATION,
      INBOX_FAILURES_MIGRATION,
      INBOX_PURGE_MIGRATION,
      effects,
    ]),
  );
  open.push(db);
  return { db, outbox: new Outbox("test", EVENTS) };
}

/** What an event about the orchestrated order `orderId` is about. */
const orch = (orderId: string) => ({ orderId, sagaMode: SagaMode.ORCHESTRATION });

/** Adds one OrderPlaced about `orderId` in a transaction of its own; its event id. */
function addPlaced(s: { db: Db; outbox: Outbox }, orderId: string): Promise<string> {
  return s.db.transaction((tx) => s.outbox.add(tx, OrderPlacedSchema, orch(orderId), placed(orderId)));
}

/** Effects recorded for `eventId` (or for order `orderId`). */
async function effectsOf(db: Db, where: { eventId?: string; orderId?: string }): Promise<number> {
  // A field not given matches no row (NULL): '' would match every event about no order (NO_ORDER).
  const r = await db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM effects
    WHERE event_id = ${where.eventId ?? null} OR order_id = ${where.orderId ?? null}`);
  return r?.n ?? 0;
}

/** Records the effect of one event, in the consumer's transaction. */
const recordEffect = on(OrderPlacedSchema, async (e, ctx, tx) => {
  await tx.run(sql`INSERT INTO effects (order_id, event_id) VALUES (${e.meta?.orderId ?? ""}, ${ctx.eventId})`);
});

/** A relay for `producer`'s outbox on `on` (the shared bus unless given), started. */
function relaying(producer: { db: Db; outbox: Outbox }, on: Bus = bus): OutboxRelay {
  const relay = new OutboxRelay({ ...producer, bus: on, source: "test", log });
  relay.start();
  return relay;
}

/** A consumer of ORDER named `durable` recording each OrderPlaced's effect in `consumer`'s database. */
function recording(consumer: { db: Db }, durable: string, on: Bus = bus) {
  return startConsumer({
    catalogue: EVENTS,
    bus: on,
    db: consumer.db,
    log,
    stream: "ORDER",
    durable,
    handlers: [recordEffect],
  });
}

/** The last message dead-lettered by consumer `durable`, once one satisfies `ok` (or null when none did in time). */
const deadLettered = (
  durable: string,
  ok: (m: Awaited<ReturnType<Bus["jsm"]["streams"]["getMessage"]>> | null) => boolean = (m) => m !== null,
  ms?: number,
) => until(() => bus.jsm.streams.getMessage("DLQ", { last_by_subj: `dlq.${durable}` }).catch(() => null), ok, ms);

/** Waits until the effect of `eventId` is in `db` (once); how many times it is there. */
const applied = (db: Db, eventId: string, ms?: number) =>
  until(
    () => effectsOf(db, { eventId }),
    (x) => x === 1,
    ms,
  );

const drained = (relay: OutboxRelay) =>
  until(
    async () => (await relay.backlog()).count,
    (c) => c === 0,
  );

/** Messages of `subject` in the ORDER stream, in stream order. */
async function streamed(subjectFilter: string) {
  const info = await bus.jsm.streams.info("ORDER");
  const out: { seq: number; eventId: string; headers: Record<string, string> }[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const m = await bus.jsm.streams.getMessage("ORDER", { seq }).catch(() => null);
    if (!m || m.subject !== subjectFilter) continue;
    const h: Record<string, string> = {};
    for (const [k, v] of m.header ?? []) h[k] = v[0] ?? "";
    out.push({ seq, eventId: h["ce-id"] ?? "", headers: h });
  }
  return out;
}

async function until<T>(f: () => T | Promise<T>, ok: (v: T) => boolean, ms = 5_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Every message of `subject` in the DLQ stream (of `on`, the shared bus unless given). */
async function dlqMessages(subject: string, on: Bus = bus) {
  const info = await on.jsm.streams.info("DLQ");
  const out = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const m = await on.jsm.streams.getMessage("DLQ", { seq }).catch(() => null);
    if (m?.subject === subject) out.push(m);
  }
  return out;
}

const placed = (_orderId: string) => ({
  customerId: "alice",
  items: [{ productId: "p", quantity: 1 }],
  cardToken: "tok",
});

describe("outbox", () => {
  it("publishes right after commit (no sweep needed) with CloudEvents headers, and nothing on rollback", async () => {
    const svc = await service();
    const { db, outbox } = svc;
    const relay = new OutboxRelay({ db, outbox, bus, source: "test", log, sweepMs: 60_000 });
    relay.start();
    const id = await addPlaced(svc, "ord-a");
    await expect(
      db.transaction(async (tx) => {
        await outbox.add(tx, OrderPlacedSchema, orch("ord-rolled-back"), placed("ord-rolled-back"));
        throw new Error("business rule failed");
      }),
    ).rejects.toThrow("business rule failed");
    const msgs = await until(
      () => streamed("order.order.placed.orchestration"),
      (m) => m.some((x) => x.eventId === id),
      3_000,
    );
    const m = msgs.find((x) => x.eventId === id);
    expect(m?.headers).toMatchObject({
      "ce-specversion": "1.0",
      "ce-type": "shopmesh.order.v1.OrderPlaced",
      "ce-source": "test",
      "content-type": "application/protobuf",
      "Nats-Msg-Id": id,
    });
    // Marked sent once JetStream acknowledged it, which may come a moment after a reader sees it.
    const backlog = await until(
      () => relay.backlog(),
      (b) => b.count === 0,
      3_000,
    );
    expect(backlog.count).toBe(0);
    await relay.stop();
  });

  it("publishes no event before its change is on disk: a row it has not seen flushed waits for a flush", async () => {
    const svc = await service();
    const seen: string[] = [];
    const db = new Proxy(svc.db, {
      get(target, prop, receiver) {
        if (prop !== "durable") return Reflect.get(target, prop, receiver);
        return async () => {
          seen.push("flush");
          await target.durable();
          seen.push("flushed");
        };
      },
    });
    const js = new Proxy(bus.js, {
      get(target, prop, receiver) {
        if (prop !== "publish") return Reflect.get(target, prop, receiver);
        return (subject: string, data: Uint8Array, opts?: { msgID?: string }) => {
          seen.push(`publish ${opts?.msgID}`);
          return target.publish(subject, data, opts);
        };
      },
    });
    // Added through the outbox, in a transaction reported once flushed: nothing to wait for.
    const flushed = await addPlaced(svc, "ord-flushed");
    const relay = new OutboxRelay({ db, outbox: svc.outbox, bus: { ...bus, js }, source: "test", log, sweepMs: 20 });
    relay.start();
    await drained(relay);
    expect(seen).toEqual([`publish ${flushed}`]);
    // Committed, its flush not known to this process (another transaction's under way, or another process's).
    seen.length = 0;
    const pending = `evt_unflushed_${Date.now()}`;
    await svc.db.transaction(
      (tx) =>
        tx.run(sql`INSERT INTO outbox (event_id, type, subject, payload, order_id, created_at)
          VALUES (${pending}, ${OrderPlacedSchema.typeName}, 'order.order.placed.orchestration', ${Buffer.from("x")}, 'ord-unflushed',
            ${Date.now()})`),
      { durable: false },
    );
    await drained(relay);
    await relay.stop();
    expect(seen).toEqual(["flush", "flushed", `publish ${pending}`]);
  });

  it("publishes what was committed while no relay ran (a crash between commit and publish), in commit order", async () => {
    const svc = await service();
    const ids: string[] = [];
    for (let i = 0; i < 30; i++) ids.push(await addPlaced(svc, "ord-b"));
    const relay = new OutboxRelay({ ...svc, bus, source: "test", log });
    expect((await relay.backlog()).count).toBe(30);
    relay.start();
    await drained(relay);
    const seen = (await streamed("order.order.placed.orchestration"))
      .filter((m) => ids.includes(m.eventId))
      .map((m) => m.eventId);
    expect(seen).toEqual(ids);
    await relay.stop();
  });

  it("publishes many orders' events together, but one order's in commit order even when a publish fails", async () => {
    const svc = await service();
    const ids: string[] = [];
    const orderOf = new Map<string, string>();
    for (let i = 0; i < 40; i++) {
      const order = `ord-w${i % 4}`;
      const id = await addPlaced(svc, order);
      ids.push(id);
      orderOf.set(id, order);
    }
    // The sixth row's first publish fails without reaching JetStream; rows after it still go out.
    const failOnce = ids[5] as string;
    let failed = false;
    let inFlight = 0;
    let mostInFlight = 0;
    const js = new Proxy(bus.js, {
      get(target, prop, receiver) {
        if (prop !== "publish") return Reflect.get(target, prop, receiver);
        return async (subject: string, data: Uint8Array, opts?: { msgID?: string }) => {
          inFlight++;
          mostInFlight = Math.max(mostInFlight, inFlight);
          try {
            if (opts?.msgID === failOnce && !failed) {
              failed = true;
              throw new Error("injected: lost on the way");
            }
            return await target.publish(subject, data, opts);
          } finally {
            inFlight--;
          }
        };
      },
    });
    const relay = new OutboxRelay({ ...svc, bus: { ...bus, js }, source: "test", log, sweepMs: 20 });
    relay.start();
    await drained(relay);
    await relay.stop();
    const seen = (await streamed("order.order.placed.orchestration"))
      .filter((m) => ids.includes(m.eventId))
      .map((m) => m.eventId);
    expect([...seen].sort()).toEqual([...ids].sort());
    for (const order of new Set(orderOf.values())) {
      const of = (list: string[]) => list.filter((id) => orderOf.get(id) === order);
      expect(of(seen)).toEqual(of(ids));
    }
    expect(failed).toBe(true);
    expect(mostInFlight).toBeGreaterThan(1);
  });

  it("runs one housekeeping at a time: with the database slow, sweeps do not pile up", async () => {
    const svc = await service();
    let running = 0;
    let most = 0;
    let runs = 0;
    // The backlog's count (the housekeeping's last statement) takes 300 ms, sweeps come every 20.
    const db = new Proxy(svc.db, {
      get(target, prop, receiver) {
        if (prop !== "one") return Reflect.get(target, prop, receiver);
        return async (q: Parameters<Db["one"]>[0]) => {
          running++;
          runs++;
          most = Math.max(most, running);
          try {
            await new Promise((r) => setTimeout(r, 300));
            return await target.one(q);
          } finally {
            running--;
          }
        };
      },
    });
    const relay = new OutboxRelay({ db, outbox: svc.outbox, bus, source: "test", log, sweepMs: 20 });
    relay.start();
    await new Promise((r) => setTimeout(r, 1_000));
    await relay.stop();
    expect(runs).toBeGreaterThanOrEqual(2);
    expect(most).toBe(1);
  });

  it("a republished event id is dropped by JetStream's duplicate window", async () => {
    const svc = await service();
    const id = await addPlaced(svc, "ord-c");
    const relay = new OutboxRelay({ ...svc, bus, source: "test", log });
    relay.start();
    await drained(relay);
    await relay.stop();
    // As if the process died after publishing but before marking the row sent.
    await svc.db.run(sql`UPDATE outbox SET sent_at = NULL, claimed_by = NULL, claimed_until = NULL`);
    const again = new OutboxRelay({ ...svc, bus, source: "test", log });
    again.start();
    await drained(again);
    await again.stop();
    expect((await streamed("order.order.placed.orchestration")).filter((m) => m.eventId === id)).toHaveLength(1);
  });
});

describe("consumers", () => {
  it("gives a duplicate delivery exactly one effect, even past the duplicate window", async () => {
    const producer = await service();
    const relay = relaying(producer);
    const id = await addPlaced(producer, "ord-d");
    await drained(relay);
    // Re-publish the same event under another Nats-Msg-Id: JetStream cannot dedupe it; the inbox must.
    const original = (await streamed("order.order.placed.orchestration")).find((m) => m.eventId === id);
    const raw = await bus.jsm.streams.getMessage("ORDER", { seq: original?.seq ?? 0 });
    if (!raw) throw new Error("original event not in the stream");
    const h = natsHeaders();
    for (const [k, v] of raw.header ?? []) if (k !== "Nats-Msg-Id") h.set(k, v[0] ?? "");
    await bus.js.publish("order.order.placed.orchestration", raw.data, { headers: h, msgID: `${id}-again` });

    const consumer = await service();
    let duplicates = 0;
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable: `dedupe-${n}`,
      handlers: [recordEffect],
      onHandled: (_t, dup) => {
        if (dup) duplicates++;
      },
    });
    await until(
      () => duplicates,
      (d) => d >= 1,
    );
    expect(await effectsOf(consumer.db, { orderId: "ord-d" })).toBe(1);
    await c.stop();
    await relay.stop();
  });

  it("sends a consumer only the events of its mode and types: its filter subject, given to a durable made without one", async () => {
    const producer = await service();
    const relay = relaying(producer);
    const orchestrated = await addPlaced(producer, "ord-orchestrated");
    const choreographed = await producer.db.transaction((tx) =>
      producer.outbox.add(
        tx,
        OrderPlacedSchema,
        { orderId: "ord-choreographed", sagaMode: SagaMode.CHOREOGRAPHY },
        placed("ord-choreographed"),
      ),
    );
    const durable = `refiltered-${n}`;
    // Made before this code declared a filter: the consumer gives it one at start.
    await bus.jsm.consumers.add("ORDER", { durable_name: durable, ack_policy: AckPolicy.Explicit });
    const consumer = await service();
    const handled: string[] = [];
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable,
      sagaMode: SagaMode.CHOREOGRAPHY,
      handlers: [
        on(OrderPlacedSchema, async (e, ctx, tx) => {
          handled.push(ctx.eventId);
          await recordEffect[1](e as never, ctx, tx);
        }),
      ],
    });
    await applied(consumer.db, choreographed);
    const info = await bus.jsm.consumers.info("ORDER", durable);
    expect(info.config.filter_subject).toBe("order.order.placed.choreography");
    // The orchestrated order's event was never delivered to it, not delivered and ignored.
    expect(info.delivered.consumer_seq).toBe(handled.length);
    expect(handled).toContain(choreographed);
    expect(handled).not.toContain(orchestrated);
    await c.stop();
    await relay.stop();
  });

  it("publishes an event no saga waits for on `none`: a consumer of the stream takes it, one of a mode is never sent it", async () => {
    // A NATS of its own: what this puts on ORDER, about no order, stays there.
    await using nats = await startNats();
    const other = await connectBus(nats.url, "events-test-none", log, { streams: EVENTS.streams });
    const producer = await service();
    const relay = relaying(producer, other);
    const [first, second] = await producer.db.transaction(async (tx) => [
      await producer.outbox.add(tx, OrderPlacedSchema, NO_ORDER, placed("")),
      await producer.outbox.add(tx, OrderPlacedSchema, NO_ORDER, placed("")),
    ]);
    const stored = await until(
      () => other.jsm.streams.getMessage("ORDER", { last_by_subj: "order.order.placed.none" }).catch(() => null),
      (m) => m?.header.get("ce-id") === second,
    );
    expect(fromBinary(OrderPlacedSchema, stored?.data ?? new Uint8Array()).meta).toMatchObject({
      orderId: "",
      sagaMode: SagaMode.UNSPECIFIED,
    });
    const whole = await service();
    const moded = await service();
    const all = await recording(whole, "whole", other);
    const one = await startConsumer({
      catalogue: EVENTS,
      bus: other,
      db: moded.db,
      log,
      stream: "ORDER",
      durable: "moded",
      sagaMode: SagaMode.ORCHESTRATION,
      handlers: [recordEffect],
    });
    expect(await applied(whole.db, first)).toBe(1);
    expect(await applied(whole.db, second)).toBe(1);
    const info = await other.jsm.consumers.info("ORDER", "moded");
    expect(info.config.filter_subject).toBe("order.order.placed.orchestration");
    expect(info.num_pending + info.num_ack_pending + info.delivered.consumer_seq).toBe(0);
    expect(await effectsOf(moded.db, { eventId: first })).toBe(0);
    await one.stop();
    await all.stop();
    await relay.stop();
    await other.close();
  });

  it("acknowledges an event its handler's filter rejects without a transaction or an inbox row", async () => {
    const producer = await service();
    const relay = relaying(producer);
    const skip = await addPlaced(producer, "ord-not-mine");
    const take = await addPlaced(producer, "ord-mine");
    const consumer = await service();
    const handled: string[] = [];
    const durable = `filtered-${n}`;
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable,
      handlers: [
        on(
          OrderPlacedSchema,
          async (e, ctx, tx) => {
            handled.push(ctx.eventId);
            await recordEffect[1](e as never, ctx, tx);
          },
          async (e) => e.meta?.orderId === "ord-mine",
        ),
      ],
    });
    await applied(consumer.db, take);
    // Both settled: nothing is left for this consumer, and only the accepted one ran and was recorded.
    await until(
      async () =>
        (await bus.jsm.consumers.info("ORDER", durable)).num_ack_pending +
        (await bus.jsm.consumers.info("ORDER", durable)).num_pending,
      (x) => x === 0,
    );
    expect(handled.filter((id) => id === skip || id === take)).toEqual([take]);
    const inbox = await consumer.db.all(
      sql<{ event_id: string }>`SELECT event_id FROM inbox WHERE consumer = ${durable}`,
    );
    expect(inbox.map((r) => r.event_id)).not.toContain(skip);
    expect(inbox.map((r) => r.event_id)).toContain(take);
    await c.stop();
    await relay.stop();
  });

  it("dead-letters a poison message with its reason and keeps consuming", async () => {
    const h = natsHeaders();
    h.set("ce-type", "shopmesh.order.v1.OrderPlaced");
    h.set("ce-id", "evt_poison");
    await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff, 0xff, 0xff]), {
      headers: h,
      msgID: "evt_poison",
    });
    const producer = await service();
    const relay = relaying(producer);
    const good = await addPlaced(producer, "ord-after-poison");

    const consumer = await service();
    const durable = `poison-${n}`;
    const c = await recording(consumer, durable);
    await applied(consumer.db, good);
    expect(await effectsOf(consumer.db, { eventId: good })).toBe(1);
    const dlq = await deadLettered(durable);
    expect(dlq?.header.get("x-dlq-reason")).toMatch(/^undecodable shopmesh.order.v1.OrderPlaced payload/);
    expect(dlq?.header.get("x-dlq-subject")).toBe("order.order.placed.orchestration");
    await c.stop();
    await relay.stop();
  });

  it("dead-letters at once an event holding a NUL, which PostgreSQL's text cannot store (it failed ten deliveries there first)", async () => {
    // Published from a scratch SQLite outbox: a PostgreSQL producer could not even store it.
    const [nul] = await publishEvents(bus, [
      event(OrderPlacedSchema, "ord-\u0000nul", { ...placed(""), sagaMode: SagaMode.ORCHESTRATION }),
    ]);
    const producer = await service();
    const relay = relaying(producer);
    const good = await addPlaced(producer, "ord-after-nul");
    const consumer = await service();
    const durable = `nul-${n}`;
    const c = await recording(consumer, durable);
    await applied(consumer.db, good);
    const dlq = await deadLettered(durable);
    expect(dlq?.header.get("ce-id")).toBe(nul);
    expect(dlq?.header.get("x-dlq-reason")).toMatch(/holds a NUL character \(U\+0000\) in meta\.order_id/);
    expect(dlq?.header.get("x-dlq-deliveries")).toBe("1");
    expect(await effectsOf(consumer.db, { eventId: nul })).toBe(0);
    await c.stop();
    await relay.stop();
  });

  it("keeps consuming when the server answers its pull with a status it does not expect (a 400 there ended the process)", async () => {
    const producer = await service();
    const relay = relaying(producer);
    const consumer = await service();
    const durable = `statused-${n}`;
    // The consumer's pulls as the server receives them: their reply subject is the pull's inbox.
    const pulls = bus.nc.subscribe(`$JS.API.CONSUMER.MSG.NEXT.ORDER.${durable}`, { max: 1 });
    const c = await recording(consumer, durable);
    let inbox = "";
    for await (const m of pulls) inbox = m.reply ?? "";
    expect(inbox).not.toBe("");
    // Anyone's malformed pull, answered at that inbox: "400 Bad Request", which ends the pull.
    bus.nc.publish(`$JS.API.CONSUMER.MSG.NEXT.ORDER.${durable}`, "{", { reply: inbox });
    await bus.nc.flush();
    const good = await addPlaced(producer, "ord-after-status");
    await applied(consumer.db, good);
    expect(await effectsOf(consumer.db, { eventId: good })).toBe(1);
    await c.stop();
    await relay.stop();
  });

  it("makes its durable consumer again when it is deleted, and goes on consuming", async () => {
    const producer = await service();
    const relay = relaying(producer);
    const consumer = await service();
    const durable = `deleted-${n}`;
    const c = await recording(consumer, durable);
    const before = await addPlaced(producer, "ord-before-delete");
    await applied(consumer.db, before);
    await bus.jsm.consumers.delete("ORDER", durable);
    const after = await addPlaced(producer, "ord-after-delete");
    await applied(consumer.db, after, 20_000);
    expect(await effectsOf(consumer.db, { eventId: after })).toBe(1);
    // Made again from the stream's start: what it had applied already is not applied twice.
    expect(await effectsOf(consumer.db, { eventId: before })).toBe(1);
    await c.stop();
    await relay.stop();
  }, 30_000);

  it("stops when asked while it starts its pull again, NATS slow to answer (its stop waited for ever)", async () => {
    // A NATS of its own, to freeze, with an empty stream: the consumer waits on its pull, so the server
    // tells it at once that its durable is gone (behind a backlog, only missed heartbeats would).
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "events-test-stop", log, { streams: EVENTS.streams });
    const consumer = await service();
    const { log: watched, lines } = capturedLogger();
    const durable = `stop-restart-${n}`;
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log: watched,
      stream: "ORDER",
      durable,
      handlers: [recordEffect],
    });
    // The durable goes away, so the pull ends and is started again...
    await bus.jsm.consumers.delete("ORDER", durable);
    await expect
      .poll(() => lines.some((l) => String(l.msg).startsWith("consumer's pull")), { timeout: 5_000 })
      .toBe(true);
    // ... while nats-server is frozen; SIGTERM comes before it answers.
    nats.pause();
    let stopping: Promise<void>;
    try {
      await new Promise((r) => setTimeout(r, 1_000)); // past the restart's backoff: the pull is being started
      stopping = c.stop();
    } finally {
      nats.resume();
    }
    const settled = await Promise.race([
      stopping.then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), 8_000)),
    ]);
    expect(settled, "stop() settled").toBe(true);
    await bus.close();
  }, 30_000);

  it("dead-letters at once what it cannot copy as it is, and what carries another event's id (each was redelivered for ever, or applied twice)", async () => {
    // A NATS of its own: what this puts on ORDER stays there (no stream allows deleting a message),
    // and the other tests read ORDER from its start.
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "events-test-unsendable", log, { streams: EVENTS.streams });
    const event = (eventId: string) =>
      toBinary(
        OrderPlacedSchema,
        create(OrderPlacedSchema, {
          meta: { eventId, orderId: "ord-x", sagaMode: SagaMode.ORCHESTRATION },
          ...placed("ord-x"),
        }),
      );
    const ce = (eventId: string) => {
      const h = natsHeaders();
      h.set("ce-type", "shopmesh.order.v1.OrderPlaced");
      h.set("ce-id", eventId);
      return h;
    };
    // Undecodable, with a control header the server checks: ORDER takes it, and its copy onto the DLQ was refused.
    const control = ce("evt_control");
    control.set("Nats-Expected-Stream", "ORDER");
    const seqs = [
      (
        await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff, 0xff, 0xff]), {
          headers: control,
        })
      ).seq,
    ];
    // A payload near max_payload: with the dead letter's headers it no longer fit.
    const big = Buffer.concat([event("evt_big"), Buffer.alloc(bus.nc.info?.max_payload ?? 0)]).subarray(
      0,
      (bus.nc.info?.max_payload ?? 0) - 100,
    );
    seqs.push((await bus.js.publish("order.order.placed.orchestration", big, { headers: ce("evt_big") })).seq);
    // A header name nats.js cannot read (a space), stored as sent: reading the headers threw.
    const hdr = "NATS/1.0\r\nce-type: shopmesh.order.v1.OrderPlaced\r\nce-id: evt_raw\r\nBad Key: y\r\n\r\n";
    seqs.push(await rawPublish(nats.port, "order.order.placed.orchestration", hdr, event("evt_raw")));
    // Another event's id: the inbox deduplicates on ce-id, so a copy with a new one applied twice.
    seqs.push(
      (await bus.js.publish("order.order.placed.orchestration", event("evt_real"), { headers: ce("evt_copy") })).seq,
    );
    // A header name with a line feed: nats.js quotes it raw in its error, which no header may hold.
    const lf = "NATS/1.0\r\nce-type: shopmesh.order.v1.OrderPlaced\r\nce-id: evt_lf\r\nBad\nKey: y\r\n\r\n";
    seqs.push(await rawPublish(nats.port, "order.order.placed.orchestration", lf, event("evt_lf")));
    // A header block just under JetStream's 64 KiB: with the dead letter's own headers, over it.
    const head = "NATS/1.0\r\nce-type: shopmesh.order.v1.OrderPlaced\r\nce-id: evt_head\r\nx-pad: ";
    const pad = "p".repeat(65_536 - 100 - head.length);
    seqs.push(
      await rawPublish(
        nats.port,
        "order.order.placed.orchestration",
        `${head}${pad}\r\n\r\n`,
        new Uint8Array([0xff, 0xff]),
      ),
    );
    // An id far longer than any service writes: it would be stored and listed back.
    const long = `evt_${"l".repeat(200)}`;
    seqs.push((await bus.js.publish("order.order.placed.orchestration", event(long), { headers: ce(long) })).seq);
    // An orchestrated order's event on the choreography's subject: consumers are filtered on it.
    seqs.push(
      (await bus.js.publish("order.order.placed.choreography", event("evt_mode"), { headers: ce("evt_mode") })).seq,
    );
    try {
      const producer = await service();
      const relay = relaying(producer, bus);
      const good = await addPlaced(producer, "ord-after-unsendable");
      const consumer = await service();
      const durable = `unsendable-${n}`;
      const c = await recording(consumer, durable, bus);
      await applied(consumer.db, good);
      const mine = (l: { header: { get(k: string): string } }) =>
        seqs.includes(Number(l.header.get("x-dlq-stream-seq")));
      const letters = await until(
        async () => (await dlqMessages(`dlq.${durable}`, bus)).filter(mine),
        (ls) => ls.length >= 8,
      );
      expect(letters).toHaveLength(8);
      // Each is acknowledged after its dead letter is stored, which a reader may see first.
      const pending = await until(
        async () => (await bus.jsm.consumers.info("ORDER", durable)).num_ack_pending,
        (p) => p === 0,
      );
      expect(pending).toBe(0);
      const by = (id: string) => letters.find((l) => l.header.get("ce-id") === id);
      expect(by("evt_control")?.header.get("x-dlq-reason")).toMatch(/^undecodable/);
      expect(by("evt_control")?.header.get("Nats-Expected-Stream")).toBe("");
      expect(by("evt_big")?.header.get("x-dlq-truncated")).toMatch(/bytes, at most 65536 kept/);
      expect(by("evt_big")?.data.byteLength).toBe(65536);
      const unreadable = letters.filter((l) => /^unreadable headers/.test(l.header.get("x-dlq-reason")));
      expect(unreadable).toHaveLength(2);
      expect(unreadable.some((l) => l.header.get("x-dlq-reason").includes("\\x0a"))).toBe(true);
      expect(by("evt_head")?.header.get("x-dlq-truncated")).toMatch(/other headers left out/);
      expect(letters.find((l) => l.header.get("ce-id") === long)?.header.get("x-dlq-reason")).toMatch(/over-long/);
      expect(by("evt_copy")?.header.get("x-dlq-reason")).toMatch(/is not the event's meta.event_id "evt_real"/);
      expect(by("evt_mode")?.header.get("x-dlq-reason")).toMatch(/is published on order\.order\.placed\.<mode>/);
      await c.stop();
      await relay.stop();
    } finally {
      await bus.close();
    }
  });

  it("letters an event whole after a moment's failure of its first copy (a timeout), instead of cutting it as if refused", async () => {
    // A NATS of its own: what this puts on ORDER stays there, and the other tests read ORDER from its start.
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "events-test-dlq-timeout", log, { streams: EVENTS.streams });
    try {
      const h = natsHeaders();
      h.set("ce-type", "shopmesh.order.v1.OrderPlaced");
      h.set("ce-id", "evt_timeout");
      h.set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
      await bus.js.publish("order.order.placed.orchestration", new Uint8Array([1, 2, 3]), { headers: h });
      const durable = `dlq-timeout-${++n}`;
      await bus.jsm.consumers.add("ORDER", {
        durable_name: durable,
        ack_policy: AckPolicy.Explicit,
      });
      const m = await (await bus.js.consumers.get("ORDER", durable)).next({ expires: 2_000 });
      if (!m) throw new Error("no message");
      let failNext = true;
      const js = new Proxy(bus.js, {
        get: (target, prop, receiver) =>
          prop !== "publish"
            ? Reflect.get(target, prop, receiver)
            : (...args: Parameters<Bus["js"]["publish"]>) => {
                if (!failNext) return target.publish(...args);
                failNext = false;
                return Promise.reject(new TimeoutError());
              },
      });
      // NATS away for a moment: the letter is not written, and the message is redelivered to try again.
      await expect(deadLetter({ ...bus, js }, durable, m, "handler failed 10 times")).rejects.toBeInstanceOf(
        TimeoutError,
      );
      expect(await dlqMessages(`dlq.${durable}`, bus)).toHaveLength(0);
      await deadLetter({ ...bus, js }, durable, m, "handler failed 10 times");
      const [letter, ...more] = await dlqMessages(`dlq.${durable}`, bus);
      expect(more).toHaveLength(0);
      expect(letter?.header.get("x-dlq-truncated")).toBe("");
      expect(letter?.header.get("traceparent")).toBe("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    } finally {
      await bus.close();
    }
  });

  it("takes an event published before subjects ended in the saga mode, and refuses one that mixes the two forms", async () => {
    // A NATS of its own: what this puts on ORDER stays there.
    await using nats = await startNats();
    const other = await connectBus(nats.url, "events-test-legacy", log, { streams: EVENTS.streams });
    try {
      const publish = async (subject: string, eventId: string, sagaMode?: SagaMode) => {
        const meta = { eventId, orderId: "ord-legacy", ...(sagaMode === undefined ? {} : { sagaMode }) };
        const h = natsHeaders();
        h.set("ce-type", OrderPlacedSchema.typeName);
        h.set("ce-id", eventId);
        const data = toBinary(OrderPlacedSchema, create(OrderPlacedSchema, { meta, ...placed("ord-legacy") }));
        return (await other.js.publish(subject, data, { headers: h })).seq;
      };
      await publish("order.order.placed", "evt_legacy");
      const refused = [
        await publish("order.order.placed", "evt_legacy_moded", SagaMode.ORCHESTRATION),
        await publish("order.order.placed.orchestration", "evt_modal_unmoded"),
        await publish("order.order.placed.none", "evt_none_moded", SagaMode.ORCHESTRATION),
      ];
      const consumer = await service();
      const durable = `legacy-${n}`;
      // Two types, both modes: unfiltered, as history and notification-order are.
      const c = await startConsumer({
        catalogue: EVENTS,
        bus: other,
        db: consumer.db,
        log,
        stream: "ORDER",
        durable,
        handlers: [recordEffect, on(OrderConfirmedSchema, async () => {})],
      });
      await applied(consumer.db, "evt_legacy");
      const letters = await until(
        async () => (await dlqMessages(`dlq.${durable}`, other)).map((l) => Number(l.header.get("x-dlq-stream-seq"))),
        (seqs) => seqs.length >= 3,
      );
      expect(letters.sort()).toEqual(refused);
      await c.stop();
    } finally {
      await other.close();
    }
  });

  it("ignores an event type a newer publisher sends, on its own subject, and dead-letters one on another's", async () => {
    // A NATS of its own: what this puts on ORDER stays there.
    await using nats = await startNats();
    const other = await connectBus(nats.url, "events-test-newer", log, { streams: EVENTS.streams });
    try {
      const publish = async (subject: string, type: string, eventId: string) => {
        const h = natsHeaders();
        h.set("ce-type", type);
        h.set("ce-id", eventId);
        return (await other.js.publish(subject, new Uint8Array([8, 1]), { headers: h })).seq;
      };
      await publish("order.order.shipped.orchestration", "shopmesh.order.v1.OrderShipped", "evt_newer");
      await publish("order.order.shipped.choreography", "shopmesh.order.v1.OrderShipped", "evt_newer_2");
      // One no saga waits for (about no order, say): its subject ends in `none`.
      await publish("order.order.shipped.none", "shopmesh.order.v1.OrderShipped", "evt_newer_none");
      const refused = [
        await publish("order.order.placed.orchestration", "shopmesh.order.v1.OrderShipped", "evt_wrong_subject"),
        await publish("order.stock.expired.orchestration", "shopmesh.inventory.v1.StockExpired", "evt_other_context"),
        await publish("order.order.shipped.orchestration", "OrderShipped", "evt_not_a_type_name"),
        await publish("order.order.shipped", "shopmesh.order.v1.OrderShipped", "evt_no_mode"),
        await publish("order.order.shipped.nothing", "shopmesh.order.v1.OrderShipped", "evt_unknown_mode"),
      ];
      const producer = await service();
      const placedId = await producer.db.transaction((tx) =>
        producer.outbox.add(tx, OrderPlacedSchema, orch("ord-after-newer"), placed("ord-after-newer")),
      );
      const relay = relaying(producer, other);
      const consumer = await service();
      const durable = `newer-${n}`;
      // Two types: unfiltered, as history and notification-order are, so every type on ORDER reaches it.
      const c = await startConsumer({
        catalogue: EVENTS,
        bus: other,
        db: consumer.db,
        log,
        stream: "ORDER",
        durable,
        handlers: [recordEffect, on(OrderConfirmedSchema, async () => {})],
      });
      await applied(consumer.db, placedId);
      const letters = await until(
        async () => (await dlqMessages(`dlq.${durable}`, other)).map((l) => Number(l.header.get("x-dlq-stream-seq"))),
        (seqs) => seqs.length >= refused.length,
      );
      expect(letters.sort((x, y) => x - y)).toEqual(refused);
      // The newer type's events were acknowledged: nothing of ORDER is left for the consumer.
      const info = await until(
        () => other.jsm.consumers.info("ORDER", durable),
        (i) => i.num_pending === 0 && i.num_ack_pending === 0,
      );
      expect(info.num_redelivered).toBe(0);
      await c.stop();
      await relay.stop();
    } finally {
      await other.close();
    }
  });

  it("retries a failing handler with backoff, then dead-letters it after maxDeliver", async () => {
    const producer = await service();
    const relay = relaying(producer);
    const invalid = await addPlaced(producer, "ord-invalid");
    const bad = await addPlaced(producer, "ord-always-fails");
    const consumer = await service();
    const attempts: number[] = [];
    const durable = `failing-${n}`;
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable,
      maxDeliver: 3,
      handlers: [
        on(OrderPlacedSchema, async (_e, ctx) => {
          if (ctx.eventId === invalid) throw new InvalidArgumentError("customer_id", "is not one");
          if (ctx.eventId !== bad) return;
          attempts.push(ctx.deliveryCount);
          throw new Error("downstream rule keeps failing");
        }),
      ],
    });
    // Refused as invalid: the same on every delivery, so dead-lettered on the first (it was retried).
    const refused = await until(
      async () => (await dlqMessages(`dlq.${durable}`)).find((m) => m.header.get("ce-id") === invalid),
      (m) => m !== undefined,
      8_000,
    );
    expect(refused?.header.get("x-dlq-reason")).toBe("unprocessable: customer_id: is not one");
    expect(refused?.header.get("x-dlq-deliveries")).toBe("1");
    // (The poison message of the previous test is dead-lettered by this new consumer too.)
    const dlq = await deadLettered(durable, (m) => m?.header.get("ce-id") === bad, 8_000);
    expect(attempts).toEqual([1, 2, 3]);
    expect(dlq?.header.get("x-dlq-reason")).toContain("handler failed 3 times: downstream rule keeps failing");
    expect(dlq?.header.get("ce-id")).toBe(bad);
    await c.stop();
    await relay.stop();
  });
});

describe("an event that waited out an outage", () => {
  it("is not dead-lettered by a restarted consumer when it fails once: the outage's deliveries were no failures", async () => {
    const producer = await service();
    const relay = relaying(producer);
    const waiting = await addPlaced(producer, "ord-waited");
    await drained(relay);
    const consumer = await service();
    const durable = `outage-${n}`;
    const spec = { catalogue: EVENTS, bus, db: consumer.db, log, stream: "ORDER", durable, maxDeliver: 3 } as const;
    // The service is down (fault injection): every delivery is handed back, many more than maxDeliver.
    let skips = 0;
    const down = {
      beforeEvent: async () => {
        skips++;
        return "skip" as const;
      },
    } as unknown as FaultInjector;
    const first = await startConsumer({ ...spec, faults: down, handlers: [recordEffect] });
    await until(
      async () => (await bus.jsm.consumers.info("ORDER", durable)).num_redelivered,
      (x) => x > 0 && skips >= 6,
      15_000,
    );
    await first.stop(); // a restart: the new process knows nothing of why the deliveries before it failed
    // Up again, the event fails once (what it needs has not arrived yet), then applies.
    let failedOnce = false;
    const second = await startConsumer({
      ...spec,
      handlers: [
        on(OrderPlacedSchema, async (e, ctx, tx) => {
          if (ctx.eventId === waiting && !failedOnce) {
            failedOnce = true;
            throw new Error("what it needs is not there yet");
          }
          await tx.run(sql`INSERT INTO effects (order_id, event_id) VALUES (${e.meta?.orderId ?? ""}, ${ctx.eventId})`);
        }),
      ],
    });
    await applied(consumer.db, waiting, 8_000);
    expect(failedOnce).toBe(true);
    const letters = await dlqMessages(`dlq.${durable}`);
    expect(letters.map((m) => m.header.get("ce-id"))).not.toContain(waiting);
    await second.stop();
    await relay.stop();
  });
});

describe("a handler's failures", () => {
  /** The failures counted for `eventId` in `db` (0 when none are). */
  const counted = async (db: Db, eventId: string) =>
    Number(
      (await db.one(sql<{ failures: number }>`SELECT failures FROM inbox_failures WHERE event_id = ${eventId}`))
        ?.failures ?? 0,
    );

  it("are counted across a restart: the limit is the event's, not each process's, and a handled event's count goes", async () => {
    const producer = await service();
    const relay = relaying(producer);
    const bad = await addPlaced(producer, "ord-fails-across-restarts");
    const flaky = await addPlaced(producer, "ord-fails-once");
    await drained(relay);
    const consumer = await service();
    const durable = `restarts-${n}`;
    const attempts: string[] = [];
    const failing = on(OrderPlacedSchema, async (e, ctx, tx) => {
      if (ctx.eventId === bad || (ctx.eventId === flaky && !attempts.includes(flaky))) {
        attempts.push(ctx.eventId);
        throw new Error("a rule that fails");
      }
      await tx.run(sql`INSERT INTO effects (order_id, event_id) VALUES (${e.meta?.orderId ?? ""}, ${ctx.eventId})`);
    });
    const spec = { catalogue: EVENTS, bus, db: consumer.db, log, stream: "ORDER", durable, maxDeliver: 3 } as const;
    const first = await startConsumer({ ...spec, handlers: [failing] });
    await until(
      () => counted(consumer.db, bad),
      (x) => x >= 2,
      8_000,
    );
    await first.stop(); // a restart after two failures: one more is the limit
    const second = await startConsumer({ ...spec, handlers: [failing] });
    // Failed once, then handled — by the first process, or (its retry given back at the stop) the second,
    // which may not have yet: polled (read at once, it was 0 in a review's full-file run).
    await until(
      () => applied(consumer.db, flaky),
      (x) => x >= 1,
      8_000,
    );
    expect(await applied(consumer.db, flaky)).toBe(1);
    // Handled: forgotten (polled: the count and the handling are separate commits).
    await until(
      () => counted(consumer.db, flaky),
      (x) => x === 0,
      5_000,
    );
    expect(await counted(consumer.db, flaky)).toBe(0);
    const dlq = await deadLettered(durable, (m) => m?.header.get("ce-id") === bad, 8_000);
    expect(dlq?.header.get("x-dlq-reason")).toBe("handler failed 3 times: a rule that fails");
    expect(attempts.filter((id) => id === bad)).toHaveLength(3);
    // Dead-lettered: forgotten — polled too: the count goes in a commit after the letter's publish
    // (read at once, it was still 3 on one CI run of 617c6ba).
    await until(
      () => counted(consumer.db, bad),
      (x) => x === 0,
      5_000,
    );
    expect(await counted(consumer.db, bad)).toBe(0);
    await second.stop();
    await relay.stop();
  });

  // A delivery can fail after its event was handled: a replica past the ack wait while another (or a
  // redelivery) handled it, a stop giving back a retry while its count still committed. Counted, that
  // failure stayed until the purge a week later (a CI run read a handled event's count as 1).
  it("are not counted for an event already handled: a late delivery's failure leaves no count", async () => {
    const { db } = await service();
    const inbox = new Inbox(db, `late-${n}`);
    await inbox.once("evt-late", "shopmesh.order.v1.OrderPlaced", async () => {});
    expect(await inbox.failed("evt-late", "a late delivery failed")).toBe(0);
    expect(await counted(db, "evt-late")).toBe(0);
    // Not handled: counted, by the consumer only.
    expect(await inbox.failed("evt-new", "failed")).toBe(1);
    expect(await new Inbox(db, `other-${n}`).failed("evt-late", "failed")).toBe(1);
    expect(await inbox.failed("evt-new", "failed")).toBe(2);
  });

  it("need a table to be counted in: a consumer of a database without one does not start", async () => {
    const location = await databases.location(`svc_${++n}`);
    const db = await openDatabase(location, migrations([INBOX_MIGRATION]));
    open.push(db);
    await expect(
      startConsumer({
        catalogue: EVENTS,
        bus,
        db,
        log,
        stream: "ORDER",
        durable: `no-table-${n}`,
        handlers: [recordEffect],
      }),
    ).rejects.toThrow(/no inbox_failures table \(add INBOX_FAILURES_MIGRATION/);
  });
});

describe("an inbox", () => {
  /**
   * Inbox rows of `consumer` handled at `at`, `count` of them (`prefix`-0 on), in one statement: a
   * statement a row was 12,000 round trips to PostgreSQL, 6 s of the suite's time.
   */
  const handled = (db: Db, consumer: string, at: number, count: number, prefix: string) =>
    db.run(sql`WITH RECURSIVE n (i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ${count})
      INSERT INTO inbox (consumer, event_id, type, handled_at)
      SELECT ${consumer}, CAST(${prefix} AS TEXT) || '-' || CAST(i AS TEXT), 'shopmesh.order.v1.OrderPlaced',
        CAST(${at} AS BIGINT) FROM n`);
  const rows = async (db: Db, consumer: string, prefix: string) =>
    (
      await db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM inbox
        WHERE consumer = ${consumer} AND event_id LIKE ${`${prefix}-%`}`)
    )?.n ?? 0;

  it("forgets a consumer's events (and stale failure counts) a day past twice the streams' retention, from its start on, and keeps the rest and others'", async () => {
    const svc = await service();
    const durable = `purging-${n}`;
    const past = Date.now() - INBOX_KEEP_MS - 60_000;
    await handled(svc.db, durable, past, 3, "old");
    await handled(svc.db, durable, Date.now() - INBOX_KEEP_MS + 60_000, 2, "recent");
    await handled(svc.db, "another-consumer", past, 2, "others");
    // A failure count no delivery will clear (the event was settled by another replica meanwhile).
    await svc.db.run(sql`INSERT INTO inbox_failures (consumer, event_id, failures, last_error, failed_at)
      VALUES (${durable}, 'stale', 1, 'boom', ${past})`);
    const failures = async () =>
      (await svc.db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM inbox_failures WHERE consumer = ${durable}`))?.n ??
      0;
    const c = await recording(svc, durable);
    try {
      expect(
        await until(
          () => rows(svc.db, durable, "old"),
          (x) => x === 0,
        ),
      ).toBe(0);
      expect(await until(failures, (x) => x === 0)).toBe(0);
      expect(await rows(svc.db, durable, "recent")).toBe(2);
      expect(await rows(svc.db, "another-consumer", "others")).toBe(2);
    } finally {
      await c.stop();
    }
  });

  it("purges a chunk a transaction: more rows than one statement deletes all go", async () => {
    const svc = await service();
    await handled(svc.db, "big-consumer", Date.now() - INBOX_KEEP_MS - 1, 12_000, "old");
    expect(await new Inbox(svc.db, "big-consumer").purge()).toBe(12_000);
    expect(await rows(svc.db, "big-consumer", "old")).toBe(0);
  });

  it("a stop waits for a purge under way, which ends after its chunk: nothing runs on once the database may be closed", async () => {
    const svc = await service();
    await handled(svc.db, "stopping-consumer", Date.now() - INBOX_KEEP_MS - 1, 12_000, "old");
    const stop = purgeRegularly(new Inbox(svc.db, "stopping-consumer"), log);
    await stop();
    const left = await rows(svc.db, "stopping-consumer", "old");
    // One chunk (5,000) at most went: the purge heard the stop before its second.
    expect(left).toBeGreaterThanOrEqual(7_000);
    await new Promise((r) => setTimeout(r, 300));
    expect(await rows(svc.db, "stopping-consumer", "old")).toBe(left);
  });
});

describe("a publishing service's outbox", () => {
  it("needs the relay's claim columns: a service without them does not start (it served, and never published)", async () => {
    const location = await databases.location(`svc_${++n}`);
    const db = await openDatabase(location, migrations([OUTBOX_MIGRATION]));
    open.push(db);
    await expect(
      startEventing({ url: "off", service: "test", catalogue: EVENTS, db, log, outbox: new Outbox("test", EVENTS) }),
    ).rejects.toThrow(/test: .*add OUTBOX_MIGRATION, then OUTBOX_CLAIMS_MIGRATION/);
  });

  it("is handed to it: a service whose database has an outbox does not start without it (it served, and its events stayed there)", async () => {
    const { db } = await service();
    await expect(startEventing({ url: "off", service: "test", catalogue: EVENTS, db, log })).rejects.toThrow(
      "test: its database has an outbox, and nothing would publish it: hand startHost the store's outbox (outbox: store.outbox)",
    );
  });
});

// Once, in the postgres project (it starts a server of its own): in the other it would be a skip.
if (TEST_DB === "postgres") {
  describe("a service's start on PostgreSQL", () => {
    it("fails no statement: each would be an ERROR in the server's log (make run DB=postgres printed two at every start)", async () => {
      await using server = await startPostgres();
      const location = locationOf("notification", {
        DB_PATH: "",
        DATABASE_URL: await server.createDatabase(),
        DATABASE_SCHEMA: "",
        DATABASE_POOL_SIZE: 2,
      });
      // Notification's shape: an inbox and consumers, no outbox.
      const db = await openDatabase(location, migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION]));
      try {
        const consumers = [
          { stream: "ORDER", durable: "notification-order", handlers: [on(OrderConfirmedSchema, async () => {})] },
        ];
        const events = await startEventing({
          url: "off",
          service: "notification",
          catalogue: EVENTS,
          db,
          log,
          consumers,
        });
        await events.stop();
        // A line logged after the start's: the server's log is read once it is there.
        await db.one(sql`DO $$ BEGIN RAISE WARNING 'started'; END $$`);
      } finally {
        await db.close();
      }
      await expect.poll(() => server.output()).toContain("WARNING:  started");
      expect(
        server
          .output()
          .split("\n")
          .filter((l) => /ERROR|STATEMENT/.test(l)),
      ).toEqual([]);
    });
  });
}

describe("a consuming service's consumers", () => {
  it("each handle only their stream's events: a handler put on another stream's consumer is refused at start (it was never called)", async () => {
    const { db, outbox } = await service();
    const start = (stream: string, durable: string, type: DescMessage) =>
      startEventing({
        url: "off",
        service: "test",
        catalogue: EVENTS,
        db,
        log,
        outbox,
        consumers: [{ stream, durable, handlers: [on(type, async () => {})] }],
      });
    await expect(start("ORDER", "test-order", StockReservedSchema)).rejects.toThrow(
      /test-order handles shopmesh\.inventory\.v1\.StockReserved, an event of INVENTORY, not of ORDER/,
    );
    await expect(start("ORDER", "test-order", ProductSchema)).rejects.toThrow(
      /test-order handles shopmesh\.inventory\.v1\.Product, which is no event of the catalogue \(contracts\/events\.ts\)/,
    );
    await expect(start("ORDER", "test-orders", OrderPlacedSchema)).rejects.toThrow(
      /test's consumer on ORDER is named test-order, not test-orders/,
    );
    await expect(start("ORDER", "test-order", OrderPlacedSchema)).resolves.toBeDefined();
  });

  it("are handed to it: a service whose database has an inbox does not start without them (it served, and consumed nothing)", async () => {
    const { db, outbox } = await service();
    await expect(startEventing({ url: "off", service: "test", catalogue: EVENTS, db, log, outbox })).rejects.toThrow(
      "test: its database has an inbox, and no consumer would fill it: hand startHost the service's consumers",
    );
  });
});

describe("consumers settling a backlog", () => {
  it("apply what arrived together in one transaction, and one failing event undoes only its own writes", async () => {
    const producer = await service();
    const ids: string[] = [];
    for (let i = 0; i < 40; i++) ids.push(await addPlaced(producer, `ord-batch-${i}`));
    const bad = ids[17] as string;
    const consumer = await service();
    const durable = `batch-${n}`;
    const runs = new Map<string, number>();
    const transactions = new Set<unknown>();
    const seen: string[] = [];
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
          if (!ids.includes(ctx.eventId)) return;
          runs.set(ctx.eventId, (runs.get(ctx.eventId) ?? 0) + 1);
          transactions.add(tx);
          await tx.run(sql`INSERT INTO effects (order_id, event_id) VALUES (${e.meta?.orderId ?? ""}, ${ctx.eventId})`);
          if (ctx.eventId === bad) throw new Error("this one fails after writing");
          seen.push(ctx.eventId);
        }),
      ],
    });
    // Published while nobody consumed: the consumer finds a backlog.
    const relay = relaying(producer);
    await drained(relay);
    await deadLettered(durable, (m) => m?.header.get("ce-id") === bad, 8_000);
    await until(
      () => seen.length,
      (k) => k === 39,
    );
    await c.stop();
    await relay.stop();
    // Each good event: one run, one effect, in stream order; the bad one: one run per delivery, no effect.
    expect(seen).toEqual(ids.filter((id) => id !== bad));
    for (const id of ids) expect(await effectsOf(consumer.db, { eventId: id })).toBe(id === bad ? 0 : 1);
    expect(runs.get(bad)).toBe(2);
    expect([...runs].filter(([id, k]) => id !== bad && k !== 1)).toEqual([]);
    // Fewer transactions than events: a backlog is settled in batches.
    expect(transactions.size).toBeLessThan(30);
  });
});

describe("a consumer's lockFirst", () => {
  it("runs first in each batch with its events; if it fails, the batch is applied without it and nothing counts a delivery", async () => {
    const producer = await service();
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) ids.push(await addPlaced(producer, `ord-lockfirst-${i}`));
    // Published before the consumer starts: a backlog, not events trickling in one by one.
    const relay = relaying(producer);
    await drained(relay);
    const consumer = await service();
    const batches: number[] = [];
    let deliveries = 0;
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable: `lockfirst-${n}`,
      maxDeliver: 1, // a batch failed by lockFirst would dead-letter every event in it
      lockFirst: async (tx, events) => {
        batches.push(events.length);
        // A statement that fails: on PostgreSQL it would abort the whole transaction but for a savepoint.
        await tx.run(sql`INSERT INTO no_such_table VALUES (1)`);
      },
      handlers: [
        on(OrderPlacedSchema, async (e, ctx, tx) => {
          if (!ids.includes(ctx.eventId)) return;
          deliveries += ctx.deliveryCount;
          await tx.run(sql`INSERT INTO effects (order_id, event_id) VALUES (${e.meta?.orderId ?? ""}, ${ctx.eventId})`);
        }),
      ],
    });
    // The consumer's database is its own: every effect in it is one of these events'.
    const effects = await until(
      async () => (await consumer.db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM effects`))?.n ?? 0,
      (k) => k === 20,
      8_000,
    );
    await c.stop();
    await relay.stop();
    expect(effects).toBe(20);
    expect(deliveries).toBe(20); // each applied at its first delivery
    expect(batches.length).toBeGreaterThan(0); // a backlog: batches of several events, each locked first
    expect(batches.every((k) => k > 1)).toBe(true);
  });
});

describe("a consumer off every request's path", () => {
  /** A consumer of ORDER lingering `lingerMs`, counting the events of `ids` it applies and the transactions they took. */
  async function lingering(lingerMs: number, ids: readonly string[]) {
    const consumer = await service();
    const durable = `linger-${n}`;
    const seen = { handled: 0, transactions: new Set<unknown>() };
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable,
      lingerMs,
      handlers: [
        on(OrderPlacedSchema, async (_e, ctx, tx) => {
          if (!ids.includes(ctx.eventId)) return;
          seen.transactions.add(tx);
          seen.handled++;
        }),
      ],
    });
    const appliedAll = async () =>
      expect(
        await until(
          () => seen.handled,
          (k) => k === ids.length,
        ),
      ).toBe(ids.length);
    return { c, durable, seen, appliedAll };
  }

  /** Five events published ~20 ms apart to a consumer idle before them: the transactions that applied them. */
  async function settledIn(lingerMs: number): Promise<number> {
    const producer = await service();
    const ids: string[] = [];
    const { c, durable, seen, appliedAll } = await lingering(lingerMs, ids);
    // Idle first: what the stream held before (other tests' events) settled, its linger over.
    await until(
      async () => {
        const info = await bus.jsm.consumers.info("ORDER", durable);
        return info.num_pending + info.num_ack_pending;
      },
      (k) => k === 0,
      10_000,
    );
    const relay = relaying(producer);
    for (let i = 0; i < 5; i++) {
      ids.push(await addPlaced(producer, `ord-linger-${lingerMs}-${i}`));
      await new Promise((r) => setTimeout(r, 20));
    }
    await appliedAll();
    await c.stop();
    await relay.stop();
    return seen.transactions.size;
  }

  it("settles the events that arrive within its linger in one transaction; an eager one settles each as it comes", async () => {
    expect(await settledIn(1_000)).toBe(1);
    expect(await settledIn(0)).toBeGreaterThan(1);
  });

  it("does not wait out its linger once it holds a full batch", async () => {
    const producer = await service();
    const ids: string[] = [];
    for (let i = 0; i < 70; i++) ids.push(await addPlaced(producer, `ord-full-${i}`));
    // Then a full batch more, so that each of the 70 is in a full batch whatever the stream held before.
    for (let i = 0; i < 64; i++) await addPlaced(producer, `ord-full-filler-${i}`);
    const { c, appliedAll } = await lingering(60_000, ids);
    // Each batch goes as soon as it is full, not when the minute of linger ends.
    const relay = relaying(producer);
    await appliedAll();
    await c.stop();
    await relay.stop();
  });
});

describe("several replicas on one database", () => {
  /** `bus`, counting every publish by message id. */
  function countingBus(counts: Map<string, number>): Bus {
    const js = new Proxy(bus.js, {
      get(target, prop, receiver) {
        if (prop !== "publish") return Reflect.get(target, prop, receiver);
        return (subject: string, data: Uint8Array, opts?: { msgID?: string }) => {
          counts.set(opts?.msgID ?? "", (counts.get(opts?.msgID ?? "") ?? 0) + 1);
          return target.publish(subject, data, opts);
        };
      },
    });
    return { ...bus, js };
  }

  it("three relays publish every row exactly once between them: claims, not JetStream's dedup, keep them apart", async () => {
    const svc = await service();
    const ids: string[] = [];
    for (let t = 0; t < 60; t++) {
      ids.push(
        ...(await svc.db.transaction(async (tx) => {
          const out: string[] = [];
          for (let i = 0; i < 5; i++)
            out.push(await svc.outbox.add(tx, OrderPlacedSchema, orch(`ord-r${t}`), placed("r")));
          return out;
        })),
      );
    }
    const perRelay = [new Map<string, number>(), new Map<string, number>(), new Map<string, number>()];
    const relays = perRelay.map(
      (counts) =>
        new OutboxRelay({
          ...svc,
          outbox: new Outbox("test", EVENTS),
          bus: countingBus(counts),
          source: "test",
          log,
          sweepMs: 20,
        }),
    );
    for (const r of relays) r.start();
    await drained(relays[0] as OutboxRelay);
    for (const r of relays) await r.stop();
    const total = new Map<string, number>();
    for (const counts of perRelay) for (const [id, c] of counts) total.set(id, (total.get(id) ?? 0) + c);
    expect([...total.keys()].sort()).toEqual([...ids].sort());
    expect([...total.values()].every((c) => c === 1)).toBe(true);
    // The work was shared, not done by whichever relay started first.
    expect(perRelay.filter((c) => c.size > 0).length).toBeGreaterThan(1);
  });

  it("a relay that stops mid-work lets go of its claims: another publishes the rest at once", async () => {
    const svc = await service();
    // Claimed but never published, as if the relay stopped between its claim and its publish.
    const id = await addPlaced(svc, "ord-claimed");
    await svc.db.run(sql`UPDATE outbox SET claimed_by = 'relay-gone', claimed_until = ${Date.now() + 60_000}`);
    const waiting = new OutboxRelay({ ...svc, bus, source: "test", log, sweepMs: 20 });
    waiting.start();
    await new Promise((r) => setTimeout(r, 200));
    // A live claim holds: the other relay leaves the row alone.
    expect((await waiting.backlog()).count).toBe(1);
    // Expired (its owner is gone), it is taken.
    await svc.db.run(sql`UPDATE outbox SET claimed_until = ${Date.now() - 1}`);
    await drained(waiting);
    await waiting.stop();
    expect((await streamed("order.order.placed.orchestration")).filter((m) => m.eventId === id)).toHaveLength(1);
  });

  it("no event overtakes an earlier one of its order that another relay holds (one that crashed mid-publish): it waits for it", async () => {
    const svc = await service();
    // Claimed by a relay that died before it published: held until its claim runs out. The claim is
    // long, and ended by the test, so a slow machine cannot let it run out before the first check.
    const first = await addPlaced(svc, "ord-held");
    await svc.db.run(sql`UPDATE outbox SET claimed_by = 'relay-gone', claimed_until = ${Date.now() + 60_000}`);
    const later = await addPlaced(svc, "ord-held");
    const other = await addPlaced(svc, "ord-free");
    const relay = new OutboxRelay({ ...svc, bus, source: "test", log, sweepMs: 20 });
    relay.start();
    const ids = async () =>
      (await streamed("order.order.placed.orchestration"))
        .map((m) => m.eventId)
        .filter((id) => [first, later, other].includes(id));
    // Another order's event goes at once; the held order's later one does not (it went first: it overtook).
    await until(ids, (seen) => seen.includes(other));
    expect(await ids()).toEqual([other]);
    // Still held a moment later: the relay's next sweeps pass the later event over too.
    await new Promise((r) => setTimeout(r, 200));
    expect(await ids()).toEqual([other]);
    // The claim runs out: the held event goes, then the one behind it.
    await svc.db.run(sql`UPDATE outbox SET claimed_until = ${Date.now() - 1} WHERE claimed_by = 'relay-gone'`);
    await drained(relay);
    await relay.stop();
    expect(await ids()).toEqual([other, first, later]);
  });

  it("an order with no earlier row is not held up behind a whole batch of orders another relay holds", async () => {
    const svc = await service();
    // 256 orders' first events (a whole batch), claimed by a relay that died; then each order's second.
    for (let i = 0; i < 256; i++) await addPlaced(svc, `ord-batch-${i}`);
    await svc.db.run(sql`UPDATE outbox SET claimed_by = 'relay-gone', claimed_until = ${Date.now() + 60_000}`);
    for (let i = 0; i < 256; i++) await addPlaced(svc, `ord-batch-${i}`);
    const free = await addPlaced(svc, "ord-unheld");
    const relay = new OutboxRelay({ ...svc, bus, source: "test", log, sweepMs: 50 });
    relay.start();
    try {
      const seen = await until(
        async () => (await streamed("order.order.placed.orchestration")).some((m) => m.eventId === free),
        (yes) => yes,
      );
      expect(seen, "its event goes out without waiting for the dead relay's claim").toBe(true);
    } finally {
      await relay.stop();
    }
  });

  it("a relay that adopts claims (the order service on SQLite: no other process writes its file) publishes a crashed process's claimed rows at start, not a claim later", async () => {
    const svc = await service();
    const id = await addPlaced(svc, "ord-crashed");
    await svc.db.run(sql`UPDATE outbox SET claimed_by = 'relay-gone', claimed_until = ${Date.now() + 60_000}`);
    const restarted = new OutboxRelay({ ...svc, bus, source: "test", log, adoptClaims: true });
    restarted.start();
    await drained(restarted);
    await restarted.stop();
    expect((await streamed("order.order.placed.orchestration")).filter((m) => m.eventId === id)).toHaveLength(1);
  });

  it("rows committed while publishing fails go out once it works again: each once, one order's in commit order", async () => {
    const svc = await service();
    const counts = new Map<string, number>();
    let failing = true;
    const counting = countingBus(counts).js;
    const js = new Proxy(counting, {
      get(target, prop, receiver) {
        if (prop !== "publish") return Reflect.get(target, prop, receiver);
        return (subject: string, data: Uint8Array, opts?: { msgID?: string }) =>
          failing ? Promise.reject(new Error("injected: NATS away")) : target.publish(subject, data, opts);
      },
    });
    const relay = new OutboxRelay({ ...svc, bus: { ...bus, js }, source: "test", log, sweepMs: 20 });
    relay.start();
    const ids: string[] = [];
    const orderOf = new Map<string, string>();
    for (let i = 0; i < 40; i++) {
      if (i === 20) failing = false;
      const order = `ord-f${i % 4}`;
      const id = await addPlaced(svc, order);
      ids.push(id);
      orderOf.set(id, order);
    }
    await drained(relay);
    await relay.stop();
    expect(ids.map((id) => counts.get(id))).toEqual(ids.map(() => 1));
    const seen = (await streamed("order.order.placed.orchestration"))
      .filter((m) => ids.includes(m.eventId))
      .map((m) => m.eventId);
    for (const order of new Set(orderOf.values())) {
      const of = (list: string[]) => list.filter((id) => orderOf.get(id) === order);
      expect(of(seen)).toEqual(of(ids));
    }
  });

  it("two consumers on one durable share the events, and each has exactly one effect", async () => {
    const producer = await service();
    const relay = new OutboxRelay({ ...producer, bus, source: "test", log });
    const consumer = await service();
    const durable = `shared-${n}`;
    const handledBy = [0, 0];
    // The replica given the first event holds it until the other has handled one, or for 5 s (on SQLite
    // the replicas share one connection, so the other's transaction waits behind the first's and the
    // hold ends by time): what the first pulled ahead stays with it, so the rest go to the other. A
    // fixed 2 ms per event let one replica take all 200 on a loaded machine; holding only in the replica
    // started first, the other took all 200 once (PostgreSQL, CI): either may be given the first.
    let first: number | undefined;
    let secondWorked = () => {};
    const second = new Promise<void>((r) => (secondWorked = r));
    const start = (i: number) =>
      startConsumer({
        catalogue: EVENTS,
        bus,
        db: consumer.db,
        log,
        stream: "ORDER",
        durable,
        handlers: [
          on(OrderPlacedSchema, async (e, ctx, tx) => {
            if (!e.meta?.orderId.startsWith("ord-shared")) return;
            handledBy[i] = (handledBy[i] ?? 0) + 1;
            first ??= i;
            if (i !== first) secondWorked();
            else if (handledBy[i] === 1) await Promise.race([second, new Promise((r) => setTimeout(r, 5_000))]);
            await tx.run(
              sql`INSERT INTO effects (order_id, event_id) VALUES (${e.meta?.orderId ?? ""}, ${ctx.eventId})`,
            );
          }),
        ],
      });
    const consumers = [await start(0), await start(1)];
    relay.start();
    const ids: string[] = [];
    for (let i = 0; i < 200; i++) ids.push(await addPlaced(producer, `ord-shared-${i}`));
    await drained(relay);
    const count = () =>
      consumer.db.one(sql<{ n: number; d: number }>`SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM effects
        WHERE order_id LIKE 'ord-shared%'`);
    const settled = await until(count, (r) => (r?.n ?? 0) >= 200, 20_000);
    for (const c of consumers) await c.stop();
    await relay.stop();
    expect(settled).toEqual({ n: 200, d: 200 });
    expect(handledBy.every((h) => h > 0)).toBe(true);
  });
});

/**
 * `count()` once it reaches `n`, or once it has not moved in 30 looks 100 ms apart (3 s of this
 * process's own time: a pause of the whole process is one look, not thirty), or after `ms`. An event
 * waiting out the ack wait stops the count for 10 s; a loaded PostgreSQL has stopped it for 1.5 s.
 */
async function whereItStops(count: () => Promise<number>, n: number, ms: number): Promise<number> {
  const end = Date.now() + ms;
  let last = -1;
  for (let still = 0; still < 30 && Date.now() < end; ) {
    const now = await count();
    if (now >= n) return now;
    still = now === last ? still + 1 : 0;
    last = now;
    await new Promise((r) => setTimeout(r, 100));
  }
  return last;
}

describe("a consumer stopped with a backlog", () => {
  it("gives back the events it took and did not settle: they do not wait out the ack wait", async () => {
    // A NATS of its own: the backlog stays out of the shared streams.
    await using nats = await startNats();
    const other = await connectBus(nats.url, "events-test-backlog", log, { streams: EVENTS.streams });
    try {
      const ids = await publishEvents(
        other,
        Array.from({ length: 400 }, (_, i) => event(OrderPlacedSchema, `ord-backlog-${i}`, placed(""))),
      );
      const consumer = await service();
      let handled = 0;
      const slow = on(OrderPlacedSchema, async (e, ctx, tx) => {
        handled++;
        await new Promise((r) => setTimeout(r, 3));
        await recordEffect[1](e as never, ctx, tx);
      });
      const start = () =>
        startConsumer({
          catalogue: EVENTS,
          bus: other,
          db: consumer.db,
          log,
          stream: "ORDER",
          durable: "backlog",
          handlers: [slow],
        });
      const first = await start();
      // Stopped mid-backlog: a batch being settled, the next queued, more in the NATS client's buffer.
      await until(
        () => handled,
        (h) => h >= 40,
      );
      await first.stop();
      const second = await start();
      const count = async () =>
        (await consumer.db.one(sql<{ n: number }>`SELECT COUNT(DISTINCT event_id) AS n FROM effects`))?.n ?? 0;
      // Before the ack wait (10 s from when the first consumer took them), the second has every event to
      // handle: the first gave back what it held (48 of them waited it out before; a message on the wire
      // as its pull stopped, dropped by the client unseen, still waits it out). Read as where its count
      // stops, not by a time: under load on PostgreSQL it had handled only 352 of the 400 by 5 s and 8 s,
      // short of time, not of events (a CI run failed so). Events waiting out the ack wait stop the count
      // for seconds short of the 400.
      expect(await whereItStops(count, ids.length, 20_000)).toBeGreaterThanOrEqual(ids.length - 2);
      expect(await until(count, (n) => n >= ids.length, 15_000)).toBe(ids.length);
      await second.stop();
    } finally {
      await other.close();
    }
  }, 45_000);
});
