/**
 * The grpc.health.v1 service of a shopmesh server, and its readiness: "" answers for the process
 * (SERVING while it runs, until its stop: the liveness probe), the business services' names for
 * whether it can do their work now (the readiness probe) — not while its database is unreachable.
 * A peer down or NATS down leaves it ready: its breakers answer for the one, its outbox holds the
 * other's events.
 */

import { HealthImplementation } from "grpc-health-check";
import type { Logger } from "./log.js";
import type { Db } from "./sql.js";

/**
 * grpc.health.v1 for `names`, all SERVING. grpc-health-check keeps, for every service name ever
 * watched, the set of its watchers, emptied but never removed when they go: a client watching ever
 * new names (each up to the 4 MiB a message may hold) grew the heap without bound. Empty sets go now.
 */
export function healthService(names: readonly string[]): HealthImplementation {
  const health = new HealthImplementation(Object.fromEntries(names.map((n) => [n, "SERVING" as const])));
  const lib = health as unknown as {
    watchers?: Map<string, Set<unknown>>;
    removeWatcher?: (service: string, watcher: unknown) => void;
  };
  const { watchers, removeWatcher } = lib;
  if (!(watchers instanceof Map) || typeof removeWatcher !== "function") {
    throw new Error("grpc-health-check no longer keeps watchers and removeWatcher: forget ended watches another way");
  }
  lib.removeWatcher = (service, watcher) => {
    removeWatcher.call(health, service, watcher);
    if (watchers.get(service)?.size === 0) watchers.delete(service);
  };
  return health;
}

/** How often readiness asks the database, ms. */
export const READINESS_PING_MS = 1_000;

/**
 * A ping unanswered this long counts as the database unreachable, ms: a frozen server (SIGSTOP, a
 * host gone from the network) holds a statement without an error. The ping runs outside the
 * traffic's queue (Db.ping: on PostgreSQL a connection of its own, not the pool's), so a saturated
 * pool — load, not an outage — does not hold it back.
 */
export const READINESS_PING_WAIT_MS = 10_000;

/**
 * Asks `db` every `everyMs` whether it answers and tells `setReady` when that changes, saying so in
 * a line each way. A database down answered every call UNAVAILABLE while health said SERVING, and
 * the replica kept its share of the traffic. Stopped (before the server's own stop) it says nothing more.
 */
export function watchReadiness(
  db: Db,
  setReady: (ready: boolean) => void,
  log: Logger,
  { everyMs = READINESS_PING_MS, waitMs = READINESS_PING_WAIT_MS } = {},
): { stop(): void } {
  let ready = true;
  let stopped = false;
  let pinging = false;
  const report = (now: boolean, err?: unknown) => {
    pinging = false;
    if (stopped || now === ready) return;
    ready = now;
    setReady(now);
    if (now) log.info("database reachable again: ready");
    else log.warn({ err: (err as Error).message }, "database unreachable: not ready");
  };
  const ping = () => {
    // One ping at a time; each is answered, fails or gives up within `waitMs` (Db.ping), and one that
    // gives up drops its connection: a connection gone silent (a partition) holds its statement for as
    // long as the OS retransmits (~15 min), while new ones answer again. On PostgreSQL an answered ping
    // also cuts the pool's connections gone so (pg-pool.ts, cutSilent), failing when it cut any.
    if (pinging) return;
    pinging = true;
    db.ping(waitMs).then(
      () => report(true),
      (err: unknown) => report(false, err),
    );
  };
  const timer = setInterval(ping, everyMs).unref();
  return {
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
