/**
 * The orchestrator's way back: the transitions it commits for decisions that need no call (a turn
 * to compensation, the cancel that ends it, and the confirmation it races), each with the guard
 * that keeps it from overtaking a change committed first; and what a transient failure leads to —
 * a forward step that keeps failing past its budget turns the saga to compensation, and a refund
 * that payment cannot take yet cancels the order with the refund pending instead of holding it open.
 */
import {
  type CallStep,
  type Decision,
  type OrderRecord,
  type OrderStatus,
  onCancelled,
  onCancelledRefundPending,
  onCompensate,
  onConfirmed,
  onForwardFailed,
  type Transition,
} from "./domain.js";
import { PARTICIPANT } from "./participants.js";

/**
 * A transition's guard: it applies only while the order is in `status` (and, `noCancel`, no cancel
 * was asked; `staleBefore`, it last changed before then, epoch ms) — checked on the locked row.
 */
export interface Guard {
  readonly status: OrderStatus;
  readonly noCancel?: boolean;
  readonly staleBefore?: number;
}

/** The transition (with its guard) that carries out a decision needing no call. */
export function transitionOf(
  o: OrderRecord,
  d: Extract<Decision, { kind: "confirm" | "compensate" | "cancel" }>,
): [Transition, Guard] {
  switch (d.kind) {
    case "compensate":
      return [onCompensate(d.reason), { status: "PENDING" }];
    case "confirm":
      // Guarded: a cancel that committed first wins, and the next decision compensates.
      return [onConfirmed(), { status: "PENDING", noCancel: true }];
    case "cancel":
      return [onCancelled(o.reason), { status: "COMPENSATING" }];
  }
}

/**
 * A forward step that has failed transiently since `since` (epoch ms) until `now` past `budgetMs`:
 * the transition that gives it up (the saga compensates next), or undefined while it may retry.
 * `neverSent`: this attempt never left the process, and the step had done nothing before it.
 */
export function givenUp(
  step: CallStep,
  failure: string,
  t: { since: number; now: number; budgetMs: number },
  attempt: number,
  neverSent: boolean,
): Transition | undefined {
  const forward = step === "reserve_stock" || step === "charge_payment";
  if (!forward || t.now - t.since < t.budgetMs) return undefined;
  return onForwardFailed(step, `${PARTICIPANT[step]} unavailable: ${failure}`, neverSent, attempt);
}

/**
 * While compensating, a refund payment cannot take yet: stock is already back (it goes first), so
 * the order is cancelled now with the refund pending, instead of held open for as long as payment
 * is out; the refund goes on being retried. Undefined when that does not apply.
 */
export function cancelledRefundPending(
  step: CallStep,
  o: OrderRecord,
  failure: string,
): [Transition, Guard] | undefined {
  if (step !== "refund_payment" || o.status !== "COMPENSATING") return undefined;
  return [onCancelledRefundPending(o.reason, failure), { status: "COMPENSATING" }];
}
