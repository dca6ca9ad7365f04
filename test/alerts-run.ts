/** `make alerts`' command as the alert suites run it (test/alerts.test.ts, test/alerts-command.test.ts). */
import { type ChildProcess, spawn } from "node:child_process";
import { until } from "./events.js";
import { built, exited, ROOT } from "./fixtures.js";

const children: ChildProcess[] = [];

/** Stops every command alerts() started, as Ctrl-C stops it, and waits: SIGKILL left their Prometheus running. */
export async function stopAlerts(): Promise<void> {
  for (const c of children.splice(0)) {
    c.kill("SIGTERM");
    await exited(c);
  }
}

/** `make alerts`' command from the build, with `env`; its output, and when it printed something. */
export function alerts(env: Record<string, string>) {
  const child = spawn(process.execPath, built("scripts/alerts.ts"), {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (out += d.toString()));
  return {
    child,
    out: () => out,
    async printed(pattern: RegExp, ms = 30_000): Promise<void> {
      if (!(await until(() => pattern.test(out), Boolean, ms))) throw new Error(`no ${pattern} in ${ms} ms:\n${out}`);
    },
  };
}
