/**
 * The first events of one order applied on two history replicas at once (postgres project only: on
 * SQLite one writer holds the whole database). Neither sees the other's row before it commits, so
 * both insert it; the second insert must wait, then merge its event into the first's row — not fail
 * on the key, which breaks a consumer's whole batch into transactions of one event each.
 */
import { afterAll, beforeAll, expect, it } from "vitest";
import { lockWaits, TestDatabases } from "../../test/db.js";
import { until } from "../../test/events.js";
import { tempDir } from "../../test/fixtures.js";
import type { Fact } from "./domain.js";
import { HistoryStore } from "./store.js";

const dir = tempDir();
let a: HistoryStore;
let b: HistoryStore;

beforeAll(async () => {
  const location = await new TestDatabases(dir.path).location("history");
  a = await HistoryStore.open(location);
  b = await HistoryStore.open(location); // a second replica: its own pool
});
afterAll(async () => {
  await a?.close();
  await b?.close();
  dir[Symbol.dispose]();
});

it("two replicas' first events of one order: the second waits for the first's row and merges into it", async () => {
  const orderId = "ord-first-event-race";
  const placed: Fact = {
    eventId: "evt-placed",
    type: "shopmesh.order.v1.OrderPlaced",
    orderId,
    occurredAt: 1_000,
    customerId: "alice",
    items: [{ productId: "sku-1", quantity: 2 }],
    status: "PENDING",
  };
  const paid: Fact = {
    eventId: "evt-paid",
    type: "shopmesh.payment.v1.PaymentSucceeded",
    orderId,
    occurredAt: 1_001,
    paymentStatus: "CAPTURED",
  };
  let commit!: () => void;
  const held = new Promise<void>((r) => (commit = r));
  let inserted = false;
  const first = a.db.transaction(async (tx) => {
    await a.apply(placed, tx);
    inserted = true;
    await held; // the row is written, not committed
  });
  await until(
    () => inserted,
    (x) => x,
  );
  // As a consumer's batch runs: a conflict is not run again but breaks the batch up.
  const second = b.db.transaction((tx) => b.apply(paid, tx), { rerunOnConflict: false });
  await until(
    () => lockWaits(a.db),
    (n) => n === 1,
  );
  commit();
  await first;
  const merged = await second;
  expect(merged).toMatchObject({ customerId: "alice", status: "PENDING", paymentStatus: "CAPTURED" });
  expect(await a.all()).toEqual([merged]);
});
