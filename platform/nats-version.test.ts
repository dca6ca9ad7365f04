/** The nats-server versions whose consumer filter updates are applied only in part. */
import { describe, expect, it } from "vitest";
import { filterUpdateStale } from "./nats-version.js";

describe("filterUpdateStale", () => {
  it("is every version before 2.9.12 (and an unknown one), none from it on", () => {
    const cases: [string, boolean][] = [
      ["2.9.10", true],
      ["2.9.11", true],
      ["2.8.4", true],
      ["1.4.1", true],
      ["", true],
      ["2.9.12", false],
      ["2.9.25", false],
      ["2.10.0-beta.1", false],
      ["2.10.22", false],
      ["2.12.1", false],
      ["3.0.0", false],
    ];
    expect(cases.map(([v]) => filterUpdateStale(v))).toEqual(cases.map(([, want]) => want));
  });
});
