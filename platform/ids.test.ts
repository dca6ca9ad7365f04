import { describe, expect, it } from "vitest";
import { newId } from "./ids.js";

describe("newId", () => {
  it("is the prefix, the time in base36 and 64 random bits, and never repeats across refills of its random pool", () => {
    const now = Date.UTC(2026, 11, 1);
    const ids = Array.from({ length: 2_000 }, () => newId("ord", now)); // the pool holds 512
    for (const id of ids) expect(id).toMatch(new RegExp(`^ord_${now.toString(36).padStart(9, "0")}[0-9a-f]{16}$`));
    expect(new Set(ids).size).toBe(ids.length);
    expect(newId("x") < newId("x", Date.now() + 1_000)).toBe(true); // sorts by creation time
  });
});
