/**
 * Saga leases in the order store. Several replicas share the orders: each orchestrated saga is
 * driven by the replica holding its lease (`owner` until `lease_until`), and every saga write
 * names the lease's fencing token (`fence`, raised by every new claim): a replica that was paused
 * or cut off past its lease writes nothing once another has claimed the order (store-writes.ts).
 */
import { type Db, sharedNow, sql } from "../../platform/index.js";
import { UNFINISHED } from "./schema.js";

/** A saga lease: which replica drives an order, and the fencing token every write of it carries. */
export interface Lease {
  readonly owner: string;
  readonly fence: number;
}

/**
 * Claims for `owner`, for `ms` from now (`now` on SQLite, the database's clock on PostgreSQL:
 * platform/shared-clock.ts), the lease of every unfinished orchestrated
 * saga that no live replica holds (its lease ran out or was given back) —
 * or of every one (`all`: only when no other process can hold any);
 * returns the claimed orders with their new fencing tokens. Orders another replica is claiming
 * or renewing at the same moment are passed over (they are not free, and waiting for them could
 * deadlock two claims).
 */
export function claimSagas(
  db: Db,
  now: number,
  owner: string,
  ms: number,
  scope: "expired" | "all",
): Promise<{ id: string; fence: number }[]> {
  const at = sharedNow(db.engine, now);
  return db.transaction((tx) =>
    tx.all(sql<{
      id: string;
      fence: number;
    }>`UPDATE orders SET owner = ${owner}, lease_until = ${at} + ${ms}, fence = fence + 1
      WHERE id IN (SELECT id FROM orders
                   WHERE ${UNFINISHED} AND saga_mode = 'ORCHESTRATION'
                     AND (lease_until < ${at} OR ${scope === "all" ? 1 : 0} = 1)
                   ORDER BY created_at LIMIT 1000 ${tx.skipLocked})
      RETURNING id, fence`),
  );
}

/** Extends to `ms` from now (as {@link claimSagas}) the leases `owner` still holds on the sagas `ids`; how many it extended. */
export async function renewLeases(
  db: Db,
  owner: string,
  ids: readonly string[],
  now: number,
  ms: number,
): Promise<number> {
  if (ids.length === 0) return 0;
  const among =
    db.engine === "postgres"
      ? sql`id = ANY(${[...ids]}::text[])`
      : sql`id IN (SELECT value FROM json_each(${JSON.stringify(ids)}))`;
  // Never earlier than it is: a slow renewal committing after a later one must not shorten the lease.
  const until = sql`${sharedNow(db.engine, now)} + ${ms}`;
  const later = db.engine === "postgres" ? sql`GREATEST(lease_until, ${until})` : sql`MAX(lease_until, ${until})`;
  return db.run(sql`UPDATE orders SET lease_until = ${later}
    WHERE owner = ${owner} AND ${among} AND ${UNFINISHED}`);
}

/** Gives back every lease `owner` holds (a graceful stop), so other replicas adopt those sagas at once. */
export function releaseLeases(db: Db, owner: string): Promise<number> {
  return db.run(sql`UPDATE orders SET lease_until = 0 WHERE owner = ${owner} AND ${UNFINISHED}`);
}
