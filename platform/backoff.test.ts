/** The shared backoff: doubling, capped, jittered only when asked. */
import { describe, expect, it } from "vitest";
import { backoffMs } from "./backoff.js";

describe("backoffMs", () => {
  it("doubles from the base and stops at the cap", () => {
    expect([1, 2, 3, 4, 5, 6, 7, 8].map((a) => backoffMs(a, 100, 5_000))).toEqual([
      100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000,
    ]);
    expect(backoffMs(0, 100, 5_000)).toBe(100);
    expect(backoffMs(1_000, 100, 5_000)).toBe(5_000);
  });

  it("with jitter stays between half and all of the exact wait", () => {
    expect(backoffMs(1, 100, 5000, 0)).toBe(50);
    expect(backoffMs(1, 100, 5000, 1)).toBe(100);
    expect(backoffMs(10, 100, 5000, 1)).toBe(5000);
    expect(backoffMs(10, 100, 5000, 0)).toBe(2500);
    expect(backoffMs(3, 100, 5_000, 0)).toBe(200);
    expect(backoffMs(3, 100, 5_000, 1)).toBe(400);
    expect(backoffMs(3, 100, 5_000, 0.5)).toBe(300);
    for (let i = 0; i < 100; i++) {
      const r = Math.random();
      const ms = backoffMs(7, 100, 5_000, r);
      expect(ms).toBeGreaterThanOrEqual(2_500);
      expect(ms).toBeLessThanOrEqual(5_000);
    }
  });
});
