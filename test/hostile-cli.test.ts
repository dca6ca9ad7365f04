/**
 * A hostile round of the command-line tools (2026-12-04): what a careless or hostile operator types
 * into make's variables and the tools' environment. Each command runs for real, as a user runs it.
 */
import { spawn } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { EXIT_REFUSED } from "../platform/config.js";
import { holdDataDir } from "../scripts/data-dir.js";
import { SYSTEM } from "../scripts/layout.js";
import { until } from "./events.js";
import { built, exited, freePort, ROOT, runToEnd, spawnGateway, tempDir } from "./fixtures.js";
import { startNats } from "./nats.js";

/** `make -s <args>`, node_modules counted as installed (no `npm ci` under the suites beside it). */
const make = (args: string[], env: Record<string, string> = {}) =>
  runToEnd("make", ["-s", "--no-print-directory", "-o", "node_modules/.package-lock.json", ...args], {
    env: { ...process.env, ...env },
  });

describe("make's variables reach the commands as values, never as shell text", () => {
  it("a quote in USER is refused by make token as a bad USER, not a shell syntax error", async () => {
    const { code, out } = await make(["token", 'USER=a"b']);
    expect(code).toBe(2);
    expect(out).toContain('USER must be 1..128 of [A-Za-z0-9._:@-], got "a\\"b"');
    expect(out).not.toMatch(/unexpected EOF|syntax error/);
  });

  it("a command in USER or RATE is not run", async () => {
    const token = await make(["token", "USER=a`echo INJECTED`"]);
    expect(token.code).toBe(2);
    expect(token.out).toContain('got "a`echo INJECTED`"');
    // Pasted unquoted, `RATE=1; echo INJECTED` ran the echo and then the load at 1/s.
    const gateway = `http://127.0.0.1:${await freePort()}`;
    const load = await make(["load", "RATE=1; echo INJECTED"], { GATEWAY_URL: gateway, DURATION_S: "1" });
    expect(load.code).toBe(2);
    expect(load.out).toContain('RATE must be 1..2000 calls per second, got "1; echo INJECTED"');
    expect(load.out).not.toMatch(/^INJECTED$/m);
  });
});

/** `scripts/<name>` run as make runs it (from dist/), ended by `timeout` after `seconds` (exit 124) if it hangs. */
const script = (name: string, args: string[], env: Record<string, string>, seconds = 30) =>
  runToEnd("timeout", [String(seconds), process.execPath, ...built(`scripts/${name}`), ...args], {
    env: { ...process.env, ...env },
  });

describe("make load refuses what it cannot use, in one line", () => {
  it("DURATION_S that is no number of seconds (it ran until stopped), and a GATEWAY_URL that is no http:// URL (a stack trace)", async () => {
    const gateway = `http://127.0.0.1:${await freePort()}`;
    for (const bad of ["abc", "-1"]) {
      const { code, out } = await script("load.ts", [], { GATEWAY_URL: gateway, DURATION_S: bad }, 15);
      expect(code, out).toBe(2);
      expect(out).toContain(`DURATION_S must be a number of seconds (0: until stopped), got "${bad}"`);
    }
    for (const bad of ["garbage", "https://127.0.0.1:8443"]) {
      const { code, out } = await script("load.ts", [], { GATEWAY_URL: bad, DURATION_S: "1" }, 15);
      expect(code, out).toBe(2);
      expect(out).toBe(`GATEWAY_URL must be the gateway's http:// URL, e.g. http://127.0.0.1:8080; got "${bad}"\n`);
    }
  });
});

describe("make run and make history-rebuild refuse a PG_PORT, NATS_PORT or DB they cannot use, in one line", () => {
  it("PG_PORT=abc (a stack trace from the port probe), NATS_PORT=abc, DB=postgress (rebuilt the SQLite view)", async () => {
    using data = tempDir();
    // Ports the runner probes before PostgreSQL's: free ones, not the default ones other runs may hold.
    const env = {
      DATA_DIR: data.path,
      NATS_PORT: String(await freePort()),
      NATS_MONITOR_PORT: String(await freePort()),
    };
    const run = await script("run.ts", [], { ...env, DB: "postgres", PG_PORT: "abc" });
    expect(run.code, run.out).toBe(2);
    expect(run.out).toBe('PG_PORT must be a port (1..65535), got "abc"\n');
    for (const [bad, line] of [
      [{ DB: "postgres", PG_PORT: "abc" }, 'PG_PORT must be a port (1..65535), got "abc"'],
      [{ NATS_PORT: "abc" }, 'NATS_PORT must be a port (1..65535), got "abc"'],
      [{ DB: "postgress" }, 'DB must be sqlite or postgres, got "postgress"'],
    ] as const) {
      const rebuild = await script("history-rebuild.ts", [], { ...env, ...bad });
      expect(rebuild.code, rebuild.out).toBe(2);
      expect(rebuild.out).toBe(`${line}\n`);
    }
    // Misread before: LOG_FORMAT=JSON printed pretty lines, RESTART=false restarted what died.
    for (const [bad, line] of [
      [{ LOG_FORMAT: "JSON" }, 'LOG_FORMAT must be one of json, pretty, got "JSON"'],
      [{ RESTART: "never" }, 'RESTART must be one of yes, true, 1, no, false, 0, got "never"'],
    ] as const) {
      const refused = await script("run.ts", [], { ...env, ...bad });
      expect(refused.code, refused.out).toBe(2);
      expect(refused.out).toBe(`${line}\n`);
    }
    // Its margin past the services' grace, read as they read their variables: refused like theirs (78).
    const margin = await script("run.ts", [], { ...env, RUN_STOP_MARGIN_MS: "10s" });
    expect(margin.code, margin.out).toBe(EXIT_REFUSED);
    expect(margin.out).toContain('RUN_STOP_MARGIN_MS="10s" is not a decimal integer');
    expect(margin.out).not.toContain("    at ");
  });
});

describe("a users.json cut short (a full disk, a kill) is made again, not a stack trace", () => {
  it("make dlq over a data directory whose nats/users.json is half written", async () => {
    await using nats = await startNats();
    using data = tempDir();
    const file = join(data.path, "nats", "users.json");
    mkdirSync(join(data.path, "nats"));
    for (const cut of ['{"admin": "abc', "null", "[]"]) {
      writeFileSync(file, cut);
      const { code, out } = await script("events.ts", ["--dlq"], { DATA_DIR: data.path, NATS_URL: nats.url });
      expect(code, out).toBe(0);
      expect(out).toContain(`no dead letters on DLQ at ${nats.url}`);
      expect(Object.keys(JSON.parse(readFileSync(file, "utf8")))).toContain("admin");
    }
  });
});

describe("make trace reads what make run wrote, and only spans", () => {
  it("finds the span file under DATA_DIR, skips lines that are no span, and says in a line when it cannot read", async () => {
    using data = tempDir();
    const span = (name: string) => ({
      trace_id: "t1",
      span_id: name,
      parent_id: "",
      service: "order",
      name,
      kind: "SERVER",
      start_ms: 1,
      duration_ms: 2,
      error: "",
      attributes: { "order.id": "ord_1" },
    });
    // A torn line, a `null`, a span without attributes, one whose name is no string: not spans.
    const lines = ['{"trace_id":"t1","sp', "null", '{"trace_id":"t1"}', JSON.stringify({ ...span("x"), name: 5 })];
    writeFileSync(join(data.path, "traces.jsonl"), [...lines, JSON.stringify(span("PlaceOrder"))].join("\n"));
    // make run with DATA_DIR writes its spans there; make trace looked in .data/ whatever DATA_DIR said.
    const { code, out } = await script("trace.ts", [], { DATA_DIR: data.path, ORDER: "ord_1", TRACE_FILE: "" });
    expect(code, out).toBe(0);
    expect(out).toContain("trace t1  1 spans  2.0 ms");
    expect(out).toContain("order: PlaceOrder");
    const dir = await script("trace.ts", [], { TRACE_FILE: data.path, TRACE: "t1" });
    expect(dir.code, dir.out).toBe(1);
    expect(dir.out).toBe(`cannot read the span file ${data.path}: EISDIR: illegal operation on a directory, read\n`);
    // An order id it has no spans for is echoed escaped: a terminal's escape sequence in it is shown, not run.
    const unknown = await script("trace.ts", [], { DATA_DIR: data.path, ORDER: "ord_\u001b[2J", TRACE_FILE: "" });
    expect(unknown.code, unknown.out).toBe(1);
    expect(unknown.out).toContain("no spans for order ord_\\x1b[2J in ");
    expect(unknown.out).not.toContain("\u001b");
    // An order id given as TRACE (an operator's slip) is said to be one: it was "no spans for trace ord_1".
    const slip = await script("trace.ts", [], { DATA_DIR: data.path, TRACE: "ord_1", TRACE_FILE: "" });
    expect(slip.code, slip.out).toBe(1);
    expect(slip.out).toBe(
      `no spans for trace ord_1 in ${join(data.path, "traces.jsonl")}: ord_1 is an order id — make trace ORDER=ord_1\n`,
    );
  });
});

it("make demo refuses a SAGA_MODE it does not know (it ran the orchestrated saga)", async () => {
  // Unreachable services: before the check, the demo went on to place orders (and failed on them).
  const closed = `127.0.0.1:${await freePort()}`;
  const { code, out } = await make(["demo", "SAGA_MODE=choreograhy"], {
    ORDER_TARGET: closed,
    INVENTORY_TARGET: closed,
  });
  expect(code, out).toBe(2);
  expect(out).toContain('SAGA_MODE must be orchestration or choreography, got "choreograhy"');
  expect(out).not.toContain("placing");
});

describe("one make run per data directory", () => {
  it("a second runner on other ports but the same DATA_DIR is refused (it started a second NATS on the first's store)", async () => {
    using data = tempDir();
    // Every port free, so that only the data directory is shared with the "first run" (this process).
    const ports: Record<string, string> = { RESTART: "no" };
    for (const v of [
      "NATS_PORT",
      "NATS_MONITOR_PORT",
      ...SYSTEM.flatMap((p) => [`${p.name.toUpperCase()}_PORT`, `${p.name.toUpperCase()}_METRICS_PORT`]),
    ])
      ports[v] = String(await freePort());
    // This process as the running make run: the data directory held, its pid in run.pid.
    const release = holdDataDir(data.path, { runner: true });
    if (typeof release !== "function") throw new Error(`not held: ${release.heldBy}`);
    try {
      const second = await script("run.ts", [], { ...ports, DATA_DIR: data.path }, 20);
      expect(second.code, second.out).toBe(1);
      expect(second.out).toBe(
        `make run (pid ${process.pid}) is using ${data.path}: stop it, or set DATA_DIR=<another directory>\n`,
      );
      expect(readFileSync(join(data.path, "run.pid"), "utf8")).toBe(`${process.pid}\n`);
    } finally {
      release();
    }
    expect(existsSync(join(data.path, "run.pid"))).toBe(false);
    // A DATA_DIR that is a file: a line (it was an EEXIST or ENOTDIR stack trace).
    const file = join(data.path, "a-file");
    writeFileSync(file, "");
    const notDir = await script("run.ts", [], { ...ports, DATA_DIR: file }, 20);
    expect(notDir.code, notDir.out).toBe(1);
    expect(notDir.out).toMatch(new RegExp(`^cannot use the data directory ${file}: E[A-Z]+: [^\n]*\n$`));
    // One the system answers ENOENT for under a parent that exists (/proc): Node 20's recursive mkdir
    // retried it for ever, at a core's full use, and make run (and history-rebuild, restore) hung.
    const proc = await script("run.ts", [], { ...ports, DATA_DIR: "/proc/shopmesh-data" }, 10);
    expect(proc.code, proc.out).toBe(1);
    expect(proc.out).toMatch(/^cannot use the data directory \/proc\/shopmesh-data: ENOENT: [^\n]*\n$/);
  });

  it("two runners started at once over a file a killed one left: one holds the directory, the other is refused", async () => {
    // A pid file alone: each read the other's before its pid was in it, or both took over the stale one
    // (the review: both held it in 12 of 200 tries).
    // Each holds on until both have decided (a file each in argv[2]), not for a fixed 1.5 s: the one that
    // decides first cannot have let go before the other tried, however slowly that one starts.
    const holder = `const { holdDataDir } = await import(${JSON.stringify(join(ROOT, "dist", "scripts", "data-dir.js"))});
      const { readdirSync, writeFileSync } = await import("node:fs");
      const held = holdDataDir(process.argv[1], { runner: true });
      console.log(typeof held === "function" ? "held" : "refused");
      writeFileSync(process.argv[2] + "/" + process.pid, "");
      const until = Date.now() + 30_000; // the other crashed: the comparison below says so
      while (readdirSync(process.argv[2]).length < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));`;
    for (let trial = 0; trial < 4; trial++) {
      using data = tempDir();
      using decided = tempDir();
      writeFileSync(join(data.path, "run.pid"), "999999999\n"); // no such process
      const both = await Promise.all(
        [0, 1].map(() =>
          runToEnd(process.execPath, ["--input-type=module", "-e", holder, data.path, decided.path], {
            env: process.env,
          }),
        ),
      );
      expect(both.map((r) => r.out.trim()).sort(), `trial ${trial}`).toEqual(["held", "refused"]);
    }
  }, 60_000);
});

it("make history-rebuild refuses a data directory a make run is using, before it starts a NATS on its store", async () => {
  using data = tempDir();
  const release = holdDataDir(data.path, { runner: true }); // this process as the running make run
  if (typeof release !== "function") throw new Error(`not held: ${release.heldBy}`);
  try {
    const { code, out } = await script("history-rebuild.ts", [], {
      DATA_DIR: data.path,
      NATS_PORT: String(await freePort()),
    });
    expect(code, out).toBe(1);
    expect(out).toBe(`history rebuild: make run (pid ${process.pid}) is using ${data.path}: stop it first\n`);
  } finally {
    release();
  }
});

it("make token whose output's reader is gone (TOKEN=$(make token) in a shell that closed it) exits 0, no stack trace", async () => {
  const child = spawn(process.execPath, [...built("scripts/token.ts"), "alice", "customer"], {
    env: process.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout.destroy();
  let err = "";
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  expect(await exited(child), err).toBe(0);
  expect(err).toBe("");
});

it("make token says what the gateway's configuration refuses in its words, not in a stack trace", async () => {
  const { code, out } = await script("token.ts", ["alice"], { JWT_SECRET: "abc" });
  expect(code, out).toBe(78);
  expect(out).toBe(
    "invalid configuration:\n  JWT_SECRET has 3 bytes: an HS256 secret needs at least 32 (256 bits, RFC 7518 §3.2), " +
      "e.g. `openssl rand -base64 32`\n",
  );
});

it("make demo reads an empty ORDER_TARGET or INVENTORY_TARGET as unset (ORDER_TARGET= was a stack trace)", async () => {
  // In a network namespace of its own (unshare -rn: CI runs as root), where nothing answers: the
  // default ports are other runs' on this machine, and are not called.
  const { code, out } = await runToEnd("unshare", ["-rn", process.execPath, ...built("scripts/demo.ts")], {
    env: { ...process.env, ORDER_TARGET: "", INVENTORY_TARGET: "" },
  });
  expect(code, out).toBe(1);
  expect(out).toContain("cannot reach the order service at 127.0.0.1:50053: is `make run` running?");
  // A make run on moved ports (ORDER_PORT=...) is not found here: the line names the variables that point demo at it.
  expect(out).toContain(
    "on other ports: ORDER_TARGET=127.0.0.1:<ORDER_PORT> INVENTORY_TARGET=127.0.0.1:<INVENTORY_PORT> make demo",
  );
});

it('make events reads an empty NATS_URL as unset (NATS_URL= was "NATS at  refused the connection: Invalid URL")', async () => {
  using data = tempDir();
  // In a network namespace of its own, as above: the default port is other runs' on this machine.
  const { code, out } = await runToEnd("unshare", ["-rn", process.execPath, ...built("scripts/events.ts"), "--dlq"], {
    env: { ...process.env, NATS_URL: "", DATA_DIR: data.path, EVENTS_CONNECT_TIMEOUT_MS: "1000" },
  });
  expect(code, out).toBe(1);
  expect(out).toContain("cannot reach NATS at nats://127.0.0.1:4222 within 1 s");
  // A make run on moved ports (NATS_PORT=...) is not found here: the line names the variable that points the command at it.
  expect(out).toContain("on other ports: NATS_URL=nats://127.0.0.1:<NATS_PORT>");
});

/** Whether process `pid` exists (a signal 0 reaches it). */
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Every port make run takes, free now. */
async function freeRunPorts(): Promise<Record<string, string>> {
  const env: Record<string, string> = {};
  for (const v of [
    "NATS_PORT",
    "NATS_MONITOR_PORT",
    ...SYSTEM.flatMap((p) => [`${p.name.toUpperCase()}_PORT`, `${p.name.toUpperCase()}_METRICS_PORT`]),
  ])
    env[v] = String(await freePort());
  return env;
}

/** make run's runner from dist/ with `env`, its output so far in `out()`, resolved once the gateway listens. */
async function startRunner(env: Record<string, string>) {
  const runner = spawn(process.execPath, [join(ROOT, "dist", "scripts", "run.js")], {
    cwd: ROOT,
    env: { ...process.env, LOG_FORMAT: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  runner.stdout.on("data", (d: Buffer) => (out += d.toString()));
  runner.stderr.on("data", (d: Buffer) => (out += d.toString()));
  const stop = () => {
    if (runner.exitCode === null && runner.signalCode === null) {
      runner.kill("SIGINT");
      runner.kill("SIGINT");
    }
  };
  // Ready once the gateway listens; given up at once if make run exits first (a port taken meanwhile, say).
  const gone = () => runner.exitCode !== null || runner.signalCode !== null;
  const ready = await until(
    () => /gateway listening/.test(out) || gone(),
    (x) => x,
    60_000,
  );
  if (!ready || gone()) {
    stop();
    const why = gone() ? `exited (${runner.exitCode ?? runner.signalCode})` : "was not ready within 60 s";
    throw new Error(`make run ${why}:\n${out}`);
  }
  return { runner, out: () => out, stop };
}

it("make run, stopped, kills a service that does not stop within its grace, says so and exits 1 (it waited for ever)", async () => {
  using data = tempDir();
  // A margin of 2 s past the grace, not the default 10 s: what is killed, and said, is the same.
  const env = { ...(await freeRunPorts()), DATA_DIR: data.path, SHUTDOWN_GRACE_MS: "1000", RUN_STOP_MARGIN_MS: "2000" };
  const { runner, out: output, stop } = await startRunner(env);
  let out = output();
  const frozen: number[] = [];
  try {
    // A service stuck in its stop (the disk full under it, say): frozen, it never answers SIGTERM.
    const pid = Number(/history +\| started \(pid (\d+)\)/.exec(out)?.[1]);
    process.kill(pid, "SIGSTOP");
    frozen.push(pid);
    runner.kill("SIGINT");
    const code = await Promise.race([exited(runner), new Promise((r) => setTimeout(() => r("still running"), 30_000))]);
    out = output();
    expect(code, out).toBe(1);
    expect(out).toContain("history did not stop within 3 s: killed");
    expect(out).toContain("all stopped");
  } finally {
    for (const pid of frozen) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
    stop();
  }
}, 120_000);

it("make run, stopped, kills a NATS that does not stop (frozen; its store on a full disk), says so and exits 1 (it waited for ever)", async () => {
  using data = tempDir();
  // A margin of 2 s past the grace, not the default 10 s: what is killed, and said, is the same.
  const env = { ...(await freeRunPorts()), DATA_DIR: data.path, SHUTDOWN_GRACE_MS: "1000", RUN_STOP_MARGIN_MS: "2000" };
  const { runner, out, stop } = await startRunner(env);
  const nats = Number(/nats +\| started \(pid (\d+)\)/.exec(out())?.[1]);
  try {
    process.kill(nats, "SIGSTOP");
    runner.kill("SIGINT");
    const code = await Promise.race([exited(runner), new Promise((r) => setTimeout(() => r("still running"), 60_000))]);
    expect(code, out()).toBe(1);
    expect(out()).toContain("nats did not stop within 2 s: killed");
    expect(out()).toContain("all stopped");
    expect(alive(nats)).toBe(false);
  } finally {
    if (alive(nats)) process.kill(nats, "SIGKILL");
    stop();
  }
}, 120_000);

it("make run after one killed outright (SIGKILL) stops what that one left on the store and the ports, and starts (it refused: port in use)", async () => {
  using data = tempDir();
  const env = { ...(await freeRunPorts()), DATA_DIR: data.path };
  const first = await startRunner(env);
  let second: Awaited<ReturnType<typeof startRunner>> | undefined;
  let left: number[] = [];
  try {
    first.runner.kill("SIGKILL");
    await exited(first.runner);
    // Its nats-server, services and gateway, each in a process group of its own, live on.
    left = readFileSync(join(data.path, "run.children"), "utf8")
      .split("\n")
      .map((line) => Number(line.split(" ")[0]))
      .filter((pid) => pid > 0);
    expect(left.length, first.out()).toBe(1 + SYSTEM.length);
    expect(left.filter(alive), "the killed runner's processes live on").toEqual(left);
    const nats = Number(/nats +\| started \(pid (\d+)\)/.exec(first.out())?.[1]);
    second = await startRunner(env);
    expect(second.out()).toContain(
      `stopping nats (pid ${nats}), left running on ${data.path} by a holder that was killed`,
    );
    expect(left.filter(alive)).toEqual([]);
    second.runner.kill("SIGINT");
    expect(await exited(second.runner), second.out()).toBe(0);
  } finally {
    second?.stop();
    first.stop();
    for (const pid of left.filter(alive)) process.kill(-pid, "SIGKILL"); // should the second not have stopped them
  }
}, 120_000);

/** The pids make run recorded for what it started (DATA_DIR/run.children). */
const childrenOf = (dataDir: string) =>
  readFileSync(join(dataDir, "run.children"), "utf8")
    .split("\n")
    .map((line) => Number(line.split(" ")[0]))
    .filter((pid) => pid > 0);

// SIGHUP: its terminal closed; SIGUSR2: what nodemon and other restarters send.
it.each(["SIGHUP", "SIGUSR2"] as const)(
  "make run told %s stops everything it started and exits 0 (it died, leaving all of it running)",
  async (signal) => {
    using data = tempDir();
    const env = { ...(await freeRunPorts()), DATA_DIR: data.path };
    const { runner, out, stop } = await startRunner(env);
    const started = childrenOf(data.path);
    try {
      expect(started.length, out()).toBe(1 + SYSTEM.length);
      runner.kill(signal);
      expect(await exited(runner), out()).toBe(0);
      expect(out()).toContain("all stopped");
      expect(started.filter(alive), "left running").toEqual([]);
    } finally {
      stop();
      for (const pid of started.filter(alive)) process.kill(-pid, "SIGKILL");
    }
  },
  120_000,
);

it("make run whose output's reader is gone (make run | head) stops everything, says so on stderr and exits 141 (a stack trace, everything SIGKILLed)", async () => {
  using data = tempDir();
  const env = { ...(await freeRunPorts()), DATA_DIR: data.path };
  const { runner, out, stop } = await startRunner(env);
  const started = childrenOf(data.path);
  let err = "";
  runner.stderr.on("data", (d: Buffer) => (err += d.toString()));
  try {
    runner.stdout.destroy();
    // Something for the runner to say: a service gone, which it reports (and would restart).
    const history = Number(/history +\| started \(pid (\d+)\)/.exec(out())?.[1]);
    process.kill(history, "SIGKILL");
    expect(await exited(runner), err).toBe(141);
    expect(err).toContain("make run: its output's reader is gone: stopping everything");
    expect(err).not.toMatch(/Error: write|node:events/);
    expect(started.filter(alive), "left running").toEqual([]);
  } finally {
    stop();
    for (const pid of started.filter(alive)) process.kill(-pid, "SIGKILL");
  }
}, 120_000);

it("make run with DB=postgres, Ctrl-C twice, kills PostgreSQL's postmaster too (left running under its killed runuser, the next make run refused: port in use)", async () => {
  using data = tempDir();
  chmodSync(data.path, 0o755); // as root, PostgreSQL runs as its own user, who must reach its data directory
  const env = { ...(await freeRunPorts()), DATA_DIR: data.path, DB: "postgres", PG_PORT: String(await freePort()) };
  const { runner, out, stop } = await startRunner(env);
  const started = childrenOf(data.path);
  const postmaster = Number(readFileSync(join(data.path, "postgres", "postmaster.pid"), "utf8").split("\n")[0]);
  try {
    // A service frozen in its stop keeps the first Ctrl-C's stop waiting: the second one kills.
    const history = Number(/history +\| started \(pid (\d+)\)/.exec(out())?.[1]);
    process.kill(history, "SIGSTOP");
    runner.kill("SIGINT");
    await until(
      () => out().includes("stopping (Ctrl-C again to kill)"),
      (x) => x,
      10_000,
    );
    runner.kill("SIGINT");
    expect(await exited(runner), out()).toBe(130);
    const gone = await until(
      () => [postmaster, ...started].filter(alive),
      (left) => left.length === 0,
      5_000,
    );
    expect(gone, "left running").toEqual([]);
  } finally {
    stop();
    for (const pid of [postmaster, ...started].filter(alive)) process.kill(pid, "SIGKILL");
  }
}, 180_000);

it("make run refuses replicas whose ports pass 65535, in one line (a RangeError stack trace)", async () => {
  using data = tempDir();
  const env = { DATA_DIR: data.path, NATS_PORT: String(await freePort()), NATS_MONITOR_PORT: String(await freePort()) };
  const { code, out } = await script("run.ts", [], { ...env, PAYMENT_PORT: "65480", PAYMENT_REPLICAS: "2" });
  expect(code, out).toBe(2);
  expect(out).toBe(
    "payment would listen on port 65580, past 65535 (replicas take PAYMENT_PORT + 100 each): set PAYMENT_PORT lower\n",
  );
});

it("make run refuses two processes on one port, naming both variables (the second crashed and restarted for ever, told to set METRICS_PORT)", async () => {
  using data = tempDir();
  const env = { DATA_DIR: data.path, NATS_PORT: String(await freePort()), NATS_MONITOR_PORT: String(await freePort()) };
  const port = String(await freePort());
  const { code, out } = await script("run.ts", [], {
    ...env,
    NOTIFICATION_METRICS_PORT: port,
    HISTORY_METRICS_PORT: port,
  });
  expect(code, out).toBe(2);
  expect(out).toBe(
    `port ${port} is given to notification metrics (NOTIFICATION_METRICS_PORT) and to history metrics (HISTORY_METRICS_PORT): set one of them to another port\n`,
  );
});

it("make run names a replica's port by the rule that gives it: the variable named was not the port in conflict", async () => {
  using data = tempDir();
  const env = { DATA_DIR: data.path, NATS_PORT: String(await freePort()), NATS_MONITOR_PORT: String(await freePort()) };
  const port = await freePort();
  const { code, out } = await script("run.ts", [], {
    ...env,
    INVENTORY_PORT: String(port - 100),
    INVENTORY_REPLICAS: "2",
    PAYMENT_PORT: String(port),
  });
  expect(code, out).toBe(2);
  expect(out).toBe(
    `port ${port} is given to inventory (INVENTORY_PORT + 100) and to payment (PAYMENT_PORT): set one of them to another port\n`,
  );
});

it("make run names a taken replica port by the rule that gives it, not as its variable's port", async () => {
  using data = tempDir();
  // Every other port free and picked here: a default port held by anything else on the machine (once in
  // CI) added a line of its own, and the squatted one was no longer the only one named.
  const env: Record<string, string> = { ...(await freeRunPorts()), DATA_DIR: data.path, INVENTORY_REPLICAS: "2" };
  const taken = (p: number) => Object.values(env).includes(String(p));
  let port = await freePort();
  const metrics = Number(env.INVENTORY_METRICS_PORT) + 100; // the second replica's
  while (taken(port) || taken(port - 100) || port === metrics || port - 100 === metrics) port = await freePort();
  const squatter = createServer();
  await new Promise<void>((r) => squatter.listen(port, r));
  try {
    const { code, out } = await script("run.ts", [], { ...env, INVENTORY_PORT: String(port - 100) });
    expect(code, out).toBe(1);
    expect(out).toMatch(
      new RegExp(
        `^port ${port} \\(inventory, INVENTORY_PORT \\+ 100\\) is in use by node \\(pid ${process.pid}\\): stop it \\(another make run\\?\\) or set INVENTORY_PORT to another port\n$`,
      ),
    );
  } finally {
    squatter.close();
  }
});

it("make clean refuses to remove .data from under a running make run, or what one killed outright left running", async () => {
  // A copy of the Makefile in a directory of its own: a failing test must not remove this checkout's .data.
  using dir = tempDir();
  mkdirSync(join(dir.path, "deploy"));
  mkdirSync(join(dir.path, ".data"));
  copyFileSync(join(ROOT, "Makefile"), join(dir.path, "Makefile"));
  copyFileSync(join(ROOT, "deploy", "deploy.mk"), join(dir.path, "deploy", "deploy.mk"));
  writeFileSync(join(dir.path, ".data", "run.pid"), `${process.pid}\n`); // this process as the running make run
  const { code, out } = await runToEnd("make", ["-s", "-C", dir.path, "clean"]);
  expect(code, out).toBe(2);
  expect(out).toContain(`make run (pid ${process.pid}) is using .data: stop it first`);
  expect(existsSync(join(dir.path, ".data", "run.pid"))).toBe(true);
  // Nor from under what a make run killed outright left: this process as its NATS, a dead one as its order.
  rmSync(join(dir.path, ".data", "run.pid"));
  const stat = readFileSync("/proc/self/stat", "utf8");
  const start = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  writeFileSync(join(dir.path, ".data", "run.children"), `${process.pid} ${start} nats\n999999999 1 order\n`);
  const left = await runToEnd("make", ["-s", "-C", dir.path, "clean"]);
  expect(left.code, left.out).toBe(2);
  expect(left.out).toContain(`nats (pid ${process.pid}), left by a make run killed outright, still runs on .data`);
  expect(left.out).toContain(`or kill them: ${process.pid}\n`);
  expect(left.out).not.toContain("order");
  expect(existsSync(join(dir.path, ".data", "run.children"))).toBe(true);
});

it("make load signs its customers' tokens as the gateway was configured: its JWT_SECRET (it used the development key: all 401), its JWT_MAX_LIFETIME_S (tokens of 12 h: all 401)", async () => {
  const closed = `127.0.0.1:${await freePort()}`;
  const jwt = { JWT_SECRET: "a-secret-of-this-deployment-with-more-than-32-bytes", JWT_MAX_LIFETIME_S: "600" };
  // Upstreams at a closed port: a call that passes the gateway's token check ends there, not at 401.
  const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), closed]));
  await using gateway = await spawnGateway({ ...targets, ...jwt, NATS_URL: "off", METRICS_PORT: "0" });
  const { code, out } = await script("load.ts", [], {
    GATEWAY_URL: `http://127.0.0.1:${gateway.port}`,
    ...jwt,
    RATE: "20",
    DURATION_S: "2",
  });
  expect(code, out).toBe(0);
  expect(out).toMatch(/total over 2 s: .*browse /);
  expect(out).not.toContain(" 401");
});
