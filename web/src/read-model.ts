/**
 * The history read model beside the order: whether its entry has caught up
 * with the order, and by how much it trails. The read model is built from
 * events (CQRS), so it lags the order by design; the page shows the lag
 * rather than hiding it. Pure, so it is tested on its own.
 */
import type { OrderHistoryEntry } from "../../gen/shopmesh/history/v1/history_pb.js";
import type { Order } from "../../gen/shopmesh/order/v1/order_pb.js";
import { epochMs } from "./format.js";

/** How the read model's entry stands against the order. */
export interface ReadModelState {
  /** "absent": no entry yet; "behind": its status is not the order's; "in-step": it is. */
  readonly state: "absent" | "behind" | "in-step";
  /**
   * The order's last change minus the entry's last applied event, in ms
   * (≥ 0 while behind: how old the read model's view is); undefined when absent.
   */
  readonly lagMs: number | undefined;
}

/** Compares `entry` (maybe not there yet) with `order`. */
export function readModelState(order: Order, entry: OrderHistoryEntry | undefined): ReadModelState {
  if (!entry) return { state: "absent", lagMs: undefined };
  const updated = epochMs(order.updatedAt);
  const applied = epochMs(entry.lastEventAt);
  const lagMs = updated !== undefined && applied !== undefined ? Math.max(0, updated - applied) : undefined;
  return { state: entry.status === order.status ? "in-step" : "behind", lagMs };
}
