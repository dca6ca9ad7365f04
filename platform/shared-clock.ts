/**
 * The clock that times shared by replicas are written and compared in: saga leases, outbox claims,
 * an order's last change (the choreographed step budget).
 * One replica writes `lease_until`/`claimed_until` and another compares it with its own "now", so
 * both must read one clock. On PostgreSQL that is the database's (its statement's time): replicas
 * run on different nodes, and a node whose clock was off — two minutes ahead — wrote leases that,
 * once it died, the other replicas took for held until their clocks caught up, and took every live
 * replica's leases at each of its sweeps (test/hostile-scale.test.ts). On SQLite every process on a
 * file runs on one machine, with one clock: this process's, as the store was given it (tests set it).
 */
import { sql } from "kysely";
import type { Engine, Query } from "./sql.js";

const DATABASE_MS = sql<number>`(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT`;

/** Now, in epoch ms, as an SQL value: the database's clock on PostgreSQL, `local` on SQLite. */
export function sharedNow(engine: Engine, local: number): Query<number> {
  return engine === "postgres" ? DATABASE_MS : sql<number>`${local}`;
}
