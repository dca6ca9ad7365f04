/** Deadline merging. */
import { describe, expect, it } from "vitest";
import { earliestDeadline, withDeadline } from "./deadline.js";

describe("earliestDeadline", () => {
  it("takes the earlier of an absolute deadline and a relative timeout", () => {
    expect(earliestDeadline(undefined, undefined, 1_000)).toBeUndefined();
    expect(earliestDeadline(5_000, undefined, 1_000)).toBe(5_000);
    expect(earliestDeadline(undefined, 300, 1_000)).toBe(1_300);
    expect(earliestDeadline(5_000, 300, 1_000)).toBe(1_300);
    expect(earliestDeadline(1_200, 300, 1_000)).toBe(1_200);
  });
});

describe("withDeadline", () => {
  it("does not expire a call whose deadline is further off than a timer can wait (2^31-1 ms)", async () => {
    const month = Date.now() + 30 * 24 * 3600 * 1000;
    const answer = withDeadline(
      month,
      undefined,
      () => new Error("expired"),
      () => new Promise<string>((resolve) => setTimeout(() => resolve("answered"), 50)),
    );
    await expect(answer).resolves.toBe("answered");
  });
});
