/**
 * `event_consumer_pending`: what a consumer's stream holds for it unacknowledged, read from JetStream at
 * each scrape (real nats-server, a real consumer whose handler is held): the backlog while it waits,
 * none once it is through, and a scrape that does not wait on a NATS that does not answer.
 */
import { afterAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { TestDatabases } from "../test/db.js";
import { event, publishEvents } from "../test/events.js";
import { tempDir } from "../test/fixtures.js";
import { startNats } from "../test/nats.js";
import { connectBus } from "./bus.js";
import { migrations, openDatabase } from "./db.js";
import { startEventing } from "./eventing.js";
import { INBOX_FAILURES_MIGRATION, INBOX_MIGRATION, INBOX_PURGE_MIGRATION, on } from "./inbox.js";
import { silentLogger } from "./log.js";
import { createTelemetry } from "./telemetry.js";

const log = silentLogger();
const dir = tempDir();
afterAll(() => dir[Symbol.dispose]());

/** The gauge's value for `consumer` in one scrape, or undefined when the scrape has none. */
async function pending(registry: ReturnType<typeof createTelemetry>["metrics"]["registry"], consumer: string) {
  const text = await registry.metrics();
  const line = text.split("\n").find((l) => l.startsWith(`event_consumer_pending{consumer="${consumer}"`));
  return line === undefined ? undefined : Number(line.split(" ").at(-1));
}

describe("event_consumer_pending", () => {
  it("counts the events waiting for a held consumer, none once it is through, and is left out, at once, while NATS does not answer", async () => {
    await using nats = await startNats();
    const db = await openDatabase(
      await new TestDatabases(dir.path).location("pending"),
      migrations([INBOX_MIGRATION, INBOX_FAILURES_MIGRATION, INBOX_PURGE_MIGRATION]),
    );
    const telemetry = createTelemetry("notification");
    let release = () => {};
    const held = new Promise<void>((r) => (release = r));
    let handled = 0;
    const events = await startEventing({
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
          handlers: [
            on(OrderPlacedSchema, async () => {
              await held;
              handled++;
            }),
          ],
        },
      ],
    });
    const publisher = await connectBus(nats.url, "pending-test", log, { streams: EVENTS.streams });
    try {
      expect(await pending(telemetry.metrics.registry, "notification-order")).toBe(0);
      await publishEvents(
        publisher,
        Array.from({ length: 7 }, (_, i) => event(OrderPlacedSchema, `ord_${i}`, {})),
      );
      await expect.poll(() => pending(telemetry.metrics.registry, "notification-order")).toBe(7);

      release();
      await expect.poll(() => handled, { timeout: 20_000 }).toBe(7);
      await expect.poll(() => pending(telemetry.metrics.registry, "notification-order")).toBe(0);

      // A frozen server answers nothing: the scrape goes on without the gauge, after its second.
      nats.pause();
      try {
        const started = performance.now();
        expect(await pending(telemetry.metrics.registry, "notification-order")).toBeUndefined();
        expect(performance.now() - started).toBeLessThan(2_500);
      } finally {
        nats.resume();
      }
      await expect.poll(() => pending(telemetry.metrics.registry, "notification-order")).toBe(0);
    } finally {
      await publisher.close().catch(() => {});
      await events.stop().catch(() => {});
      await db.close();
    }
  });
});
