/**
 * `make alerts`' command (scripts/alerts.ts) under odd and hostile conditions, with a real Prometheus:
 * bad settings end it with one line and exit 2; a Prometheus that dies on its own, a second command on
 * the same data directory, or no Prometheus at all end it with a line and exit 1; a signal stops its
 * Prometheus with it; label values a scraped process chose cannot drive the terminal; an answer that
 * is not JSON (a stand-in Prometheus gives it on purpose) is asked again, not a crash.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { answers } from "../scripts/nats.js";
import { alerts, stopAlerts } from "./alerts-run.js";
import { until } from "./events.js";
import { exited, freePort, ROOT, tempDir } from "./fixtures.js";

afterEach(stopAlerts);

/** Settings for a make alerts on its own port and data directory, every process's metrics port free. */
async function settings(dataDir: string): Promise<Record<string, string>> {
  const env: Record<string, string> = {
    PROMETHEUS_PORT: String(await freePort()),
    PROMETHEUS_INTERVAL: "1",
    DATA_DIR: dataDir,
  };
  for (const name of ["inventory", "payment", "order", "notification", "history", "gateway"])
    env[`${name.toUpperCase()}_METRICS_PORT`] = String(await freePort());
  return env;
}

/** The pids of `pid`'s children (from /proc). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const task of readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/))
    if (task) out.push(Number(task));
  return out;
}

const BANNER = /Prometheus on http:\/\/localhost:\d+\/ /;

describe("make alerts, odd and hostile", () => {
  it("refuses bad settings with a line naming the variable, exit 2", async () => {
    using dir = tempDir();
    const env = await settings(dir.path);
    for (const [variable, value, line] of [
      ["PROMETHEUS_PORT", "abc", 'PROMETHEUS_PORT must be a port (1..65535), got "abc"'],
      ["PROMETHEUS_INTERVAL", "1e1", 'PROMETHEUS_INTERVAL must be whole seconds, 1..60, got "1e1"'],
      ["HISTORY_METRICS_PORT", "0x2391", 'HISTORY_METRICS_PORT must be a port (1..65535), got "0x2391"'],
      ["ORDER_REPLICAS", "0", 'ORDER_REPLICAS must be 1..5, got "0"'],
    ] as const) {
      const run = alerts({ ...env, [variable]: value });
      expect(await exited(run.child), variable).toBe(2);
      expect(run.out()).toBe(`${line}\n`);
    }
    // Replicas listen on the metrics port + 100 each, as make run starts them: none past 65535.
    const far = alerts({ ...env, PAYMENT_METRICS_PORT: "65500", PAYMENT_REPLICAS: "2" });
    expect(await exited(far.child)).toBe(2);
    expect(far.out()).toBe(
      "payment's replica 2 would serve its metrics on port 65600, past 65535 (replicas take PAYMENT_METRICS_PORT + 100 each): set PAYMENT_METRICS_PORT lower\n",
    );
  });

  it("refuses a data directory it cannot use in a line, not a stack trace, exit 1", async () => {
    using dir = tempDir();
    const file = join(dir.path, "a-file");
    writeFileSync(file, "");
    const run = alerts({ ...(await settings(dir.path)), DATA_DIR: file });
    expect(await exited(run.child)).toBe(1);
    expect(run.out()).toBe(
      `cannot use the data directory ${file}: ENOTDIR: not a directory, mkdir '${file}/prometheus'\n`,
    );
  });

  it("refuses a data directory the system answers ENOENT for under a parent that exists (/proc), exit 1", async () => {
    using dir = tempDir();
    // Node 20's recursive mkdir retried it for ever, at a core's full use: make alerts hung.
    const run = alerts({ ...(await settings(dir.path)), DATA_DIR: "/proc/shopmesh-alerts" });
    const stop = setTimeout(() => run.child.kill("SIGKILL"), 10_000);
    const code = await exited(run.child).finally(() => clearTimeout(stop));
    expect(run.out()).toMatch(/^cannot use the data directory \/proc\/shopmesh-alerts: ENOENT: [^\n]*\n$/);
    expect(code).toBe(1);
  });

  it("says Prometheus is missing when it is not on the PATH, exit 1", async () => {
    using dir = tempDir();
    const run = alerts({ ...(await settings(dir.path)), PATH: dir.path });
    expect(await exited(run.child)).toBe(1);
    expect(run.out()).toMatch(/^prometheus is not installed\. Install it/);
  });

  it("ends with a line and exit 1 when its Prometheus dies on its own", async () => {
    using dir = tempDir();
    const env = await settings(dir.path);
    const run = alerts(env);
    await run.printed(BANNER);
    const [prometheus] = childrenOf(run.child.pid ?? 0);
    expect(prometheus).toBeGreaterThan(0);
    process.kill(prometheus ?? 0, "SIGKILL");
    expect(await exited(run.child)).toBe(1);
    expect(run.out()).toMatch(/\nprometheus ended on its own \(SIGKILL\): make alerts stops\n$/);
  }, 30_000);

  it("its output's reader gone (make alerts | head -1): stops its Prometheus and exits 0 (died of EPIPE, a stack trace)", async () => {
    using dir = tempDir();
    const env = await settings(dir.path);
    const run = alerts(env);
    run.child.stdout.destroy();
    let err = "";
    run.child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    expect(await exited(run.child), err).toBe(0);
    expect(err).not.toMatch(/Error: write|node:events/);
    const prometheus = Number(readFileSync(join(dir.path, "prometheus", "run.children"), "utf8").split(" ")[0]);
    expect(prometheus).toBeGreaterThan(0);
    expect(
      await until(
        () => existsSync(`/proc/${prometheus}`),
        (alive) => !alive,
        10_000,
      ),
      "its Prometheus stopped",
    ).toBe(false);
  }, 30_000);

  it("keeps watching through an answer that is not JSON (a Prometheus shutting down says 503 in text)", async () => {
    using dir = tempDir();
    // A stand-in for Prometheus, first on the PATH: ready at once, then its alerts API answers in
    // plain text twice before it names an alert (the SIGTERM test met this once under load: exit 1).
    const bin = join(dir.path, "bin");
    mkdirSync(bin);
    const fake = join(bin, "prometheus");
    writeFileSync(
      fake,
      `#!${process.execPath}
if (process.argv.includes("--version")) process.exit(0);
const [, port] = process.argv.find((a) => a.startsWith("--web.listen-address="))?.split(":") ?? [];
let asked = 0;
import("node:http").then((http) => http.createServer((req, res) => {
  if (req.url !== "/api/v1/alerts") return res.end("ready");
  if (++asked <= 2) { res.writeHead(503); return res.end("Service Unavailable"); }
  res.setHeader("content-type", "application/json");
  res.end(JSON.stringify({ data: { alerts: [{ state: "firing", labels: { alertname: "ShopmeshFake" }, annotations: { summary: "seen" } }] } }));
}).listen(Number(port), "127.0.0.1"));
`,
      { mode: 0o755 },
    );
    const run = alerts({ ...(await settings(dir.path)), PATH: `${bin}:${process.env.PATH}` });
    await run.printed(/FIRING ShopmeshFake : seen/, 20_000);
    expect(run.child.exitCode).toBeNull();
  }, 30_000);

  it("refuses a second one on the same data directory (its Prometheus would share the first's store)", async () => {
    using dir = tempDir();
    const env = await settings(dir.path);
    const first = alerts(env);
    await first.printed(BANNER);
    const secondPort = await freePort();
    const second = alerts({ ...env, PROMETHEUS_PORT: String(secondPort) });
    expect(await exited(second.child)).toBe(1);
    expect(second.out()).toBe(
      `another make alerts (pid ${first.child.pid}) uses ${dir.path}/prometheus: stop it, or set DATA_DIR\n`,
    );
    expect(await answers("127.0.0.1", secondPort)).toBe(false);
    expect(first.child.exitCode).toBeNull();
  }, 30_000);

  it("stops the Prometheus a make alerts killed outright left running on its directory", async () => {
    using dir = tempDir();
    const env = await settings(dir.path);
    const first = alerts(env);
    await first.printed(BANNER);
    const [left] = childrenOf(first.child.pid ?? 0);
    first.child.kill("SIGKILL");
    await exited(first.child);
    expect(() => process.kill(left ?? 0, 0)).not.toThrow(); // orphaned, still on the store
    // The same settings, its port too (held by the one left): as a make alerts run again would.
    const next = alerts(env);
    await next.printed(BANNER);
    expect(next.out()).toContain(
      `stopping prometheus (pid ${left}), left running on ${dir.path}/prometheus by a holder that was killed\n`,
    );
    expect(() => process.kill(left ?? 0, 0)).toThrow();
    const [own] = childrenOf(next.child.pid ?? 0);
    expect(own).not.toBe(left);
  }, 30_000);

  it("keeps make clean from removing the store under it", async () => {
    using dir = tempDir();
    const data = join(dir.path, ".data");
    const run = alerts(await settings(data));
    await run.printed(BANNER);
    // make clean removes .data of the directory it runs in: here, the temporary one (the Makefile
    // includes deploy/deploy.mk).
    symlinkSync(join(ROOT, "deploy"), join(dir.path, "deploy"));
    const clean = spawnSync("make", ["-s", "-f", join(ROOT, "Makefile"), "-C", dir.path, "clean"], {
      encoding: "utf8",
    });
    expect(clean.stderr).toContain(`make alerts (pid ${run.child.pid}) is using .data/prometheus: stop it first`);
    expect(clean.status).not.toBe(0);
    expect(existsSync(join(data, "prometheus", "data"))).toBe(true);
    run.child.kill("SIGINT");
    expect(await exited(run.child)).toBe(0);
    const after = spawnSync("make", ["-s", "-f", join(ROOT, "Makefile"), "-C", dir.path, "clean"], {
      encoding: "utf8",
    });
    expect(after.status, after.stderr).toBe(0);
    expect(existsSync(data)).toBe(false);
  }, 30_000);

  it("stops its Prometheus on SIGTERM and exits 0", async () => {
    using dir = tempDir();
    const env = await settings(dir.path);
    const run = alerts(env);
    await run.printed(BANNER);
    const [prometheus] = childrenOf(run.child.pid ?? 0);
    run.child.kill("SIGTERM");
    expect(await exited(run.child)).toBe(0);
    expect(await answers("127.0.0.1", Number(env.PROMETHEUS_PORT))).toBe(false);
    expect(() => process.kill(prometheus ?? 0, 0)).toThrow(); // gone, not orphaned
  }, 30_000);

  it("starts a store of its own each run: the last run's processes raise nothing in the next", async () => {
    using dir = tempDir();
    const env = await settings(dir.path);
    const first = alerts(env);
    const old = `localhost:${env.HISTORY_METRICS_PORT}`;
    await first.printed(new RegExp(`PENDING ShopmeshProcessDown app=history instance=${old} `));
    first.child.kill("SIGINT");
    expect(await exited(first.child)).toBe(0);

    // The same directory, history's metrics moved: its old port was last seen down, seconds ago.
    const second = alerts({ ...env, HISTORY_METRICS_PORT: String(await freePort()) });
    await second.printed(/PENDING ShopmeshProcessDown app=history instance=localhost:\d+ /);
    await new Promise((r) => setTimeout(r, 3_000)); // three evaluations more
    expect(second.out()).not.toContain(old);
  }, 60_000);

  it("prints label values a scraped process chose without their terminal escapes", async () => {
    using dir = tempDir();
    const env = await settings(dir.path);
    // A process on history's metrics port whose counter is first seen above 0 (a dead letter before
    // its first scrape), its labels carrying a screen clear and a window-title change.
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
      res.end(
        'events_dead_lettered_total{service="history",consumer="evil\u001b[2J\u001b]0;pwned\u0007"} 1\n' +
          'nodejs_version_info{service="history",version="v20"} 1\n',
      );
    });
    await new Promise<void>((r) => server.listen(Number(env.HISTORY_METRICS_PORT), "127.0.0.1", r));
    try {
      const run = alerts(env);
      await run.printed(/FIRING ShopmeshDeadLetters consumer=evil/);
      const controls = [...run.out()].filter((c) => c !== "\n" && (c < " " || c === "\u007f"));
      expect(controls).toEqual([]);
    } finally {
      await new Promise((r) => server.close(r));
    }
  }, 30_000);
});
