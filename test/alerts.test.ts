/**
 * The alerting rules (deploy/kubernetes/components/observability/alerts.yml): promtool's checks and the
 * rules' unit tests (alerts.test.yml) pass, every metric they query is one the code exports, and
 * `make alerts`' command — a real Prometheus scraping a real history process — prints a dead letter's
 * alert as it fires and as it resolves once the letter is redriven, and a killed process's as it goes
 * pending, and stops its Prometheus with it.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterEach, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { EVENTS } from "../contracts/events.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { connectBus } from "../platform/bus.js";
import { markSubject } from "../platform/dead-letters-waiting.js";
import { silentLogger } from "../platform/log.js";
import { createTelemetry } from "../platform/telemetry.js";
import { answers } from "../scripts/nats.js";
import { alerts, stopAlerts } from "./alerts-run.js";
import { TestDatabases } from "./db.js";
import { until } from "./events.js";
import { exited, freePort, ROOT, spawnService, tempDir } from "./fixtures.js";
import { startNats } from "./nats.js";

const DIR = join(ROOT, "deploy/kubernetes/components/observability");
const rules = () =>
  (
    parse(readFileSync(join(DIR, "alerts.yml"), "utf8")) as {
      groups: { rules: { alert: string; expr: string }[] }[];
    }
  ).groups.flatMap((g) => g.rules);

afterEach(stopAlerts);

describe("alerting rules", () => {
  it("pass promtool's checks and their unit tests", () => {
    for (const args of [
      ["check", "rules", "alerts.yml"],
      ["test", "rules", "alerts.test.yml"],
    ]) {
      const run = spawnSync("promtool", args, { cwd: DIR, encoding: "utf8" });
      expect(run.error, "promtool missing: make prometheus").toBeUndefined();
      expect(run.status, `promtool ${args.join(" ")}:\n${run.stdout}${run.stderr}`).toBe(0);
    }
  });

  it("query only metrics the code exports, and every alert has a unit test", async () => {
    const families = new Set((await createTelemetry("check").metrics.registry.getMetricsAsJSON()).map((m) => m.name));
    const used = new Set<string>();
    for (const { expr } of rules()) {
      // Metric names: identifiers outside label matchers and by/on (...), not calls nor keywords.
      const bare = expr.replace(/\{[^}]*\}/g, "").replace(/\b(by|on)\s*\([^)]*\)/g, "");
      for (const m of bare.matchAll(/\b([a-z_]+)\b(?!\s*\()/g))
        if (!["or", "and", "unless", "offset"].includes(m[1] ?? "")) used.add(m[1] ?? "");
    }
    expect([...used].length).toBeGreaterThan(8);
    for (const name of used) {
      if (name === "up") continue; // Prometheus's own, per target
      const family = name.replace(/_(bucket|count|sum)$/, "");
      expect(families.has(family), `${name} is not a metric the code exports`).toBe(true);
    }
    const tested = readFileSync(join(DIR, "alerts.test.yml"), "utf8");
    for (const { alert } of rules()) expect(tested, `no unit test of ${alert}`).toContain(`alertname: ${alert}\n`);
  });

  it("ship in the cluster's Prometheus ConfigMap, which loads them", () => {
    const prom = parse(readFileSync(join(DIR, "prometheus.yml"), "utf8")) as { rule_files: string[] };
    expect(prom.rule_files).toEqual(["alerts.yml"]);
    const kustomization = parse(readFileSync(join(DIR, "kustomization.yaml"), "utf8")) as {
      configMapGenerator: { name: string; files: string[] }[];
    };
    const map = kustomization.configMapGenerator.find((m) => m.name === "prometheus-shopmesh");
    expect(map?.files).toEqual(["prometheus.yml", "alerts.yml"]);
  });

  it("make alerts prints a dead letter's alert as it fires and resolves, a stopped process's as it goes pending, and stops", async () => {
    await using nats = await startNats();
    using dir = tempDir();
    const metrics = await freePort();
    await using history = await spawnService("history", {
      ...(await new TestDatabases(dir.path).env("history")),
      NATS_URL: nats.url,
      METRICS_PORT: String(metrics),
    });
    const port = await freePort();
    // The other processes' metrics ports: nothing listens there.
    const others: Record<string, string> = {};
    for (const name of ["inventory", "payment", "order", "notification", "gateway"])
      others[`${name.toUpperCase()}_METRICS_PORT`] = String(await freePort());
    const env = {
      ...others,
      HISTORY_METRICS_PORT: String(metrics),
      PROMETHEUS_PORT: String(port),
      PROMETHEUS_INTERVAL: "1",
      DATA_DIR: dir.path,
    };
    const run = alerts(env);
    await run.printed(
      /Prometheus on http:\/\/localhost:\d+\/ \(its Alerts page shows the rules\), scraping 6 processes every 1 s/,
    );
    await run.printed(/PENDING ShopmeshProcessDown app=payment instance=localhost:\d+ \(fires if it lasts\)/);
    expect(run.out()).not.toMatch(/ShopmeshProcessDown app=history/);
    // Before the letter: its counter is there, at 0, so the letter is an increase.
    const zero = /events_dead_lettered_total\{consumer="history-order",service="history"\} 0/;
    expect(
      await until(
        () => fetch(`http://127.0.0.1:${metrics}/metrics`).then((r) => r.text()),
        (t) => zero.test(t),
        10_000,
      ),
    ).toMatch(zero);
    await new Promise((r) => setTimeout(r, 2_500)); // two scrapes of the 0
    expect(run.out()).not.toMatch(/ShopmeshDeadLetters/);

    const bus = await connectBus(nats.url, "alerts-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const h = natsHeaders();
      h.set("ce-type", OrderPlacedSchema.typeName);
      h.set("ce-id", "evt_undecodable");
      await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff, 0xff, 0xff]), { headers: h });
    } finally {
      await bus.close();
    }
    await run.printed(
      /FIRING ShopmeshDeadLetters consumer=history-order service=history: history-order has dead letters waiting to be redriven — make dlq lists them/,
    );
    // The letter marked redriven, as make dlq --redrive marks it (its event sent back would be lettered
    // again, undecodable as it is): nothing waits, and the alert is over within the hour of the letter.
    const admin = await connectBus(nats.url, "alerts-test", silentLogger());
    try {
      const letter = await admin.jsm.streams.getMessage("DLQ", { last_by_subj: "dlq.history-order" });
      await admin.js.publish(markSubject("history-order", letter?.seq ?? 0), new Uint8Array(0));
    } finally {
      await admin.close();
    }
    await run.printed(/RESOLVED ShopmeshDeadLetters consumer=history-order service=history/);

    await history.kill("SIGKILL");
    await run.printed(/PENDING ShopmeshProcessDown app=history instance=localhost:\d+/);

    // A second one on the same port says so (on the same directory, that it is taken; on another, the
    // port); a bad interval is refused.
    const second = alerts(env);
    expect(await exited(second.child)).toBe(1);
    expect(second.out()).toContain(`another make alerts (pid ${run.child.pid}) uses ${dir.path}/prometheus`);
    using other = tempDir();
    const third = alerts({ ...env, DATA_DIR: other.path });
    expect(await exited(third.child)).toBe(1);
    expect(third.out()).toContain(`port ${port} is in use (another make alerts?)`);
    const bad = alerts({ ...env, PROMETHEUS_INTERVAL: "0.5" });
    expect(await exited(bad.child)).toBe(2);
    expect(bad.out()).toContain('PROMETHEUS_INTERVAL must be whole seconds, 1..60, got "0.5"');

    run.child.kill("SIGINT");
    expect(await exited(run.child)).toBe(0);
    expect(await answers("127.0.0.1", port)).toBe(false); // its Prometheus stopped with it
  }, 90_000);
});
