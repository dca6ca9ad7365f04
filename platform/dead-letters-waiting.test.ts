/** What counts as a waiting dead letter, from the DLQ's counts and mark subjects (no server: see test/dead-letters-waiting.test.ts). */
import { describe, expect, it } from "vitest";
import { markOf, markSubject, waitingOf } from "./dead-letters-waiting.js";

describe("markOf", () => {
  it("reads a mark's letter from either form, and no letter's subject as a mark", () => {
    expect(markSubject("history-order", 12)).toBe("dlq.redriven.history-order.12");
    expect(markOf("dlq.redriven.history-order.12")).toBe(12);
    expect(markOf("dlq.redriven.12")).toBe(12); // an earlier redrive's
    for (const subject of [
      "dlq.history-order",
      "dlq.redriven",
      "dlq.redriven.x",
      "dlq.redriven.a.0",
      "dlq.redriven.a.b.3",
    ])
      expect(markOf(subject), subject).toBeUndefined();
  });
});

describe("waitingOf", () => {
  // As read: the marks' subjects, each read back to its letter's sequence.
  const marks = (...seqs: number[]) => seqs.map((s) => markOf(markSubject("history-order", s)) ?? 0);
  it("is the letters less those marked", () => {
    expect(waitingOf(0, [], 0)).toBe(0);
    expect(waitingOf(5, [], 1)).toBe(5);
    expect(waitingOf(5, marks(2, 4), 1)).toBe(3);
  });
  it("settles no letter by the mark of one the DLQ dropped, and never goes below 0", () => {
    // Letters 1 and 2 dropped (first is 3), their marks still held: the 2 letters held both wait.
    expect(waitingOf(2, marks(1, 2), 3)).toBe(2);
    expect(waitingOf(2, marks(1, 2, 3), 3)).toBe(1);
    expect(waitingOf(1, marks(3, 4, 5), 3)).toBe(0);
  });
  it("settles no letter by the mark of one stored after the letters were counted", () => {
    // Letters 3 and 4 counted at last sequence 4; marks read later hold those of 5 and 6 too.
    expect(waitingOf(2, marks(3, 5, 6), 3, 4)).toBe(1);
    expect(waitingOf(2, marks(3, 4, 5), 3, 4)).toBe(0);
  });
});
