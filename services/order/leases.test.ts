/**
 * Saga leases (real store, SQLite or PostgreSQL per the run): a replica's graceful stop gives its
 * leases back, including those a lease sweep running at that moment claims; a renewal never
 * shortens a lease; a sweep takes no live lease and a replica renews only its own; and a write
 * under a replica's own earlier lease is fenced by the token.
 */

import { sql } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Client } from "../../platform/grpc-client.js";
import { silentLogger } from "../../platform/log.js";
import { TestDatabases } from "../../test/db.js";
import { tempDir } from "../../test/fixtures.js";
import { onCompensate } from "./domain.js";
import { SagaOrchestrator } from "./saga.js";
import { OrderStore } from "./store.js";

const dir = tempDir();
let store: OrderStore;

beforeAll(async () => {
  store = await OrderStore.open(await new TestDatabases(dir.path).location("order"));
});
afterAll(async () => {
  await store?.close();
  dir[Symbol.dispose]();
});

/** An orchestrated order placed under `owner`'s lease for `ms`, and a reader of its lease columns. */
async function leased(key: string, owner: string, ms: number) {
  const placed = await store.place(
    {
      customerId: "c",
      key,
      fingerprint: "f",
      items: [{ productId: "p", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode: "ORCHESTRATION",
    },
    { owner, ms },
  );
  if (placed.kind !== "created") throw new Error(`not placed: ${placed.kind}`);
  const id = placed.order.id;
  const lease = () =>
    store.db.one(sql<{ owner: string; lease_until: number }>`SELECT owner, lease_until FROM orders WHERE id = ${id}`);
  return { id, lease };
}

it("stop() waits for a running sweep, then gives back the sagas it claimed", async () => {
  const saga = new SagaOrchestrator({
    store,
    // Never called: a stopping orchestrator drives nothing it claims.
    inventory: {} as Client<never>,
    payment: {} as Client<never>,
    log: silentLogger(),
    leasing: { owner: "stopping-replica", ms: 150, adoptAllAtStart: false },
    timing: { stepBudgetMs: 1_000, retryBaseMs: 10, retryMaxMs: 100 },
  });
  expect(await saga.start()).toBe(0);
  // A saga whose owner died: its lease runs out at once, and the next sweep claims it.
  const orphan = await leased("orphan", "dead-replica", 1);
  // The sweep's claim takes a while (a busy database): stop() comes while it runs.
  const claim = store.claimSagas.bind(store);
  let claiming!: () => void;
  const inClaim = new Promise<void>((r) => (claiming = r));
  store.claimSagas = async (...args) => {
    claiming();
    await new Promise((r) => setTimeout(r, 300));
    return claim(...args);
  };
  await inClaim;
  await saga.stop();
  // Claimed by the sweep, then given back: any replica adopts it at once.
  expect(await orphan.lease()).toEqual({ owner: "stopping-replica", lease_until: 0 });
});

it("a renewal never shortens a lease: a slow sweep's renewal committing after a later one's", async () => {
  const order = await leased("renewed", "renewing-replica", 1_000);
  const leaseUntil = async () => (await order.lease())?.lease_until ?? 0;
  expect(await store.renewLeases("renewing-replica", [order.id], 60_000)).toBe(1);
  const renewed = await leaseUntil();
  expect(renewed).toBeGreaterThan(Date.now() + 50_000);
  // The older sweep's renewal, computed earlier, lands last.
  await store.renewLeases("renewing-replica", [order.id], 1_000);
  expect(await leaseUntil()).toBe(renewed);
});

it("a sweep claims no saga a live replica holds, and a replica renews only the leases it holds", async () => {
  const held = await leased("held-by-another", "live-replica", 30_000);
  const before = await held.lease();
  const claimed = await store.claimSagas("sweeping-replica", 60_000, "expired");
  expect(claimed.map((c) => c.id)).not.toContain(held.id);
  expect(await store.renewLeases("sweeping-replica", [held.id], 120_000)).toBe(0);
  expect(await held.lease()).toEqual(before);
});

it("a write under an older lease of the same replica is fenced: the token, not the owner's name, decides", async () => {
  // The replica's lease ran out (a long pause), and it claimed the saga again: a new fencing token.
  const order = await leased("reclaimed", "pausing-replica", 1);
  await new Promise((r) => setTimeout(r, 20));
  const claimed = (await store.claimSagas("pausing-replica", 60_000, "expired")).find((c) => c.id === order.id);
  expect(claimed?.fence).toBe(2);
  // A call begun under the first lease comes back now: its outcome is not written.
  const stale = await store.apply(order.id, onCompensate("late outcome"), {
    lease: { owner: "pausing-replica", fence: 1 },
  });
  expect(stale.kind).toBe("fenced");
  expect((await store.get(order.id))?.status).toBe("PENDING");
  const current = await store.apply(order.id, onCompensate("current outcome"), {
    lease: { owner: "pausing-replica", fence: 2 },
  });
  expect(current.kind).toBe("applied");
});
