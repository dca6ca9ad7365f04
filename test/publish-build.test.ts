/**
 * scripts/publish-build.ts, the last step of `make build`: a build written aside moves into dist/,
 * chunks first, the previous build's chunks kept for processes that read the old main.js, older ones
 * removed. (test/build-concurrency.test.ts runs it inside real builds.)
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { expect, it } from "vitest";
import { publishBuild } from "../scripts/publish-build.js";
import { tempDir } from "./fixtures.js";

function write(root: string, files: Record<string, string>): void {
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
}
const stage = (root: string, build: string) =>
  write(join(root, "next"), {
    "services/order/main.js": `import "../../chunks/chunk-${build}.js";`,
    [`chunks/chunk-${build}.js`]: build,
    "platform/log.js": build,
  });

it("moves every file into dist/ and keeps the chunks of this build and the one before only", () => {
  using dir = tempDir();
  const dist = join(dir.path, "dist");
  for (const build of ["A", "B", "C"]) {
    stage(dir.path, build);
    publishBuild(join(dir.path, "next"), dist);
  }
  expect(readFileSync(join(dist, "services/order/main.js"), "utf8")).toBe('import "../../chunks/chunk-C.js";');
  expect(readFileSync(join(dist, "platform/log.js"), "utf8")).toBe("C");
  expect(readdirSync(join(dist, "chunks")).sort()).toEqual(["chunk-B.js", "chunk-C.js"]);
  expect(existsSync(join(dir.path, "next"))).toBe(false);
});

it("keeps the chunks it finds on its first run (a dist/ from before it, with no list of them)", () => {
  using dir = tempDir();
  const dist = join(dir.path, "dist");
  write(dist, { "chunks/chunk-OLD.js": "old" });
  stage(dir.path, "A");
  publishBuild(join(dir.path, "next"), dist);
  expect(readdirSync(join(dist, "chunks")).sort()).toEqual(["chunk-A.js", "chunk-OLD.js"]);
  stage(dir.path, "B");
  publishBuild(join(dir.path, "next"), dist);
  expect(readdirSync(join(dist, "chunks")).sort()).toEqual(["chunk-A.js", "chunk-B.js"]);
});
