/**
 * `make footprint` works (a short run): the whole system starts, the load
 * generator sends `make load`'s mix in a process of its own, and the table
 * and the JSON come out with every process's memory at start and after the
 * load. No sizes are asserted beyond sanity: numbers on a shared CI machine
 * mean nothing.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { expect, it } from "vitest";
import { SYSTEM } from "../scripts/layout.js";
import { ROOT, tempDir } from "./fixtures.js";

type Mem = { rss: number; pss: number; anon: number };
type Snapshot = { rssMb: number; pssMb: number; byProcess: Record<string, Mem> };

it("make footprint (short): memory per process at start and after make load's mix, written as JSON", async () => {
  using dir = tempDir();
  const out = join(dir.path, "footprint.json");
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "bench", "footprint.ts")], {
    cwd: ROOT,
    env: { ...process.env, FOOTPRINT_SECONDS: "5", FOOTPRINT_OUT: out, FOOTPRINT_GC: "on" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let text = "";
  child.stdout.on("data", (d: Buffer) => (text += d.toString()));
  child.stderr.on("data", (d: Buffer) => (text += d.toString()));
  const code = await new Promise<number | null>((r) => child.once("exit", r));
  expect(code, text).toBe(0);
  const result = JSON.parse(readFileSync(out, "utf8")) as {
    seconds: number;
    atStart: Snapshot;
    afterLoad: Snapshot;
    peakWhileLoaded: { rssMb: number; pssMb: number };
    load: { outcomes: Record<string, number> };
    youngGeneration: Record<string, { seconds: number; scavenges: number; promotedMb: number }>;
  };
  expect(result.seconds).toBe(5);
  const processes = ["nats", ...SYSTEM.map((p) => p.name)].sort();
  for (const snap of [result.atStart, result.afterLoad]) {
    expect(Object.keys(snap.byProcess).sort()).toEqual(processes);
    for (const [name, m] of Object.entries(snap.byProcess)) {
      expect(m.rss, name).toBeGreaterThan(0);
      // PSS divides shared pages among the processes that map them; anonymous pages are a process's own.
      expect(m.pss, name).toBeLessThanOrEqual(m.rss);
      expect(m.anon, name).toBeLessThanOrEqual(m.rss);
    }
    expect(snap.rssMb).toBe(Object.values(snap.byProcess).reduce((s, m) => s + m.rss, 0));
    expect(snap.pssMb).toBeLessThan(snap.rssMb);
  }
  expect(result.peakWhileLoaded.rssMb).toBeGreaterThan(0);
  // The load got answers of every kind of its mix.
  for (const kind of ["browse ok", "order ok"]) expect(result.load.outcomes[kind], kind).toBeGreaterThan(0);
  expect(text).toMatch(/^ {2}system +\d+ +\d+ +\d+ +\d+ +\d+ +\d+/m);
  // Every Node process recorded its collections from the load's start to its end (SIGUSR2 twice).
  expect(Object.keys(result.youngGeneration).sort()).toEqual(processes.filter((p) => p !== "nats"));
  for (const [name, g] of Object.entries(result.youngGeneration)) {
    expect(g.seconds, name).toBeGreaterThanOrEqual(4);
    expect(g.seconds, name).toBeLessThan(30);
    expect(g.promotedMb, name).toBeGreaterThanOrEqual(0);
  }
  expect(text).toMatch(/^ {2}gateway +\d+ +\d+\.\d +\d+\.\d\d +\d+\.\d\d +\d+$/m);
}, 120_000);
