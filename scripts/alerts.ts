/**
 * `make alerts`: a local Prometheus (Debian's `prometheus`, or any on the PATH) scraping the /metrics of
 * every process `make run` starts, replicas included (`<NAME>_METRICS_PORT`, `<NAME>_REPLICAS`, read as
 * make run reads them), with the cluster's alerting rules (deploy/kubernetes/components/observability/
 * alerts.yml). Prints each alert as it becomes pending, fires and resolves, with what to do; its web UI
 * is on http://localhost:9090/ (PROMETHEUS_PORT; its Alerts page). Scrapes and evaluates every
 * PROMETHEUS_INTERVAL seconds (5). Keeps its data in .data/prometheus (DATA_DIR). Until Ctrl-C.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { holdExclusive } from "../platform/file-lock.js";
import { makeDirs } from "../platform/make-dirs.js";
import { recordChild, stopLeftovers } from "./data-dir.js";
import { portOf, ROOT, replicaCount, SYSTEM } from "./layout.js";
import { answers } from "./nats.js";
import { printable, quietWhenOutputCloses } from "./printable.js";

// Its reader gone (`make alerts | head -1`): ends, its Prometheus stopped on the way out (the exit handler).
quietWhenOutputCloses();

const RULES = join(ROOT, "deploy/kubernetes/components/observability/alerts.yml");

const PROMETHEUS_MISSING =
  "prometheus is not installed. Install it with your OS package manager, e.g.\n" +
  "  sudo apt-get install -y --no-install-recommends prometheus   (Debian/Ubuntu)\n" +
  "  brew install prometheus                                      (macOS)";

/**
 * The scrape targets of the local system: each process's metrics port, and port + 100 per replica; a
 * line and exit 2 for a replica past 65535 (make run refuses to start it).
 */
function localTargets(): { app: string; target: string }[] {
  return SYSTEM.flatMap((p) => {
    const variable = `${p.name.toUpperCase()}_METRICS_PORT`;
    const port = portOf(variable, p.metrics);
    const n = p.name === "gateway" ? 1 : replicaCount(p.name);
    if (port + 100 * (n - 1) > 65535) {
      process.stderr.write(
        `${p.name}'s replica ${n} would serve its metrics on port ${port + 100 * (n - 1)}, past 65535 ` +
          `(replicas take ${variable} + 100 each): set ${variable} lower\n`,
      );
      process.exit(2);
    }
    return Array.from({ length: n }, (_, r) => ({ app: p.name, target: `localhost:${port + 100 * r}` }));
  });
}

/**
 * Holds `dir` for this command, with its pid in `dir`/alerts.pid (for the message and `make clean`), or
 * a line and exit 1 when another holds it: two Prometheus servers on one store (other ports, the same
 * DATA_DIR) both ran, each writing the other's write-ahead log.
 */
function holdPrometheusDir(dir: string): void {
  const pidFile = join(dir, "alerts.pid");
  const unlock = holdExclusive(join(dir, "alerts.lock"));
  if (!unlock) {
    let pid = "";
    try {
      pid = ` (pid ${readFileSync(pidFile, "utf8").trim()})`;
    } catch {}
    process.stderr.write(`another make alerts${pid} uses ${dir}: stop it, or set DATA_DIR\n`);
    process.exit(1);
  }
  writeFileSync(pidFile, `${process.pid}\n`);
  process.on("exit", () => {
    rmSync(pidFile, { force: true });
    unlock();
  });
}

/**
 * Prometheus's configuration for `targets`, every `seconds`: job `shopmesh` and an `app` label on each
 * target, as the cluster's scrape config gives them (prometheus.yml), so the rules read both alike.
 */
function prometheusConfig(targets: readonly { app: string; target: string }[], seconds: number): string {
  const config = {
    // A scrape's timeout (10 s by default) may not be longer than its interval.
    global: {
      scrape_interval: `${seconds}s`,
      scrape_timeout: `${Math.min(seconds, 10)}s`,
      evaluation_interval: `${seconds}s`,
    },
    rule_files: [RULES],
    scrape_configs: [
      {
        job_name: "shopmesh",
        static_configs: targets.map((t) => ({ targets: [t.target], labels: { app: t.app } })),
      },
    ],
  };
  return JSON.stringify(config, null, 2); // JSON is YAML
}

interface Alert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  state: string;
}

/** One line for an alert in `state`: its name, the labels that tell which, its summary, what to do. */
function alertLine(state: string, a: Alert): string {
  const which = Object.entries(a.labels)
    .filter(([k]) => !["alertname", "severity", "job", ...(a.labels.service ? ["app"] : [])].includes(k))
    .map(([k, v]) => `${k}=${printable(v)}`)
    .join(" ");
  // A pending alert's summary would say what has not lasted yet ("for a minute"): only its labels.
  const text =
    state === "firing"
      ? `: ${printable(a.annotations.summary ?? "")} — ${printable(a.annotations.description ?? "")}`
      : state === "pending"
        ? " (fires if it lasts)"
        : "";
  return `${new Date().toISOString().slice(11, 19)} ${state.toUpperCase()} ${printable(a.labels.alertname ?? "")} ${which}${text}`;
}

async function main(): Promise<void> {
  if (spawnSync("prometheus", ["--version"]).error) {
    process.stderr.write(`${PROMETHEUS_MISSING}\n`);
    process.exit(1);
  }
  const port = portOf("PROMETHEUS_PORT", 9090);
  const raw = process.env.PROMETHEUS_INTERVAL || "5";
  const seconds = /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(seconds >= 1 && seconds <= 60)) {
    process.stderr.write(`PROMETHEUS_INTERVAL must be whole seconds, 1..60, got ${JSON.stringify(raw)}\n`);
    process.exit(2);
  }
  const targets = localTargets();
  const data = process.env.DATA_DIR || join(ROOT, ".data");
  const dir = join(data, "prometheus");
  try {
    makeDirs(join(dir, "data"));
    holdPrometheusDir(dir);
    writeFileSync(join(dir, "prometheus.yml"), prometheusConfig(targets, seconds));
  } catch (err) {
    // DATA_DIR a file, or a directory this user may not write: a line, not a stack trace (as make run).
    process.stderr.write(`cannot use the data directory ${data}: ${(err as Error).message}\n`);
    process.exit(1);
  }
  // A make alerts killed outright (SIGKILL) left its Prometheus on the store and its port.
  await stopLeftovers(dir, (line) => process.stderr.write(`${line}\n`));
  // A store of its own each run: the last run's series (a system since stopped, targets since moved)
  // raised this one's alerts, ShopmeshProcessDown for six processes it does not scrape.
  rmSync(join(dir, "data"), { recursive: true, force: true });
  mkdirSync(join(dir, "data"));
  // After the leftovers: the port a killed make alerts' Prometheus held is free again.
  if (await answers("127.0.0.1", port)) {
    process.stderr.write(`port ${port} is in use (another make alerts?): stop it, or set PROMETHEUS_PORT\n`);
    process.exit(1);
  }
  const child = spawn(
    "prometheus",
    [
      `--config.file=${join(dir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      "--storage.tsdb.retention.time=1d",
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=error",
    ],
    { stdio: ["ignore", "inherit", "inherit"] },
  );
  recordChild(dir, child.pid, "prometheus");
  let stopping = false;
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const)
    process.on(signal, () => {
      stopping = true;
      child.kill(signal);
    });
  process.on("exit", () => child.kill("SIGTERM")); // an error of ours leaves no Prometheus behind
  child.on("exit", (code, signal) => {
    if (stopping) process.exit(code ?? 0);
    // Killed (an OOM kill) or failed: said, not a silent exit 0 that reads as a Ctrl-C.
    process.stderr.write(`prometheus ended on its own (${signal ?? `exit code ${code}`}): make alerts stops\n`);
    process.exit(1);
  });

  const api = `http://127.0.0.1:${port}`;
  while (
    !(await fetch(`${api}/-/ready`).then(
      (r) => r.ok,
      () => false,
    ))
  )
    await sleep(200);
  process.stdout.write(
    `Prometheus on http://localhost:${port}/ (its Alerts page shows the rules), scraping ${targets.length} processes every ${seconds} s ` +
      `(${targets.map((t) => `${t.app} ${t.target}`).join(", ")}) with the rules of ${RULES.slice(ROOT.length + 1)}; ` +
      "alerts print here as they change. Ctrl-C stops it.\n",
  );
  let known = new Map<string, Alert>();
  for (;;) {
    // Not an answer to read (a Prometheus shutting down says 503 in text): the next poll asks again.
    const body = (await fetch(`${api}/api/v1/alerts`)
      .then((r) => r.json())
      .catch(() => undefined)) as { data?: { alerts?: Alert[] } } | undefined;
    const alerts = body?.data?.alerts;
    if (alerts) {
      const now = new Map(alerts.map((a) => [JSON.stringify(Object.entries(a.labels).sort()), a]));
      for (const [key, a] of now) if (known.get(key)?.state !== a.state) console.log(alertLine(a.state, a));
      for (const [key, a] of known) if (!now.has(key)) console.log(alertLine("resolved", a));
      known = now;
    }
    await sleep(1_000);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

await main();
