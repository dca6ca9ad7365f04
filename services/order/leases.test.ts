/**
 * Saga leases (real store, SQLite or PostgreSQL per the run): a replica's graceful stop gives its
 * leases back, including those a lease sweep running at that moment claims; a renewal never
 * shortens a lease.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Client, silentLogger, sql } from "../../platform/index.js";
import { TestDatabases } from "../../test/db.js";
import { tempDir } from "../../test/fixtures.js";
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
