/** The run's last lines name what failed (test/summary-reporter.ts), as a log cut to its tail shows them. */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { expect, it } from "vitest";
import { tempDir } from "./fixtures.js";

it("ends with one line per failure, then the counts", () => {
  using dir = tempDir("reporter");
  // globals: the fixture lives outside the repository, where `import "vitest"` would not resolve.
  writeFileSync(
    join(dir.path, "vitest.config.mjs"),
    `export default { test: { globals: true, include: ["*.spec.mjs"], reporters: [${JSON.stringify(resolve("test/summary-reporter.ts"))}] } };\n`,
  );
  writeFileSync(
    join(dir.path, "run.spec.mjs"),
    [
      `it("passes", () => {});`,
      `it.skip("is skipped", () => {});`,
      `describe("a suite", () => { it("fails", () => { expect(1).toBe(2); }); });`,
      `it("leaves a rejection", async () => { void Promise.reject(new Error("stray\\nsecond line")); await new Promise((r) => setTimeout(r, 50)); });`,
    ].join("\n"),
  );
  const r = spawnSync(process.execPath, [resolve("node_modules/vitest/vitest.mjs"), "run", "--root", dir.path], {
    encoding: "utf8",
    env: { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" },
    timeout: 60_000,
  });
  expect(r.status).toBe(1);
  expect(r.stdout.trimEnd().split("\n").slice(-5)).toEqual([
    "failed:",
    "  run.spec.mjs > a suite > fails: expected 1 to be 2 // Object.is equality",
    "  unhandled error: stray",
    "",
    "vitest: 2 passed, 2 failed, 1 skipped",
  ]);
});
