/**
 * The event bus against a real nats-server (bus.ts, outbox.ts, inbox.ts):
 * outbox relay (prompt, ordered, crash-safe), JetStream dedup, idempotent
 * inbox, and dead letters.
 */
import { join } from "node:path";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { tempDir } from "../test/fixtures.js";
import { startNats, type TestNats } from "../test/nats.js";
import { type Bus, connectBus } from "./bus.js";
import { openDatabase } from "./db.js";
import { INBOX_MIGRATION, on, startConsumer } from "./inbox.js";
import { silentLogger } from "./log.js";
import { OUTBOX_MIGRATION, Outbox, OutboxRelay } from "./outbox.js";

const log = silentLogger();
let nats: TestNats;
let bus: Bus;
const dir = tempDir();
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

function service() {
  const db = openDatabase(join(dir.path, `svc-${++n}.db`), [
    OUTBOX_MIGRATION,
    INBOX_MIGRATION,
    "CREATE TABLE effects (order_id TEXT NOT NULL, event_id TEXT NOT NULL) STRICT;",
  ]);
  return { db, outbox: new Outbox(db, "test", EVENTS) };
}

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

const placed = (_orderId: string) => ({
  customerId: "alice",
  items: [{ productId: "p", quantity: 1 }],
  cardToken: "tok",
});

describe("outbox", () => {
  it("publishes right after commit (no sweep needed) with CloudEvents headers, and nothing on rollback", async () => {
    const { db, outbox } = service();
    const relay = new OutboxRelay({ db, outbox, bus, source: "test", log, sweepMs: 60_000 });
    relay.start();
    let id = "";
    db.transaction(() => {
      id = outbox.add(OrderPlacedSchema, "ord-a", placed("ord-a"));
    })();
    expect(() =>
      db.transaction(() => {
        outbox.add(OrderPlacedSchema, "ord-rolled-back", placed("ord-rolled-back"));
        throw new Error("business rule failed");
      })(),
    ).toThrow("business rule failed");
    const msgs = await until(
      () => streamed("order.order.placed"),
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
    expect(relay.backlog().count).toBe(0);
    await relay.stop();
  });

  it("publishes what was committed while no relay ran (a crash between commit and publish), in commit order", async () => {
    const { db, outbox } = service();
    const ids: string[] = [];
    for (let i = 0; i < 30; i++)
      db.transaction(() => ids.push(outbox.add(OrderPlacedSchema, "ord-b", placed("ord-b"))))();
    const relay = new OutboxRelay({ db, outbox, bus, source: "test", log });
    expect(relay.backlog().count).toBe(30);
    relay.start();
    await until(
      () => relay.backlog().count,
      (c) => c === 0,
    );
    const seen = (await streamed("order.order.placed")).filter((m) => ids.includes(m.eventId)).map((m) => m.eventId);
    expect(seen).toEqual(ids);
    await relay.stop();
  });

  it("a republished event id is dropped by JetStream's duplicate window", async () => {
    const { db, outbox } = service();
    const id = db.transaction(() => outbox.add(OrderPlacedSchema, "ord-c", placed("ord-c")))();
    const relay = new OutboxRelay({ db, outbox, bus, source: "test", log });
    relay.start();
    await until(
      () => relay.backlog().count,
      (c) => c === 0,
    );
    await relay.stop();
    // As if the process died after publishing but before marking the row sent.
    db.prepare("UPDATE outbox SET sent_at = NULL").run();
    const again = new OutboxRelay({ db, outbox, bus, source: "test", log });
    again.start();
    await until(
      () => again.backlog().count,
      (c) => c === 0,
    );
    await again.stop();
    expect((await streamed("order.order.placed")).filter((m) => m.eventId === id)).toHaveLength(1);
  });
});

describe("consumers", () => {
  it("gives a duplicate delivery exactly one effect, even past the duplicate window", async () => {
    const producer = service();
    const relay = new OutboxRelay({ ...producer, bus, source: "test", log });
    relay.start();
    const id = producer.db.transaction(() => producer.outbox.add(OrderPlacedSchema, "ord-d", placed("ord-d")))();
    await until(
      () => relay.backlog().count,
      (c) => c === 0,
    );
    // Re-publish the same event under another Nats-Msg-Id: JetStream cannot dedupe it; the inbox must.
    const original = (await streamed("order.order.placed")).find((m) => m.eventId === id);
    const raw = await bus.jsm.streams.getMessage("ORDER", { seq: original?.seq ?? 0 });
    if (!raw) throw new Error("original event not in the stream");
    const h = natsHeaders();
    for (const [k, v] of raw.header ?? []) if (k !== "Nats-Msg-Id") h.set(k, v[0] ?? "");
    await bus.js.publish("order.order.placed", raw.data, { headers: h, msgID: `${id}-again` });

    const consumer = service();
    const effects = consumer.db.prepare<[string], { n: number }>(
      "SELECT COUNT(*) AS n FROM effects WHERE order_id = ?",
    );
    const add = consumer.db.prepare<[string, string]>("INSERT INTO effects (order_id, event_id) VALUES (?, ?)");
    let duplicates = 0;
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable: `dedupe-${n}`,
      handlers: [on(OrderPlacedSchema, (e) => add.run(e.meta?.orderId ?? "", e.meta?.eventId ?? ""))],
      onHandled: (_t, dup) => {
        if (dup) duplicates++;
      },
    });
    await until(
      () => duplicates,
      (d) => d >= 1,
    );
    expect(effects.get("ord-d")?.n).toBe(1);
    await c.stop();
    await relay.stop();
  });

  it("dead-letters a poison message with its reason and keeps consuming", async () => {
    const h = natsHeaders();
    h.set("ce-type", "shopmesh.order.v1.OrderPlaced");
    h.set("ce-id", "evt_poison");
    await bus.js.publish("order.order.placed", new Uint8Array([0xff, 0xff, 0xff]), { headers: h, msgID: "evt_poison" });
    const producer = service();
    const relay = new OutboxRelay({ ...producer, bus, source: "test", log });
    relay.start();
    const good = producer.db.transaction(() =>
      producer.outbox.add(OrderPlacedSchema, "ord-after-poison", placed("x")),
    )();

    const consumer = service();
    const add = consumer.db.prepare<[string, string]>("INSERT INTO effects (order_id, event_id) VALUES (?, ?)");
    const durable = `poison-${n}`;
    const c = await startConsumer({
      catalogue: EVENTS,
      bus,
      db: consumer.db,
      log,
      stream: "ORDER",
      durable,
      handlers: [on(OrderPlacedSchema, (e, ctx) => add.run(e.meta?.orderId ?? "", ctx.eventId))],
    });
    const effect = consumer.db.prepare<[string], { n: number }>("SELECT COUNT(*) AS n FROM effects WHERE event_id = ?");
    await until(
      () => effect.get(good)?.n ?? 0,
      (x) => x === 1,
    );
    expect(effect.get(good)?.n).toBe(1);
    const dlq = await until(
      () => bus.jsm.streams.getMessage("DLQ", { last_by_subj: `dlq.${durable}` }).catch(() => null),
      (m) => m !== null,
    );
    expect(dlq?.header.get("x-dlq-reason")).toMatch(/^undecodable shopmesh.order.v1.OrderPlaced payload/);
    expect(dlq?.header.get("x-dlq-subject")).toBe("order.order.placed");
    await c.stop();
    await relay.stop();
  });

  it("retries a failing handler with backoff, then dead-letters it after maxDeliver", async () => {
    const producer = service();
    const relay = new OutboxRelay({ ...producer, bus, source: "test", log });
    relay.start();
    const bad = producer.db.transaction(() =>
      producer.outbox.add(OrderPlacedSchema, "ord-always-fails", placed("y")),
    )();
    const consumer = service();
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
        on(OrderPlacedSchema, (_e, ctx) => {
          if (ctx.eventId !== bad) return;
          attempts.push(ctx.deliveryCount);
          throw new Error("downstream rule keeps failing");
        }),
      ],
    });
    // (The poison message of the previous test is dead-lettered by this new consumer too.)
    const dlq = await until(
      () => bus.jsm.streams.getMessage("DLQ", { last_by_subj: `dlq.${durable}` }).catch(() => null),
      (m) => m?.header.get("ce-id") === bad,
      8_000,
    );
    expect(attempts).toEqual([1, 2, 3]);
    expect(dlq?.header.get("x-dlq-reason")).toContain("handler failed 3 times: downstream rule keeps failing");
    expect(dlq?.header.get("ce-id")).toBe(bad);
    await c.stop();
    await relay.stop();
  });
});
