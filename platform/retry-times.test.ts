/** A consumer's retry times: a copy of an event that comes before its backoff ran out waits the rest. */
import { describe, expect, it } from "vitest";
import { latestCopies, RetryTimes } from "./retry-times.js";

/** A delivered copy of the event at stream sequence `seq`, recording its naks. */
const copy = (seq: number) => {
  const naks: number[] = [];
  return { seq, naks, nak: (ms?: number) => void naks.push(ms ?? 0) };
};

describe("RetryTimes", () => {
  it("holds a copy that comes before its event's time for the rest of it, then forgets the time", () => {
    let now = 1_000;
    const times = new RetryTimes(() => now);
    expect(times.held(copy(7))).toBe(false); // never handed back
    const first = copy(7);
    times.handBack(first, 100);
    expect(first.naks).toEqual([100]);
    now += 20; // a copy the server sent before the hand-back reached it
    const early = copy(7);
    expect(times.held(early)).toBe(true);
    expect(early.naks).toEqual([80]);
    now += 80;
    const due = copy(7);
    expect(times.held(due)).toBe(false);
    expect(due.naks).toEqual([]);
    now -= 50; // forgotten once it ran: a later copy is not held by the old time
    expect(times.held(copy(7))).toBe(false);
  });

  it("counts from the latest hand-back, and remembers at most `max` events, the oldest going first", () => {
    const now = 0;
    const times = new RetryTimes(() => now, 2);
    times.handBack(copy(1), 100);
    times.handBack(copy(1), 400);
    const one = copy(1);
    expect(times.held(one)).toBe(true);
    expect(one.naks).toEqual([400]);
    times.handBack(copy(2), 100);
    times.handBack(copy(3), 100);
    expect([times.held(copy(1)), times.held(copy(2)), times.held(copy(3))]).toEqual([false, true, true]);
  });
});

describe("latestCopies", () => {
  it("keeps of each sequence its last copy, where its first copy was: events stay in stream order", () => {
    const batch = [
      { seq: 4, n: 1 },
      { seq: 5, n: 1 },
      { seq: 6, n: 1 },
      { seq: 4, n: 2 },
    ];
    expect(latestCopies(batch)).toEqual([batch[3], batch[1], batch[2]]);
    expect(latestCopies(batch.slice(0, 3))).toEqual(batch.slice(0, 3));
    expect(latestCopies([])).toEqual([]);
  });
});
