/**
 * The order-history projection, free of I/O: what each event says about an
 * order (a {@link Fact}) and how a fact merges into the order's view.
 *
 * Events arrive in order within a stream but not across the ORDER,
 * INVENTORY and PAYMENT streams, so the merge must give the same view
 * whatever the arrival order, and the same view when a fact is applied
 * twice. Every field therefore merges by a rule that is commutative,
 * associative and idempotent:
 *
 * - customer and items: first known value wins (all events of an order agree);
 * - status: the highest rank wins, PENDING < CONFIRMED < CANCELLED, so a
 *   terminal status never goes back to PENDING; the reason travels with
 *   CANCELLED;
 * - total: OrderConfirmed's (the amount charged) wins over StockReserved's
 *   (the price of the reserved lines), which only fills a gap;
 * - payment status: the highest rank wins, DECLINED < CAPTURED < REFUNDED;
 * - refund: the highest rank wins, none < pending (OrderCancelled with its
 *   refund pending) < settled (OrderRefundSettled);
 * - last event: the latest by (occurred_at, event id), ties broken by id so
 *   that equal timestamps still converge.
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { type Line, MAX_LINES } from "../../contracts/lines.js";
import { VOIDED_REASON } from "../../contracts/saga.js";
import type { StockRejected, StockReleased, StockReserved } from "../../gen/shopmesh/inventory/v1/events_pb.js";
import type {
  OrderCancelled,
  OrderConfirmed,
  OrderPlaced,
  OrderRefundSettled,
} from "../../gen/shopmesh/order/v1/events_pb.js";
import type { PaymentFailed, PaymentRefunded, PaymentSucceeded } from "../../gen/shopmesh/payment/v1/events_pb.js";
import { CURRENCY_CODE, clipText, MAX_EVENT_TEXT, SUBJECT, UnprocessableEventError } from "../../platform/index.js";

/** Order status as written in the `status` column. */
export type OrderStatusName = "PENDING" | "CONFIRMED" | "CANCELLED";
/** Payment status as written in the `payment_status` column. */
export type PaymentStatusName = "DECLINED" | "CAPTURED" | "REFUNDED";
/** Where a cancelled order's refund stands, as written in the `refund` column. */
export type RefundName = "none" | "pending" | "settled";

/** An amount in minor units of one currency. */
export interface Money {
  readonly amountMinor: number;
  readonly currency: string;
}

/** One order as the read model sees it. */
export interface OrderView {
  readonly orderId: string;
  /** Null until an event names the owner. */
  readonly customerId: string | null;
  /** Null until an order event arrives. */
  readonly status: OrderStatusName | null;
  /** Empty until OrderPlaced arrives. */
  readonly items: readonly Line[];
  /** Null until StockReserved or OrderConfirmed arrives. */
  readonly total: Money | null;
  /** Null before any payment event. */
  readonly paymentStatus: PaymentStatusName | null;
  /** Why the order was cancelled; "" unless it was. */
  readonly reason: string;
  /** "pending" while a cancelled order's money may still be taken. */
  readonly refund: RefundName;
  readonly lastEventAt: number;
  readonly lastEventType: string;
  readonly lastEventId: string;
}

/** What one event says about one order. */
export interface Fact {
  readonly eventId: string;
  readonly type: string;
  readonly orderId: string;
  readonly occurredAt: number;
  readonly customerId?: string;
  readonly items?: readonly Line[];
  readonly status?: OrderStatusName;
  /** With status CANCELLED. */
  readonly reason?: string;
  /** The amount charged (OrderConfirmed). */
  readonly chargedTotal?: Money;
  /** The price of the reserved lines (StockReserved). */
  readonly reservedTotal?: Money;
  readonly paymentStatus?: PaymentStatusName;
  readonly refund?: RefundName;
}

/** Every event the history service projects. */
export type HistoryEvent =
  | OrderPlaced
  | OrderConfirmed
  | OrderCancelled
  | OrderRefundSettled
  | StockReserved
  | StockRejected
  | StockReleased
  | PaymentSucceeded
  | PaymentFailed
  | PaymentRefunded;

/** An event the projection cannot use: dead-lettered at once, never retried. */
export class UnusableEventError extends UnprocessableEventError {
  override readonly name = "UnusableEventError";
}

/** An event's `total`: undefined without a currency; refused out of range or with no currency code. */
function totalOf(m: { amountMinor: bigint; currencyCode: string } | undefined): Money | undefined {
  if (!m || m.currencyCode === "") return undefined;
  if (m.amountMinor < 0n || m.amountMinor > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new UnusableEventError(`total ${m.amountMinor} is out of range`);
  }
  if (!CURRENCY_CODE.test(m.currencyCode)) {
    throw new UnusableEventError(`total's currency ${JSON.stringify(m.currencyCode.slice(0, 20))} is not one`);
  }
  return { amountMinor: Number(m.amountMinor), currency: m.currencyCode };
}

const nonEmpty = (s: string) => (s === "" ? undefined : s);

/** How far an event's time may run ahead of this process's clock (clocks drift; not by a day). */
export const MAX_CLOCK_AHEAD_MS = 24 * 3_600_000;
/** The earliest time a Timestamp's JSON form holds, 0001-01-01T00:00:00Z, in epoch ms. */
export const EARLIEST_TIMESTAMP_MS = -62_135_596_800_000;
/** The latest time a Timestamp's JSON form holds, 9999-12-31T23:59:59.999Z, in epoch ms. */
export const LATEST_TIMESTAMP_MS = 253_402_300_799_999;

/**
 * What `event` says about its order. `eventId` is the id the bus delivered
 * it under (the inbox key). Throws {@link UnusableEventError} when the event
 * names no order or no time, or something no service sends (an order id over
 * 128 characters, a customer id no caller can have, more lines than an order
 * takes); a time more than a day ahead of `now` is taken as that (one before year 1 as year 1), and a reason
 * is kept up to {@link MAX_EVENT_TEXT} characters.
 */
export function factOf(event: HistoryEvent, eventId: string, now = Date.now()): Fact {
  const type = event.$typeName;
  const orderId = event.meta?.orderId ?? "";
  if (orderId === "") throw new UnusableEventError(`${type} ${eventId} carries no order id`);
  if (orderId.length > 128) throw new UnusableEventError(`${type} ${eventId}: order id over 128 characters`);
  if (!event.meta?.occurredAt) throw new UnusableEventError(`${type} ${eventId} carries no occurred_at`);
  // Listed by its last event's time, an order with an event dated in year 9999 was pinned to the top
  // of its customer's list, or, past the first page's cursor, never listed: no later than a day ahead
  // of this clock (a fast clock's events are kept, at that time). Nor before year 1: such a time has
  // no JSON form, and the customer's whole history answered 500 on REST and Connect.
  const occurredAt = Math.max(
    EARLIEST_TIMESTAMP_MS,
    Math.min(timestampMs(event.meta.occurredAt), now + MAX_CLOCK_AHEAD_MS),
  );
  const customerId = "customerId" in event ? event.customerId : "";
  if (customerId !== "" && !SUBJECT.test(customerId)) {
    throw new UnusableEventError(
      `${type} ${eventId}: customer id ${JSON.stringify(customerId.slice(0, 140))} is not one`,
    );
  }
  const base = { eventId, type, orderId, occurredAt };
  switch (event.$typeName) {
    case "shopmesh.order.v1.OrderPlaced":
      if (event.items.length > MAX_LINES || event.items.some((l) => l.productId.length > 128)) {
        throw new UnusableEventError(`${type} ${eventId}: items no order can have`);
      }
      return {
        ...base,
        customerId: nonEmpty(event.customerId),
        items: event.items.map((l) => ({ productId: l.productId, quantity: l.quantity })),
        status: "PENDING",
      };
    case "shopmesh.order.v1.OrderConfirmed":
      return {
        ...base,
        customerId: nonEmpty(event.customerId),
        status: "CONFIRMED",
        chargedTotal: totalOf(event.total),
      };
    case "shopmesh.order.v1.OrderCancelled":
      return {
        ...base,
        customerId: nonEmpty(event.customerId),
        status: "CANCELLED",
        reason: clipText(event.reason, MAX_EVENT_TEXT),
        ...(event.refundPending ? { refund: "pending" as const } : {}),
      };
    case "shopmesh.order.v1.OrderRefundSettled":
      return { ...base, customerId: nonEmpty(event.customerId), refund: "settled" };
    case "shopmesh.inventory.v1.StockReserved":
      return { ...base, reservedTotal: totalOf(event.total) };
    case "shopmesh.inventory.v1.StockRejected":
    case "shopmesh.inventory.v1.StockReleased":
      return base;
    case "shopmesh.payment.v1.PaymentSucceeded":
      return { ...base, customerId: nonEmpty(event.customerId), paymentStatus: "CAPTURED" };
    case "shopmesh.payment.v1.PaymentFailed":
      // A voided charge key is no payment (GetPayment does not find one): the status stays unknown.
      return {
        ...base,
        customerId: nonEmpty(event.customerId),
        ...(event.reason === VOIDED_REASON ? {} : { paymentStatus: "DECLINED" as const }),
      };
    case "shopmesh.payment.v1.PaymentRefunded":
      return { ...base, customerId: nonEmpty(event.customerId), paymentStatus: "REFUNDED" };
  }
}

const STATUS_RANK: Record<OrderStatusName, number> = { PENDING: 1, CONFIRMED: 2, CANCELLED: 3 };
const PAYMENT_RANK: Record<PaymentStatusName, number> = { DECLINED: 1, CAPTURED: 2, REFUNDED: 3 };
const REFUND_RANK: Record<RefundName, number> = { none: 0, pending: 1, settled: 2 };

/** The higher-ranked of two values; null ranks lowest. */
function higher<T extends string>(rank: Record<T, number>, a: T | null, b: T | undefined): T | null {
  if (b === undefined) return a;
  return a === null || rank[b] > rank[a] ? b : a;
}

/** Whether `fact` happened after the view's last event, by (time, event id). */
function isLater(view: OrderView, fact: Fact): boolean {
  return (
    fact.occurredAt > view.lastEventAt || (fact.occurredAt === view.lastEventAt && fact.eventId > view.lastEventId)
  );
}

/** The view of an order nothing is known about yet but `fact`'s identity. */
function blank(fact: Fact): OrderView {
  return {
    orderId: fact.orderId,
    customerId: null,
    status: null,
    items: [],
    total: null,
    paymentStatus: null,
    reason: "",
    refund: "none",
    lastEventAt: fact.occurredAt,
    lastEventType: fact.type,
    lastEventId: fact.eventId,
  };
}

/**
 * Merges `fact` into `view` (undefined for an order not seen yet). Order
 * independent and idempotent; see the module comment for the rules.
 */
export function project(view: OrderView | undefined, fact: Fact): OrderView {
  const v = view ?? blank(fact);
  if (v.orderId !== fact.orderId) throw new Error(`fact about ${fact.orderId} applied to view of ${v.orderId}`);
  const status = higher(STATUS_RANK, v.status, fact.status);
  const later = isLater(v, fact);
  return {
    orderId: v.orderId,
    customerId: v.customerId ?? fact.customerId ?? null,
    status,
    items: v.items.length === 0 && fact.items ? fact.items : v.items,
    // One OrderConfirmed per order: its total replaces whatever StockReserved filled in, in either order.
    total: fact.chargedTotal ?? v.total ?? fact.reservedTotal ?? null,
    paymentStatus: higher(PAYMENT_RANK, v.paymentStatus, fact.paymentStatus),
    reason: fact.status === "CANCELLED" ? (fact.reason ?? "") : v.reason,
    refund: higher(REFUND_RANK, v.refund, fact.refund) ?? "none",
    lastEventAt: later ? fact.occurredAt : v.lastEventAt,
    lastEventType: later ? fact.type : v.lastEventType,
    lastEventId: later ? fact.eventId : v.lastEventId,
  };
}
