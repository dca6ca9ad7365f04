/**
 * A hostile round against NATS JetStream's own store used up (2026-12-06): nats-server started as the
 * fixtures start it, with a `max_file_store` the test fills through a stream of its own (an operator's,
 * or any stream without a size bound: the event streams' bounds are reserved, but nats-server refuses
 * every write once the store's use passes `max_file_store`, whoever used it). Then every publish is
 * refused, `insufficient resources` (err_code 10023), until room is made. Each `describe` is one
 * finding; each test failed on the code it was written against, or shows what held.
 */
import { writeFileSync } from "node:fs";
import {
  JetStreamApiError,
  type JetStreamClient,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { connect, type NatsConnection, headers as natsHeaders } from "@nats-io/transport-node";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { connectBus, STREAM_MAX_BYTES } from "../platform/bus.js";
import { startConsumer } from "../platform/consumer.js";
import { migrations, openDatabase } from "../platform/db.js";
import { INBOX_FAILURES_MIGRATION, INBOX_MIGRATION, INBOX_PURGE_MIGRATION } from "../platform/inbox.js";
import { silentLogger } from "../platform/log.js";
import { registerInstance } from "../platform/registry.js";
import { watchInstances } from "../platform/registry-watch.js";
import { INSUFFICIENT_RESOURCES } from "../platform/store-full.js";
import { redrive, redrivenSeqs } from "../scripts/redrive.js";
import { TestDatabases } from "./db.js";
import { tempDir } from "./fixtures.js";
import { expectCheckoutInvariants } from "./invariants.js";
import { startNats } from "./nats.js";
import { capturedLogger, startSystem } from "./system.js";

/** As the Kubernetes deployment's store: every event stream's bound (reserved when it is made) and 64 MB more. */
const STORE_MB = Math.ceil((EVENTS.streams.length * STREAM_MAX_BYTES) / 2 ** 20) + 64;

/** A stream of the test's own with no size bound, filled until the store refuses; `free` deletes it. */
async function fillStore(nc: NatsConnection): Promise<{ free(): Promise<void> }> {
  const jsm = await jetstreamManager(nc);
  const js: JetStreamClient = jetstream(nc);
  await jsm.streams.add({
    name: "FILLER",
    subjects: ["filler.>"],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
  });
  const payload = new Uint8Array(900 * 1024).fill(7);
  for (let refused = ""; !refused; ) {
    await js.publish("filler.x", payload).catch((err: unknown) => {
      refused = (err as Error).message;
    });
  }
  await expect(js.publish("filler.x", new Uint8Array(1))).rejects.toThrow(/insufficient resources/);
  return { free: async () => void (await jsm.streams.delete("FILLER")) };
}

const lines = (captured: { lines: Record<string, unknown>[] }, msg: RegExp) =>
  captured.lines.filter((l) => msg.test(String(l.msg)));

describe("the service registry, in the same store", () => {
  it("a heartbeat the full store refuses is said, not taken as stored; discovery goes on from the live writes", async () => {
    // nats-server answers a refused write with the stream's name beside the error: the registry took
    // `{"error":…,"stream":"KV_shopmesh_registry","seq":0}` for a stored entry, so while the store was
    // full its heartbeats failed without a word, and an instance starting then logged "registered".
    await using nats = await startNats("jetstream { max_file_store: 20MB }");
    const nc = await connect({ servers: nats.url });
    const captured = capturedLogger();
    try {
      const first = await registerInstance({
        nc,
        service: "inventory",
        address: "127.0.0.1:1",
        log: captured.log,
        heartbeatMs: 200,
        ttlMs: 1_000,
      });
      const store = await fillStore(nc);
      await expect
        .poll(() => lines(captured, /registry heartbeat failed/).map((l) => l.err))
        .toContainEqual(expect.stringMatching(/insufficient resources/));
      // An instance starting now still starts (its callers see its heartbeats as they are written), and says
      // its entry is not stored.
      const second = await registerInstance({
        nc,
        service: "inventory",
        address: "127.0.0.1:2",
        log: captured.log,
        heartbeatMs: 200,
      });
      expect(lines(captured, /not stored/).map((l) => l.registryKey)).toContain(second.key);
      // A watch started while the store is full finds both, from their heartbeats as they go by.
      let seen: readonly string[] = [];
      const watch = watchInstances(nc, "inventory", captured.log, { onChange: (a) => (seen = a) });
      await expect.poll(() => seen).toEqual(["127.0.0.1:1", "127.0.0.1:2"]);
      await store.free();
      await expect.poll(() => lines(captured, /registry heartbeat succeeding again/).length).toBeGreaterThan(0);
      watch.stop();
      await first.stop();
      await second.stop();
    } finally {
      await nc.close();
    }
  }, 60_000);
});

describe("orders placed while the store is full", () => {
  it("are accepted, their events wait in the outbox, said once, and go out once each, in order, when there is room", async () => {
    const captured = capturedLogger();
    // A step budget longer than the store stays full: past the default 15 s a choreographed order waiting
    // for its events is cancelled (its OrderCancelled behind its OrderPlaced), which would be an outcome too.
    await using sys = await startSystem(
      { order: { SAGA_STEP_BUDGET_MS: "60000" } },
      { log: captured.log, natsConfig: `jetstream { max_file_store: ${STORE_MB}MB }` },
    );
    const nc = await connect({ servers: sys.nats.url });
    await fillStore(nc);
    await nc.close();
    const who = sys.as("lee");
    const placed: { id: string; mode: SagaMode; card: string }[] = [];
    const place = async (i: number) => {
      const sagaMode = i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY;
      const cardToken = i < 2 ? "tok_decline" : "tok_visa";
      const { order } = await sys.orders.placeOrder(
        { idempotencyKey: `full-${i}`, items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken, sagaMode },
        who,
      );
      placed.push({ id: order?.id ?? "", mode: sagaMode, card: cardToken });
    };
    const age = async () => {
      const text = await sys.order.telemetry.metrics.registry.metrics();
      return Number(/^outbox_oldest_unsent_age_seconds\{[^}]*\} (\S+)$/m.exec(text)?.[1]);
    };
    // Orders keep coming, one every 300 ms for 9 s, each a commit that wakes the relay: its backoff holds
    // all the same, and the oldest event's age goes on rising on the metric (ShopmeshOutboxStuck).
    let highest = 0;
    for (let i = 0; i < 30; i++) {
      await place(i);
      highest = Math.max(highest, await age());
      await new Promise((r) => setTimeout(r, 300));
    }
    expect(highest).toBeGreaterThan(5);
    // A line a relay for the refusals so far, saying what is full, not one a try: under backoff (capped at
    // 5 s) fewer than ten tries in these 9 s.
    const refused = lines(captured, /outbox publish/);
    expect(refused.map((l) => l.service).sort()).toEqual(["inventory", "order", "payment"]);
    for (const l of refused) expect(l.msg).toMatch(/JetStream store is full/);

    // Room made as an operator would: the server restarted with a larger store.
    await sys.nats.stop();
    writeFileSync(`${sys.nats.dir}/server.conf`, `jetstream { max_file_store: ${2 * STORE_MB}MB }`);
    await sys.nats.start();
    const ends = await Promise.all(placed.map((p) => sys.settle(p.id, "lee", 30_000)));
    expect(ends.map((o) => OrderStatus[o.status])).toEqual(
      placed.map((p) => (p.card === "tok_decline" ? "CANCELLED" : "CONFIRMED")),
    );
    await expectCheckoutInvariants({
      order: sys.order.store.db,
      payment: sys.payment.store.db,
      inventory: sys.inventory.store.db,
    });
    for (const app of [sys.order, sys.inventory, sys.payment]) {
      await expect.poll(async () => (await app.events.relay?.backlog())?.count, { timeout: 15_000 }).toBe(0);
    }
    // Each order's events on ORDER once each, in the order they happened.
    const bus = await connect({ servers: sys.nats.url });
    try {
      const jsm = await jetstreamManager(bus);
      const { state } = await jsm.streams.info("ORDER");
      const byOrder = new Map<string, string[]>();
      const ids = new Set<string>();
      for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
        const m = await jsm.streams.getMessage("ORDER", { seq });
        if (!m) throw new Error(`ORDER ${seq} missing`);
        const id = m.header?.get("ce-id") ?? "";
        expect(ids.has(id), `${id} stored twice`).toBe(false);
        ids.add(id);
        const order = placed.find((p) => Buffer.from(m.data).includes(p.id))?.id ?? "";
        byOrder.set(order, [...(byOrder.get(order) ?? []), m.subject.split(".")[2] ?? ""]);
      }
      for (const p of placed) {
        expect(byOrder.get(p.id), p.id).toEqual(["placed", p.card === "tok_decline" ? "cancelled" : "confirmed"]);
      }
    } finally {
      await bus.close();
    }
  }, 120_000);

  it("a choreographed order its step budget cancels meanwhile ends cancelled, with nothing held or charged, once there is room", async () => {
    await using sys = await startSystem(
      { order: { SAGA_STEP_BUDGET_MS: "2000" } },
      { natsConfig: `jetstream { max_file_store: ${STORE_MB}MB }` },
    );
    const nc = await connect({ servers: sys.nats.url });
    await fillStore(nc);
    await nc.close();
    const who = sys.as("kim");
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const { order } = await sys.orders.placeOrder(
        {
          idempotencyKey: `budget-${i}`,
          items: [{ productId: "hand-grinder", quantity: 2 }],
          cardToken: "tok_visa",
          sagaMode: SagaMode.CHOREOGRAPHY,
        },
        who,
      );
      ids.push(order?.id ?? "");
    }
    // Given up at the budget: cancelled, its refund pending (payment never heard of it), and its OrderCancelled,
    // which makes inventory and payment undo or void, waiting behind its OrderPlaced.
    const status = async () =>
      Promise.all(
        ids.map(async (orderId) => OrderStatus[(await sys.orders.getOrder({ orderId }, who)).order?.status ?? 0]),
      );
    await expect.poll(status, { timeout: 10_000 }).toEqual(["CANCELLED", "CANCELLED", "CANCELLED"]);
    await sys.nats.stop();
    writeFileSync(`${sys.nats.dir}/server.conf`, `jetstream { max_file_store: ${2 * STORE_MB}MB }`);
    await sys.nats.start();
    // A watch ends once the refund is settled (payment's void, by event): only with room.
    const ends = await Promise.all(ids.map((id) => sys.settle(id, "kim", 30_000)));
    expect(ends.map((o) => OrderStatus[o.status])).toEqual(["CANCELLED", "CANCELLED", "CANCELLED"]);
    for (const app of [sys.order, sys.inventory, sys.payment]) {
      await expect.poll(async () => (await app.events.relay?.backlog())?.count, { timeout: 15_000 }).toBe(0);
    }
    // OrderPlaced then OrderCancelled reach inventory and payment in that order: nothing stays reserved or charged.
    const outcome = await expectCheckoutInvariants({
      order: sys.order.store.db,
      payment: sys.payment.store.db,
      inventory: sys.inventory.store.db,
    });
    expect([...outcome.cancelled].sort()).toEqual([...ids].sort());
  }, 120_000);
});

describe("a dead letter the full store refuses", () => {
  it("leaves its event held and redelivered, not lost; once there is room it is lettered whole; a refused redrive marks nothing", async () => {
    await using nats = await startNats(`jetstream { max_file_store: ${STORE_MB}MB }`);
    const captured = capturedLogger();
    const bus = await connectBus(nats.url, "store-full-test", captured.log, { streams: EVENTS.streams });
    using dir = tempDir();
    const db = await openDatabase(
      await new TestDatabases(dir.path).location("letters"),
      migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION, INBOX_PURGE_MIGRATION]),
    );
    try {
      // An event no consumer can decode, published while there was room.
      const h = natsHeaders();
      h.set("ce-type", "shopmesh.order.v1.OrderPlaced");
      h.set("ce-id", "evt_poison_full");
      await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff, 0xff]), { headers: h });
      const store = await fillStore(bus.nc);
      const durable = "letters-order";
      const consumer = await startConsumer({
        catalogue: EVENTS,
        bus,
        db,
        log: captured.log,
        stream: "ORDER",
        durable,
        handlers: [],
      });
      try {
        await expect.poll(() => lines(captured, /not settled/).length).toBeGreaterThan(0);
        await new Promise((r) => setTimeout(r, 6_000));
        const held = await bus.jsm.consumers.info("ORDER", durable);
        expect(held.num_ack_pending + held.num_pending, "the event is still the consumer's").toBe(1);
        expect((await bus.jsm.streams.info("DLQ")).state.messages).toBe(0);
        // Said, not one line a second for as long as the store stays full.
        const said = lines(captured, /not settled/);
        expect(said[0]?.err).toMatch(/insufficient resources/);
        expect(said.length).toBeLessThanOrEqual(3);
        await store.free();
        await expect
          .poll(() => bus.jsm.streams.getMessage("DLQ", { last_by_subj: `dlq.${durable}` }).catch(() => null), {
            timeout: 40_000,
          })
          .not.toBeNull();
        const letter = await bus.jsm.streams.getMessage("DLQ", { last_by_subj: `dlq.${durable}` });
        expect(letter?.header.get("ce-id")).toBe("evt_poison_full");
        expect(letter?.header.has("x-dlq-truncated")).toBe(false);
        await expect
          .poll(async () => {
            const i = await bus.jsm.consumers.info("ORDER", durable);
            return i.num_ack_pending + i.num_pending;
          })
          .toBe(0);
        // Its redrive while the store is full again: the copy refused, the letter skipped and left unmarked.
        const again = await fillStore(bus.nc);
        const printed: string[] = [];
        expect(await redrive(bus, EVENTS, "all", "", (l) => printed.push(l))).toEqual({ redriven: 0, skipped: 1 });
        expect(printed).toEqual([
          expect.stringMatching(/skipped: not republished: insufficient resources; left in the DLQ$/),
        ]);
        expect(await redrivenSeqs(bus)).toEqual(new Set());
        await again.free();
      } finally {
        await consumer.stop();
      }
    } finally {
      await db.close();
      await bus.close();
    }
  }, 90_000);

  it("refused for want of room, then taken: the letter is the whole message, not one cut as if too large", async () => {
    // The whole copy refused for space and the cut one sent right after, once the store had room (a
    // stream of someone else's bounded, another message dropped by age): the letter lost its headers
    // and said it was cut to fit, as for a message too large, which it was not. Here the room comes
    // between the two publishes every time: the DLQ refuses the first dead letter only.
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "store-full-race", silentLogger(), { streams: EVENTS.streams });
    let dlqPublishes = 0;
    const js = new Proxy(bus.js, {
      get(target, prop, receiver) {
        if (prop !== "publish") return Reflect.get(target, prop, receiver);
        return (...args: Parameters<JetStreamClient["publish"]>) => {
          if (args[0].startsWith("dlq.") && dlqPublishes++ === 0) {
            const refusal = { code: 503, err_code: INSUFFICIENT_RESOURCES, description: "insufficient resources" };
            return Promise.reject(new JetStreamApiError(refusal));
          }
          return target.publish(...args);
        };
      },
    });
    using dir = tempDir();
    const db = await openDatabase(
      await new TestDatabases(dir.path).location("race"),
      migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION, INBOX_PURGE_MIGRATION]),
    );
    const h = natsHeaders();
    h.set("ce-type", "shopmesh.order.v1.OrderPlaced");
    h.set("ce-id", "evt_poison_race");
    h.set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff, 0xff]), { headers: h });
    const durable = "race-order";
    const consumer = await startConsumer({
      catalogue: EVENTS,
      bus: { ...bus, js },
      db,
      log: silentLogger(),
      stream: "ORDER",
      durable,
      handlers: [],
    });
    try {
      const letter = () => bus.jsm.streams.getMessage("DLQ", { last_by_subj: `dlq.${durable}` }).catch(() => null);
      await expect.poll(letter, { timeout: 15_000 }).not.toBeNull();
      expect((await letter())?.header.has("x-dlq-truncated")).toBe(false);
      expect((await letter())?.header.get("traceparent")).toBe(h.get("traceparent"));
      expect(dlqPublishes, "the refused one, then the whole one, redelivered").toBe(2);
    } finally {
      await consumer.stop();
      await db.close();
      await bus.close();
    }
  });
});
