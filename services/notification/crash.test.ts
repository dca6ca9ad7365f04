/**
 * Chaos: the notification process is SIGKILLed after committing a
 * notification but before acknowledging its event. The event is
 * redelivered to the restarted process, whose inbox recognises it: the
 * customer is notified exactly once.
 */

import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { NotificationKind, NotificationService } from "../../gen/shopmesh/notification/v1/notification_pb.js";
import { OrderConfirmedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import { connectBus } from "../../platform/bus.js";
import { createChannel, createClient } from "../../platform/grpc-client.js";
import { identityMetadata } from "../../platform/identity.js";
import { silentLogger } from "../../platform/log.js";
import type { DbLocation } from "../../platform/sql.js";
import { TestDatabases, withDb } from "../../test/db.js";
import { consumerSettled, event, publishEvents } from "../../test/events.js";
import { exited, spawnService, tempDir } from "../../test/fixtures.js";
import { startNats } from "../../test/nats.js";

function notificationsOf(location: DbLocation, eventId: string): Promise<{ id: string; kind: string }[]> {
  return withDb(location, (db) =>
    db.all(sql<{ id: string; kind: string }>`SELECT id, kind FROM notifications WHERE event_id = ${eventId}`),
  );
}

describe("notification crash recovery", () => {
  it("notifies once when the process dies between commit and ack and the event is redelivered", async () => {
    await using nats = await startNats();
    using dir = tempDir();
    const dbs = new TestDatabases(dir.path);
    const location = await dbs.location("notification");
    const env = { ...(await dbs.env("notification")), NATS_URL: nats.url };
    const bus = await connectBus(nats.url, "notification-crash-test", silentLogger(), { streams: EVENTS.streams });
    try {
      await using crashing = await spawnService("notification", { ...env, FAULT_CRASH_AFTER_COMMIT: "true" });
      const [eventId = ""] = await publishEvents(bus, [
        event(OrderConfirmedSchema, "ord-crash-1", {
          customerId: "hana",
          total: { currencyCode: "USD", amountMinor: 1999n },
          paymentId: "pay_crash",
        }),
      ]);
      expect(await exited(crashing.child)).toBe("SIGKILL");
      // Committed, but JetStream still waits for the ack. (The process's last log lines may die with it.)
      expect(await notificationsOf(location, eventId)).toHaveLength(1);
      const before = await bus.jsm.consumers.info("ORDER", "notification-order");
      expect(before.num_ack_pending).toBe(1);
      expect(before.delivered.consumer_seq).toBe(1);
      // JetStream redelivers an unacked event after ack_wait (10 s in production); shorten it so the test need not wait.
      await bus.jsm.consumers.update("ORDER", "notification-order", { ack_wait: 1e9 });

      await using restarted = await spawnService("notification", env);
      await consumerSettled(bus, "ORDER", "notification-order", 20_000);
      const after = await bus.jsm.consumers.info("ORDER", "notification-order");
      expect(after.delivered.consumer_seq, "the event was delivered a second time").toBe(2);

      expect(await notificationsOf(location, eventId)).toHaveLength(1);
      expect(restarted.output()).not.toContain('"msg":"notification sent"');
      const ch = createChannel(restarted.address);
      try {
        const { notifications } = await createClient(NotificationService, ch).listNotifications(
          {},
          { metadata: identityMetadata({ subject: "hana", roles: ["customer"] }) },
        );
        expect(notifications).toHaveLength(1);
        expect(notifications[0]).toMatchObject({
          eventId,
          orderId: "ord-crash-1",
          kind: NotificationKind.ORDER_CONFIRMED,
          message: expect.stringContaining("USD 19.99"),
        });
      } finally {
        ch.close();
      }
      expect(await restarted.kill("SIGTERM")).toBe(0);
    } finally {
      await bus.close();
    }
    // Two notification processes started (each bounded at 20 s), a redelivery bounded at 20 s
    // and a drain: their sum passed the default 30 s on a loaded machine.
  }, 90_000);
});
