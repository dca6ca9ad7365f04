/**
 * `make compare QUICK=1` works (what CI runs): every experiment runs against
 * a real system, each writes its table into README.md and its chart, and the
 * numbers are sane — non-zero where something was measured, the injected
 * faults visibly in force, the outcomes adding up. No timing is asserted:
 * which pattern is faster on a shared CI machine is for the full run to say.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { expect, it } from "vitest";
import type { CompareResults } from "../bench/compare.js";
import { runToEnd, tempDir } from "./fixtures.js";

it("make compare QUICK=1: four experiments, each a table in README.md and an SVG chart, with sane numbers", async () => {
  using dir = tempDir();
  const { code, out } = await runToEnd("make", ["-s", "compare", "QUICK=1"], {
    env: { ...process.env, COMPARE_OUT: dir.path },
  });
  expect(code, out).toBe(0);

  const readme = readFileSync(join(dir.path, "README.md"), "utf8");
  expect(readme).not.toMatch(/NaN|undefined|Infinity|\[object /);
  const sections = readme.split(/^## /m).slice(1);
  expect(sections.map((s) => s.slice(0, 2))).toEqual(["1.", "2.", "3.", "4."]);
  for (const s of sections) {
    expect(s, s.slice(0, 60)).toContain("**The claim.**");
    expect(s, s.slice(0, 60)).toContain("**What it shows.**");
    expect(s, s.slice(0, 60)).toMatch(/\n\| --- \|/);
  }
  for (const chart of ["saga-modes.svg", "outage.svg", "read-models.svg", "resilience.svg"]) {
    const svg = readFileSync(join(dir.path, chart), "utf8");
    expect(readme).toContain(`(${chart})`);
    expect(svg, chart).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    expect(svg, chart).not.toMatch(/NaN|undefined|Infinity/);
    expect(svg.match(/<text /g)?.length ?? 0, chart).toBeGreaterThan(8); // title, axis labels, ticks, legend
  }

  const r = JSON.parse(readFileSync(join(dir.path, "results.json"), "utf8")) as CompareResults;
  // Section 4 states the settings "off" ran with, as the run recorded them.
  for (const [k, v] of Object.entries(r.resilienceOff)) expect(readme).toContain(`${k}=${v}`);
  expect(r.machine.cores).toBeGreaterThan(0);
  // 1: both modes ran; the declined cards were all compensated; commands in one, events in the other.
  expect(r.saga.map((s) => s.mode)).toEqual(["orchestration", "choreography"]);
  for (const s of r.saga) {
    for (const round of [s.one, s.fixed, s.saturated, s.declined]) {
      expect(round.calls, s.mode).toBeGreaterThan(0);
      expect(round.failures, `${s.mode}: ${round.firstError}`).toBe(0);
      expect(round.p50_ms).toBeGreaterThan(0);
    }
    expect(s.declined.outcomes).toEqual({ CANCELLED: s.declined.calls });
    expect(s.costs.cpu_ms).toBeGreaterThan(0);
    expect(s.costs.events).toBeGreaterThan(0);
    expect(s.costs.nats_messages).toBeGreaterThan(0);
  }
  expect(r.saga[0]?.costs.grpc_calls).toBeGreaterThan(0);
  expect(r.saga[1]?.costs.grpc_calls).toBe(0);
  // 2: the outage was real (the synchronous caller saw it), and every order ended one way or the other.
  for (const s of r.sync) {
    expect(s.placed_during, s.mode).toBeGreaterThan(0);
    expect(s.confirmed + s.cancelled + s.client_errors, s.mode).toBe(s.placed);
    expect(
      s.confirmed_per_second.some((v) => v > 0),
      s.mode,
    ).toBe(true);
  }
  expect(r.sync[0]?.failed_calls).toBeGreaterThan(0);
  // 3: staleness measured; composition lost a part while a source was down, the read model did not.
  expect(r.reads.staleness_ms.p50).toBeGreaterThan(0);
  expect(r.reads.conditions.map((c) => c.condition)).toEqual(["all services up", "payment down", "inventory down"]);
  for (const c of r.reads.conditions) {
    expect(c.details.calls + c.details.failures, c.condition).toBeGreaterThan(0);
    expect(c.history.calls, c.condition).toBeGreaterThan(0);
    expect(c.history.failures, c.condition).toBe(0);
  }
  expect(r.reads.conditions[0]?.details.outcomes.complete).toBeGreaterThan(0);
  expect(r.reads.conditions[1]?.details.outcomes.partial).toBeGreaterThan(0);
  // 4: six rounds; success is a share; the slow fault was in force.
  expect(r.policies.map((p) => `${p.policies} ${p.fault}`)).toEqual([
    "on healthy",
    "on slow (+1.5 s)",
    "on flaky (30% UNAVAILABLE)",
    "off healthy",
    "off slow (+1.5 s)",
    "off flaky (30% UNAVAILABLE)",
  ]);
  for (const p of r.policies) {
    expect(p.checkout.calls + p.checkout.failures).toBeGreaterThan(0);
    expect(p.success).toBeGreaterThanOrEqual(0);
    expect(p.success).toBeLessThanOrEqual(1);
    expect(p.unrelated.calls).toBeGreaterThan(0);
    if (p.fault.startsWith("slow")) expect(p.checkout.p50_ms).toBeGreaterThanOrEqual(1_500);
  }
}, 300_000);
