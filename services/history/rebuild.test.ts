/**
 * Rebuilding the history view from the streams, in-process against a real
 * nats-server: the replay builds the view the live consumers build, records
 * the inbox so the restarted service applies nothing twice, and skips what
 * the live consumers would dead-letter.
 */
import { headers as natsHeaders } from "@nats-io/transport-node";
import { sql } from "kysely";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { StockReleasedSchema, StockReservedSchema } from "../../gen/shopmesh/inventory/v1/events_pb.js";
import {
  OrderCancelledSchema,
  OrderConfirmedSchema,
  OrderPlacedSchema,
} from "../../gen/shopmesh/order/v1/events_pb.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../../gen/shopmesh/payment/v1/events_pb.js";
import { type Bus, connectBus } from "../../platform/bus.js";
import { Code, toStatusObject } from "../../platform/errors.js";
import { Inbox } from "../../platform/inbox.js";
import { silentLogger } from "../../platform/log.js";
import type { DbLocation } from "../../platform/sql.js";
import { dropDatabase, snapshot, TestDatabases, withDb } from "../../test/db.js";
import { consumerSettled, event, publishEvents } from "../../test/events.js";
import { tempDir } from "../../test/fixtures.js";
import { startNats } from "../../test/nats.js";
import { startHistory } from "./app.js";
import { loadConfig } from "./config.js";
import { replay, type StreamReplay } from "./rebuild.js";
import { holdAgainstRebuild, lockRebuild, losses, RebuildRefused } from "./rebuild-aside.js";
import { HistoryStore } from "./store.js";

const log = silentLogger();
const usd = (amountMinor: bigint) => ({ currencyCode: "USD", amountMinor });
const lines = [{ productId: "ceramic-mug", quantity: 1 }];
const CONSUMERS = [
  ["ORDER", "history-order"],
  ["INVENTORY", "history-inventory"],
  ["PAYMENT", "history-payment"],
] as const;

async function settled(bus: Bus): Promise<void> {
  for (const [stream, durable] of CONSUMERS) await consumerSettled(bus, stream, durable);
}

/** The view's rows by order id (rowids depend on the order rows were first written in). */
function viewRows(location: DbLocation): Promise<unknown[]> {
  return withDb(location, (db) => db.all(sql`SELECT * FROM order_history ORDER BY order_id`));
}

const counts = (s: StreamReplay) => [s.stream, s.durable, s.events, s.applied, s.duplicates, s.skipped];

describe("history rebuild", () => {
  it("replays into the view the live consumers build, and the restarted service applies nothing twice", async () => {
    await using nats = await startNats();
    using dir = tempDir();
    const dbs = new TestDatabases(dir.path);
    const location = await dbs.location("history");
    const config = loadConfig({
      GRPC_PORT: "0",
      GRPC_HOST: "127.0.0.1",
      ...(await dbs.env("history")),
      NATS_URL: nats.url,
      SHUTDOWN_GRACE_MS: "1000",
    });
    const bus = await connectBus(nats.url, "history-rebuild-test", log, { streams: EVENTS.streams });
    try {
      // 1. The live service builds the view of the first events.
      let app = await startHistory(config, log);
      await publishEvents(bus, [
        event(OrderPlacedSchema, "ord-r1", { customerId: "ivy", items: lines }),
        event(OrderPlacedSchema, "ord-r2", { customerId: "ivy", items: lines }),
        event(StockReservedSchema, "ord-r1", { reservationId: "res_r1", items: lines, total: usd(1500n) }),
        event(StockReservedSchema, "ord-r2", { reservationId: "res_r2", items: lines, total: usd(1500n) }),
        event(PaymentSucceededSchema, "ord-r1", { paymentId: "pay_r1", customerId: "ivy", amount: usd(1500n) }),
      ]);
      await settled(bus);
      await app.stop();
      const firstView = await viewRows(location);
      expect(firstView).toHaveLength(2);

      // 2. More events while the service is stopped: its durable consumers will get them on restart.
      await publishEvents(bus, [
        event(OrderConfirmedSchema, "ord-r1", { customerId: "ivy", total: usd(1500n), paymentId: "pay_r1" }),
        event(PaymentFailedSchema, "ord-r2", { paymentId: "pay_r2", customerId: "ivy", reason: "card declined" }),
        event(StockReleasedSchema, "ord-r2", { reservationId: "res_r2", items: lines }),
        event(OrderCancelledSchema, "ord-r2", { customerId: "ivy", reason: "payment declined" }),
        event(OrderPlacedSchema, "ord-r3", { customerId: "jon", items: lines }),
        event(PaymentRefundedSchema, "ord-r9", { paymentId: "pay_r9", customerId: "jon", amount: usd(700n) }),
      ]);

      // 3. The database is lost; the replay rebuilds it from the streams.
      await dropDatabase(location);
      const store = await HistoryStore.open(location);
      const finished: string[] = [];
      const report = await replay({
        store,
        bus,
        log,
        onProgress: (s, done) => {
          if (done) finished.push(s.stream);
        },
      });
      expect(report.streams.map(counts)).toEqual([
        ["ORDER", "history-order", 5, 5, 0, 0],
        ["INVENTORY", "history-inventory", 3, 3, 0, 0],
        ["PAYMENT", "history-payment", 3, 3, 0, 0],
      ]);
      expect(report.total).toBe(11);
      expect(report.cleared).toEqual({ views: 0, inbox: 0 });
      expect(finished).toEqual(["ORDER", "INVENTORY", "PAYMENT"]);
      const view = await store.all();
      expect(view.find((v) => v.orderId === "ord-r1")).toMatchObject({
        status: "CONFIRMED",
        paymentStatus: "CAPTURED",
      });
      expect(view.find((v) => v.orderId === "ord-r2")).toMatchObject({
        status: "CANCELLED",
        paymentStatus: "DECLINED",
      });
      expect(view.find((v) => v.orderId === "ord-r9")).toMatchObject({
        customerId: "jon",
        status: null,
        paymentStatus: "REFUNDED",
      });
      const rebuilt = await snapshot(store.db);
      await store.close();

      // 4. Restarted, the service is handed the events of step 2 again (and, its
      // PAYMENT consumer deleted, every payment event): the inbox knows them all.
      await bus.jsm.consumers.delete("PAYMENT", "history-payment");
      app = await startHistory(config, log);
      await settled(bus);
      const redelivered = await bus.jsm.consumers.info("ORDER", "history-order");
      expect(redelivered.delivered.stream_seq).toBe(5);
      await app.stop();
      expect(await withDb(location, (db) => snapshot(db)), "no view row or inbox row changed").toBe(rebuilt);

      // 5. The same view as live consumers build from nothing.
      const rebuiltView = await viewRows(location);
      await dropDatabase(location);
      for (const [stream, durable] of CONSUMERS) await bus.jsm.consumers.delete(stream, durable);
      app = await startHistory(config, log);
      await settled(bus);
      await app.stop();
      expect(await viewRows(location)).toEqual(rebuiltView);
      expect(rebuiltView).toHaveLength(4);
    } finally {
      await bus.close();
    }
  });

  it("empties what was there, and skips what the live consumers would dead-letter", async () => {
    await using nats = await startNats();
    using dir = tempDir();
    const bus = await connectBus(nats.url, "history-rebuild-skip-test", log, { streams: EVENTS.streams });
    const store = await HistoryStore.open(await new TestDatabases(dir.path).location("history"));
    try {
      await new Inbox(store.db, "history-order").once("evt_stale", "shopmesh.order.v1.OrderPlaced", async (tx) => {
        await store.apply(
          {
            eventId: "evt_stale",
            type: "shopmesh.order.v1.OrderPlaced",
            orderId: "ord-stale",
            occurredAt: 1,
            customerId: "kim",
            status: "PENDING",
          },
          tx,
        );
      });
      const poison = natsHeaders();
      poison.set("ce-type", "shopmesh.order.v1.OrderPlaced");
      poison.set("ce-id", "evt_poison");
      await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff, 0xff, 0xff]), { headers: poison });
      await bus.js.publish("order.order.placed.orchestration", new Uint8Array([1]));
      const [good] = await publishEvents(bus, [
        event(OrderPlacedSchema, "ord-s1", { customerId: "kim", items: lines }),
        // Names no order: unusable.
        event(OrderConfirmedSchema, "", { customerId: "kim" }),
      ]);

      const report = await replay({ store, bus, log });
      expect(report.cleared).toEqual({ views: 1, inbox: 1 });
      expect(report.streams.map(counts)).toEqual([
        ["ORDER", "history-order", 4, 1, 0, 3],
        ["INVENTORY", "history-inventory", 0, 0, 0, 0],
        ["PAYMENT", "history-payment", 0, 0, 0, 0],
      ]);
      const view = await store.all();
      expect(view.map((v) => v.orderId)).toEqual(["ord-s1"]);
      expect(view.find((v) => v.orderId === "ord-s1")?.lastEventId).toBe(good);
    } finally {
      await store.close();
      await bus.close();
    }
  });

  it("replays a redriven copy (make dlq --redrive) as the duplicate it is: the view as without it", async () => {
    await using nats = await startNats();
    using dir = tempDir();
    const bus = await connectBus(nats.url, "history-rebuild-copy-test", log, { streams: EVENTS.streams });
    const store = await HistoryStore.open(await new TestDatabases(dir.path).location("history"));
    try {
      // A millisecond apart: the view orders facts by time, then by event id (one CI run drew the
      // OrderPlaced's id as the later of two in one millisecond).
      const at = Date.now();
      const [, confirmed] = await publishEvents(bus, [
        event(OrderPlacedSchema, "ord-c1", { customerId: "kim", items: lines }, at),
        event(OrderConfirmedSchema, "ord-c1", { customerId: "kim", total: usd(1500n), paymentId: "pay_c1" }, at + 1),
      ]);
      // The OrderPlaced again after its order's confirmation, as scripts/redrive.ts publishes it.
      const placed = await bus.jsm.streams.getMessage("ORDER", { seq: 1 });
      const h = natsHeaders();
      for (const [k, vs] of placed?.header ?? []) if (!/^nats-/i.test(k)) for (const v of vs) h.append(k, v);
      await bus.js.publish(placed?.subject ?? "", placed?.data, { headers: h, msgID: "redrive:1" });

      const report = await replay({ store, bus, log });
      expect(report.streams.map(counts)[0]).toEqual(["ORDER", "history-order", 3, 2, 1, 0]);
      const view = await store.all();
      expect(view.find((v) => v.orderId === "ord-c1")).toMatchObject({ status: "CONFIRMED", lastEventId: confirmed });
    } finally {
      await store.close();
      await bus.close();
    }
  });

  it("a service's write while a rebuild holds the view fails as unavailable, to be retried after its swap (PostgreSQL: the service's own lock goes with its connection)", async () => {
    using dir = tempDir();
    const location = await new TestDatabases(dir.path).location("history");
    const store = await HistoryStore.open(location);
    const fact = (eventId: string) => ({
      eventId,
      type: "shopmesh.order.v1.OrderPlaced",
      orderId: "ord-guarded",
      occurredAt: 1,
      customerId: "kim",
      status: "PENDING" as const,
    });
    try {
      const lock = await lockRebuild(location);
      try {
        const write = store.apply(fact("evt_during"));
        if (location.engine === "postgres") {
          const err = await write.then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(toStatusObject(err)).toEqual({ code: Code.UNAVAILABLE, details: "database unavailable; try again" });
          expect(await store.all()).toEqual([]);
        } else {
          // SQLite's lock is the service's for its life (a file lock the kernel frees only with the
          // process): a store opened without it, as here, is no service's and is not checked per write.
          await write;
        }
      } finally {
        await lock.release();
      }
      await store.apply(fact("evt_after"));
      expect((await store.all()).map((v) => v.orderId)).toEqual(["ord-guarded"]);
    } finally {
      await store.close();
    }
  });
  it("a service holds its view against a rebuild for its whole life: on PostgreSQL its lock is taken again when the connection holding it is lost", async () => {
    using dir = tempDir();
    const location = await new TestDatabases(dir.path).location("history");
    const release = await holdAgainstRebuild(location, log);
    const refused = () =>
      lockRebuild(location).then(
        async (lock) => {
          await lock.release();
          return false;
        },
        (err: unknown) => err instanceof RebuildRefused,
      );
    try {
      expect(await refused()).toBe(true);
      if (location.engine === "postgres") {
        const admin = new pg.Client({ connectionString: location.url });
        await admin.connect();
        try {
          // The connection that holds the service's shared lock, cut as a restarted server or a proxy would.
          // Waits (up to 5 s) for the backend to end: one still lingering would hold the lock, and the check
          // below would pass with no hold taken again.
          const cut = await admin.query(`SELECT pg_terminate_backend(pid, 5000) FROM pg_locks
            WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`);
          expect(cut.rowCount).toBe(1);
        } finally {
          await admin.end();
        }
        // Taken again within its retry (1 s), and held from then on.
        await expect.poll(refused, { timeout: 10_000, interval: 200 }).toBe(true);
      }
      expect(await refused()).toBe(true);
    } finally {
      await release();
    }
    expect(await refused()).toBe(false);
  });

  it("the loss check reads the live view a page at a time and finds every order the rebuilt one lacks or knows less of, on any page", async () => {
    using dir = tempDir();
    const dbs = new TestDatabases(dir.path);
    const live = await HistoryStore.open(await dbs.location("live"));
    const aside = await HistoryStore.open(await dbs.location("aside"));
    const placed = (orderId: string, customerId?: string) => ({
      eventId: `evt_placed_${orderId}`,
      type: "shopmesh.order.v1.OrderPlaced",
      orderId,
      occurredAt: 1,
      customerId,
      items: lines,
      status: "PENDING" as const,
    });
    const paid = (orderId: string) => ({
      eventId: `evt_paid_${orderId}`,
      type: "shopmesh.payment.v1.PaymentSucceeded",
      orderId,
      occurredAt: 2,
      paymentStatus: "CAPTURED" as const,
    });
    try {
      const ids = ["ord-1", "ord-2", "ord-3", "ord-4", "ord-5", "ord-6", "ord-7"];
      for (const id of ids) {
        await live.apply(placed(id, "kim"));
        await live.apply(paid(id));
      }
      // The rebuilt view: ord-2 missing (page 1 of 2 rows), ord-4 without its owner (page 2), ord-7
      // without its payment (the last, short page); the rest as the live view has them.
      for (const id of ids.filter((id) => id !== "ord-2")) {
        await aside.apply(placed(id, id === "ord-4" ? undefined : "kim"));
        if (id !== "ord-7") await aside.apply(paid(id));
      }
      const expected = { count: 3, some: ["ord-2", "ord-4", "ord-7"] };
      expect(await losses(live, aside, 2)).toEqual(expected);
      expect(await losses(live, aside, 7)).toEqual(expected); // a last page exactly full
      expect(await losses(live, aside)).toEqual(expected);
      expect(await losses(aside, live, 2)).toEqual({ count: 0, some: [] }); // the live view knows more of each
      expect(await aside.count()).toBe(6);
    } finally {
      await live.close();
      await aside.close();
    }
  });
});
