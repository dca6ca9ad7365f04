/**
 * `make run` regenerates gen/ only when what it is generated from changed,
 * judged by content: the hash in proto/.generated-from (written by
 * `make generate`). If that record is stale, every fresh clone would run
 * `buf generate` at its first `make run` — so CI fails here instead.
 * (.ci/run separately checks that `buf generate` leaves gen/ unchanged.)
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { expect, it } from "vitest";
import { ROOT } from "./fixtures.js";

function protos(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? protos(join(dir, e.name)) : e.name.endsWith(".proto") ? [join(dir, e.name)] : [],
  );
}

it("proto/.generated-from is the hash of what gen/ was generated from (run `make generate` after changing it)", () => {
  // As the Makefile computes it: the protos in byte order, then buf.yaml, buf.gen.yaml, package-lock.json.
  const inputs = [
    ...protos(join(ROOT, "proto"))
      .map((p) => relative(ROOT, p))
      .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b))),
    "buf.yaml",
    "buf.gen.yaml",
    "package-lock.json",
  ];
  const hash = createHash("sha256");
  for (const f of inputs) hash.update(readFileSync(join(ROOT, f)));
  expect(readFileSync(join(ROOT, "proto", ".generated-from"), "utf8").trim()).toBe(hash.digest("hex"));
});
