/**
 * `dead_letters_waiting`: the dead letters of a consumer not redriven yet, read from the DLQ at each
 * scrape by the consumer's own process, as its own NATS user (real nats-server, real users and
 * accounts, a real consumer that dead-letters, `make dlq`'s redrive): its letters as they are written,
 * fewer as they are redriven, none of another consumer's, and a scrape that does not wait on a NATS
 * that does not answer.
 */
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterAll, describe, expect, it } from "vitest";
import { BUS_USERS, EVENTS } from "../contracts/events.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { connectBus } from "../platform/bus.js";
import { BUS_ADMIN, natsAuthorization } from "../platform/bus-access.js";
import { migrations, openDatabase } from "../platform/db.js";
import { deadLettersWaiting, lettersWaiting } from "../platform/dead-letters-waiting.js";
import { startEventing } from "../platform/eventing.js";
import {
  INBOX_FAILURES_MIGRATION,
  INBOX_MIGRATION,
  INBOX_PURGE_MIGRATION,
  on,
  UnprocessableEventError,
} from "../platform/inbox.js";
import { silentLogger } from "../platform/log.js";
import { createTelemetry } from "../platform/telemetry.js";
import { redrive } from "../scripts/redrive.js";
import { TestDatabases } from "./db.js";
import { event, publishEvents } from "./events.js";
import { tempDir } from "./fixtures.js";
import { startNats } from "./nats.js";

const log = silentLogger();
const dir = tempDir();
afterAll(() => dir[Symbol.dispose]());
const password = (user: string) => `test-${user}-password`;

type Registry = ReturnType<typeof createTelemetry>["metrics"]["registry"];
/** The gauge's value for `consumer` in one scrape, or undefined when the scrape has none. */
async function waiting(registry: Registry, consumer: string) {
  const text = await registry.metrics();
  const line = text.split("\n").find((l) => l.startsWith(`dead_letters_waiting{consumer="${consumer}"`));
  return line === undefined ? undefined : Number(line.split(" ").at(-1));
}

describe("dead_letters_waiting", () => {
  it("counts a consumer's letters not redriven yet, not another's, fewer as they are redriven, and is left out, at once, while NATS does not answer", async () => {
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    // The administrator makes the streams (as the nats-streams Job), and redrives (as `make dlq`).
    const admin = await connectBus(nats.url, "waiting-test", log, {
      streams: EVENTS.streams,
      auth: { user: BUS_ADMIN, pass: password(BUS_ADMIN) },
    });
    const db = await openDatabase(
      await new TestDatabases(dir.path).location("waiting"),
      migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION, INBOX_PURGE_MIGRATION]),
    );
    const telemetry = createTelemetry("notification");
    let broken = true;
    let handled = 0;
    const events = await startEventing({
      url: nats.url,
      service: "notification",
      auth: { user: "notification", pass: password("notification") },
      catalogue: EVENTS,
      db,
      log,
      telemetry,
      consumers: [
        {
          stream: "ORDER",
          durable: "notification-order",
          handlers: [
            on(OrderPlacedSchema, async () => {
              if (broken) throw new UnprocessableEventError("notification cannot take it yet");
              handled++;
            }),
          ],
        },
      ],
    });
    const registry = telemetry.metrics.registry;
    try {
      expect(await waiting(registry, "notification-order")).toBe(0);
      // Another consumer's letters, in the same DLQ: not notification-order's to count.
      for (let i = 0; i < 4; i++) await admin.js.publish("dlq.payment-order", new Uint8Array([i]));

      await publishEvents(
        admin,
        Array.from({ length: 5 }, (_, i) => event(OrderPlacedSchema, `ord_${i}`, {})),
      );
      await expect.poll(() => waiting(registry, "notification-order"), { timeout: 20_000 }).toBe(5);

      // The handler fixed, two letters sent back: two wait no more, and none comes back.
      broken = false;
      const letters = [];
      const { state } = await admin.jsm.streams.info("DLQ");
      for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
        const m = await admin.jsm.streams.getMessage("DLQ", { seq });
        if (m?.subject === "dlq.notification-order") letters.push(seq);
      }
      expect(letters).toHaveLength(5);
      const say = () => {};
      expect(await redrive(admin, EVENTS, letters.slice(0, 2), BUS_ADMIN, say)).toEqual({ redriven: 2, skipped: 0 });
      await expect.poll(() => waiting(registry, "notification-order")).toBe(3);
      await expect.poll(() => handled, { timeout: 20_000 }).toBe(2);

      // Every letter: payment-order's are skipped (no original), notification-order's all redriven.
      await redrive(admin, EVENTS, "all", BUS_ADMIN, say);
      await expect.poll(() => waiting(registry, "notification-order")).toBe(0);
      await expect.poll(() => handled, { timeout: 20_000 }).toBe(5);

      // A frozen server answers nothing: the scrape goes on without the gauge, after its second.
      nats.pause();
      try {
        const started = performance.now();
        expect(await waiting(registry, "notification-order")).toBeUndefined();
        expect(performance.now() - started).toBeLessThan(2_500);
      } finally {
        nats.resume();
      }
      await expect.poll(() => waiting(registry, "notification-order")).toBe(0);
    } finally {
      await events.stop().catch(() => {});
      await admin.close().catch(() => {});
      await db.close();
    }
  }, 60_000);

  it("reads a consumer's letters among 200,000 redriven this week: at the latest at the scrape after the DLQ last changed, within its second", async () => {
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const admin = await connectBus(nats.url, "waiting-test", log, {
      streams: EVENTS.streams,
      auth: { user: BUS_ADMIN, pass: password(BUS_ADMIN) },
    });
    const db = await openDatabase(
      await new TestDatabases(dir.path).location("many-marks"),
      migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION, INBOX_PURGE_MIGRATION]),
    );
    const telemetry = createTelemetry("history");
    const events = await startEventing({
      url: nats.url,
      service: "history",
      auth: { user: "history", pass: password("history") },
      catalogue: EVENTS,
      db,
      log,
      telemetry,
      consumers: [{ stream: "ORDER", durable: "history-order", handlers: [on(OrderPlacedSchema, async () => {})] }],
    });
    const registry = telemetry.metrics.registry;
    try {
      // A storm's letters, all but the last two redriven (a mark each): some 4 MB of mark subjects to
      // read, past a scrape's second (a read given up at the second was read again at every scrape).
      const n = 200_000;
      const publishAll = async (subjects: (i: number) => string, count: number) => {
        for (let i = 0; i < count; i += 1_000) {
          const batch = Array.from({ length: Math.min(1_000, count - i) }, (_, j) => subjects(i + j + 1));
          await Promise.all(batch.map((subject) => admin.js.publish(subject, new Uint8Array(0))));
        }
      };
      await publishAll(() => "dlq.history-order", n);
      await publishAll((seq) => `dlq.redriven.history-order.${seq}`, n - 2);
      await expect.poll(() => waiting(registry, "history-order"), { timeout: 60_000, interval: 1_000 }).toBe(2);
      const started = performance.now();
      expect(await waiting(registry, "history-order")).toBe(2);
      expect(performance.now() - started).toBeLessThan(1_000);
    } finally {
      await events.stop().catch(() => {});
      await admin.close().catch(() => {});
      await db.close();
    }
  }, 180_000);

  it("reads a consumer's marks again when the DLQ holds a new message, or 5 minutes on, and else not", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "waiting-test", log, { streams: EVENTS.streams });
    try {
      // The marks' reads (stream infos filtered on them), counted.
      let reads = 0;
      const streams = bus.jsm.streams;
      const info: typeof streams.info = (name, opts) => {
        if (opts?.subjects_filter?.startsWith("dlq.redriven.")) reads++;
        return streams.info(name, opts);
      };
      const counted = new Proxy(streams, { get: (s, k) => (k === "info" ? info : Reflect.get(s, k)) });
      const counting = {
        ...bus,
        jsm: new Proxy(bus.jsm, { get: (j, k) => (k === "streams" ? counted : Reflect.get(j, k)) }),
      };
      let clock = 0;
      const scrape = lettersWaiting(counting, "history-order", { now: () => clock });
      await bus.js.publish("dlq.history-order", new Uint8Array([1]));
      expect([await scrape(), await scrape(), reads]).toEqual([1, 1, 1]);
      await bus.js.publish("dlq.redriven.history-order.1", new Uint8Array(0));
      expect([await scrape(), await scrape(), reads]).toEqual([0, 0, 2]);
      // A read whose pages a drop shifted (over 100,000 marks: nats.js reads page after page) may miss
      // a mark; in a DLQ nothing is written to, it is not kept past 5 minutes.
      clock += 5 * 60_000 - 1;
      expect([await scrape(), reads]).toEqual([0, 2]);
      clock += 1;
      expect([await scrape(), await scrape(), reads]).toEqual([0, 0, 3]);
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("counts the letters of a DLQ made again (its sequences from 1) by none of the marks read before", async () => {
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const connect = () =>
      connectBus(nats.url, "waiting-test", log, {
        streams: EVENTS.streams,
        auth: { user: BUS_ADMIN, pass: password(BUS_ADMIN) },
      });
    const admin = await connect();
    const service = await connectBus(nats.url, "history", log, {
      streams: EVENTS.streams,
      auth: { user: "history", pass: password("history") },
    });
    try {
      const scrape = lettersWaiting(service, "history-order");
      for (let i = 0; i < 3; i++) await admin.js.publish("dlq.history-order", new Uint8Array([i]));
      for (const seq of [1, 2, 3]) await admin.js.publish(`dlq.redriven.history-order.${seq}`, new Uint8Array(0));
      expect(await scrape()).toBe(0);
      // Its store lost (a new volume), or removed by hand: made again at the next start, from sequence 1.
      await admin.jsm.streams.delete("DLQ");
      await (await connect()).close();
      for (let i = 0; i < 3; i++) await admin.js.publish("dlq.history-order", new Uint8Array([i]));
      expect(await scrape()).toBe(3);
    } finally {
      await service.close().catch(() => {});
      await admin.close().catch(() => {});
    }
  }, 60_000);

  it("counts a letter an earlier redrive marked on dlq.redriven.<seq> until --redrive all names its consumer, which sends nothing again", async () => {
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const admin = await connectBus(nats.url, "waiting-test", log, {
      streams: EVENTS.streams,
      auth: { user: BUS_ADMIN, pass: password(BUS_ADMIN) },
    });
    const service = await connectBus(nats.url, "history", log, {
      streams: EVENTS.streams,
      auth: { user: "history", pass: password("history") },
    });
    try {
      const letter = (await service.js.publish("dlq.history-order", new Uint8Array([1]))).seq;
      const other = (await service.js.publish("dlq.history-order", new Uint8Array([2]))).seq;
      const h = natsHeaders();
      h.set("x-dlq-redriven-to", "ORDER 7");
      await admin.js.publish(`dlq.redriven.${letter}`, new Uint8Array(0), { headers: h });
      // A mark of no letter the DLQ holds (past its last) names none.
      await admin.js.publish("dlq.redriven.1000000", new Uint8Array(0));
      expect(await deadLettersWaiting(service, "history-order")).toBe(2);

      const said: string[] = [];
      const run = await redrive(admin, EVENTS, "all", BUS_ADMIN, (line) => said.push(line));
      // The letter still unmarked is tried (its original is no event: skipped), the marked one not sent again.
      expect(run).toEqual({ redriven: 0, skipped: 1 });
      expect(said[0]).toBe("1 letter(s) redriven earlier marked again, for their consumer's dead_letters_waiting");
      expect(said.slice(1).join("\n")).toContain(`DLQ ${other} skipped`);
      expect(await deadLettersWaiting(service, "history-order")).toBe(1);
      const named = await admin.jsm.streams.getMessage("DLQ", { last_by_subj: `dlq.redriven.history-order.${letter}` });
      expect(named?.header.get("x-dlq-redriven-to")).toBe("ORDER 7");
      expect((await admin.jsm.streams.info("ORDER")).state.messages).toBe(0);

      // Named once: a second run marks nothing again.
      said.length = 0;
      await redrive(admin, EVENTS, "all", BUS_ADMIN, (line) => said.push(line));
      expect(said.some((l) => l.includes("marked again"))).toBe(false);
    } finally {
      await service.close().catch(() => {});
      await admin.close().catch(() => {});
    }
  }, 60_000);
});
