/**
 * Transition guards, checked on the locked order row (real store, SQLite or PostgreSQL per the run):
 * the choreographed step budget cancels an order only if it is still stale once locked, so an event
 * that made progress between the budget's read and its write keeps the order going.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { TestDatabases } from "../../test/db.js";
import { tempDir } from "../../test/fixtures.js";
import { onCompensate } from "./domain.js";
import { OrderStore } from "./store.js";

const dir = tempDir();
let store: OrderStore;
let now = 1_000_000;

beforeAll(async () => {
  store = await OrderStore.open(await new TestDatabases(dir.path).location("order"), () => now);
});
afterAll(async () => {
  await store?.close();
  dir[Symbol.dispose]();
});

it("staleBefore: skipped once the order changed at or after it, applied while it is older", async () => {
  const placed = await store.place({
    customerId: "c",
    key: "guard-stale",
    fingerprint: "f",
    items: [{ productId: "p", quantity: 1 }],
    cardToken: "tok_visa",
    sagaMode: "CHOREOGRAPHY",
  });
  if (placed.kind !== "created") throw new Error(`not placed: ${placed.kind}`);
  const id = placed.order.id;
  const expire = (staleBefore: number) =>
    store.apply(id, onCompensate("budget"), { guard: { status: "PENDING", staleBefore } });
  // The budget read the order as stale, but it changed at `now` (an event's progress).
  expect((await expire(now)).kind).toBe("skipped");
  expect((await store.get(id))?.status).toBe("PENDING");
  now += 10;
  const r = await expire(now);
  expect(r.kind).toBe("applied");
  expect((await store.get(id))?.status).toBe("COMPENSATING");
});
