/**
 * BUS_USERS (contracts/events.ts) lets each service consume exactly the streams its consumers read:
 * one stream too few and the service cannot start its consumer there; one too many and it could read
 * every event of a stream it has no business with (OrderPlaced carries the card token).
 */
import { expect, it } from "vitest";
import { BUS_USERS } from "../contracts/events.js";
import type { ConsumerSpec } from "../platform/consumer-spec.js";
import { silentLogger } from "../platform/log.js";
import { SYSTEM } from "../scripts/layout.js";
import { historyConsumers } from "../services/history/events.js";
import { inventoryConsumers } from "../services/inventory/events.js";
import { notificationConsumers } from "../services/notification/events.js";
import { Choreography } from "../services/order/events.js";
import { paymentConsumers } from "../services/payment/events.js";

it("each service's NATS user may consume exactly the streams its consumers read", () => {
  // The consumers' specs only: their handlers (which would use the stores) are never called here.
  const store = { onPlaced: () => {} } as never;
  const consumers: Record<string, readonly ConsumerSpec[]> = {
    inventory: inventoryConsumers(store),
    payment: paymentConsumers(store),
    order: new Choreography(store).consumers(),
    notification: notificationConsumers(store, silentLogger()),
    history: historyConsumers(store),
    gateway: [],
  };
  const acked = (user: string) =>
    (BUS_USERS.find((u) => u.user === user)?.publish ?? []).filter((s) => s.startsWith("$JS.ACK.")).sort();
  for (const [service, specs] of Object.entries(consumers)) {
    expect(acked(service), service).toEqual(specs.map((c) => `$JS.ACK.${c.stream}.${c.durable}.>`).sort());
  }
  // A process missing from both lists passed, and `make run` restarted it for ever: "could not start:
  // Authorization Violation".
  expect(
    Object.keys(consumers).sort(),
    "every process of SYSTEM (scripts/layout.ts) has its consumers' specs listed above, and a user in BUS_USERS",
  ).toEqual(SYSTEM.map((p) => p.name).sort());
  expect(
    BUS_USERS.map((u) => u.user).sort(),
    "every user in BUS_USERS but admin has its consumers listed above (a new service: add its consumers' specs)",
  ).toEqual(["admin", ...Object.keys(consumers)].sort());
});
