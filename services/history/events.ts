/**
 * What the history service listens to: every event of the ORDER, INVENTORY
 * and PAYMENT streams, each merged into its order's view. The same handlers
 * serve the live durable consumers and the rebuild (`rebuild.ts`), so a
 * replayed event has exactly the effect a delivered one has.
 */
import { byOrder } from "../../contracts/events.js";
import {
  StockRejectedSchema,
  StockReleasedSchema,
  StockReservedSchema,
} from "../../gen/shopmesh/inventory/v1/events_pb.js";
import {
  OrderCancelledSchema,
  OrderConfirmedSchema,
  OrderPlacedSchema,
  OrderRefundSettledSchema,
} from "../../gen/shopmesh/order/v1/events_pb.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../../gen/shopmesh/payment/v1/events_pb.js";
import { type ConsumerSpec, type EventContext, on, type Tx } from "../../platform/index.js";
import { factOf, type HistoryEvent } from "./domain.js";
import type { HistoryStore } from "./store.js";

/** A consumer of the history service: its stream, durable name and handlers. */
export type HistoryConsumer = ConsumerSpec;

/**
 * The read model is off every request's path: an event waits up to this long for others to be
 * applied with it in one transaction (platform/consumer.ts), which at a few orders a second takes
 * a transaction, a flush and a wake-up per event off the cores the sagas need.
 */
const LINGER_MS = 100;

/** The history service's consumers, one per stream. */
export function historyConsumers(store: HistoryStore, clock: () => number = Date.now): HistoryConsumer[] {
  const apply = async (e: HistoryEvent, ctx: EventContext, tx: Tx) => {
    await store.apply(factOf(e, ctx.eventId, clock()), tx);
  };
  return [
    {
      stream: "ORDER",
      durable: "history-order",
      lingerMs: LINGER_MS,
      lockKey: byOrder,
      handlers: [
        on(OrderPlacedSchema, apply),
        on(OrderConfirmedSchema, apply),
        on(OrderCancelledSchema, apply),
        on(OrderRefundSettledSchema, apply),
      ],
    },
    {
      stream: "INVENTORY",
      durable: "history-inventory",
      lingerMs: LINGER_MS,
      lockKey: byOrder,
      handlers: [on(StockReservedSchema, apply), on(StockRejectedSchema, apply), on(StockReleasedSchema, apply)],
    },
    {
      stream: "PAYMENT",
      durable: "history-payment",
      lingerMs: LINGER_MS,
      lockKey: byOrder,
      handlers: [on(PaymentSucceededSchema, apply), on(PaymentFailedSchema, apply), on(PaymentRefundedSchema, apply)],
    },
  ];
}
