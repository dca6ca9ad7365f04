/**
 * The events of the shop: every message of `proto/shopmesh/<context>/v1/events.proto`,
 * by the stream of the context that publishes it. Services hand this
 * catalogue to the runtime; tools decode the bus with it.
 */
import {
  StockRejectedSchema,
  StockReleasedSchema,
  StockReservedSchema,
} from "../gen/shopmesh/inventory/v1/events_pb.js";
import {
  OrderCancelledSchema,
  OrderConfirmedSchema,
  OrderPlacedSchema,
  OrderRefundSettledSchema,
} from "../gen/shopmesh/order/v1/events_pb.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../gen/shopmesh/payment/v1/events_pb.js";
import { busUsers } from "../platform/bus-access.js";
import { eventCatalogue } from "../platform/catalogue.js";

/** Streams ORDER, INVENTORY and PAYMENT (plus the runtime's DLQ), and the events each keeps. */
export const EVENTS = eventCatalogue({
  ORDER: [OrderPlacedSchema, OrderConfirmedSchema, OrderCancelledSchema, OrderRefundSettledSchema],
  INVENTORY: [StockReservedSchema, StockRejectedSchema, StockReleasedSchema],
  PAYMENT: [PaymentSucceededSchema, PaymentFailedSchema, PaymentRefundedSchema],
});

/**
 * The bus's NATS users (platform/bus-access.ts): its administrator, and one per process that connects,
 * each allowed to publish the events of its own context only — so order alone can say an order was
 * cancelled — and to consume the streams named here only (test/bus-users.test.ts holds these to the
 * services' consumers). `make run` and deploy/kubernetes/base/nats/users.conf render them.
 */
export const BUS_USERS = busUsers(EVENTS, {
  inventory: ["ORDER"],
  payment: ["ORDER", "INVENTORY"],
  order: ["INVENTORY", "PAYMENT"],
  notification: ["ORDER", "PAYMENT"],
  history: ["ORDER", "INVENTORY", "PAYMENT"],
  gateway: [],
});

/**
 * The `lockKey` (platform/consumer.ts) of a consumer whose handlers touch only their event's own
 * order — its row, its payment, its view — so that events of different orders are independent: a
 * batch is then applied in order-id order (each order's events still in their own), and batches
 * applied at once lock their rows in one order. Every event names its order in `meta`.
 */
export const byOrder = (event: unknown): string => (event as { meta?: { orderId?: string } }).meta?.orderId ?? "";
