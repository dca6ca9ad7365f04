/**
 * A demanding review of 2026-12-05's changes (041436e..27ec93a): migrations in one transaction, the
 * stall clock (platform/stall.ts) the circuits and step budgets leave frozen time out with, payment
 * forgetting a choreographed payer, run.children. Each `describe` is one finding; a test that found a
 * defect says so. (The migrations' finding is in platform/sql.test.ts, beside the others.)
 */
import net from "node:net";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { Code } from "../platform/errors.js";
import { createChannel } from "../platform/grpc-client.js";
import { silentLogger } from "../platform/log.js";
import { DEFAULT_POLICY } from "../platform/policy-config.js";
import { createResilientClient } from "../platform/resilience.js";
import { PaymentStore } from "../services/payment/store.js";
import { startPostgres } from "./postgres.js";

/** Busy for `ms` on this thread: the event loop stands still, as in a GC spiral or a paused VM. */
const standStill = (ms: number) => {
  const until = Date.now() + ms;
  while (Date.now() < until) {}
};

/** A downstream that takes connections and never answers, and a resilient client of it (3 failures open it). */
async function deadDownstream(timeoutMs: number) {
  const sockets: net.Socket[] = [];
  const dead = net.createServer((s) => sockets.push(s));
  await new Promise<void>((r) => dead.listen(0, "127.0.0.1", r));
  const channel = createChannel(`127.0.0.1:${(dead.address() as net.AddressInfo).port}`);
  const client = createResilientClient(
    "inventory",
    InventoryService,
    channel,
    {
      ...DEFAULT_POLICY,
      timeoutMs,
      retryMaxAttempts: 1,
      breakerConsecutiveFailures: 3,
      breakerFailureRatio: 0,
      breakerHalfOpenAfterMs: 60_000,
    },
    silentLogger(),
  );
  const call = () =>
    client.getProduct({ productId: "coffee-beans" }).then(
      () => "answered",
      (err: { code?: Code }) => err.code,
    );
  return {
    client,
    call,
    [Symbol.dispose]() {
      channel.close();
      dead.close();
      for (const s of sockets) s.destroy();
    },
  };
}

const TIMED_OUT = [Code.DEADLINE_EXCEEDED, Code.DEADLINE_EXCEEDED, Code.DEADLINE_EXCEEDED];

describe("calls sent just after this process stood still, before the stall clock's timer ran", () => {
  // Found a defect: a stall was dated to when the clock's 250 ms timer next ran, not to when it ended.
  // The work queued behind a stall — requests that came meanwhile, a paused VM's ready sockets, the
  // rest of a blocked loop's callbacks — runs before that timer, and each attempt it sent was taken
  // for one the stall had outlived: their timeouts, a dead downstream's, counted toward no circuit.
  it("time out against a dead downstream and open its circuit", async () => {
    using dead = await deadDownstream(500);
    await new Promise((r) => setTimeout(r, 300));
    const calls = await new Promise<Promise<unknown>[]>((resolve) => {
      let sent: Promise<unknown>[] = [];
      // One turn of the loop: the stall, then the calls queued behind it; the next immediate runs
      // after the calls' own promise jobs, before the next turn's timers (the stall clock's).
      setImmediate(() => {
        standStill(1_500);
        sent = Array.from({ length: 3 }, dead.call);
      });
      setImmediate(() => {
        standStill(20);
        resolve(sent);
      });
    });
    expect(await Promise.all(calls)).toEqual(TIMED_OUT);
    expect(dead.client.state().breaker).toBe("open");
  }, 30_000);
});

describe("a dead downstream's timeouts, this process having stalled a while before each", () => {
  // Found a defect: any stall since the attempt was sent made its timeout no failure of the
  // downstream's — even one that ended long before the timeout, when an answer waiting in the socket
  // would have been read. A process stalling a second now and then (a GC spiral, a blocked loop) never
  // opened a dead downstream's circuit: every call waited out its timeouts instead of failing fast.
  it("open its circuit: the stall ended seconds before they timed out, no answer was left unread", async () => {
    using dead = await deadDownstream(4_000);
    const calls = Array.from({ length: 3 }, dead.call);
    await new Promise((r) => setTimeout(r, 100));
    standStill(1_200); // then nearly 3 s of running before the attempts' timers fire
    expect(await Promise.all(calls)).toEqual(TIMED_OUT);
    expect(dead.client.state().breaker).toBe("open");
  }, 30_000);
});

describe("payment's OrderPlaced and OrderCancelled of one order handled at once by two replicas (PostgreSQL)", () => {
  // Found a defect: the two are one durable's (payment-order), and two replicas pull its messages
  // side by side. OrderPlaced's insert of the payer checked for the charge key's payment before
  // OrderCancelled's void had committed, and OrderCancelled's delete could not see the uncommitted
  // payer: both committed, and the payer's row (with its card token) stayed for ever — when no
  // StockReserved follows (out of stock), nothing reads or forgets it again.
  it("leaves no payer behind, whichever commits first", async () => {
    await using pg = await startPostgres();
    const url = await pg.createDatabase("review");
    const store = await PaymentStore.open({ engine: "postgres", url, schema: "payment", poolSize: 4 });
    try {
      const cases = [
        ["OrderCancelled's void first", "ord_review_a"],
        ["OrderPlaced's payer first", "ord_review_b"],
      ] as const;
      for (const [first, orderId] of cases) {
        const chargeKey = `${orderId}:charge_payment`;
        let go!: () => void;
        const held = new Promise<void>((r) => {
          go = r;
        });
        let reached!: () => void;
        const inside = new Promise<void>((r) => {
          reached = r;
        });
        // The first one's handler has written, not committed; the other runs meanwhile.
        const cancelled = (hold: boolean) =>
          store.db.transaction(async (tx) => {
            await store.refund({ by: "key", chargeIdempotencyKey: chargeKey }, "cancelled", SagaMode.CHOREOGRAPHY, tx);
            await store.forgetChoreographyOrder(tx, orderId);
            if (hold) {
              reached();
              await held;
            }
          });
        const placed = (hold: boolean) =>
          store.db.transaction(async (tx) => {
            await store.rememberChoreographyOrder(tx, orderId, "customer", "tok_visa", chargeKey);
            if (hold) {
              reached();
              await held;
            }
          });
        const one = first === "OrderCancelled's void first" ? cancelled(true) : placed(true);
        await inside;
        const other = first === "OrderCancelled's void first" ? placed(false) : cancelled(false);
        await new Promise((r) => setTimeout(r, 200)); // the other ran to its commit, or waits on the first
        go();
        await Promise.all([one, other]);
        const left = await store.db.one(
          sql<{ n: number }>`SELECT COUNT(*) AS n FROM choreography_orders WHERE order_id = ${orderId}`,
        );
        expect({ first, left: Number(left?.n) }).toEqual({ first, left: 0 });
      }
    } finally {
      await store.close();
    }
  }, 60_000);
});
