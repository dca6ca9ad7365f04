/**
 * What the notification service listens to: OrderConfirmed and
 * OrderCancelled on the ORDER stream, PaymentRefunded on the PAYMENT stream.
 * Each event notifies its customer once. "Sending" is simulated by one log
 * line; it happens inside the consumer's transaction, so a crash before the
 * commit may send again on redelivery (at least once), never after it.
 */
import { OrderCancelledSchema, OrderConfirmedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import { PaymentRefundedSchema } from "../../gen/shopmesh/payment/v1/events_pb.js";
import { type ConsumerSpec, type EventContext, type Logger, on, type Tx } from "../../platform/index.js";
import { type NotifyingEvent, notificationFor } from "./domain.js";
import type { NotificationStore } from "./store.js";

/**
 * Notifications are off every request's path: an event waits up to this long for others to be
 * recorded with it in one transaction (platform/consumer.ts; see history's events.ts).
 */
const LINGER_MS = 100;

/** The notification service's consumers. */
export function notificationConsumers(store: NotificationStore, log: Logger): ConsumerSpec[] {
  const notify = async (e: NotifyingEvent, ctx: EventContext, tx: Tx) => {
    const r = await store.record(ctx.eventId, notificationFor(e), tx);
    if (r.kind === "sent") {
      const n = r.notification;
      log.info({ customer: n.customerId, order: n.orderId, kind: n.kind }, "notification sent");
    }
  };
  return [
    {
      stream: "ORDER",
      durable: "notification-order",
      lingerMs: LINGER_MS,
      handlers: [on(OrderConfirmedSchema, notify), on(OrderCancelledSchema, notify)],
    },
    {
      stream: "PAYMENT",
      durable: "notification-payment",
      lingerMs: LINGER_MS,
      handlers: [on(PaymentRefundedSchema, notify)],
    },
  ];
}
