/**
 * Released contracts stay compatible. `make breaking` runs `buf breaking` on
 * proto/ against contracts/baseline.binpb, the image `make contracts-baseline`
 * recorded when the last release was cut, with buf.yaml's FILE rules; this
 * file runs the same command, so `make test` (CI) fails on a breaking change.
 * It also proves that the check can fail: a copy of the workspace with a
 * field renumbered or removed must not pass.
 *
 * Additive changes (services, RPCs, messages, fields) pass against the old
 * baseline, so it needs no refresh for them; they are protected from the
 * release that records them on.
 *
 * A deliberate breaking change: make it in a new package version
 * (shopmesh.order.v2 beside v1, which stays as released), or — when no client
 * of the old contract is left — make it in the release commit together with
 * `make contracts-baseline`, so the break is a reviewed change to the baseline.
 */
import { execFile, execFileSync } from "node:child_process";
import { appendFileSync, cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { ROOT, tempDir } from "./fixtures.js";

const run = promisify(execFile);
const BASELINE = join("contracts", "baseline.binpb");
const ORDER_PROTO = join("proto", "shopmesh", "order", "v1", "order.proto");

/** One breaking change as buf reports it (`--error-format json`, one object a line). */
interface Violation {
  path: string;
  /** The rule id, e.g. FIELD_NO_DELETE. */
  type: string;
  message: string;
}

/** The arguments to buf of `make breaking`: the Makefile is the one place the check is spelled. */
function breakingArgs(): string[] {
  const out = execFileSync("make", ["-n", "--no-print-directory", "breaking"], { cwd: ROOT, encoding: "utf8" });
  const line = out.split("\n").find((l) => l.startsWith("npx buf breaking "));
  if (!line) throw new Error(`make -n breaking runs no \`npx buf breaking\`:\n${out}`);
  return line.trim().split(/\s+/).slice(2);
}

/** `buf breaking` as `make breaking` runs it, in the workspace `cwd`: its violations, none when it passes. */
async function breaking(cwd: string): Promise<Violation[]> {
  const buf = join(ROOT, "node_modules", ".bin", "buf");
  try {
    await run(buf, [...breakingArgs(), "--error-format", "json"], { cwd });
    return [];
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    // 100 is buf's exit code for violations found; anything else (no build, bad flag) is not a verdict.
    if (e.code !== 100) throw new Error(`buf breaking exited ${e.code}: ${e.stderr ?? ""}${e.stdout ?? ""}`);
    const lines = (e.stdout ?? "").split("\n").filter((l) => l.trim() !== "");
    return lines.map((l) => JSON.parse(l) as Violation);
  }
}

/**
 * A disposable copy of what buf reads: buf.yaml, proto/ and the baseline, with
 * node_modules linked for the workspace's google/api and grpc modules. The
 * real proto/ is never touched.
 */
function workspaceCopy(): { path: string } & Disposable {
  const dir = tempDir("shopmesh-breaking-");
  cpSync(join(ROOT, "buf.yaml"), join(dir.path, "buf.yaml"));
  cpSync(join(ROOT, "proto"), join(dir.path, "proto"), { recursive: true });
  mkdirSync(join(dir.path, "contracts"));
  cpSync(join(ROOT, BASELINE), join(dir.path, BASELINE));
  symlinkSync(join(ROOT, "node_modules"), join(dir.path, "node_modules"), "dir");
  return dir;
}

/** Rewrites the match of `pattern` in `file` under `dir`; it must match once, so a changed proto fails here, loudly. */
function edit(dir: string, file: string, pattern: RegExp, replacement: string): void {
  const path = join(dir, file);
  const text = readFileSync(path, "utf8");
  expect(text.match(new RegExp(pattern.source, "g")), `${pattern} in ${file}`).toHaveLength(1);
  writeFileSync(path, text.replace(pattern, replacement));
}

describe("buf breaking against the released contracts", () => {
  it("proto/ has no breaking change since contracts/baseline.binpb (a deliberate one: see the top of this file)", async () => {
    expect(await breaking(ROOT)).toEqual([]);
  });

  it("passes an additive change: a new field and a new message", async () => {
    using ws = workspaceCopy();
    edit(ws.path, ORDER_PROTO, /(?<=message CancelOrderRequest \{[^}]*string reason = 2;)/, "\n  string note = 3;");
    appendFileSync(join(ws.path, ORDER_PROTO), "\nmessage Added {}\n");
    expect(await breaking(ws.path)).toEqual([]);
  });

  // buf matches fields by number: a renumbered field is its old number deleted, or another field's name on it.
  it.each([
    {
      change: "a field renumbered (GetOrderRequest.order_id 1 -> 7)",
      edits: [[/(?<=message GetOrderRequest \{[^}]*string order_id = )1;/, "7;"]],
      rule: "FIELD_NO_DELETE",
      names: ['"1"', '"order_id"', '"GetOrderRequest"'],
    },
    {
      change: "two fields' numbers swapped (CancelOrderRequest.order_id 1 <-> reason 2)",
      edits: [
        [/(?<=message CancelOrderRequest \{[^}]*string order_id = )1;/, "2;"],
        [/(?<=message CancelOrderRequest \{[^}]*string reason = )2;/, "1;"],
      ],
      rule: "FIELD_SAME_NAME",
      names: ['"order_id"', '"reason"', '"CancelOrderRequest"'],
    },
    {
      change: "a field removed (CancelOrderRequest.reason)",
      edits: [[/(?<=message CancelOrderRequest \{[^}]*)\n {2}string reason = 2;/, ""]],
      rule: "FIELD_NO_DELETE",
      names: ['"2"', '"reason"', '"CancelOrderRequest"'],
    },
  ] satisfies { change: string; edits: [RegExp, string][]; rule: string; names: string[] }[])(
    "fails on $change with $rule",
    async ({ edits, rule, names }) => {
      using ws = workspaceCopy();
      for (const [pattern, replacement] of edits) edit(ws.path, ORDER_PROTO, pattern, replacement);
      const violations = await breaking(ws.path);
      const found = violations.find((v) => v.type === rule);
      expect(found, JSON.stringify(violations)).toBeDefined();
      expect(found?.path).toBe(ORDER_PROTO);
      for (const name of names) expect(found?.message).toContain(name);
    },
  );
});
