/**
 * How values read on the page: money in its currency, times, durations and
 * the enums' names for people. Pure (no DOM), so the tests can call it.
 */
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { BreakerState } from "../../gen/shopmesh/chaos/v1/chaos_pb.js";
import type { Money } from "../../gen/shopmesh/common/v1/common_pb.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import { NotificationKind } from "../../gen/shopmesh/notification/v1/notification_pb.js";
import { OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";

/** An amount of money: a Money message or any value of its shape. */
export type MoneyLike = Pick<Money, "currencyCode" | "amountMinor">;

/** `amount` in its currency, e.g. "$48.00"; "—" when unset. */
export function money(amount: MoneyLike | undefined): string {
  if (!amount?.currencyCode) return "—";
  const f = new Intl.NumberFormat("en-US", { style: "currency", currency: amount.currencyCode });
  const digits = f.resolvedOptions().maximumFractionDigits ?? 2;
  return f.format(Number(amount.amountMinor) / 10 ** digits);
}

/** `amount` times `n`, in the same currency. */
export function times(amount: MoneyLike | undefined, n: number): MoneyLike | undefined {
  return amount ? { currencyCode: amount.currencyCode, amountMinor: amount.amountMinor * BigInt(n) } : undefined;
}

/** Epoch ms of `ts`, or undefined. */
export function epochMs(ts: Timestamp | undefined): number | undefined {
  return ts ? Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6) : undefined;
}

/** A clock time with seconds and milliseconds, e.g. "14:03:27.412"; "—" when unset. */
export function clock(ts: Timestamp | number | undefined): string {
  const ms = typeof ts === "number" ? ts : epochMs(ts);
  if (ms === undefined) return "—";
  const d = new Date(ms);
  const pad = (n: number, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A date and time for lists, e.g. "Nov 30, 14:03". */
export function dateTime(ts: Timestamp | undefined): string {
  const ms = epochMs(ts);
  if (ms === undefined) return "—";
  return new Date(ms).toLocaleString("en-US", {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    hour12: false,
  });
}

/** A duration for people: "240 ms", "1.5 s", "2 min 5 s". */
export function duration(ms: number): string {
  const abs = Math.abs(ms);
  if (abs < 1000) return `${Math.round(ms)} ms`;
  if (abs < 60_000) return `${(ms / 1000).toFixed(abs < 10_000 ? 1 : 0)} s`;
  const m = Math.floor(abs / 60_000);
  return `${ms < 0 ? "-" : ""}${m} min ${Math.round((abs % 60_000) / 1000)} s`;
}

/** The order status for people, and its tone for the badge. */
export function orderStatus(s: OrderStatus): { label: string; tone: "ok" | "bad" | "busy" | "warn" } {
  switch (s) {
    case OrderStatus.CONFIRMED:
      return { label: "Confirmed", tone: "ok" };
    case OrderStatus.CANCELLED:
      return { label: "Cancelled", tone: "bad" };
    case OrderStatus.COMPENSATING:
      return { label: "Compensating", tone: "warn" };
    case OrderStatus.PENDING:
      return { label: "Pending", tone: "busy" };
    default:
      return { label: "Unknown", tone: "warn" };
  }
}

/** True for CONFIRMED and CANCELLED: nothing more will happen to the order. */
export function isFinal(s: OrderStatus): boolean {
  return s === OrderStatus.CONFIRMED || s === OrderStatus.CANCELLED;
}

/** The saga mode for people. */
export function sagaMode(m: SagaMode): string {
  switch (m) {
    case SagaMode.ORCHESTRATION:
      return "Orchestration";
    case SagaMode.CHOREOGRAPHY:
      return "Choreography";
    default:
      return "Service default";
  }
}

/** The payment status for people. */
export function paymentStatus(s: PaymentStatus): string {
  switch (s) {
    case PaymentStatus.CAPTURED:
      return "Captured";
    case PaymentStatus.DECLINED:
      return "Declined";
    case PaymentStatus.REFUNDED:
      return "Refunded";
    default:
      return "No charge yet";
  }
}

/** The notification kind for people. */
export function notificationKind(k: NotificationKind): string {
  switch (k) {
    case NotificationKind.ORDER_CONFIRMED:
      return "Order confirmed";
    case NotificationKind.ORDER_CANCELLED:
      return "Order cancelled";
    case NotificationKind.PAYMENT_REFUNDED:
      return "Payment refunded";
    case NotificationKind.UNSPECIFIED:
      return "Notice";
    default:
      // Every kind of this version is named above (a new one fails to compile here); a newer server's too.
      k satisfies never;
      return "Notice";
  }
}

/** The breaker state as the panel shows it ("closed", "open", "half-open", "isolated", "unknown"). */
export function breaker(s: BreakerState | undefined): "closed" | "open" | "half-open" | "isolated" | "unknown" {
  switch (s) {
    case BreakerState.CLOSED:
      return "closed";
    case BreakerState.OPEN:
      return "open";
    case BreakerState.HALF_OPEN:
      return "half-open";
    case BreakerState.ISOLATED:
      return "isolated";
    default:
      return "unknown";
  }
}

/** A short id for tight spaces: the prefix and the last characters. */
export function shortId(id: string): string {
  return id.length > 16 ? `${id.slice(0, 4)}…${id.slice(-8)}` : id;
}
