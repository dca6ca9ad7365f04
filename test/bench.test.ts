/**
 * `make bench` works (the smoke version CI runs): the whole system starts,
 * the load generator runs every path in its own process, and the table and
 * the JSON come out with a row per path, each with calls and no failures.
 * No timing is asserted: numbers on a shared CI machine mean nothing.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { expect, it } from "vitest";
import { SYSTEM } from "../scripts/layout.js";
import { ROOT, runToEnd, tempDir } from "./fixtures.js";

it("make bench (smoke): every path measured from a separate load generator, written as JSON", async () => {
  using dir = tempDir();
  const out = join(dir.path, "bench.json");
  const { code, out: text } = await runToEnd(process.execPath, ["--import", "tsx", join(ROOT, "bench", "harness.ts")], {
    env: { ...process.env, BENCH_SMOKE: "1", BENCH_OUT: out },
  });
  expect(code, text).toBe(0);
  const result = JSON.parse(readFileSync(out, "utf8")) as {
    rows: { path: string; load: string; calls: number; failures: number; rps: number; p50_ms: number }[];
    starts: {
      readyMs: number;
      rssMb: number;
      pssMb: number;
      afterRounds: { rssMb: number; pssMb: number };
      byProcess: Record<string, { rss: number; pss: number }>;
    }[];
  };
  const paths = new Set(result.rows.map((r) => r.path));
  expect([...paths]).toEqual([
    "direct gRPC",
    "gateway gRPC",
    "gateway Connect binary (h2c)",
    "gateway Connect JSON (HTTP/1.1)",
    "gateway REST (HTTP/1.1)",
    "saga, orchestration",
    "saga, choreography",
  ]);
  for (const r of result.rows) {
    expect(r.calls, `${r.path} ${r.load}`).toBeGreaterThan(0);
    expect(r.failures, `${r.path} ${r.load}`).toBe(0);
    expect(r.p50_ms, `${r.path} ${r.load}`).toBeGreaterThan(0);
    expect(text).toContain(r.path);
  }
  // Each saturated unary round is printed with its share of direct gRPC's calls/s.
  expect(text).toMatch(/direct gRPC +on +64 in flight .* 100% /);
  expect(text).toMatch(/gateway REST \(HTTP\/1\.1\) +on +32 in flight .* \d+% /);
  expect(result.starts[0]?.readyMs).toBeGreaterThan(0);
  expect(result.starts[0]?.rssMb).toBeGreaterThan(0);
  // PSS divides the pages the processes share (the node binary's) among them: less than the summed RSS.
  expect(result.starts[0]?.pssMb).toBeGreaterThan(0);
  expect(result.starts[0]?.pssMb).toBeLessThan(result.starts[0]?.rssMb ?? 0);
  expect(result.starts[0]?.afterRounds.pssMb).toBeGreaterThan(0);
  expect(Object.keys(result.starts[0]?.byProcess ?? {}).sort()).toEqual(["nats", ...SYSTEM.map((p) => p.name)].sort());
  expect(text).toMatch(/\d+ MB RSS \(\d+ MB PSS\)/);
  // Issue 14's targets, read off the run (the open-loop rounds run at 200/s here, so not that one).
  const targets = (result as unknown as { targets: { target: string; verdict: string }[] }).targets;
  expect(targets.map((x) => x.target)).toContain("gateway gRPC ≥ 50% of direct gRPC");
  expect(targets.map((x) => x.target)).not.toContain("gateway adds ≤ 1 ms p50, ≤ 3 ms p99 at 1,000 calls/s");
  expect(text).toMatch(
    /issue 14's targets in this run[^\n]*\n {2}gateway gRPC ≥ 50% of direct gRPC +\d+\.\d% +(met|not met)\n/,
  );
}, 120_000);

it("a setting make bench or make footprint cannot take ends it at once, in a line naming it", async () => {
  // Two separate commands, nothing shared: run side by side (each spends seconds loading under tsx).
  const [bench, footprint] = await Promise.all([
    runToEnd(process.execPath, ["--import", "tsx", join(ROOT, "bench", "harness.ts")], {
      env: { ...process.env, BENCH_SECONDS: "abc", BENCH_TELEMETRY: "yes", BENCH_PROFILE: "gatewya" },
    }),
    runToEnd(process.execPath, ["--import", "tsx", join(ROOT, "bench", "footprint.ts")], {
      env: { ...process.env, FOOTPRINT_SECONDS: "0x10" },
    }),
  ]);
  expect(bench.code, bench.out).toBe(78);
  expect(bench.out).toContain('BENCH_SECONDS="abc" is not a decimal number');
  expect(bench.out).toContain('BENCH_TELEMETRY="yes" must be one of on, off, both');
  expect(bench.out).toContain('BENCH_PROFILE="gatewya" must be one of');
  expect(bench.out).not.toContain("make bench:");
  expect(footprint.code, footprint.out).toBe(78);
  expect(footprint.out).toContain('FOOTPRINT_SECONDS="0x10" is not a decimal number');
});
