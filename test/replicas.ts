/**
 * What the scale-out suites (scale-out.test.ts, hostile-scale.test.ts) share: a replica's environment,
 * a client of the order replicas running, as a customer's app would hold one, and the count of orders
 * still in flight.
 */

import { sql } from "kysely";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { identityMetadata } from "../platform/identity.js";
import type { Logger } from "../platform/log.js";
import { DEFAULT_POLICY } from "../platform/policy-config.js";
import { createResilientClient, type ResilientClient } from "../platform/resilience.js";
import type { DbLocation } from "../platform/sql.js";
import { withDb } from "./db.js";

/** How long a saga lease lasts in the scale-out suites, ms: short, so a dead replica's sagas are adopted within the test. */
export const LEASE_MS = 1_500;

/**
 * The environment of a replica of service `name` on NATS at `natsUrl` and the database at `databaseUrl`
 * (`poolSize` connections): order replicas find their participants by registry and retry fast, with
 * a short lease and a step budget no test's outage reaches.
 */
export function replicaEnv(
  name: string,
  natsUrl: string,
  databaseUrl: string,
  poolSize: number,
): Record<string, string> {
  return {
    NATS_URL: natsUrl,
    DATABASE_URL: databaseUrl,
    DATABASE_POOL_SIZE: String(poolSize),
    METRICS_PORT: "0",
    LOG_LEVEL: "info",
    ...(name === "order"
      ? {
          INVENTORY_TARGET: "registry:///inventory",
          PAYMENT_TARGET: "registry:///payment",
          SAGA_LEASE_MS: String(LEASE_MS),
          SAGA_RETRY_BASE_MS: "50",
          SAGA_RETRY_MAX_MS: "500",
          SAGA_STEP_BUDGET_MS: "30000",
        }
      : {}),
  };
}

/**
 * A client of the order replicas at `addresses`: it retries on another replica. Its circuits are out of
 * the way (the servers are under test, not this client's manners under overload).
 */
export function orderReplicasClient(addresses: readonly string[], log: Logger): ResilientClient<typeof OrderService> {
  return createResilientClient(
    "order",
    OrderService,
    `ipv4:${addresses.join(",")}`,
    {
      ...DEFAULT_POLICY,
      retryMaxAttempts: 10,
      retryInitialDelayMs: 50,
      retryMaxDelayMs: 1_000,
      timeoutMs: 10_000,
      breakerConsecutiveFailures: 1_000_000,
      bulkheadLimit: 64,
      bulkheadQueue: 1_000,
    },
    log,
  );
}

/** A customer's call options. */
export const customer = (subject: string) => ({ metadata: identityMetadata({ subject, roles: ["customer"] }) });

/** The products the seed catalogue has plenty of. */
export const PRODUCTS = ["coffee-beans", "ceramic-mug", "paper-filters", "hand-grinder", "pour-over-kettle"];

/** How many orders in the order database at `order` are not yet CONFIRMED or CANCELLED. */
export const unfinishedOrders = (order: DbLocation) =>
  withDb(order, async (q) => {
    const r = await q.one(
      sql<{ n: number }>`SELECT COUNT(*) AS n FROM orders WHERE status IN ('PENDING', 'COMPENSATING')`,
    );
    return r?.n ?? 0;
  });
