/**
 * Read-only probes of a service's database for tests' invariants (money,
 * notifications): SQL against its store, on either engine, so the stores
 * carry no methods only tests would call.
 */

import { sql } from "kysely";
import type { Db } from "../platform/sql.js";

/** CAPTURED payments of `orderId`: at most 1 once its saga has settled. */
export async function capturedPayments(payments: Db, orderId: string): Promise<number> {
  const r = await payments.one(
    sql<{ n: number }>`SELECT COUNT(*) AS n FROM payments WHERE order_id = ${orderId} AND status = 'CAPTURED'`,
  );
  return r?.n ?? 0;
}

/** Payment rows per status, zeros included (void tombstones count as DECLINED, as they are stored). */
export async function paymentsByStatus(payments: Db): Promise<Record<"CAPTURED" | "DECLINED" | "REFUNDED", number>> {
  const counts = { CAPTURED: 0, DECLINED: 0, REFUNDED: 0 };
  const rows = await payments.all(
    sql<{ status: keyof typeof counts; n: number }>`SELECT status, COUNT(*) AS n FROM payments GROUP BY status`,
  );
  for (const { status, n } of rows) counts[status] = n;
  return counts;
}

/** Whether event `eventId` caused a notification. */
export async function notifiedFor(notifications: Db, eventId: string): Promise<boolean> {
  return (await notifications.one(sql`SELECT 1 AS one FROM notifications WHERE event_id = ${eventId}`)) !== undefined;
}
