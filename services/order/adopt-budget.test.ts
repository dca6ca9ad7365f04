/**
 * A saga adopted while its database answers slowly (a failover: every adopted saga's loop reads its
 * step log at once, through a pool of a few connections) keeps its step's whole budget. The
 * adopter converts the log's times to its own clock by the shared clock's lead over its own; read
 * before the log and compared with the shared clock read after it, the lead took in the read's
 * wait, and the step's budget ran short by it: a saga was compensated within a passing outage.
 * Real store, SQLite or PostgreSQL per the run.
 */
import { Metadata } from "@grpc/grpc-js";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Code, RpcError } from "../../platform/errors.js";
import type { Client } from "../../platform/grpc-client.js";
import { silentLogger } from "../../platform/log.js";
import { TestDatabases } from "../../test/db.js";
import { tempDir } from "../../test/fixtures.js";
import { SagaOrchestrator } from "./saga.js";
import { OrderStore } from "./store.js";

const BUDGET_MS = 7_500;
/** How long the adopter's read of the step log waits (less than the budget). */
const SLOW_READ_MS = 5_000;
const dir = tempDir();
let store: OrderStore;
beforeAll(async () => {
  store = await OrderStore.open(await new TestDatabases(dir.path).location("order"));
});
afterAll(async () => {
  await store?.close();
  dir[Symbol.dispose]();
});

let reserveCalls = 0;

/** An orchestrator for `owner` whose inventory is down, retrying every 30 s within a 7.5 s budget. */
function withInventoryDown(owner: string): SagaOrchestrator {
  const inventory = {
    reserveStock: async () => {
      reserveCalls++;
      throw new RpcError(Code.UNAVAILABLE, "down", new Metadata());
    },
    releaseStock: async () => ({}),
  } as unknown as Client<never>;
  return new SagaOrchestrator({
    store,
    inventory,
    payment: {} as Client<never>,
    log: silentLogger(),
    leasing: { owner, ms: 60_000, adoptAllAtStart: false },
    timing: { stepBudgetMs: BUDGET_MS, retryBaseMs: 30_000, retryMaxMs: 30_000 },
  });
}

it("a saga adopted through a slow read of its step log retries its step until the budget has passed in fact", async () => {
  const a = withInventoryDown("a");
  const placed = await store.place(
    {
      customerId: "c",
      key: "adopt-slow",
      fingerprint: "f",
      items: [{ productId: "p", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode: "ORCHESTRATION",
    },
    a.lease,
    (o, fence, tx) => a.begin(o, fence, tx),
  );
  if (placed.kind !== "created") throw new Error(`not placed: ${placed.kind}`);
  const id = placed.order.id;
  await expect.poll(() => reserveCalls, { timeout: 5_000 }).toBe(1);
  // The replica that placed it stops; another adopts it, its read of the step log slow.
  await a.stop();
  const steps = store.steps.bind(store);
  store.steps = async (orderId) => {
    await new Promise((r) => setTimeout(r, SLOW_READ_MS));
    return steps(orderId);
  };
  const b = withInventoryDown("b");
  try {
    await b.start();
    await expect.poll(() => reserveCalls, { timeout: SLOW_READ_MS + 5_000 }).toBeGreaterThanOrEqual(2);
    // Its second attempt failed well within the budget: it waits to retry, the order still placed.
    await new Promise((r) => setTimeout(r, 500));
    const o = await store.get(id);
    expect([o?.status, o?.stock, o?.reason]).toEqual(["PENDING", "attempted", ""]);
  } finally {
    store.steps = steps;
    await b.stop();
  }
}, 30_000);
