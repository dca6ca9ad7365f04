/**
 * The orchestrator's saga loops while a participant is down (inventory answers UNAVAILABLE, so each
 * saga waits out a backoff between tries): a stop or a wake that comes while no wait runs — during
 * the call, or while the loop writes its outcome — is heard (it was heard only during a wait, so a
 * graceful stop and a customer's cancel each waited out the whole backoff, here 4 s), and a sweep
 * whose adoption fails still renews the leases of the sagas it drives. Its own writes wake nothing.
 */
import { Metadata } from "@grpc/grpc-js";
import { sql } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Code, RpcError } from "../../platform/errors.js";
import type { Client } from "../../platform/grpc-client.js";
import { silentLogger } from "../../platform/log.js";
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

/** Reservations tried, by every orchestrator here. */
let reserveCalls = 0;

/** An orchestrator for `owner` whose inventory is down (a release answers), retrying every 4 s. */
function withInventoryDown(owner: string, leaseMs = 60_000): SagaOrchestrator {
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
    leasing: { owner, ms: leaseMs, adoptAllAtStart: false },
    // A backoff of 15-30 s: "at once" below (under 5 s) is far from it even on a loaded machine.
    timing: { stepBudgetMs: 60_000, retryBaseMs: 30_000, retryMaxMs: 30_000 },
  });
}

/** Places an orchestrated order under `saga`'s lease, its saga driven by `saga`; its id. */
async function placeUnder(saga: SagaOrchestrator, key: string): Promise<string> {
  const placed = await store.place(
    {
      customerId: "c",
      key,
      fingerprint: "f",
      items: [{ productId: "p", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode: "ORCHESTRATION",
    },
    saga.lease,
    (o, fence, tx) => saga.begin(o, fence, tx),
  );
  if (placed.kind !== "created") throw new Error(`not placed: ${placed.kind}`);
  return placed.order.id;
}

/** Runs `then` (once) while the loop writes the FAILED entry of order `id()`'s retry: a busy database. */
function duringFailedWrite(id: () => string, then: () => Promise<void> | void): () => void {
  const apply = store.apply.bind(store);
  let done = false;
  store.apply = async (orderId, t, opts) => {
    if (!done && orderId === id() && t.log.status === "FAILED") {
      done = true;
      await then();
      await new Promise((r) => setTimeout(r, 50));
    }
    return apply(orderId, t, opts);
  };
  return () => {
    store.apply = apply;
  };
}

it("waits out its backoff between tries: its own writes, each a change of the order, do not wake it", async () => {
  const saga = withInventoryDown("r0");
  await saga.start();
  const before = reserveCalls;
  try {
    await placeUnder(saga, "k0");
    // Its first try, waited for (a loaded machine may start it late), then 1.5 s of its own writes.
    await expect.poll(() => reserveCalls - before, { timeout: 10_000 }).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 1_500));
    expect(reserveCalls - before).toBe(1);
  } finally {
    await saga.stop();
  }
});

it("a stop during a retry's write ends the loop at once, not after the backoff", async () => {
  const saga = withInventoryDown("r1");
  await saga.start();
  let id = "";
  let stopping: Promise<void> | undefined;
  let stoppedAt = 0;
  const restore = duringFailedWrite(
    () => id,
    () => {
      stoppedAt = Date.now();
      stopping = saga.stop(); // SIGTERM
    },
  );
  try {
    id = await placeUnder(saga, "k1");
    while (!stopping) await new Promise((r) => setTimeout(r, 10));
    await stopping;
    expect(Date.now() - stoppedAt).toBeLessThan(5_000);
  } finally {
    restore();
  }
}, 60_000);

it("a cancel (a wake) during a retry's write is acted on at once, not after the backoff", async () => {
  const saga = withInventoryDown("r2");
  await saga.start();
  let id = "";
  let cancelledAt = 0;
  // CancelOrder on this replica commits and wakes the saga (api.ts: afterCommit -> saga.wake).
  const restore = duringFailedWrite(
    () => id,
    async () => {
      cancelledAt = Date.now();
      await store.requestCancel(id, "changed my mind");
      saga.wake(id);
    },
  );
  try {
    id = await placeUnder(saga, "k2");
    while (!cancelledAt) await new Promise((r) => setTimeout(r, 10));
    let status = "";
    while (Date.now() - cancelledAt < 10_000) {
      status = (await store.get(id))?.status ?? "";
      if (status !== "PENDING") break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(status).not.toBe("PENDING");
    expect(Date.now() - cancelledAt).toBeLessThan(5_000);
  } finally {
    restore();
    await saga.stop();
  }
}, 60_000);

it("a sweep whose adoption fails still renews the leases of the sagas it drives", async () => {
  const saga = withInventoryDown("r3", 300);
  await saga.start();
  const id = await placeUnder(saga, "k3");
  const claim = store.claimSagas.bind(store);
  store.claimSagas = async () => {
    throw new Error("injected: the claim failed");
  };
  try {
    // Sweeps every third of the lease, every claim failing: one of them renews it, however late a
    // loaded machine runs them (it was read once, after three leases' length).
    const failingFrom = Date.now();
    const lease = () =>
      store.db.one(sql<{ owner: string; lease_until: number }>`SELECT owner, lease_until FROM orders WHERE id = ${id}`);
    // Renewed since the claims began failing: a lease left alone ended by failingFrom + 300. (Not
    // "after now": a renewal in flight on a paused machine would read as none.)
    await expect.poll(async () => (await lease())?.lease_until, { timeout: 10_000 }).toBeGreaterThan(failingFrom + 300);
    expect((await lease())?.owner).toBe("r3");
  } finally {
    store.claimSagas = claim;
    await saga.stop();
  }
});
