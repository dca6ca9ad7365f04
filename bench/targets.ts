/**
 * Issue 14's targets, read off one `make bench` run: each with what this run
 * measured, telemetry on / off, and whether it is met — in every setting
 * measured, in one of them only, or not at all. A target whose rounds did
 * not run (BENCH_ONLY, BENCH_TELEMETRY) is left out. The memory after a
 * minute of `make load` is `make footprint`'s to tell; here, the memory at
 * start.
 */

/** What a target is read from: one round of the harness. */
export interface TargetRow {
  readonly path: string;
  readonly telemetry: "on" | "off";
  readonly load: string;
  readonly rps: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
}
/** What a target is read from: one start of the system. */
export interface TargetStart {
  readonly telemetry: "on" | "off";
  readonly readyMs: number;
  readonly rssMb: number;
}

export interface Target {
  readonly target: string;
  /** What this run measured, by telemetry setting, as printed. */
  readonly measured: Readonly<Partial<Record<"on" | "off", string>>>;
  /** "met" (in every setting measured), "met with telemetry on" / "off" only, or "not met". */
  readonly verdict: string;
}

const SETTINGS = ["on", "off"] as const;
/**
 * A share (rounded down) or a cost (rounded up) to a tenth of a point, so that what is printed agrees
 * with its verdict: a share of 49.96% is not 50%, a cost of 15.04% is not 15%.
 */
const pct = (x: number, round: (n: number) => number = Math.floor) =>
  `${(round(x * 1000 + (round === Math.ceil ? -1e-9 : 1e-9)) / 10).toFixed(1)}%`;

/** The targets this run measured (see the module comment). */
export function targets(rows: readonly TargetRow[], starts: readonly TargetStart[]): Target[] {
  const row = (t: "on" | "off", path: string, load: string) =>
    rows.find((r) => r.telemetry === t && r.path === path && r.load === load);
  const out: Target[] = [];
  /** A target read in each setting: `read` gives what to print and whether it is met, or nothing. */
  const add = (target: string, read: (t: "on" | "off") => [string, boolean] | undefined) => {
    const seen = SETTINGS.flatMap((t) => {
      const r = read(t);
      return r ? [[t, ...r] as const] : [];
    });
    if (seen.length === 0) return;
    const met = seen.filter(([, , ok]) => ok).map(([t]) => t);
    const verdict =
      met.length === seen.length ? "met" : met.length === 0 ? "not met" : `met with telemetry ${met[0]} only`;
    out.push({ target, measured: Object.fromEntries(seen.map(([t, text]) => [t, text])), verdict });
  };
  // From calls/s, not the table's rounded share.
  const share = (path: string, min: number) =>
    add(`${path} ≥ ${min * 100}% of direct gRPC`, (t) => {
      const direct = row(t, "direct gRPC", "64 in flight");
      const r = row(t, path, path.includes("HTTP/1.1") ? "32 in flight" : "64 in flight");
      if (!direct?.rps || !r) return undefined;
      const of = r.rps / direct.rps;
      return [pct(of), of >= min];
    });
  share("gateway gRPC", 0.5);
  share("gateway Connect JSON (HTTP/1.1)", 0.35);
  add("gateway adds ≤ 1 ms p50, ≤ 3 ms p99 at 1,000 calls/s", (t) => {
    const direct = row(t, "direct gRPC", "1000/s");
    const gw = row(t, "gateway gRPC", "1000/s");
    if (!direct || !gw) return undefined;
    const p50 = gw.p50_ms - direct.p50_ms;
    const p99 = gw.p99_ms - direct.p99_ms;
    return [`+${p50.toFixed(1)} / +${p99.toFixed(1)} ms`, p50 <= 1 && p99 <= 3];
  });
  for (const mode of ["orchestration", "choreography"]) {
    const saga = `saga, ${mode}`;
    add(`${saga} ≥ 300 orders/s saturated`, (t) => {
      const r = row(t, saga, "32 in flight");
      return r && [`${r.rps}`, r.rps >= 300];
    });
    add(`${saga} p50 ≤ 5 ms at 1 in flight`, (t) => {
      const r = row(t, saga, "1 in flight");
      return r && [`${r.p50_ms.toFixed(1)} ms`, r.p50_ms <= 5];
    });
  }
  // Telemetry's cost: the calls/s it takes, on against off in this run (one figure, under "on").
  for (const [path, load] of [
    ["gateway gRPC", "64 in flight"],
    ["gateway Connect JSON (HTTP/1.1)", "32 in flight"],
    ["saga, orchestration", "32 in flight"],
    ["saga, choreography", "32 in flight"],
  ] as const) {
    add(`telemetry costs ${path} ≤ 15%`, (t) => {
      const on = row("on", path, load);
      const off = row("off", path, load);
      if (t === "off" || !on || !off || off.rps === 0) return undefined;
      const cost = 1 - on.rps / off.rps;
      return [pct(cost, Math.ceil), cost <= 0.15];
    });
  }
  const start = (t: "on" | "off") => starts.find((s) => s.telemetry === t);
  add("the system ≤ 600 MB RSS at start", (t) => {
    const s = start(t);
    return s && [`${s.rssMb} MB`, s.rssMb <= 600];
  });
  add("ready ≤ 6 s", (t) => {
    const s = start(t);
    return s && [`${(s.readyMs / 1000).toFixed(1)} s`, s.readyMs <= 6000];
  });
  return out;
}

/** The targets as a table under the run's. */
export function formatTargets(list: readonly Target[]): string {
  const lines = list.map(
    (x) =>
      `  ${x.target.padEnd(56)} ${(x.measured.on ?? "").padStart(15)} ${(x.measured.off ?? "").padStart(15)}   ${x.verdict}`,
  );
  const header = `${"issue 14's targets in this run".padEnd(58)} ${"telemetry on".padStart(15)} ${"off".padStart(15)}`;
  return `${header}\n${lines.join("\n")}\n(the memory after a minute of make load: make footprint)\n`;
}
