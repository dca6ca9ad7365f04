/**
 * A demanding review of 2026-12-05's changes (041436e..27ec93a): migrations in one transaction, the
 * stall clock (platform/stall.ts) the circuits and step budgets leave frozen time out with, payment
 * forgetting a choreographed payer, run.children. Each `describe` is one finding; a test that found a
 * defect says so. (The migrations' finding is in platform/sql.test.ts, beside the others.)
 */
import net from "node:net";
import { describe, expect, it } from "vitest";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { Code, createChannel, createResilientClient, DEFAULT_POLICY, silentLogger } from "../platform/index.js";

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
