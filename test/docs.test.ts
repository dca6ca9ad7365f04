/**
 * The docs are executed: every shell block of README.md and docs/ that runs
 * against `make run` is run, line by line and in order, against a real
 * `make run` (the compiled system, on ports of the test's choosing, which
 * the lines are rewritten to). grpcurl is not installable here: a `grpcurl`
 * on PATH translates its arguments to `buf curl` with the same reflection.
 * A line runs as written, with `$TOKEN` a development token for alice and
 * `<id>` an order of hers; it must succeed, unless the text beside it
 * (its comment, or the comment line before or after) names the error it
 * shows — then it must fail with that error.
 *
 * Not run: `make` targets other than `token` and `demo` (the system is
 * already running; tails never end), Kubernetes (docs/deploy.md), and
 * lines against ports `make run` does not open (a second replica's).
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SYSTEM } from "../scripts/layout.js";
import { until } from "./events.js";
import { freePort, ROOT, tempDir } from "./fixtures.js";

const DOCS = [
  "README.md",
  ...readdirSync(join(ROOT, "docs"))
    .filter((f) => f.endsWith(".md") && f !== "deploy.md")
    .map((f) => `docs/${f}`),
];
const NAMES = SYSTEM.map((p) => p.name);
const DOC_PORTS: Record<string, number> = Object.fromEntries(SYSTEM.map((p) => [p.name, p.port]));
const DOC_METRICS: Record<string, number> = Object.fromEntries(SYSTEM.map((p) => [p.name, p.metrics]));
/** buf's binary for this platform (what node_modules/.bin/buf, a Node launcher, runs), or that launcher. */
const BUF =
  [join(ROOT, "node_modules", "@bufbuild", `buf-${process.platform}-${process.arch}`, "bin", "buf")].find(existsSync) ??
  join(ROOT, "node_modules", ".bin", "buf");

/** One runnable line of a doc, with what the text says about it. */
interface DocLine {
  readonly doc: string;
  readonly line: string;
  /** Phrases its comment quotes ("payment unavailable"): its output must show them. */
  readonly shows: readonly string[];
  /** The error the text says it shows, when it says one (ERROR, UNIMPLEMENTED, FailedPrecondition ...). */
  readonly expectsError?: string;
}

const ERROR_WORDS =
  /\b(ERROR|UNIMPLEMENTED|Unimplemented|FailedPrecondition|FAILED_PRECONDITION|NOT_FOUND|PERMISSION_DENIED|UNAUTHENTICATED)\b/;

/** The runnable lines of `doc`'s sh blocks that talk to `make run`, continuation lines joined. */
function runnable(doc: string): DocLine[] {
  const text = readFileSync(join(ROOT, doc), "utf8").replace(/\\\n\s*/g, "");
  const out: DocLine[] = [];
  for (const [, block = ""] of text.matchAll(/```sh\n([\s\S]*?)```/g)) {
    if (/\bkubectl\b|\bkind\b|istioctl/.test(block)) continue;
    const lines = block.split("\n");
    for (let i = 0; i < lines.length; i++) {
      const line = (lines[i] ?? "").trim();
      if (!line || line.startsWith("#")) continue;
      const command = line.replace(/\s+#.*$/, "");
      const talks = /localhost:\d+|make -s token|^make demo|^req=|^TOKEN=/.test(command);
      if (!talks) continue;
      if (/^make (?!demo)/.test(command) || /\bnc\b|\|\s*jq\b/.test(command)) continue;
      const ports = [...command.matchAll(/localhost:(\d+)/g)].map((m) => Number(m[1]));
      const known = new Set([...Object.values(DOC_PORTS), ...Object.values(DOC_METRICS)]);
      if (ports.some((p) => !known.has(p))) continue;
      // What the text says of it: its own comment, the comment line before it (what it shows), and an
      // output line after it ("# ERROR: ...").
      const before = (lines[i - 1] ?? "").trim();
      const after = (lines[i + 1] ?? "").trim();
      const said = [
        line.match(/\s#(.*)$/)?.[1] ?? "",
        before.startsWith("#") ? before : "",
        after.startsWith("# ERROR") ? after : "",
      ].join(" ");
      const err = ERROR_WORDS.exec(said)?.[1];
      const shows = [...(line.match(/\s#(.*)$/)?.[1] ?? "").matchAll(/"([^"]+)"/g)].map((m) => m[1] ?? "");
      out.push({
        doc,
        line: command,
        shows,
        ...(err && !command.startsWith("TOKEN=") && !command.startsWith("req=") ? { expectsError: err } : {}),
      });
    }
  }
  return out;
}

let run: ChildProcess;
let dir: { path: string } & Disposable;
const env: Record<string, string> = {};
const mapPort: Record<number, number> = {};
/** A development token for alice, from the gateway, for the orders the test places itself. */
let aliceToken = "";

beforeAll(async () => {
  dir = tempDir();
  for (const n of NAMES) {
    const port = await freePort();
    const metrics = await freePort();
    env[`${n.toUpperCase()}_PORT`] = String(port);
    env[`${n.toUpperCase()}_METRICS_PORT`] = String(metrics);
    mapPort[DOC_PORTS[n] as number] = port;
    mapPort[DOC_METRICS[n] as number] = metrics;
  }
  env.NATS_PORT = String(await freePort());
  env.NATS_MONITOR_PORT = String(await freePort());
  run = spawn(process.execPath, [join(ROOT, "dist", "scripts", "run.js")], {
    cwd: ROOT,
    // A step budget of 3 s, not 15: each `make demo` the docs run with payment down waited out the
    // budget for each of its orders (36 s a demo). What the lines show is the same; no timing is checked.
    env: { ...process.env, ...env, DATA_DIR: dir.path, SAGA_STEP_BUDGET_MS: "3000" },
    stdio: "ignore",
  });
  const gateway = `http://127.0.0.1:${mapPort[8080]}`;
  const ok = (path: string, init?: RequestInit) =>
    fetch(`${gateway}${path}`, init).then(
      (r) => r.ok,
      () => false,
    );
  // Bounded waits that fail naming what never came: they used to give up silently after 200 tries
  // (20 s) and let the first doc line fail instead, and a first start on a saturated CI machine has
  // taken over 20 s (run.test.ts). The hook's 120 s hold both. (expect.poll is for tests, not hooks.)
  const waitFor = async (what: string, path: string, ms: number, init?: RequestInit) => {
    const came = await until(
      () => ok(path, init),
      (x) => x,
      ms,
    );
    if (!came) throw new Error(`make run: no ${what} in ${ms} ms`);
  };
  await waitFor("ready gateway (/readyz)", "/readyz", 60_000);
  // The gateway is ready before it has learned the services' instances from the registry: wait until
  // an order listing goes through (a loaded machine answered a first call 503 in outage.test.ts).
  aliceToken = (
    (await (await fetch(`${gateway}/dev/token`, { method: "POST", body: '{"user":"alice"}' })).json()) as {
      token: string;
    }
  ).token;
  await waitFor("order listing through the gateway", "/v1/orders?pageSize=1", 30_000, {
    headers: { authorization: `Bearer ${aliceToken}` },
  });
  // grpcurl, as the docs use it, through buf curl (grpcurl is not installable here). A bash script
  // running buf's own binary, not a Node script running buf's Node launcher: two Node processes per
  // grpcurl line cost ~0.5 s of CPU each, 20 lines a run.
  writeFileSync(
    join(dir.path, "grpcurl"),
    `#!/usr/bin/env bash
out=(curl --protocol grpc --http2-prior-knowledge); target=""; rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    -plaintext) ;;
    -H | -d) out+=("$1" "$2"); shift ;;
    *) if [ -z "$target" ] && [[ "$1" =~ :[0-9]+$ ]]; then target="$1"; else rest+=("$1"); fi ;;
  esac
  shift
done
if [ "\${rest[0]}" = list ]; then out+=(--list-services "http://$target"); else out+=("http://$target/\${rest[0]}"); fi
exec ${JSON.stringify(BUF)} "\${out[@]}"
`,
  );
  chmodSync(join(dir.path, "grpcurl"), 0o755);
}, 120_000);

afterAll(async () => {
  if (run && run.exitCode === null) {
    run.kill("SIGINT");
    await new Promise((r) => run.once("exit", r));
  }
  dir?.[Symbol.dispose]();
});

/** Runs one doc line in bash with the state its doc built so far (`state` holds variables). */
function shell(line: string, state: string[]): { code: number; out: string } {
  const rewritten = line.replace(/localhost:(\d+)/g, (m, p: string) =>
    mapPort[Number(p)] ? `localhost:${mapPort[Number(p)]}` : m,
  );
  const script = [...state, rewritten].join("\n");
  try {
    const out = execFileSync("bash", ["-c", `set -o pipefail\n${script}`], {
      cwd: ROOT,
      env: {
        ...process.env,
        PATH: `${dir.path}:${process.env.PATH}`,
        ORDER_TARGET: `127.0.0.1:${mapPort[50053]}`,
        INVENTORY_TARGET: `127.0.0.1:${mapPort[50051]}`,
        MAKEFLAGS: "--no-print-directory",
      },
      encoding: "utf8",
      timeout: 90_000,
      stdio: ["ignore", "pipe", "pipe"],
    });
    return { code: 0, out };
  } catch (err) {
    const e = err as { status?: number; stdout?: string; stderr?: string };
    return { code: e.status ?? 1, out: `${e.stdout ?? ""}${e.stderr ?? ""}` };
  }
}

describe.each(DOCS.filter((d) => runnable(d).length > 0))("%s", (doc) => {
  it("runs every shell line that talks to make run, and each shows what the text says", async () => {
    // An order of alice's for the lines that name one.
    const state: string[] = [];
    let order = "";
    for (const { line, expectsError, shows } of runnable(doc)) {
      const assigned = /^(TOKEN|req|ORDER)=/.exec(line)?.[1];
      if (assigned) {
        // Run once; the lines after it get its value, not the line again (a token's `make -s token`
        // replayed before each of them cost seconds a line on a loaded machine).
        const r = shell(`${line}\nprintf '%s' "$${assigned}"`, state);
        expect(r.code, `${doc}: ${line}\n${r.out}`).toBe(0);
        if (assigned === "ORDER") {
          expect(r.out, `${doc}: ${line} sets ORDER to an order id`).toMatch(/^ord_[a-z0-9]+$/);
          order = r.out; // the doc's own order, for the lines after it
        }
        state.push(`${assigned}='${r.out.replaceAll("'", "'\\''")}'`);
        continue;
      }
      if (/<id>|\$ORDER/.test(line) && order === "") {
        // Placed by the test, not by a doc line: with the token beforeAll got (a `make -s token` in a
        // shell cost seconds a doc on a loaded machine). By curl, a connection of its own: a fetch here
        // reused beforeAll's, which the gateway had just closed as idle ("other side closed").
        const body = '{"items":[{"productId":"coffee-beans","quantity":1}],"cardToken":"tok_visa"}';
        const auth = `authorization: Bearer ${aliceToken}`;
        const url = `localhost:${mapPort[8080]}/v1/orders`;
        const placed = execFileSync(
          "curl",
          ["-s", "-X", "POST", url, "-H", auth, "-H", `Idempotency-Key: docs-${doc}`, "-d", body],
          { encoding: "utf8", timeout: 90_000 },
        );
        order = (JSON.parse(placed) as { id: string }).id;
        state.push(`ORDER=${order}`);
      }
      const r = shell(line.replaceAll("<id>", order), state);
      if (expectsError) {
        expect(r.code, `${doc}: ${line} should fail (${expectsError})\n${r.out}`).not.toBe(0);
        expect(r.out.toLowerCase(), `${doc}: ${line}`).toContain(
          expectsError.toLowerCase().replace("failedprecondition", "failed").replace("error", ""),
        );
      } else {
        expect(r.code, `${doc}: ${line}\n${r.out}`).toBe(0);
      }
      for (const phrase of shows) expect(r.out, `${doc}: ${line} shows "${phrase}"`).toContain(phrase);
    }
  }, 180_000);
});
