/**
 * Order rules and the checkout saga as a pure state machine: given an
 * order's persisted state, {@link decide} names the one next action, and the
 * `on*` functions turn a step's outcome into the change to persist (a patch
 * plus a step-log entry). The orchestrator (saga.ts) does the I/O; nothing
 * here touches the network, the clock or the database.
 *
 * Forward: reserve_stock -> charge_payment -> confirm_order.
 * Compensation, for whatever may have happened: release_stock ->
 * refund_payment -> cancel_order. The two undos do not depend on each other,
 * so stock goes back first (it needs only inventory) and a payment outage
 * never holds it: when the refund (or the void of an uncertain charge) cannot
 * reach payment, the order is cancelled at once with its refund pending, and
 * the saga keeps retrying the refund until it lands (`refundPending`).
 */
import { status } from "@grpc/grpc-js";
import type { Line } from "../../contracts/lines.js";

/** Order lifecycle (mirrors shopmesh.order.v1.OrderStatus). */
export type OrderStatus = "PENDING" | "COMPENSATING" | "CONFIRMED" | "CANCELLED";
/** How the saga is driven (mirrors shopmesh.common.v1.SagaMode). */
export type SagaMode = "ORCHESTRATION" | "CHOREOGRAPHY";
/**
 * What a participant has done for the order, as far as the saga knows:
 * `attempted` means a request was sent and its outcome is unknown (a
 * timeout, a crash) — it may or may not have taken effect.
 */
export type Progress = "none" | "attempted" | "done" | "undone";

/** Saga step names, as they appear in the step log. */
export type StepName =
  | "reserve_stock"
  | "charge_payment"
  | "confirm_order"
  | "release_stock"
  | "refund_payment"
  | "cancel_order";
/** Step log outcome (mirrors shopmesh.order.v1.StepStatus). */
export type StepStatus = "STARTED" | "SUCCEEDED" | "FAILED" | "COMPENSATED";

/** One step-log entry. */
export interface StepLogEntry {
  readonly name: StepName;
  readonly status: StepStatus;
  readonly detail: string;
  readonly attempt: number;
}

/** An order with its saga state, as stored. */
export interface OrderRecord {
  readonly id: string;
  readonly customerId: string;
  readonly status: OrderStatus;
  readonly reason: string;
  readonly sagaMode: SagaMode;
  readonly items: readonly Line[];
  readonly cardToken: string;
  readonly totalMinor: number | null;
  readonly currency: string | null;
  readonly stock: Progress;
  readonly reservationId: string;
  readonly payment: Progress;
  readonly paymentId: string;
  /** Set (possibly to "") once the customer asked to cancel; null otherwise. */
  readonly cancelRequested: string | null;
  /** W3C traceparent of the request that placed the order ("" when untraced). */
  readonly traceparent: string;
  readonly createdAt: number;
  readonly updatedAt: number;
  /** Raised by every change a client can see: orders two states the way no clock on two hosts can. */
  readonly version: number;
}

/** The columns a saga transition may change. */
export type OrderPatch = Partial<
  Pick<
    OrderRecord,
    "status" | "reason" | "totalMinor" | "currency" | "stock" | "reservationId" | "payment" | "paymentId"
  >
>;

/** A change to persist atomically: a patch and the step-log entry explaining it. */
export interface Transition {
  readonly patch: OrderPatch;
  readonly log: StepLogEntry;
}

/** Steps that call a participant service. */
export type CallStep = "reserve_stock" | "charge_payment" | "release_stock" | "refund_payment";

/** The next thing the orchestrator must do for an order. */
export type Decision =
  | { readonly kind: "call"; readonly step: CallStep }
  | { readonly kind: "confirm" }
  | { readonly kind: "compensate"; readonly reason: string }
  | { readonly kind: "cancel" }
  | { readonly kind: "done" };

/** The statuses an order ends in. */
export const TERMINAL_STATUSES: readonly OrderStatus[] = ["CONFIRMED", "CANCELLED"];

/** Every saga mode, each order's one of them. */
export const SAGA_MODES: readonly SagaMode[] = ["ORCHESTRATION", "CHOREOGRAPHY"];

/** True for CONFIRMED and CANCELLED. */
function isTerminal(s: OrderStatus): boolean {
  return TERMINAL_STATUSES.includes(s);
}

/** A cancelled order whose payment may still be taken: its refund (or void) has not landed. */
export function refundPending(o: Pick<OrderRecord, "status" | "payment">): boolean {
  return o.status === "CANCELLED" && (o.payment === "done" || o.payment === "attempted");
}

/** Nothing more will happen to the order: terminal, with no refund pending. */
export function isSettled(o: Pick<OrderRecord, "status" | "payment">): boolean {
  return isTerminal(o.status) && !refundPending(o);
}

/** Decides the one next action for `o`. Pure; the same state always gives the same decision. */
export function decide(o: OrderRecord): Decision {
  switch (o.status) {
    case "CONFIRMED":
      return { kind: "done" };
    case "CANCELLED":
      return refundPending(o) ? { kind: "call", step: "refund_payment" } : { kind: "done" };
    case "PENDING":
      if (o.cancelRequested !== null) {
        return {
          kind: "compensate",
          reason: `cancelled by customer${o.cancelRequested ? `: ${o.cancelRequested}` : ""}`,
        };
      }
      if (o.stock !== "done") return { kind: "call", step: "reserve_stock" };
      if (o.payment !== "done") return { kind: "call", step: "charge_payment" };
      return { kind: "confirm" };
    case "COMPENSATING":
      // Stock first: it depends on nothing else. An `attempted` step may have taken effect, so it is undone too.
      if (o.stock === "done" || o.stock === "attempted") return { kind: "call", step: "release_stock" };
      if (o.payment === "done" || o.payment === "attempted") return { kind: "call", step: "refund_payment" };
      return { kind: "cancel" };
  }
}

/**
 * How a failed step call is handled: `definite` — the participant refused
 * and nothing happened (a business answer: retrying gives the same answer);
 * `transient` — the outcome is unknown or the participant is unreachable, so
 * the step is retried with the same idempotency key.
 */
export function failureKind(code: status): "definite" | "transient" {
  switch (code) {
    case status.INVALID_ARGUMENT:
    case status.NOT_FOUND:
    case status.ALREADY_EXISTS:
    case status.PERMISSION_DENIED:
    case status.FAILED_PRECONDITION:
    case status.OUT_OF_RANGE:
    case status.UNIMPLEMENTED:
    case status.UNAUTHENTICATED:
      return "definite";
    default:
      return "transient";
  }
}

/** A participant call is about to be sent: from now on a forward step's effect is possible. */
export function onStarted(o: OrderRecord, step: CallStep, attempt: number): Transition {
  const field = step === "reserve_stock" ? "stock" : step === "charge_payment" ? "payment" : undefined;
  const patch: OrderPatch = field && o[field] === "none" ? { [field]: "attempted" } : {};
  return { patch, log: { name: step, status: "STARTED", detail: "", attempt } };
}

/** Stock is held: remember the reservation and the priced total. */
export function onReserved(
  r: { reservationId: string; totalMinor: number; currency: string },
  attempt: number,
): Transition {
  return {
    patch: { stock: "done", reservationId: r.reservationId, totalMinor: r.totalMinor, currency: r.currency },
    log: { name: "reserve_stock", status: "SUCCEEDED", detail: `reservation ${r.reservationId}`, attempt },
  };
}

/** The payment was captured. */
export function onCharged(paymentId: string, attempt: number): Transition {
  return {
    patch: { payment: "done", paymentId },
    log: { name: "charge_payment", status: "SUCCEEDED", detail: `payment ${paymentId} captured`, attempt },
  };
}

/** The provider declined: nothing was taken; compensate what came before. */
export function onDeclined(paymentId: string, declineReason: string, attempt: number): Transition {
  return {
    patch: { payment: "none", paymentId, status: "COMPENSATING", reason: `payment declined: ${declineReason}` },
    log: { name: "charge_payment", status: "FAILED", detail: `declined: ${declineReason}`, attempt },
  };
}

/**
 * A forward step failed for good (a definite refusal, or the retry budget
 * ran out): compensate. After a definite refusal the step took no effect.
 */
export function onForwardFailed(
  step: "reserve_stock" | "charge_payment",
  reason: string,
  definite: boolean,
  attempt: number,
): Transition {
  // `definite`: refused for good, or never sent by a step that had no effect before.
  const undone: OrderPatch = definite ? { [step === "reserve_stock" ? "stock" : "payment"]: "none" } : {};
  return {
    patch: { status: "COMPENSATING", reason, ...undone },
    log: { name: step, status: "FAILED", detail: reason, attempt },
  };
}

/**
 * A transient failure that will be retried. `neverSent`: the attempt never left the process
 * (breaker open, bulkhead full, no instance), so when the step had taken no effect before this
 * attempt (`before` "none") it still has none — nothing to undo for it.
 */
export function onRetrying(
  step: StepName,
  detail: string,
  attempt: number,
  neverSent?: { readonly before: Progress },
): Transition {
  const field = step === "reserve_stock" ? "stock" : step === "charge_payment" ? "payment" : undefined;
  const patch: OrderPatch = neverSent?.before === "none" && field ? { [field]: "none" } : {};
  const why = neverSent ? `${detail} (not sent; will retry)` : `${detail} (will retry)`;
  return { patch, log: { name: step, status: "FAILED", detail: why, attempt } };
}

/** The customer's cancel (or a failure) turns the saga around. */
export function onCompensate(reason: string): Transition {
  return {
    patch: { status: "COMPENSATING", reason },
    log: { name: "cancel_order", status: "STARTED", detail: reason, attempt: 1 },
  };
}

/** Stock went back (or was never held). */
export function onReleased(detail: string, attempt: number): Transition {
  return { patch: { stock: "undone" }, log: { name: "release_stock", status: "COMPENSATED", detail, attempt } };
}

/** Money went back (or the charge key was voided). */
export function onRefunded(detail: string, attempt: number): Transition {
  return { patch: { payment: "undone" }, log: { name: "refund_payment", status: "COMPENSATED", detail, attempt } };
}

/**
 * `t` as it applies to `o`: a step once compensated stays compensated. Its forward outcome can be
 * heard after its compensation — in the choreography two replicas take an order's PaymentSucceeded
 * and PaymentRefunded (or StockReserved and StockReleased) in batches of their own and the later
 * one may commit first, and a handler's redelivery comes late — and set back to `done`, it left a
 * refund pending for ever (and the order unsettled) or a released reservation counted as held.
 * The rest of the patch (the payment's or reservation's id, the total) still applies, and the entry
 * is logged, marked as heard late.
 */
export function afterCompensation(o: Pick<OrderRecord, "stock" | "payment">, t: Transition): Transition {
  const late = (["stock", "payment"] as const).filter(
    (f) => o[f] === "undone" && (t.patch[f] ?? "undone") !== "undone",
  );
  if (late.length === 0) return t;
  const patch: { -readonly [K in keyof OrderPatch]: OrderPatch[K] } = { ...t.patch };
  for (const f of late) delete patch[f];
  return { patch, log: { ...t.log, detail: `${t.log.detail} (heard after its compensation)` } };
}

/** Everything held and paid: the order is confirmed. */
export function onConfirmed(): Transition {
  return {
    patch: { status: "CONFIRMED", reason: "" },
    log: { name: "confirm_order", status: "SUCCEEDED", detail: "", attempt: 1 },
  };
}

/** Compensation finished: the order is cancelled, keeping its reason. */
export function onCancelled(reason: string): Transition {
  return {
    patch: { status: "CANCELLED" },
    log: { name: "cancel_order", status: "SUCCEEDED", detail: reason, attempt: 1 },
  };
}

/**
 * Choreography: the order is cancelled before payment has answered for it. Payment may have captured
 * the charge already, or may still capture it from its StockReserved before it handles the
 * OrderCancelled (the streams are consumed apart), so the charge counts as `attempted` — its refund
 * pending — until payment refunds it (PaymentRefunded) or voids its key (PaymentFailed "voided").
 */
export function onCancelledBeforePayment(reason: string): Transition {
  return {
    patch: { status: "CANCELLED", payment: "attempted" },
    log: {
      name: "cancel_order",
      status: "SUCCEEDED",
      detail: `${reason} (refund pending: payment not heard yet)`,
      attempt: 1,
    },
  };
}

/**
 * Stock is back but payment cannot be reached to refund (or void) the charge: the order is
 * cancelled now, its refund pending, and the saga keeps retrying it (`decide` on CANCELLED).
 */
export function onCancelledRefundPending(reason: string, why: string): Transition {
  return {
    patch: { status: "CANCELLED" },
    log: { name: "cancel_order", status: "SUCCEEDED", detail: `${reason} (refund pending: ${why})`, attempt: 1 },
  };
}

/** Whether order `o` may still be cancelled by the customer. */
export function cancellable(o: OrderRecord): "yes" | "already-cancelling" | "no" {
  if (o.status === "PENDING") return o.cancelRequested === null ? "yes" : "already-cancelling";
  if (o.status === "COMPENSATING") return "already-cancelling";
  return "no";
}
