/**
 * A saga loop hears a stop or a wake that comes while no backoff wait runs — during a participant
 * call, or while the loop writes the call's outcome: it heard only one that came during a wait, so
 * a stop (a graceful shutdown giving its leases back) and a customer's cancel each waited out the
 * whole backoff (here 4 s).
 */
import { Metadata } from "@grpc/grpc-js";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Client, Code, RpcError, silentLogger } from "../../platform/index.js";
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

it("a stop during a retry's write ends the loop at once, not after the backoff", async () => {
  const inventory = {
    reserveStock: async () => {
      throw new RpcError(Code.UNAVAILABLE, "down", new Metadata());
    },
  } as unknown as Client<never>;
  const saga = new SagaOrchestrator({
    store,
    inventory,
    payment: {} as Client<never>,
    log: silentLogger(),
    leasing: { owner: "r1", ms: 60_000, adoptAllAtStart: true },
    timing: { stepBudgetMs: 60_000, retryBaseMs: 4_000, retryMaxMs: 4_000 },
  });
  let stopping: Promise<void> | undefined;
  let stoppedAt = 0;
  const apply = store.apply.bind(store);
  store.apply = async (id, t, opts) => {
    if (t.log.status === "FAILED" && !stopping) {
      // The stop (SIGTERM) arrives while the FAILED entry is being written (a busy database).
      stoppedAt = Date.now();
      stopping = saga.stop();
      await new Promise((r) => setTimeout(r, 50));
    }
    return apply(id, t, opts);
  };
  await saga.start();
  const placed = await store.place(
    {
      customerId: "c",
      key: "k1",
      fingerprint: "f",
      items: [{ productId: "p", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode: "ORCHESTRATION",
    },
    saga.lease,
    (o, fence, tx) => saga.begin(o, fence, tx),
  );
  expect(placed.kind).toBe("created");
  while (!stopping) await new Promise((r) => setTimeout(r, 10));
  await stopping;
  const took = Date.now() - stoppedAt;
  expect(took).toBeLessThan(1_000);
}, 20_000);

it("a cancel (a wake) during a retry's write is acted on at once, not after the backoff", async () => {
  const inventory = {
    reserveStock: async () => {
      throw new RpcError(Code.UNAVAILABLE, "down", new Metadata());
    },
    releaseStock: async () => ({}),
  } as unknown as Client<never>;
  const saga = new SagaOrchestrator({
    store,
    inventory,
    payment: {} as Client<never>,
    log: silentLogger(),
    leasing: { owner: "r2", ms: 60_000, adoptAllAtStart: false },
    timing: { stepBudgetMs: 60_000, retryBaseMs: 4_000, retryMaxMs: 4_000 },
  });
  let cancelledAt = 0;
  let orderId = "";
  const apply = store.apply.bind(store);
  store.apply = async (id, t, opts) => {
    if (id === orderId && t.log.status === "FAILED" && !cancelledAt) {
      // CancelOrder on this replica commits and wakes the saga (api.ts: afterCommit -> saga.wake) during this write.
      cancelledAt = Date.now();
      await store.requestCancel(id, "changed my mind");
      saga.wake(id);
    }
    return apply(id, t, opts);
  };
  await saga.start();
  const placed = await store.place(
    {
      customerId: "c",
      key: "k2",
      fingerprint: "f",
      items: [{ productId: "p", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode: "ORCHESTRATION",
    },
    saga.lease,
    async (o, fence, tx) => {
      orderId = o.id;
      return saga.begin(o, fence, tx);
    },
  );
  expect(placed.kind).toBe("created");
  while (!cancelledAt) await new Promise((r) => setTimeout(r, 10));
  let status = "";
  while (Date.now() - cancelledAt < 8_000) {
    status = (await store.get(orderId))?.status ?? "";
    if (status !== "PENDING") break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const took = Date.now() - cancelledAt;
  expect(status).not.toBe("PENDING");
  await saga.stop();
  expect(took).toBeLessThan(1_000);
}, 20_000);
