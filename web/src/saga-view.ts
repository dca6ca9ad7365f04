/**
 * The saga as the timeline shows it: the order's step log (one entry per
 * start, success, failure or compensation, oldest first) folded into one
 * row per step, in the order the steps first happened, with the steps still
 * to come while the order is in progress. Pure, so it is tested on its own.
 */
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { type Order, OrderStatus, type SagaStep, StepStatus } from "../../gen/shopmesh/order/v1/order_pb.js";

/** Where a step stands, as the timeline shows it. */
export type StepState = "waiting" | "running" | "retrying" | "succeeded" | "failed" | "compensated";

/** One step of the saga. */
export interface StepRow {
  /** The step log's name, e.g. "charge_payment". */
  readonly name: string;
  /** For people, e.g. "Charge payment". */
  readonly label: string;
  /** What it is for, for people. */
  readonly purpose: string;
  /** Compensations undo an earlier step; they read differently at a glance. */
  readonly compensation: boolean;
  readonly state: StepState;
  /** Highest attempt seen (0 while waiting). */
  readonly attempts: number;
  /** The latest non-empty detail: a reservation, a payment, a decline or failure reason. */
  readonly detail: string;
  /** When its latest entry happened. */
  readonly at: Timestamp | undefined;
  /** Every log entry of the step, oldest first. */
  readonly entries: readonly SagaStep[];
  /** The compensation that undid this forward step, once it has. */
  readonly undoneBy: string | undefined;
}

const STEPS: Readonly<Record<string, { label: string; purpose: string; compensation: boolean; undoes?: string }>> = {
  reserve_stock: { label: "Reserve stock", purpose: "inventory holds the units", compensation: false },
  charge_payment: { label: "Charge payment", purpose: "payment captures the total", compensation: false },
  confirm_order: { label: "Confirm order", purpose: "the order is final", compensation: false },
  refund_payment: {
    label: "Refund payment",
    purpose: "gives the money back, or voids the charge",
    compensation: true,
    undoes: "charge_payment",
  },
  release_stock: {
    label: "Release stock",
    purpose: "returns the held units",
    compensation: true,
    undoes: "reserve_stock",
  },
  cancel_order: { label: "Cancel order", purpose: "the order ends cancelled", compensation: true },
};

const FORWARD = ["reserve_stock", "charge_payment", "confirm_order"] as const;

/** How the saga ends the detail of a failure it will retry: "(will retry)", "(not sent; will retry)" (services/order/domain.ts onRetrying). */
const WILL_RETRY = /will retry\)$/;

function stateOf(last: SagaStep): StepState {
  switch (last.status) {
    case StepStatus.STARTED:
      return "running";
    case StepStatus.SUCCEEDED:
      return "succeeded";
    case StepStatus.COMPENSATED:
      return "compensated";
    case StepStatus.FAILED:
      return WILL_RETRY.test(last.detail) ? "retrying" : "failed";
    default:
      return "running";
  }
}

/** For people: "reserve_stock" → "Reserve stock" when the step is unknown to this page. */
function describe(name: string) {
  const known = STEPS[name];
  if (known) return known;
  const words = name.replace(/_/g, " ");
  return { label: words.charAt(0).toUpperCase() + words.slice(1), purpose: "", compensation: false };
}

/** The timeline rows of `order`. */
export function sagaRows(order: Order): StepRow[] {
  const byName = new Map<string, SagaStep[]>();
  for (const s of order.steps) {
    const list = byName.get(s.name);
    if (list) list.push(s);
    else byName.set(s.name, [s]);
  }
  const rows: StepRow[] = [];
  for (const [name, entries] of byName) {
    const last = entries[entries.length - 1] as SagaStep;
    const info = describe(name);
    const detail = [...entries].reverse().find((e) => e.detail !== "")?.detail ?? "";
    rows.push({
      name,
      label: info.label,
      purpose: info.purpose,
      compensation: info.compensation,
      state: stateOf(last),
      attempts: Math.max(...entries.map((e) => e.attempt), 1),
      detail,
      at: last.at,
      entries,
      undoneBy: undefined,
    });
  }
  // A forward step reads as undone once its compensation has run.
  for (const row of rows) {
    const undoes = STEPS[row.name]?.undoes;
    if (row.state !== "compensated" || !undoes) continue;
    const i = rows.findIndex((r) => r.name === undoes);
    const target = rows[i];
    if (target) rows[i] = { ...target, undoneBy: row.label };
  }
  // While the saga runs forward, the steps still to come are shown waiting.
  if (order.status === OrderStatus.PENDING) {
    for (const name of FORWARD) {
      if (byName.has(name)) continue;
      const info = describe(name);
      rows.push({
        name,
        label: info.label,
        purpose: info.purpose,
        compensation: false,
        state: "waiting",
        attempts: 0,
        detail: "",
        at: undefined,
        entries: [],
        undoneBy: undefined,
      });
    }
  }
  return rows;
}

/** True when any step of the saga is a compensation: the order is being (or was) undone. */
export function compensated(rows: readonly StepRow[]): boolean {
  return rows.some((r) => r.compensation);
}

/**
 * A cancelled order whose refund has not landed: payment could not be reached to give the money
 * back (or void the charge), and the saga keeps retrying (Order.refund_pending).
 */
export function refundPending(order: Order): boolean {
  return order.status === OrderStatus.CANCELLED && order.refundPending;
}

/** True when a cancel was asked for and the saga has not taken it yet (it does at its next step). */
export function cancelRequested(order: Order): boolean {
  return order.status === OrderStatus.PENDING && order.cancelRequested;
}

/** What the timeline leaves out of a long step log (the order message carries its first and latest entries), or "". */
export function omittedNote(order: Order): string {
  const n = order.stepsOmitted;
  if (n <= 0) return "";
  return `${n} log ${n === 1 ? "entry" : "entries"} between the first and the latest are not shown (a step retried for a long time).`;
}
