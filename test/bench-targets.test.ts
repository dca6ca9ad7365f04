/**
 * The targets `make bench` reads off its run (bench/targets.ts): what each
 * measured, and whether it is met in every telemetry setting, in one, or
 * in none.
 */
import { expect, it } from "vitest";
import { formatTargets, type TargetRow, targets } from "../bench/targets.js";

const row = (path: string, telemetry: "on" | "off", load: string, rps: number, p50 = 1, p99 = 2): TargetRow => ({
  path,
  telemetry,
  load,
  rps,
  p50_ms: p50,
  p99_ms: p99,
});

const both = (f: (t: "on" | "off") => TargetRow[]) => [...f("on"), ...f("off")];

it("reads each target in each setting, and says where it is met", () => {
  const rows = both((t) => [
    row("direct gRPC", t, "64 in flight", 4000, 10, 20),
    // Off: 49.96% of direct, which a table rounding to whole points would print as 50%.
    row("gateway gRPC", t, "64 in flight", t === "on" ? 1600 : 1998.4, 30, 60),
    row("gateway Connect JSON (HTTP/1.1)", t, "32 in flight", t === "on" ? 2080 : 2600, 10, 20),
    row("direct gRPC", t, "1000/s", 1000, 0.3, 10),
    row("gateway gRPC", t, "1000/s", 1000, t === "on" ? 1.6 : 1.2, t === "on" ? 12 : 12.5),
    row("saga, orchestration", t, "32 in flight", t === "on" ? 221 : 310),
    row("saga, orchestration", t, "1 in flight", 80, 11),
  ]);
  const starts = [
    { telemetry: "on" as const, readyMs: 2262, rssMb: 516 },
    { telemetry: "off" as const, readyMs: 6100, rssMb: 601 },
  ];
  const got = Object.fromEntries(targets(rows, starts).map((x) => [x.target, [x.measured, x.verdict]]));
  expect(got).toEqual({
    "gateway gRPC ≥ 50% of direct gRPC": [{ on: "40.0%", off: "49.9%" }, "not met"],
    "gateway Connect JSON (HTTP/1.1) ≥ 35% of direct gRPC": [{ on: "52.0%", off: "65.0%" }, "met"],
    "gateway adds ≤ 1 ms p50, ≤ 3 ms p99 at 1,000 calls/s": [
      { on: "+1.3 / +2.0 ms", off: "+0.9 / +2.5 ms" },
      "met with telemetry off only",
    ],
    "saga, orchestration ≥ 300 orders/s saturated": [{ on: "221", off: "310" }, "met with telemetry off only"],
    "saga, orchestration p50 ≤ 5 ms at 1 in flight": [{ on: "11.0 ms", off: "11.0 ms" }, "not met"],
    // Telemetry's cost is one figure per run: on against off.
    "telemetry costs gateway gRPC ≤ 15%": [{ on: "20.0%" }, "not met"],
    "telemetry costs gateway Connect JSON (HTTP/1.1) ≤ 15%": [{ on: "20.0%" }, "not met"],
    "telemetry costs saga, orchestration ≤ 15%": [{ on: "28.8%" }, "not met"],
    "the system ≤ 600 MB RSS at start": [{ on: "516 MB", off: "601 MB" }, "met with telemetry on only"],
    "ready ≤ 6 s": [{ on: "2.3 s", off: "6.1 s" }, "met with telemetry on only"],
  });
  const text = formatTargets(targets(rows, starts));
  expect(text).toMatch(/saga, orchestration ≥ 300 orders\/s saturated +221 +310 +met with telemetry off only\n/);
});

it("leaves out a target whose rounds did not run (BENCH_ONLY, one telemetry setting, the smoke run's rate)", () => {
  const rows = [
    row("direct gRPC", "on", "200/s", 200),
    row("gateway gRPC", "on", "200/s", 200),
    row("saga, choreography", "on", "32 in flight", 320),
  ];
  expect(targets(rows, [])).toEqual([
    { target: "saga, choreography ≥ 300 orders/s saturated", measured: { on: "320" }, verdict: "met" },
  ]);
});
