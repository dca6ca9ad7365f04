/**
 * Rules the docs keep so that following them in order works: an
 * idempotency key in a shell example belongs to one request (the same key
 * with another body is ALREADY_EXISTS, as saga.md's and gateway.md's
 * shared `k1` was), and page sizes are described as what they are
 * (refused above 100, not capped).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "./fixtures.js";

/** README.md and docs/*.md: name and text. */
const DOCS = [
  "README.md",
  ...readdirSync(join(ROOT, "docs"))
    .filter((f) => f.endsWith(".md"))
    .map((f) => join("docs", f)),
].map((name) => ({ name, text: readFileSync(join(ROOT, name), "utf8") }));

/** The commands of a document's shell blocks, continuation lines joined. */
function commands(text: string): string[] {
  const blocks = [...text.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => (m[1] ?? "").replace(/\\\n\s*/g, ""));
  return blocks.flatMap((b) => b.split("\n")).filter((l) => l.trim() && !l.trim().startsWith("#"));
}

/** The request a command sends, without what may differ between equal requests (host, token, comments). */
const request = (cmd: string) =>
  cmd
    .replace(/\s+#.*$/, "")
    .replace(/localhost:\d+/g, "HOST")
    .replace(/\s+/g, " ")
    .trim();

describe("docs", () => {
  it("give every idempotency key in their examples to one request only", () => {
    const uses = new Map<string, Map<string, string>>();
    for (const { name, text } of DOCS) {
      for (const cmd of commands(text)) {
        for (const m of cmd.matchAll(/"idempotency_key":"([^"$]+)"|Idempotency-Key: ([^'"\s$]+)/g)) {
          const key = m[1] ?? m[2] ?? "";
          const seen = uses.get(key) ?? new Map<string, string>();
          seen.set(request(cmd), name);
          uses.set(key, seen);
        }
      }
    }
    expect(uses.size).toBeGreaterThanOrEqual(4);
    const shared = [...uses].filter(([, requests]) => requests.size > 1);
    expect(
      shared.map(([key, requests]) => `${key}: ${[...requests.values()].join(", ")}`),
      "the same key with another body is ALREADY_EXISTS",
    ).toEqual([]);
  });

  it("say page sizes above 100 are refused, never that they are capped", () => {
    for (const { name, text } of DOCS) {
      expect(text, name).not.toMatch(/page[ _]sizes? (are |is )?capped|capped at 100/i);
    }
  });
});
