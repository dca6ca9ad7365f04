/**
 * scripts/build-lock.sh on its own (fast, a temp dir): what a waiter does where `ps` is missing, as
 * in a Debian slim image (procps is not installed there). test/build-concurrency.test.ts runs the
 * lock inside real builds.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, rmSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { afterAll, expect, it } from "vitest";
import { ROOT, runToEnd, tempDir } from "./fixtures.js";

const dir = tempDir("shopmesh-lock-");
/** The script under test, killed at the end even if its test timed out (its `finally` never ran). */
let waiter: ChildProcess | undefined;
afterAll(() => {
  waiter?.kill("SIGKILL");
  dir[Symbol.dispose]();
});
mkdirSync(join(dir.path, "scripts"));
copyFileSync(join(ROOT, "scripts/build-lock.sh"), join(dir.path, "scripts/build-lock.sh"));
const lock = join(dir.path, ".build-lock");

/** A PATH with the tools the script may use, but no `ps`. */
const bin = join(dir.path, "bin");
mkdirSync(bin);
for (const tool of ["sh", "ln", "readlink", "dirname", "mkdir", "rmdir", "rm", "find", "sleep", "sed", "cut", "true"]) {
  symlinkSync(execFileSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).trim(), join(bin, tool));
}
const withoutPs = { ...process.env, PATH: bin };

it("without ps, a build waits for the holder that is running, and takes over from one that is gone", async () => {
  const holder = spawn("sleep", ["60"], { stdio: "ignore" });
  try {
    symlinkSync(String(holder.pid), lock);
    let out = "";
    const waited = runToEnd("sh", [join(dir.path, "scripts/build-lock.sh"), "true"], {
      env: withoutPs,
      onStart: (c) => {
        waiter = c;
        c.stderr?.on("data", (d: Buffer) => (out += d.toString()));
      },
    });
    await expect.poll(() => out, { timeout: 10_000 }).toContain(`waiting for another build (pid ${holder.pid})`);
    expect(out).not.toContain("took over");
    holder.kill("SIGKILL");
    const { code, out: all } = await waited;
    expect(code, all).toBe(0);
    expect(all).toContain(`took over the build lock of pid ${holder.pid}, which is gone`);
    expect(existsSync(lock)).toBe(false);
  } finally {
    holder.kill("SIGKILL");
    waiter?.kill("SIGKILL");
  }
}, 30_000);

it("a waiter whose checkout goes away under it says why and exits 1, instead of spinning at full CPU for ever", async () => {
  using gone = tempDir("shopmesh-lock-");
  mkdirSync(join(gone.path, "scripts"));
  copyFileSync(join(ROOT, "scripts/build-lock.sh"), join(gone.path, "scripts/build-lock.sh"));
  const holder = spawn("sleep", ["60"], { stdio: "ignore" });
  try {
    symlinkSync(String(holder.pid), join(gone.path, ".build-lock"));
    let out = "";
    const waited = runToEnd("sh", [join(gone.path, "scripts/build-lock.sh"), "true"], {
      onStart: (c) => {
        waiter = c;
        c.stderr?.on("data", (d: Buffer) => (out += d.toString()));
      },
    });
    await expect.poll(() => out, { timeout: 10_000 }).toContain("waiting for another build");
    rmSync(gone.path, { recursive: true, force: true }); // the lock's folder with it: no lock can be made
    const ended = await Promise.race([waited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 5_000))]);
    expect(ended, "the waiter must end, not spin").toBeDefined();
    expect(ended?.code).toBe(1);
    expect(ended?.out).toContain("cannot take the build lock");
  } finally {
    holder.kill("SIGKILL");
    waiter?.kill("SIGKILL");
  }
}, 30_000);
