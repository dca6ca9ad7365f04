/**
 * Read-only probes of a service's database for tests' invariants (money,
 * notifications): SQL against the file, so the stores carry no methods only
 * tests would call.
 */
import type { Db } from "../platform/index.js";

/** CAPTURED payments of `orderId`: at most 1 once its saga has settled. */
export function capturedPayments(payments: Db, orderId: string): number {
  return (
    payments
      .prepare<[string], { n: number }>("SELECT COUNT(*) AS n FROM payments WHERE order_id = ? AND status = 'CAPTURED'")
      .get(orderId)?.n ?? 0
  );
}

/** Payment rows per status, zeros included (void tombstones count as DECLINED, as they are stored). */
export function paymentsByStatus(payments: Db): Record<"CAPTURED" | "DECLINED" | "REFUNDED", number> {
  const counts = { CAPTURED: 0, DECLINED: 0, REFUNDED: 0 };
  for (const { status, n } of payments
    .prepare<[], { status: keyof typeof counts; n: number }>(
      "SELECT status, COUNT(*) AS n FROM payments GROUP BY status",
    )
    .all()) {
    counts[status] = n;
  }
  return counts;
}

/** Whether event `eventId` caused a notification. */
export function notifiedFor(notifications: Db, eventId: string): boolean {
  return (
    notifications
      .prepare<[string], { one: number }>("SELECT 1 AS one FROM notifications WHERE event_id = ?")
      .get(eventId) !== undefined
  );
}
