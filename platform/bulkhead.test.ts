/** The bulkhead alone: slots, the queue's order, refusals and callers that give up while they wait. */
import { BulkheadRejectedError, TaskCancelledError } from "cockatiel";
import { describe, expect, it } from "vitest";
import { Bulkhead } from "./bulkhead.js";

/** A call that runs until `finish()`; `started` says whether it got a slot. */
function gate() {
  let finish = () => {};
  const g = {
    started: false,
    finish: () => finish(),
    fn: () =>
      new Promise<string>((resolve) => {
        g.started = true;
        finish = () => resolve("done");
      }),
  };
  return g;
}

const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("Bulkhead", () => {
  it("runs `limit` calls at once, queues `queue` more in order, and refuses the rest at once, told", async () => {
    let refused = 0;
    const bh = new Bulkhead(2, 2, () => refused++);
    const calls = Array.from({ length: 4 }, gate);
    const results = calls.map((c) => bh.execute(c.fn));
    await settle();
    expect(calls.map((c) => c.started)).toEqual([true, true, false, false]);
    expect([bh.inFlight, bh.queued]).toEqual([2, 2]);
    await expect(bh.execute(gate().fn)).rejects.toBeInstanceOf(BulkheadRejectedError);
    expect(refused).toBe(1);

    calls[1]?.finish();
    await settle();
    expect(calls.map((c) => c.started)).toEqual([true, true, true, false]);
    for (const c of calls) c.finish();
    await settle();
    for (const c of calls) c.finish();
    expect(await Promise.all(results)).toEqual(["done", "done", "done", "done"]);
    expect([bh.inFlight, bh.queued]).toEqual([0, 0]);
  });

  it("a waiting call whose signal aborts leaves the queue at once, and the slot later freed goes to the next", async () => {
    const bh = new Bulkhead(1, 2);
    const [busy, gaveUp, behind] = [gate(), gate(), gate()];
    const first = bh.execute(busy.fn);
    const ac = new AbortController();
    const leaving = bh.execute(gaveUp.fn, ac.signal);
    const waiting = bh.execute(behind.fn);
    ac.abort();
    await expect(leaving).rejects.toBeInstanceOf(TaskCancelledError);
    expect([bh.inFlight, bh.queued]).toEqual([1, 1]);
    // Its place is free: a newcomer queues instead of being refused.
    const newcomer = gate();
    const last = bh.execute(newcomer.fn);
    expect(bh.queued).toBe(2);

    busy.finish();
    await first;
    await settle();
    expect([gaveUp.started, behind.started, newcomer.started]).toEqual([false, true, false]);
    behind.finish();
    await waiting;
    await settle();
    newcomer.finish();
    expect(await last).toBe("done");
  });

  it("a freed slot goes to the oldest waiting call, never to a call that arrives as it frees", async () => {
    const bh = new Bulkhead(1, 1);
    const [busy, queued, newcomer] = [gate(), gate(), gate()];
    const first = bh.execute(busy.fn);
    const second = bh.execute(queued.fn);
    busy.finish();
    await first;
    // The slot is the queued call's from the moment it was freed: a call now is queued, not run.
    const third = bh.execute(newcomer.fn);
    await settle();
    expect([queued.started, newcomer.started]).toEqual([true, false]);
    expect(bh.inFlight).toBe(1);
    queued.finish();
    await second;
    await settle();
    newcomer.finish();
    expect(await third).toBe("done");
  });

  it("a call whose signal already aborted is cancelled at once and takes nothing", async () => {
    const bh = new Bulkhead(1, 1);
    const ac = new AbortController();
    ac.abort();
    const never = gate();
    await expect(bh.execute(never.fn, ac.signal)).rejects.toBeInstanceOf(TaskCancelledError);
    expect([never.started, bh.inFlight, bh.queued]).toEqual([false, 0, 0]);
  });
});
