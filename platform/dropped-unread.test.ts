/**
 * `events_dropped_unread_total`: the events a bounded stream dropped before a consumer read them, read
 * from a real nats-server (2.9) — on a stream of the test's own with a bound of 10 events (discard old),
 * and through startEventing on ORDER made as small — counted once per process (and again for a stream
 * made again), logged once, none for a consumer that kept up, a durable made after the drop (holding
 * its first events or not), a filtered one holding its own event among others', or one whose filter was
 * widened, and a scrape that never waits on a NATS that does not answer.
 */
import { AckPolicy, DeliverPolicy, DiscardPolicy, type JsMsg, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { OrderConfirmedSchema, OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { TestDatabases } from "../test/db.js";
import { event, publishEvents } from "../test/events.js";
import { tempDir } from "../test/fixtures.js";
import { startNats } from "../test/nats.js";
import { type Bus, connectBus } from "./bus.js";
import { migrations, openDatabase } from "./db.js";
import { type ConsumerPosition, droppedUnread, readUpTo, watchDropped } from "./dropped-unread.js";
import { startEventing } from "./eventing.js";
import { INBOX_FAILURES_MIGRATION, INBOX_MIGRATION, INBOX_PURGE_MIGRATION, on } from "./inbox.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { createTelemetry, type Telemetry } from "./telemetry.js";

const dir = tempDir();
afterAll(() => dir[Symbol.dispose]());

/** A logger that keeps its lines. */
function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: "info" }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines, errors: () => lines.filter((l) => l.level === 50) };
}

/** The counter's value for `consumer` in one scrape, or undefined when the scrape has none. */
async function dropped(metrics: Metrics, consumer: string): Promise<number | undefined> {
  const text = await metrics.registry.metrics();
  const line = text.split("\n").find((l) => l.startsWith(`events_dropped_unread_total{consumer="${consumer}"`));
  return line === undefined ? undefined : Number(line.split(" ").at(-1));
}

/** Watches `durable` of TINY as eventing.ts does: counted from 0, read at each scrape. */
function watched(bus: Bus, metrics: Metrics, durable: string, log: pino.Logger) {
  metrics.eventsDroppedUnread.inc({ consumer: durable }, 0);
  const check = watchDropped({
    bus,
    stream: "TINY",
    durable,
    log,
    count: (n) => metrics.eventsDroppedUnread.inc({ consumer: durable }, n),
  });
  metrics.trackDropped(durable, check);
  return check;
}

/**
 * Makes TINY on `bus`: tiny.>, limits retention, file storage, the last 10 events kept (discard old).
 * Its helpers publish `n` events (on tiny.a unless told), add a durable (explicit acks, from the
 * stream's first event, filtered when told), and pull `n` events of a durable, acknowledging each
 * (`ack` true), none (false), or those whose index (from 0) it names.
 */
async function tiny(bus: Bus) {
  await bus.jsm.streams.add({
    name: "TINY",
    subjects: ["tiny.>"],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    max_msgs: 10,
    discard: DiscardPolicy.Old,
  });
  return {
    async publish(n: number, subject = "tiny.a") {
      for (let i = 0; i < n; i++) await bus.js.publish(subject, "x");
    },
    durable: (name: string, filter?: string) =>
      bus.jsm.consumers.add("TINY", {
        durable_name: name,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ...(filter ? { filter_subject: filter } : {}),
      }),
    async read(name: string, n: number, ack: boolean | readonly number[] = true) {
      const c = await bus.js.consumers.get("TINY", name);
      const got: JsMsg[] = [];
      for (let i = 0; i < n; i++) {
        const m = await c.next({ expires: 2_000 });
        if (!m) break;
        if (ack === true || (Array.isArray(ack) && ack.includes(i))) await m.ackAck();
        got.push(m);
      }
      return got;
    },
  };
}

describe("droppedUnread", () => {
  it("counts the stream's sequences below its first that the consumer was never given, each once", () => {
    // Read up to 3, the stream now starts at 24: 4..23 are gone.
    expect(droppedUnread(24, 3, 0)).toEqual({ from: 4, to: 23, count: 20 });
    // Counted already up to 23: only what went since.
    expect(droppedUnread(30, 3, 23)).toEqual({ from: 24, to: 29, count: 6 });
    expect(droppedUnread(24, 3, 23)).toBeUndefined();
    // Kept up, or a durable made at the stream's first (its delivered is first - 1), or an empty stream.
    expect(droppedUnread(24, 23, 0)).toBeUndefined();
    expect(droppedUnread(24, 40, 0)).toBeUndefined();
    expect(droppedUnread(0, 0, 0)).toBeUndefined();
  });
});

describe("readUpTo", () => {
  /** A consumer's position as nats-server 2.9 reported it in each case (the tests below). */
  const at = (
    delivered: [number, number],
    ackFloor: [number, number],
    held = 0,
    filter?: string,
  ): ConsumerPosition => ({
    delivered: { consumer_seq: delivered[0], stream_seq: delivered[1] },
    ack_floor: { consumer_seq: ackFloor[0], stream_seq: ackFloor[1] },
    num_ack_pending: held,
    config: filter ? { filter_subject: filter } : {},
  });

  it("is the ack floor, but for a durable that acknowledged none, a filtered one, and one that passed over", () => {
    expect(readUpTo(at([3, 3], [3, 3]), 1)).toBe(3);
    // Holding two: what it acknowledged; filtered, what it passed (what it holds is still in the stream).
    expect(readUpTo(at([5, 5], [3, 3], 2), 1)).toBe(3);
    expect(readUpTo(at([5, 5], [3, 3], 2, "tiny.a"), 1)).toBe(5);
    // Filtered, its last own event acknowledged at 3, passed over others' to 28, then given 29, held.
    expect(readUpTo(at([4, 29], [3, 3], 1, "tiny.a"), 20)).toBe(29);
    // Made when the stream started at 24: ack floor 0, delivered 23.
    expect(readUpTo(at([0, 23], [0, 0]), 24)).toBe(23);
    // Filtered, all acknowledged, a pull passed over other subjects' 34..58.
    expect(readUpTo(at([13, 58], [13, 33], 0, "tiny.a"), 49)).toBe(58);
    // Unfiltered, nothing delivered past 3, yet delivered at 12, below the stream's first (24): a
    // stopped process's waiting pull.
    expect(readUpTo(at([3, 12], [3, 3]), 24)).toBe(3);
    // Unfiltered now, holding nothing, delivered at 28 of a stream from 19: it passed over 4..28 under
    // a filter since widened.
    expect(readUpTo(at([3, 28], [3, 3]), 19)).toBe(28);
    // Made when the stream started at 21, given 21 and 22, acknowledging neither, or only 22: its
    // floor says 0 until 21 is acknowledged (or dropped, which ends the delivery and moves the floor).
    expect(readUpTo(at([2, 22], [0, 0], 2), 21)).toBe(22);
    expect(readUpTo(at([2, 22], [0, 0], 1), 21)).toBe(22);
  });
});

describe("events_dropped_unread_total", () => {
  it("counts, once, the events a size bound dropped before a stopped consumer read them, and nothing for one that kept up", async () => {
    await using nats = await startNats();
    const { log, lines, errors } = capture();
    const bus = await connectBus(nats.url, "dropped-test", log);
    const metrics = createMetrics("test");
    try {
      const { publish, durable, read } = await tiny(bus);

      await publish(3);
      await durable("stopped");
      await durable("holder");
      await durable("kept-up");
      await durable("filtered", "tiny.a");
      expect(await read("stopped", 3)).toHaveLength(3);
      expect(await read("filtered", 3)).toHaveLength(3);
      // Given two more and acknowledging neither: held when the stream drops them.
      expect(await read("holder", 1)).toHaveLength(1);
      expect(await read("holder", 2, false)).toHaveLength(2);
      const stopped = watched(bus, metrics, "stopped", log);
      for (const name of ["holder", "kept-up", "filtered"]) watched(bus, metrics, name, log);
      await stopped();
      expect(await dropped(metrics, "stopped")).toBe(0);

      // 30 more while it is stopped, the stream keeping the last 10; kept-up reads each as it comes.
      expect(await read("kept-up", 3)).toHaveLength(3);
      for (let i = 0; i < 30; i++) {
        await publish(1);
        expect(await read("kept-up", 1)).toHaveLength(1);
        expect(await read("filtered", 1)).toHaveLength(1);
      }
      const { state } = await bus.jsm.streams.info("TINY");
      expect(state.first_seq).toBe(24);
      const gone = state.first_seq - 1 - 3;

      expect(await dropped(metrics, "stopped")).toBe(gone);
      expect(await dropped(metrics, "kept-up")).toBe(0);
      // A second scrape does not count the same gap again, nor log it again.
      expect(await dropped(metrics, "stopped")).toBe(gone);
      const said = () => errors().filter((l) => l.consumer === "stopped");
      expect(said()).toHaveLength(1);
      expect(said()[0]).toMatchObject({ stream: "TINY", dropped: gone, fromSeq: 4, toSeq: 23 });
      expect(said()[0]?.msg).toMatch(/size or age bound dropped them before stopped read them/);
      // nats-server 2.9 ends a delivery it holds unacknowledged when the stream drops the message (as
      // if acknowledged: ack_floor moves past it), so the two held events are not seen — only the 20
      // it never gave out. A server that kept them pending would show here.
      expect(await dropped(metrics, "holder")).toBe(20);

      // A durable made after the drop starts at the stream's first event: nothing to lose (its
      // ack_floor says 0, its delivered first - 1).
      await durable("new");
      watched(bus, metrics, "new", log);
      expect(await dropped(metrics, "new")).toBe(0);

      // A filtered consumer that kept up while only other subjects' events went past the bound has
      // lost nothing: the pull that found nothing for it moved its delivered past them (not its ack_floor).
      await publish(25, "tiny.b");
      expect(await read("filtered", 1)).toHaveLength(0);
      expect(await dropped(metrics, "filtered")).toBe(0);

      // More dropped since: only those are added, each gap in a line of its own, starting where the last ended.
      await publish(3);
      const now = (await bus.jsm.streams.info("TINY")).state.first_seq;
      const total = now - 1 - 3;
      expect(await dropped(metrics, "stopped")).toBe(total);
      expect(said().at(-1)).toMatchObject({ toSeq: now - 1 });
      expect(said().reduce((sum, l) => sum + Number(l.dropped), 0)).toBe(total);
      for (const [a, b] of said()
        .slice(1)
        .map((l, i) => [said()[i], l] as const))
        expect(b?.fromSeq).toBe(Number(a?.toSeq) + 1);

      // A frozen server answers nothing: the scrape goes on after its second, counting nothing.
      nats.pause();
      try {
        const started = performance.now();
        const was = lines.length;
        expect(await dropped(metrics, "stopped")).toBe(total);
        expect(performance.now() - started).toBeLessThan(2_500);
        expect(lines.slice(was)).toHaveLength(0);
      } finally {
        nats.resume();
      }
    } finally {
      await bus.close();
    }
  });

  it("counts nothing for a durable made after a drop that holds its first events, and what it misses later", async () => {
    await using nats = await startNats();
    const { log, errors } = capture();
    const bus = await connectBus(nats.url, "dropped-test", log);
    const metrics = createMetrics("test");
    try {
      const { publish, durable, read } = await tiny(bus);
      await publish(30);
      expect((await bus.jsm.streams.info("TINY")).state.first_seq).toBe(21);
      // A new consumer's first pull (a service's first start on a week-old stream), its handler yet to
      // acknowledge the first: nats-server 2.9 reports its ack floor as 0, as if it had read nothing of
      // the 20 dropped before it existed — a crash before that first ack, and the replica restarting
      // (or a second one starting), counted them all.
      await durable("first-pull");
      await durable("first-failing");
      watched(bus, metrics, "first-pull", log);
      watched(bus, metrics, "first-failing", log);
      expect(await read("first-pull", 2, false)).toHaveLength(2);
      // The first event failing (held, redelivered later), the next acknowledged: the floor stays 0.
      expect(await read("first-failing", 3, [1, 2])).toHaveLength(3);
      expect(await dropped(metrics, "first-pull")).toBe(0);
      expect(await dropped(metrics, "first-failing")).toBe(0);
      expect(errors()).toHaveLength(0);

      // Dropped while held, its deliveries end (its floor moves to 22, 23): what it was never given is counted.
      await publish(15);
      const { state } = await bus.jsm.streams.info("TINY");
      expect(await dropped(metrics, "first-pull")).toBe(state.first_seq - 1 - 22);
      expect(await dropped(metrics, "first-failing")).toBe(state.first_seq - 1 - 23);
    } finally {
      await bus.close();
    }
  });

  it("counts nothing for a filtered consumer that holds its own event after others' went past the bound", async () => {
    await using nats = await startNats();
    const { log, errors } = capture();
    const bus = await connectBus(nats.url, "dropped-test", log);
    const metrics = createMetrics("test");
    try {
      const { publish, durable, read } = await tiny(bus);
      // notification-payment (refunds only), or a choreography consumer in a shop running orchestration:
      // its last event is old, its ack floor with it, and the others' events go on past the bound.
      await durable("rare", "tiny.a");
      await publish(3);
      expect(await read("rare", 3)).toHaveLength(3);
      await publish(25, "tiny.b");
      expect(await read("rare", 1)).toHaveLength(0);
      watched(bus, metrics, "rare", log);
      // Its own event at last, held: its handler fails (or its database is away, retried for as long),
      // and a scrape, or a replica's start, comes meanwhile.
      await publish(1);
      expect(await read("rare", 1, false)).toHaveLength(1);
      expect((await bus.jsm.streams.info("TINY")).state.first_seq).toBe(20);
      expect(await dropped(metrics, "rare")).toBe(0);
      expect(errors()).toHaveLength(0);

      // Down from then on while 30 of its own go by: 30..49 dropped before it was given them, counted.
      await publish(30);
      expect((await bus.jsm.streams.info("TINY")).state.first_seq).toBe(50);
      expect(await dropped(metrics, "rare")).toBe(20);
      expect(errors()).toMatchObject([{ consumer: "rare", fromSeq: 30, toSeq: 49, filter: "tiny.a" }]);
    } finally {
      await bus.close();
    }
  });

  it("counts nothing for a durable whose filter an upgrade widened after it had passed over others' events", async () => {
    await using nats = await startNats();
    const { log, errors } = capture();
    const bus = await connectBus(nats.url, "dropped-test", log);
    const metrics = createMetrics("test");
    try {
      const { publish, durable, read } = await tiny(bus);
      await durable("widened", "tiny.a");
      await publish(3);
      expect(await read("widened", 3)).toHaveLength(3);
      await publish(25, "tiny.b");
      expect(await read("widened", 1)).toHaveLength(0);
      // This process's consumer starts, checks, and widens its durable's filter to none (pull.ts's
      // refilter, as on nats-server before 2.9.12): unfiltered, its ack floor is still 3.
      const check = watched(bus, metrics, "widened", log);
      await check();
      const { config } = await bus.jsm.consumers.info("TINY", "widened");
      const update = { stream_name: "TINY", config: { ...config, filter_subject: "" }, action: "update" };
      await bus.nc.request("$JS.API.CONSUMER.DURABLE.CREATE.TINY.widened", JSON.stringify(update));
      expect((await bus.jsm.consumers.info("TINY", "widened")).config.filter_subject ?? "").toBe("");
      expect((await bus.jsm.streams.info("TINY")).state.first_seq).toBe(19);
      expect(await dropped(metrics, "widened")).toBe(0);
      // Another replica starting now: its delivered is in the stream, past events it was not given.
      const replica = createMetrics("test");
      watched(bus, replica, "widened", log);
      expect(await dropped(replica, "widened")).toBe(0);
      // The first event it is given after, held (its handler failing): still nothing lost.
      await publish(1, "tiny.b");
      expect(await read("widened", 1, false)).toHaveLength(1);
      expect(await dropped(metrics, "widened")).toBe(0);
      expect(errors()).toHaveLength(0);
    } finally {
      await bus.close();
    }
  });

  it("counts a gap of a stream made again under the same name, whose sequences start again at 1", async () => {
    await using nats = await startNats();
    const { log, errors } = capture();
    const bus = await connectBus(nats.url, "dropped-test", log);
    const metrics = createMetrics("test");
    try {
      const check = watched(bus, metrics, "stopped", log);
      /** TINY made afresh, read to 3 by "stopped", then 30 more: 4..23 dropped before it read them. */
      const dropFrom3 = async () => {
        const { publish, durable, read } = await tiny(bus);
        await publish(3);
        await durable("stopped");
        expect(await read("stopped", 3)).toHaveLength(3);
        await check();
        await publish(30);
        expect((await bus.jsm.streams.info("TINY")).state.first_seq).toBe(24);
      };
      await dropFrom3();
      expect(await dropped(metrics, "stopped")).toBe(20);
      // An operator deletes the stream and makes it again (its durables go with it; a running consumer
      // makes its own again, pull.ts), in the same process's life: the same 4..23 are new events lost.
      await bus.jsm.streams.delete("TINY");
      await dropFrom3();
      expect(await dropped(metrics, "stopped")).toBe(40);
      expect(errors().map((l) => [l.fromSeq, l.toSeq])).toEqual([
        [4, 23],
        [4, 23],
      ]);
    } finally {
      await bus.close();
    }
  });

  it("is checked when a service's consumer starts, before it pulls: logged and counted once", async () => {
    await using nats = await startNats();
    const db = await openDatabase(
      await new TestDatabases(dir.path).location("dropped"),
      migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION, INBOX_PURGE_MIGRATION]),
    );
    const { log, errors } = capture();
    let handled = 0;
    const start = (telemetry: Telemetry) =>
      startEventing({
        url: nats.url,
        service: "notification",
        catalogue: EVENTS,
        db,
        log,
        telemetry,
        consumers: [
          {
            stream: "ORDER",
            durable: "notification-order",
            // Two types: no filter subject. Its stop leaves a pull request waiting, which nats-server
            // 2.9 may move the durable's delivered past the gap with (dropped-unread.ts): not its ack floor.
            handlers: [on(OrderPlacedSchema, async () => void handled++), on(OrderConfirmedSchema, async () => {})],
          },
        ],
      });
    const publisher = await connectBus(nats.url, "dropped-test", log, { streams: EVENTS.streams });
    try {
      const first = createTelemetry("notification");
      const events = await start(first);
      await publishEvents(
        publisher,
        Array.from({ length: 3 }, (_, i) => event(OrderPlacedSchema, `ord_${i}`, {})),
      );
      await expect.poll(() => handled, { timeout: 20_000 }).toBe(3);
      // Kept up: a series at 0 from the start, so the first drop is an increase.
      expect(await dropped(first.metrics, "notification-order")).toBe(0);
      await events.stop();

      // The test's own server's ORDER, bounded to 10 events (a stream's service never changes max_msgs).
      const { config } = await publisher.jsm.streams.info("ORDER");
      await publisher.jsm.streams.update("ORDER", { ...config, max_msgs: 10 });
      await publishEvents(
        publisher,
        Array.from({ length: 30 }, (_, i) => event(OrderPlacedSchema, `ord_more_${i}`, {})),
      );
      const { state } = await publisher.jsm.streams.info("ORDER");
      const gone = state.first_seq - 1 - 3;
      expect(gone).toBe(20);

      const second = createTelemetry("notification");
      const again = await start(second);
      try {
        await expect.poll(() => handled, { timeout: 20_000 }).toBe(13);
        expect(await dropped(second.metrics, "notification-order")).toBe(gone);
        expect(await dropped(second.metrics, "notification-order")).toBe(gone);
        const said = errors().filter((l) => l.consumer === "notification-order");
        expect(said).toHaveLength(1);
        expect(said[0]).toMatchObject({ stream: "ORDER", dropped: gone, fromSeq: 4, toSeq: state.first_seq - 1 });
      } finally {
        await again.stop();
      }
    } finally {
      await publisher.close().catch(() => {});
      await db.close();
    }
  });
});
