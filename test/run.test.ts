/**
 * `make run` as a user lives it, with real processes: the whole system from
 * its build, on ports of the test's choosing (the variables `make run`
 * documents), a service killed with SIGKILL coming back by itself and
 * serving orders again, and a taken port refused with one line that names
 * it, its holder and the variable to change.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { stripVTControlCharacters } from "node:util";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { SYSTEM } from "../scripts/layout.js";
import { built, freePort, ROOT, tempDir } from "./fixtures.js";

const NAMES = SYSTEM.map((p) => p.name);
const running: ChildProcess[] = [];
afterEach(async () => {
  for (const c of running.splice(0)) {
    if (c.exitCode !== null || c.signalCode !== null) continue;
    c.kill("SIGINT");
    await new Promise((r) => c.once("exit", r));
  }
});

/** Env moving every port of `make run` to a free one. */
async function ports(): Promise<{ env: Record<string, string>; of: (name: string) => number }> {
  const env: Record<string, string> = {};
  for (const n of NAMES) {
    env[`${n.toUpperCase()}_PORT`] = String(await freePort());
    env[`${n.toUpperCase()}_METRICS_PORT`] = String(await freePort());
  }
  env.NATS_PORT = String(await freePort());
  env.NATS_MONITOR_PORT = String(await freePort());
  return { env, of: (name) => Number(env[`${name.toUpperCase()}_PORT`]) };
}

/**
 * Starts the runner; `lines` collects its output, `waitFor` resolves on the first line matching. With
 * `terminal`, its output is a pseudo-terminal (test/fixtures/pty-run.py, which `child` then is: "pause"
 * and "resume" on its stdin type Ctrl-S and Ctrl-Q), its colours taken out of `lines`. A `shared` one is
 * not stopped after each test: the describe that starts it stops it.
 */
function runner(env: Record<string, string>, { terminal = false, shared = false } = {}) {
  const run = [join(ROOT, "dist", "scripts", "run.js")];
  const child = terminal
    ? spawn("python3", [join(ROOT, "test", "fixtures", "pty-run.py"), process.execPath, ...run], {
        cwd: ROOT,
        env: { ...process.env, ...env },
        stdio: ["pipe", "pipe", "pipe"],
      })
    : spawn(process.execPath, run, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  if (!shared) running.push(child);
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  const take = (d: Buffer) => {
    for (const raw of d.toString().split("\n")) {
      const line = stripVTControlCharacters(raw).replace(/\r$/, "");
      if (!line) continue;
      lines.push(line);
      for (const w of waiters.filter((x) => x.re.test(line))) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  };
  child.stdout.on("data", take);
  child.stderr.on("data", take);
  const waitFor = (re: RegExp, ms = 30_000) =>
    new Promise<string>((resolve, reject) => {
      const seen = lines.find((l) => re.test(l));
      if (seen) return resolve(seen);
      const timer = setTimeout(
        () => reject(new Error(`no line like ${re} in ${ms} ms:\n${lines.slice(-30).join("\n")}`)),
        ms,
      );
      waiters.push({
        re,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
    });
  return { child, lines, waitFor };
}

/**
 * Waits for a process's gRPC health to say SERVING. The first start of a fresh data directory under a
 * saturated CI machine (initdb, migrations, streams) has taken over 20 s, so the bound is generous; a
 * failure prints what the runner printed, which says why.
 */
async function serving(port: number, printed: () => string, ms = 60_000): Promise<void> {
  const channel = createChannel(`127.0.0.1:${port}`);
  const health = createClient(Health, channel);
  try {
    for (const until = Date.now() + ms; ; ) {
      try {
        const r = await health.check({ service: "" }, { signal: AbortSignal.timeout(1_000) });
        if (r.status === HealthCheckResponse_ServingStatus.SERVING) return;
      } catch {}
      if (Date.now() > until)
        throw new Error(`nothing serving on ${port} after ${ms} ms; the runner printed:\n${printed()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    channel.close();
  }
}

/** Places an order through the gateway's REST routes and watches it to its end. */
async function order(gateway: string): Promise<string> {
  const { token } = (await (
    await fetch(`${gateway}/dev/token`, { method: "POST", body: '{"user":"alice"}' })
  ).json()) as { token: string };
  const h = { authorization: `Bearer ${token}`, "Idempotency-Key": `run-${Date.now()}` };
  const res = await fetch(`${gateway}/v1/orders`, {
    method: "POST",
    headers: h,
    body: JSON.stringify({ items: [{ productId: "coffee-beans", quantity: 1 }], cardToken: "tok_visa" }),
  });
  if (!res.ok) return `not placed: HTTP ${res.status} ${(await res.text()).slice(0, 200)}`;
  const placed = (await res.json()) as { id: string };
  const lines = (await (await fetch(`${gateway}/v1/orders/${placed.id}:watch`, { headers: h })).text())
    .trim()
    .split("\n");
  return (JSON.parse(lines.at(-1) ?? "{}") as { result?: { status?: string } }).result?.status ?? "";
}

/**
 * An order's final status, retried for up to `ms`: the gateway answers before it has learned the
 * services' instances from the registry, and after a restart its breakers let calls in again only
 * after their half-open delay (5 s, again after a failed probe). Counted in tries (20, 500 ms apart),
 * an open breaker refusing each at once, it gave up after about 10 s, two of those delays: under two
 * busy cores, one run in three, PostgreSQL's restart was not served by then (""). A failure now
 * says what the last try got.
 */
async function orderOnceServing(gateway: string, ms = 30_000): Promise<string> {
  let status = "";
  for (const until = Date.now() + ms; status !== "ORDER_STATUS_CONFIRMED" && Date.now() < until; ) {
    status = await order(gateway).catch((err: unknown) => `failed: ${String(err)}`);
    if (status !== "ORDER_STATUS_CONFIRMED") await new Promise((r) => setTimeout(r, 500));
  }
  return status;
}

it("with DB=postgres and a PostgreSQL that cannot be initialised, says why, stops NATS and exits 1", async () => {
  using dir = tempDir();
  const { env } = await ports();
  writeFileSync(join(dir.path, "postgres"), "a file where the data directory goes");
  const run = runner({ ...env, DATA_DIR: dir.path, DB: "postgres", PG_PORT: String(await freePort()) });
  const code = await new Promise((r) => run.child.once("exit", r));
  const printed = run.lines.join("\n");
  expect(code, printed).toBe(1);
  expect(printed).toMatch(/PostgreSQL could not be initialised in .*postgres: /);
  expect(printed).not.toMatch(/Buffer|at .*\.js:\d+/); // no dump of the failed call, no stack
  // NATS, started before PostgreSQL, went with it (it was left running); no service was started.
  expect(spawnSync("pgrep", ["-af", `nats-server .* -p ${env.NATS_PORT} `]).stdout.toString()).toBe("");
}, 60_000);

it("with DB=postgres restarts PostgreSQL killed with SIGKILL too, and the system serves orders again", async () => {
  using dir = tempDir();
  const { env, of } = await ports();
  chmodSync(dir.path, 0o755); // as root, PostgreSQL runs as its own user, who must reach its data directory
  const run = runner({ ...env, DATA_DIR: dir.path, DB: "postgres", PG_PORT: String(await freePort()) });
  const printed = () => run.lines.slice(-40).join("\n");
  await serving(of("order"), printed, 90_000);
  const gateway = `http://127.0.0.1:${of("gateway")}`;
  expect(await orderOnceServing(gateway)).toBe("ORDER_STATUS_CONFIRMED");
  // The postmaster itself (under `runuser` when root): it stayed down, the others failing, until
  // restarted by hand.
  const postmaster = Number(readFileSync(join(dir.path, "postgres", "postmaster.pid"), "utf8").split("\n")[0]);
  process.kill(postmaster, "SIGKILL");
  await run.waitFor(/^postgres .*\| exited unexpectedly .*; restarting in 1 s \(restart 1;/);
  await run.waitFor(/^postgres .*ready to accept connections/m, 60_000);
  expect(await orderOnceServing(gateway)).toBe("ORDER_STATUS_CONFIRMED");
  run.child.kill("SIGINT");
  expect(await new Promise((r) => run.child.once("exit", r))).toBe(0);
}, 180_000);

/**
 * One runner for the two tests below, which leave its system as they found it: a system started for
 * each cost ~12 s of start and stop on a loaded machine. Its output has RUN_UNREAD_BYTES of its own; the
 * first test reads all of it, as the runner without it would be read.
 */
describe("one make run", () => {
  const shared = { of: (_name: string) => 0, run: undefined as unknown as ReturnType<typeof runner> };
  let dir: { path: string } & Disposable;
  beforeAll(async () => {
    dir = tempDir();
    const { env, of } = await ports();
    shared.of = of;
    shared.run = runner({ ...env, DATA_DIR: dir.path, RUN_UNREAD_BYTES: "65536" }, { shared: true });
  });
  afterAll(async () => {
    const child = shared.run?.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      child.stdout?.resume();
      child.kill("SIGINT");
      await new Promise((r) => child.once("exit", r));
    }
    dir?.[Symbol.dispose]();
  });

  it("restarts every process killed with SIGKILL at once, says so, and the system serves orders again", async () => {
    const { run, of } = shared;
    const printed = () => run.lines.slice(-40).join("\n");
    await serving(of("payment"), printed);
    await serving(of("order"), printed);
    const gateway = `http://127.0.0.1:${of("gateway")}`;
    await run.waitFor(/gateway .*\| started \(pid \d+\)/);
    for (let i = 0; i < 100 && (await fetch(`${gateway}/readyz`).catch(() => undefined))?.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await orderOnceServing(gateway)).toBe("ORDER_STATUS_CONFIRMED");

    // Every process at once (NATS under the services included), each back by itself and serving.
    const killed = NAMES.map((name) => {
      const started = new RegExp(`^${name} .*\\| started \\(pid (\\d+)\\)`);
      const pid = Number(started.exec(run.lines.filter((l) => started.test(l)).at(-1) ?? "")?.[1]);
      expect(pid, name).toBeGreaterThan(0);
      return { name, pid };
    });
    for (const { name, pid } of killed) {
      try {
        process.kill(pid, "SIGKILL");
      } catch (err) {
        // Gone before the kill: it exited by itself; the runner's lines say why.
        throw new Error(`${name} (pid ${pid}): ${(err as Error).message}\n${run.lines.slice(-40).join("\n")}`);
      }
    }
    for (const { name, pid } of killed) {
      await run.waitFor(
        new RegExp(`^${name} .*\\| exited unexpectedly \\(SIGKILL\\); restarting in 1 s \\(restart 1;`),
      );
      await run.waitFor(new RegExp(`^${name} .*\\| started \\(pid (?!${pid}\\))\\d+\\)`));
    }
    for (const { name } of killed) {
      if (name === "gateway") {
        for (let i = 0; i < 100 && (await fetch(`${gateway}/readyz`).catch(() => undefined))?.status !== 200; i++) {
          await new Promise((r) => setTimeout(r, 100));
        }
      } else await serving(of(name), () => run.lines.slice(-40).join("\n"));
    }
    // Breakers and discovery find the new instances; the next order goes through.
    expect(await orderOnceServing(gateway)).toBe("ORDER_STATUS_CONFIRMED");
    // And `make demo`, as a user would run it next, succeeds with nothing restarted by hand.
    const demo = execFileSync("make", ["--no-print-directory", "-o", "node_modules/.package-lock.json", "demo"], {
      cwd: ROOT,
      env: {
        ...process.env,
        ORDER_TARGET: `127.0.0.1:${of("order")}`,
        INVENTORY_TARGET: `127.0.0.1:${of("inventory")}`,
      },
      encoding: "utf8",
    });
    expect(demo).toMatch(/1\. succeeds\n\s+order ord_\w+\s+CONFIRMED/);
    // It stops with exit 0 and "all stopped" at the end of the next test, which uses it too.
  }, 120_000);

  it("whose output is not read keeps at most RUN_UNREAD_BYTES of it, and once read again says how many lines it dropped", async () => {
    // It kept every line its reader had not taken (`make run | less` not scrolled), ~35 MB a minute at
    // 300 calls/s, without end.
    const { run, of } = shared;
    const gateway = `http://127.0.0.1:${of("gateway")}`;
    await run.waitFor(/gateway .*\| started \(pid \d+\)/);
    for (let i = 0; i < 300 && (await fetch(`${gateway}/readyz`).catch(() => undefined))?.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    run.child.stdout.pause(); // the reader stops reading: the pipe fills, then the runner's own buffer
    // Calls the gateway logs, a line each: well past the pipe's 64 KiB and the runner's 64 KiB.
    for (let round = 0; round < 40; round++) {
      await Promise.all(
        Array.from({ length: 25 }, () => fetch(`${gateway}/v1/products/coffee-beans`).then((r) => r.arrayBuffer())),
      );
    }
    run.child.stdout.resume();
    const note = await run.waitFor(/\d+ lines dropped: make run's output was not read/);
    expect(Number(/(\d+) lines dropped/.exec(note)?.[1])).toBeGreaterThan(0);
    // And lines flow again after it.
    await fetch(`${gateway}/v1/products/coffee-beans`);
    // Both tests' runner stops with exit 0, "all stopped" its last line.
    const exit = new Promise((r) => run.child.once("exit", r));
    run.child.kill("SIGINT");
    expect(await exit).toBe(0);
    expect(run.lines.at(-1)).toMatch(/all stopped/);
  }, 120_000);
});

it("in a paused terminal (Ctrl-S) still restarts a killed service, and stops on SIGTERM; SIGUSR1 opens no inspector", async () => {
  // Node writes to a terminal in blocking calls: paused, it held the runner in its next line, which
  // restarted nothing and did not stop until the terminal went on (Ctrl-Q).
  using dir = tempDir();
  const { env, of } = await ports();
  const run = runner({ ...env, DATA_DIR: dir.path }, { terminal: true });
  const printed = () => run.lines.slice(-40).join("\n");
  const runnerPid = Number(/pid (\d+)/.exec(await run.waitFor(/^pty-run: pid \d+/))?.[1]);
  const started = await run.waitFor(/^inventory .*\| started \(pid \d+\)/);
  await serving(of("inventory"), printed);
  await run.waitFor(/^gateway .*\| started \(pid \d+\)/);
  // Node's default opened an inspector: "Debugger listening on ws://127.0.0.1:9229/…".
  process.kill(runnerPid, "SIGUSR1");
  await run.waitFor(/SIGUSR1 ignored/);
  expect(run.lines.filter((l) => /Debugger listening/.test(l))).toEqual([]);
  run.child.stdin?.write("pause\n");
  try {
    await new Promise((r) => setTimeout(r, 500)); // the runner writes into the paused terminal meanwhile
    process.kill(Number(/pid (\d+)/.exec(started)?.[1]), "SIGKILL");
    const inventory = createChannel(`127.0.0.1:${of("inventory")}`);
    const health = createClient(Health, inventory);
    for (let gone = false; !gone; await new Promise((r) => setTimeout(r, 100))) {
      gone = await health.check({ service: "" }, { signal: AbortSignal.timeout(500) }).then(
        () => false,
        () => true,
      );
    }
    inventory.close();
    await serving(of("inventory"), printed, 30_000); // restarted, the terminal still paused

    const exited = new Promise((r) => run.child.once("exit", r));
    process.kill(runnerPid, "SIGTERM");
    expect(await exited).toBe(0);
  } finally {
    // Failed, it goes on, so that the runner can be stopped (afterEach).
    if (run.child.exitCode === null) run.child.stdin?.write("resume\n");
  }
}, 120_000);

it("LOG_FORMAT=json make run prints JSON lines only, each naming its process, for jq", async () => {
  using dir = tempDir();
  const { env, of } = await ports();
  // As a shell runs `LOG_FORMAT=json make run | jq`: make's own output included, stdout apart from stderr.
  // --no-print-directory: under `make test` this make is a sub-make, which would announce its directory.
  const make = spawn("make", ["--no-print-directory", "run"], {
    cwd: ROOT,
    env: { ...process.env, ...env, DATA_DIR: dir.path, LOG_FORMAT: "json" },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let stdout = "";
  let stderr = "";
  make.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  make.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const parsed = () =>
    stdout
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { proc?: unknown; msg?: unknown; pid?: number; level?: unknown });
  const waitFor = async (ok: (l: ReturnType<typeof parsed>[number]) => boolean, what: string) => {
    for (const until = Date.now() + 30_000; !parsed().some(ok); ) {
      if (Date.now() > until) throw new Error(`no ${what} in 30 s:\n${stdout}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return parsed().find(ok);
  };
  let stopped = false;
  try {
    const printed = () => `${stdout.slice(-4_000)}\n${stderr.slice(-2_000)}`;
    await serving(of("payment"), printed);
    await serving(of("order"), printed);
    const gateway = `http://127.0.0.1:${of("gateway")}`;
    for (let i = 0; i < 100 && (await fetch(`${gateway}/readyz`).catch(() => undefined))?.status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(await orderOnceServing(gateway)).toBe("ORDER_STATUS_CONFIRMED");
    // The runner's own messages, as JSON: a supervised restart.
    const started = await waitFor((l) => l.proc === "payment" && /^started/.test(String(l.msg)), "payment start");
    process.kill(Number(started?.pid), "SIGKILL");
    await waitFor((l) => l.proc === "payment" && /^exited unexpectedly \(SIGKILL\)/.test(String(l.msg)), "exit");
    await waitFor((l) => l.proc === "payment" && /^started/.test(String(l.msg)) && l.pid !== started?.pid, "restart");
  } finally {
    process.kill(-(make.pid ?? 0), "SIGINT");
    // Bounded, so that a run that does not stop says what it printed rather than timing the test out.
    stopped = await Promise.race([
      new Promise<boolean>((r) => make.once("exit", () => r(true))),
      new Promise<boolean>((r) => setTimeout(() => r(false), 30_000)),
    ]);
    if (!stopped) process.kill(-(make.pid ?? 0), "SIGKILL");
  }
  expect(
    stopped,
    `make run did not stop within 30 s of SIGINT:\n${stdout.slice(-4_000)}\n${stderr.slice(-2_000)}`,
  ).toBe(true);
  const lines = parsed(); // throws on any line that is not JSON
  expect(lines.length).toBeGreaterThan(10);
  for (const l of lines) expect(typeof l.proc, JSON.stringify(l)).toBe("string");
  const procs = new Set(lines.map((l) => l.proc));
  for (const p of ["nats", "run", ...NAMES]) expect(procs, p).toContain(p);
  // nats-server's own lines, wrapped; a service's JSON kept as it wrote it, with its process added.
  expect(lines).toContainEqual(expect.objectContaining({ proc: "nats", level: 30, msg: "Server is ready" }));
  expect(lines).toContainEqual(expect.objectContaining({ proc: "gateway", service: "gateway", msg: "access" }));
  expect(lines).toContainEqual(expect.objectContaining({ proc: "run", msg: "all stopped" }));
}, 240_000); // every step bounded on its own; under a saturated CI machine their sum passed 120 s

it("refuses a taken port with one line naming the port, its holder and the variable to change", async () => {
  using dir = tempDir();
  const { env, of } = await ports();
  const squatter = createServer();
  await new Promise<void>((r) => squatter.listen(of("gateway"), r));
  try {
    const run = runner({ ...env, DATA_DIR: dir.path });
    const code = await new Promise((r) => run.child.once("exit", r));
    expect(code).toBe(1);
    const line = run.lines.find((l) => l.startsWith(`port ${of("gateway")} `));
    expect(line, run.lines.join("\n")).toMatch(
      new RegExp(`^port ${of("gateway")} \\(gateway\\) is in use by node \\(pid ${process.pid}\\): .*GATEWAY_PORT=`),
    );
    // Nothing else was started.
    expect(run.lines.filter((l) => l.includes("started (pid"))).toEqual([]);
  } finally {
    squatter.close();
  }
});

it("a service started by hand on a taken port says so in one line and exits 1, not a stack trace", async () => {
  const squatter = createServer();
  await new Promise<void>((r) => squatter.listen(0, "127.0.0.1", r));
  const port = (squatter.address() as { port: number }).port;
  try {
    const child = spawn(process.execPath, built("gateway/main.ts"), {
      cwd: ROOT,
      env: { ...process.env, HTTP_HOST: "127.0.0.1", HTTP_PORT: String(port), METRICS_PORT: "0", NATS_URL: "off" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    running.push(child);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    expect(await new Promise((r) => child.once("exit", r))).toBe(1);
    expect(out).toContain(`"msg":"port ${port} is in use: stop what holds it, or set HTTP_PORT to a free port"`);
    expect(out).not.toMatch(/\n\s+at /); // no stack trace
  } finally {
    squatter.close();
  }
});
