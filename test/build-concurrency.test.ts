/**
 * Two builds at once — `make run` in one terminal and `make token` or `make demo` in another, or
 * `make test` beside `make run`, after an edit or a git pull — and a process starting from dist/
 * meanwhile (a service `make run` restarts). Before, both builds ran esbuild over the same dist/, one
 * deleting dist/chunks while the other wrote it, and a process starting then read a main.js or chunk
 * cut short. Each test runs real make on a copy of the repository's build inputs (node_modules
 * linked), so the suites running beside it keep their own dist/.
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
  appendFileSync,
  cpSync,
  existsSync,
  readdirSync,
  readFileSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { setImmediate as tick } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SYSTEM } from "../scripts/layout.js";
import { exited, freePort, ROOT, runToEnd, tempDir } from "./fixtures.js";

/** What `make build` reads (gen/ and proto/ for gen-fresh, web/ for the web shop). */
const INPUTS = [
  "Makefile",
  "deploy/deploy.mk",
  "package.json",
  "package-lock.json",
  "tsconfig.json",
  "buf.yaml",
  "buf.gen.yaml",
  "proto",
  "gen",
  "contracts",
  "platform",
  "services",
  "gateway",
  "scripts",
  "bench",
  "web",
];
const MAINS = SYSTEM.map((p) => (p.name === "gateway" ? "gateway/main.js" : `services/${p.name}/main.js`));
/** A source every bundle imports. */
const SHARED_SOURCE = "platform/log.ts";

const dir = tempDir("shopmesh-build-");
const repo = join(dir.path, "repo");
/** `make ARGS` in the copy, to its end. */
const make = (...args: string[]) =>
  runToEnd("make", ["-C", repo, "-s", "--no-print-directory", "-o", "node_modules/.package-lock.json", ...args]);
const touch = (file: string) => utimesSync(join(repo, file), new Date(), new Date());
const lines = (out: string, start: string) => out.split("\n").filter((l) => l.startsWith(start)).length;

/**
 * What a process starting from dist/ now would find wrong: a main.js or chunk missing, or cut short
 * (esbuild ends each with its source map's URL), following every relative import as node does.
 */
function unreadable(): string[] {
  const wrong: string[] = [];
  const seen = new Set<string>();
  const todo = MAINS.map((m) => join(repo, "dist", m));
  for (let file = todo.pop(); file !== undefined; file = todo.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      wrong.push(`missing ${file.slice(repo.length + 1)}`);
      continue;
    }
    if (!/\/\/# sourceMappingURL=\S+\s*$/.test(text)) wrong.push(`cut short ${file.slice(repo.length + 1)}`);
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*"(\.[^"]+)"/g)) todo.push(join(dirname(file), m[1] ?? ""));
  }
  return wrong;
}

/** Reads dist/ as a starting process would, over and over, until `done` settles: what it found wrong. */
async function readWhile(done: Promise<unknown>): Promise<string[]> {
  const found = new Set<string>();
  let settled = false;
  void done.finally(() => (settled = true));
  while (!settled) {
    for (const w of unreadable()) found.add(w.replace(/chunk-\w+/, "chunk-…"));
    await tick();
  }
  return [...found];
}

/**
 * Starts every service and the gateway from the copy's dist/ with a port that is no port: each loads
 * all its modules, then refuses its configuration (exit 78). Anything else is a start that failed.
 */
async function startsFromDist(): Promise<Record<string, number | string>> {
  const codes: Record<string, number | string> = {};
  for (const main of MAINS) {
    const child = spawn(process.execPath, [join(repo, "dist", main)], {
      cwd: repo,
      env: { ...process.env, GRPC_PORT: "no-port", HTTP_PORT: "no-port" },
      stdio: "ignore",
    });
    codes[main] = await exited(child);
  }
  return codes;
}
const ALL_REFUSED = Object.fromEntries(MAINS.map((m) => [m, 78]));

beforeAll(async () => {
  for (const f of INPUTS) cpSync(join(ROOT, f), join(repo, f), { recursive: true, preserveTimestamps: true });
  symlinkSync(join(ROOT, "node_modules"), join(repo, "node_modules"), "dir");
  // Older than any install: a sub-make's `install` must never run npm ci through the link.
  for (const f of ["package.json", "package-lock.json"]) utimesSync(join(repo, f), 0, 0);
  const first = await make("build");
  expect(first.code, first.out).toBe(0);
}, 120_000);
afterAll(() => dir[Symbol.dispose]());

describe("two builds started at once", () => {
  it("both succeed, esbuild runs once, and a process starting meanwhile reads whole files of one build", async () => {
    for (let round = 0; round < 3; round++) {
      touch(SHARED_SOURCE);
      const builds = Promise.all([make("build"), make("token", "USER=alice")]);
      const wrong = await readWhile(builds);
      const [build, token] = await builds;
      expect(wrong, `round ${round}`).toEqual([]);
      expect(build.code, build.out).toBe(0);
      expect(token.code, token.out).toBe(0);
      expect(token.out).toMatch(/^ey[\w-]+\.[\w-]+\.[\w-]+$/m);
      expect(lines(build.out + token.out, "esbuild:"), build.out + token.out).toBe(1);
      expect(unreadable()).toEqual([]);
      expect(await startsFromDist()).toEqual(ALL_REFUSED);
    }
  }, 120_000);
});

describe("two builds started at once after a contract changed", () => {
  // buf generate's `clean: true` empties gen/ first: two at once emptied it under each other.
  it("generate once, and leave gen/ whole and recorded as fresh", async () => {
    const generated = () => readdirSync(join(repo, "gen"), { recursive: true }).sort();
    const before = generated();
    appendFileSync(join(repo, "proto/shopmesh/common/v1/common.proto"), "\n// changed by a test\n");
    const both = Promise.all([make("build"), make("build")]);
    const wrong = await readWhile(both);
    const out = (await both).map((b) => `${b.code}\n${b.out}`).join("\n");
    expect(out.match(/^0$/gm), out).toHaveLength(2);
    expect(generated()).toEqual(before);
    expect(wrong).toEqual([]);
    expect(lines(out, "> buf generate"), out).toBe(1);
    const again = await make("build");
    expect(again).toEqual({ code: 0, out: "" });
  }, 180_000);
});

describe("make run while another terminal builds", () => {
  it("a service killed during a rebuild is restarted from a whole dist/ and comes up", async () => {
    using data = tempDir();
    const env: Record<string, string> = { DATA_DIR: data.path };
    for (const p of SYSTEM) {
      env[`${p.name.toUpperCase()}_PORT`] = String(await freePort());
      env[`${p.name.toUpperCase()}_METRICS_PORT`] = String(await freePort());
    }
    env.NATS_PORT = String(await freePort());
    env.NATS_MONITOR_PORT = String(await freePort());
    const run = spawn(process.execPath, [join(repo, "dist", "scripts", "run.js")], {
      cwd: repo,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    run.stdout.on("data", (d: Buffer) => (out += d.toString()));
    run.stderr.on("data", (d: Buffer) => (out += d.toString()));
    const count = (re: RegExp) => out.split("\n").filter((l) => re.test(l)).length;
    const listening = /^inventory .*\| .*gRPC server listening/;
    try {
      await expect.poll(() => count(listening), { timeout: 30_000 }).toBe(1);
      for (let round = 1; round <= 2; round++) {
        const pid = Number([...out.matchAll(/^inventory .*\| started \(pid (\d+)\)/gm)].at(-1)?.[1]);
        touch(SHARED_SOURCE);
        const build = make("build");
        process.kill(pid, "SIGKILL"); // restarted in 1 s: while the build writes dist/
        const { code, out: built } = await build;
        expect(code, built).toBe(0);
        await expect.poll(() => count(listening), { timeout: 30_000 }).toBe(round + 1);
        expect(count(/^inventory .*\| exited unexpectedly/), out).toBe(round);
      }
    } finally {
      run.kill("SIGINT");
      await exited(run);
    }
    expect(out).toContain("all stopped");
  }, 120_000);
});

describe("the build lock", () => {
  const lock = () => join(repo, ".build-lock");

  it("a build waits while another holds it, names the holder, then builds", async () => {
    const holder = spawn("sleep", ["60"], { stdio: "ignore" });
    try {
      symlinkSync(String(holder.pid), lock());
      touch(SHARED_SOURCE);
      let out = "";
      const build = runToEnd("make", ["-C", repo, "-s", "--no-print-directory", "build"], {
        onStart: (c: ChildProcess) => c.stderr?.on("data", (d: Buffer) => (out += d.toString())),
      });
      await expect
        .poll(() => out, { timeout: 15_000 })
        .toContain(`waiting for another build (pid ${holder.pid}) to finish`);
      expect(out).not.toContain("esbuild:");
      unlinkSync(lock());
      const { code, out: all } = await build;
      expect(code, all).toBe(0);
      expect(lines(all, "esbuild:")).toBe(1);
      expect(existsSync(lock())).toBe(false);
    } finally {
      holder.kill("SIGKILL");
    }
  }, 60_000);

  it("a build killed outright leaves it behind; the next takes it over and builds a whole dist/", async () => {
    touch(SHARED_SOURCE);
    const killed = spawn("make", ["-C", repo, "-s", "build"], { stdio: "ignore", detached: true });
    await expect.poll(() => readdirSync(repo).includes(".build-lock"), { timeout: 15_000 }).toBe(true);
    process.kill(-(killed.pid as number), "SIGKILL");
    await exited(killed);
    expect(readdirSync(repo)).toContain(".build-lock");
    const { code, out } = await make("build");
    expect(code, out).toBe(0);
    expect(out).toMatch(/took over the build lock of pid \d+, which is gone/);
    expect(unreadable()).toEqual([]);
    expect(await startsFromDist()).toEqual(ALL_REFUSED);
  }, 60_000);

  it("a build that fails says esbuild's error, exits non-zero, releases it, and leaves the last build in place", async () => {
    const source = join(repo, SHARED_SOURCE);
    const before = readFileSync(source, "utf8");
    appendFileSync(source, "\nexport const broken = ;\n");
    try {
      const { code, out } = await make("build");
      expect(code, out).not.toBe(0);
      expect(out).toContain(`${SHARED_SOURCE}:`);
      expect(out).toMatch(/ERROR/);
      expect(existsSync(lock())).toBe(false);
      expect(unreadable()).toEqual([]);
      expect(await startsFromDist()).toEqual(ALL_REFUSED);
    } finally {
      cpSync(join(ROOT, SHARED_SOURCE), source);
    }
    expect(readFileSync(source, "utf8")).toBe(before);
    const again = await make("build");
    expect(again.code, again.out).toBe(0);
  }, 60_000);
});
