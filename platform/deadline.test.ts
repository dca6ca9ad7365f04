/** Deadline merging. */
import { describe, expect, it } from "vitest";
import { earliestDeadline } from "./deadline.js";

describe("earliestDeadline", () => {
  it("takes the earlier of an absolute deadline and a relative timeout", () => {
    expect(earliestDeadline(undefined, undefined, 1_000)).toBeUndefined();
    expect(earliestDeadline(5_000, undefined, 1_000)).toBe(5_000);
    expect(earliestDeadline(undefined, 300, 1_000)).toBe(1_300);
    expect(earliestDeadline(5_000, 300, 1_000)).toBe(1_300);
    expect(earliestDeadline(1_200, 300, 1_000)).toBe(1_200);
  });
});
