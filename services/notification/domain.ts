/**
 * Notification rules, free of I/O: which events notify a customer, what the
 * message says, how money reads in it, and what a valid list request is.
 */
import type { OrderCancelled, OrderConfirmed } from "../../gen/shopmesh/order/v1/events_pb.js";
import type { PaymentRefunded } from "../../gen/shopmesh/payment/v1/events_pb.js";
import {
  CURRENCY_CODE,
  clipText,
  MAX_EVENT_TEXT,
  requireId,
  SUBJECT,
  UnprocessableEventError,
} from "../../platform/index.js";

/** Kind of a stored notification, as written in the `notifications.kind` column. */
export type NotificationKindName = "ORDER_CONFIRMED" | "ORDER_CANCELLED" | "PAYMENT_REFUNDED";

/** What an event asks to send: to whom, about which order, and the text. */
export interface NotificationDraft {
  readonly customerId: string;
  readonly orderId: string;
  readonly kind: NotificationKindName;
  readonly message: string;
}

/** A stored (sent) notification. */
export interface NotificationRecord extends NotificationDraft {
  readonly id: string;
  /** Id of the event that caused it; unique. */
  readonly eventId: string;
  readonly sentAt: number;
}

/** An event that notifies a customer. */
export type NotifyingEvent = OrderConfirmed | OrderCancelled | PaymentRefunded;

/** An event that cannot be turned into a notification: dead-lettered at once, never retried. */
export class UnusableEventError extends UnprocessableEventError {
  override readonly name = "UnusableEventError";
}

/** Minor-unit digits of `currency` per ISO 4217 (2 for USD, 0 for KRW); 2 when unknown. */
function minorDigits(currency: string): number {
  try {
    return new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits ?? 2;
  } catch {
    return 2;
  }
}

/** Money for people: "USD 12.00", "KRW 5000". Exact for any int64 amount. */
export function formatMoney(amountMinor: bigint, currency: string): string {
  const digits = minorDigits(currency);
  const sign = amountMinor < 0n ? "-" : "";
  const abs = amountMinor < 0n ? -amountMinor : amountMinor;
  if (digits === 0) return `${currency} ${sign}${abs}`;
  const unit = 10n ** BigInt(digits);
  return `${currency} ${sign}${abs / unit}.${(abs % unit).toString().padStart(digits, "0")}`;
}

function money(m: { amountMinor: bigint; currencyCode: string } | undefined): string | undefined {
  if (!m || m.currencyCode === "") return undefined;
  if (m.amountMinor < 0n) throw new UnusableEventError(`amount ${m.amountMinor} is negative`);
  if (!CURRENCY_CODE.test(m.currencyCode))
    throw new UnusableEventError(`currency ${JSON.stringify(m.currencyCode.slice(0, 20))} is not one`);
  return formatMoney(m.amountMinor, m.currencyCode);
}

/**
 * A reason as the end of a sentence: at most MAX_EVENT_TEXT long, trimmed, without its own final
 * period. Cut first, and no regular expression over the whole: `/\.+$/` backtracks quadratically on
 * a long run of dots that does not end the text (a forged 900 KB one would hold the process minutes).
 */
function reason(r: string): string {
  const text = clipText(r, MAX_EVENT_TEXT).trim();
  let end = text.length;
  while (end > 0 && text[end - 1] === ".") end--;
  return text.slice(0, end);
}

/**
 * The notification an event asks for. Throws {@link UnusableEventError}
 * when the event names no customer or no order (nobody could be told), or
 * what no service sends: an order id over 128 characters, a customer no
 * caller can be, a negative amount or an odd currency.
 */
export function notificationFor(event: NotifyingEvent): NotificationDraft {
  const orderId = event.meta?.orderId ?? "";
  if (orderId === "") throw new UnusableEventError(`${event.$typeName} carries no order id`);
  if (orderId.length > 128) throw new UnusableEventError(`${event.$typeName}: order id over 128 characters`);
  if (event.customerId === "") throw new UnusableEventError(`${event.$typeName} of order ${orderId} names no customer`);
  if (!SUBJECT.test(event.customerId)) {
    throw new UnusableEventError(`${event.$typeName} of order ${orderId} names no customer anyone can be`);
  }
  const base = { customerId: event.customerId, orderId };
  switch (event.$typeName) {
    case "shopmesh.order.v1.OrderConfirmed": {
      const total = money(event.total);
      return {
        ...base,
        kind: "ORDER_CONFIRMED",
        message: total
          ? `Your order ${orderId} is confirmed; ${total} was charged.`
          : `Your order ${orderId} is confirmed.`,
      };
    }
    case "shopmesh.order.v1.OrderCancelled": {
      const why = reason(event.reason);
      return {
        ...base,
        kind: "ORDER_CANCELLED",
        message: why ? `Your order ${orderId} was cancelled: ${why}.` : `Your order ${orderId} was cancelled.`,
      };
    }
    case "shopmesh.payment.v1.PaymentRefunded": {
      const amount = money(event.amount);
      return {
        ...base,
        kind: "PAYMENT_REFUNDED",
        message: amount
          ? `${amount} was refunded for your order ${orderId}.`
          : `Your payment for order ${orderId} was refunded.`,
      };
    }
  }
}

/** A validated ListNotifications request. */
export interface ListQuery {
  /** "" for every order. */
  readonly orderId: string;
}

/** Validates the filter of a ListNotifications request; field names follow the proto. */
export function validateListFilter(req: { orderId: string }): ListQuery {
  if (req.orderId !== "") requireId(req.orderId, "order_id");
  return { orderId: req.orderId };
}
