/**
 * The times other replicas compare with their own "now" are written in the shared clock
 * (platform/shared-clock.ts), whatever the clock of the replica writing them: an order's created_at
 * and updated_at (the choreographed step budget runs from updated_at) and its step log's entries (an
 * adopting replica runs a step's budget from its first start). Written by a node whose clock was
 * twelve seconds ahead, they put the budget twelve seconds late on every other replica. Real store,
 * SQLite or PostgreSQL per the run: the database's clock on PostgreSQL, the store's own on SQLite.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { TEST_DB, TestDatabases } from "../../test/db.js";
import { tempDir } from "../../test/fixtures.js";
import { onReserved } from "./domain.js";
import { OrderStore } from "./store.js";

const AHEAD_MS = 12_000;
const dir = tempDir();
let store: OrderStore;

beforeAll(async () => {
  store = await OrderStore.open(await new TestDatabases(dir.path).location("order"), () => Date.now() + AHEAD_MS);
});
afterAll(async () => {
  await store?.close();
  dir[Symbol.dispose]();
});

/** Runs `write`, then expects each time it gives to lie within the shared clock's reading of its run, in epoch ms. */
async function inSharedClock(write: () => Promise<number[]>): Promise<void> {
  // The database runs on this machine: its clock is this test's, the store's is twelve seconds ahead.
  const ahead = TEST_DB === "postgres" ? 0 : AHEAD_MS;
  const before = Date.now() + ahead - 50;
  const times = await write();
  const after = Date.now() + ahead + 50;
  for (const t of times) {
    expect(typeof t).toBe("number");
    expect(t).toBeGreaterThanOrEqual(before);
    expect(t).toBeLessThanOrEqual(after);
  }
}

it("an order placed, changed and asked to cancel by a store whose clock is ahead is dated in the shared clock, as is its step log", async () => {
  let id = "";
  await inSharedClock(async () => {
    const placed = await store.place({
      customerId: "c",
      key: "ahead",
      fingerprint: "f",
      items: [{ productId: "p", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode: "CHOREOGRAPHY",
    });
    if (placed.kind !== "created") throw new Error(`not placed: ${placed.kind}`);
    id = placed.order.id;
    const stored = await store.get(id);
    return [placed.order.createdAt, placed.order.updatedAt, stored?.createdAt ?? 0, stored?.updatedAt ?? 0];
  });
  await inSharedClock(async () => {
    const r = await store.apply(id, onReserved({ reservationId: "res_1", totalMinor: 500, currency: "USD" }, 1));
    if (r.kind !== "applied") throw new Error(`not applied: ${r.kind}`);
    const steps = await store.steps(id);
    return [r.order.updatedAt, r.step.at, ...steps.map((s) => s.at), (await store.get(id))?.updatedAt ?? 0];
  });
  await inSharedClock(async () => {
    const r = await store.requestCancel(id, "changed my mind");
    if (r.kind !== "requested") throw new Error(`not requested: ${r.kind}`);
    return [r.order.updatedAt, (await store.get(id))?.updatedAt ?? 0];
  });
  // How far the shared clock is ahead of a replica's (the budget converts by it): on SQLite the
  // store's clock is the one the times above are written in, whatever the caller's.
  const local = Date.now();
  const ahead = (await store.sharedNow()) - local;
  expect(Math.abs(ahead - (TEST_DB === "postgres" ? 0 : AHEAD_MS))).toBeLessThan(1_000);
});
