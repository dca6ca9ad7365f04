/**
 * Transition guards, checked on the locked order row (real store, SQLite or PostgreSQL per the run):
 * the choreographed step budget cancels an order only if it is still stale once locked, so an event
 * that made progress between the budget's read and its write keeps the order going; a step once
 * compensated stays so, whatever is heard of it later; and a confirmation does not overtake a cancel.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { TestDatabases } from "../../test/db.js";
import { tempDir } from "../../test/fixtures.js";
import { transitionOf } from "./compensation.js";
import { onCancelled, onCharged, onCompensate, onRefunded, onReleased, onReserved, refundPending } from "./domain.js";
import { OrderStore } from "./store.js";

const dir = tempDir();
let store: OrderStore;
const now = 1_000_000;

beforeAll(async () => {
  store = await OrderStore.open(await new TestDatabases(dir.path).location("order"), () => now);
});
afterAll(async () => {
  await store?.close();
  dir[Symbol.dispose]();
});

/** Places a choreographed order with idempotency key `key`; its id. */
async function choreographed(key: string): Promise<string> {
  const placed = await store.place({
    customerId: "c",
    key,
    fingerprint: "f",
    items: [{ productId: "p", quantity: 1 }],
    cardToken: "tok_visa",
    sagaMode: "CHOREOGRAPHY",
  });
  if (placed.kind !== "created") throw new Error(`not placed: ${placed.kind}`);
  return placed.order.id;
}

it("staleBefore: skipped once the order changed at or after it, applied while it is older", async () => {
  const id = await choreographed("guard-stale");
  const expire = (staleBefore: number) =>
    store.apply(id, onCompensate("budget"), { guard: { status: "PENDING", staleBefore } });
  // The budget read the order as stale, but it changed at `changed` (an event's progress): in the
  // clock updated_at is written in, this store's on SQLite, the database's on PostgreSQL.
  const changed = (await store.get(id))?.updatedAt ?? Number.NaN;
  expect((await expire(changed)).kind).toBe("skipped");
  expect((await store.get(id))?.status).toBe("PENDING");
  const r = await expire(changed + 10);
  expect(r.kind).toBe("applied");
  expect((await store.get(id))?.status).toBe("COMPENSATING");
});

it("a step's success heard after its compensation leaves it compensated, and the order settled", async () => {
  const id = await choreographed("guard-late");
  const reserved = onReserved({ reservationId: "res_1", totalMinor: 500, currency: "USD" }, 1);
  // A cancel while the charge was under way; the charge captured, and payment refunded it.
  for (const t of [reserved, onCompensate("cancelled"), onCancelled("cancelled")]) await store.apply(id, t);
  await store.apply(id, onReleased("reservation res_1 released", 1));
  await store.apply(id, onRefunded("payment pay_1 refunded", 1));
  // Heard now, as when the replica that took them committed after the one that took the undo.
  await store.apply(id, onCharged("pay_1", 1));
  await store.apply(id, reserved);
  const o = await store.get(id);
  expect(o).toMatchObject({ status: "CANCELLED", stock: "undone", payment: "undone", paymentId: "pay_1" });
  expect(refundPending(o as NonNullable<typeof o>)).toBe(false);
  expect((await store.steps(id)).slice(-2).map((s) => s.detail)).toEqual([
    "payment pay_1 captured (heard after its compensation)",
    "reservation res_1 (heard after its compensation)",
  ]);
});

it("a confirmation never overtakes a cancel committed first: skipped, and the order left to compensate", async () => {
  const id = await choreographed("guard-confirm");
  expect((await store.requestCancel(id, "changed my mind")).kind).toBe("requested");
  const o = await store.get(id);
  if (!o) throw new Error("order vanished");
  const [confirm, guard] = transitionOf(o, { kind: "confirm" });
  expect((await store.apply(id, confirm, { guard })).kind).toBe("skipped");
  expect((await store.get(id))?.status).toBe("PENDING");
});
