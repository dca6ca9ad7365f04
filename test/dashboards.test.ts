/**
 * The Kubernetes observability config matches the code: every metric the
 * Grafana dashboard queries is one the services export (platform/telemetry.ts),
 * the dashboard covers RED per service, breakers, sagas, outbox and consumer
 * lag, and the Prometheus config scrapes the annotated shopmesh pods.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { createTelemetry } from "../platform/telemetry.js";
import { ROOT } from "./fixtures.js";

const DIR = join(ROOT, "deploy/kubernetes/components/observability");

describe("observability config", () => {
  it("the dashboard queries only metrics the code exports, and covers the patterns", async () => {
    const dash = JSON.parse(readFileSync(join(DIR, "shopmesh-dashboard.json"), "utf8")) as {
      panels: { title: string; targets: { expr: string }[] }[];
    };
    const families = new Set((await createTelemetry("check").metrics.registry.getMetricsAsJSON()).map((m) => m.name));
    const exprs = dash.panels.flatMap((p) => p.targets.map((t) => t.expr));
    const used = new Set(exprs.flatMap((e) => [...e.matchAll(/\b([a-z_]+)(?=[{[])/g)].map((m) => m[1] ?? "")));
    expect(used.size).toBeGreaterThan(10);
    for (const name of used) {
      const family = name.replace(/_(bucket|count|sum)$/, "");
      expect(families.has(family) || families.has(name), `${name} is not a metric the code exports`).toBe(true);
    }
    for (const needed of [
      "rpc_server_duration_seconds",
      "http_server_duration_seconds",
      "circuit_breaker_state",
      "saga_finished_total",
      "outbox_backlog",
      "event_consumer_lag_seconds",
      "events_dead_lettered_total",
      "event_consumer_pending",
      "dead_letters_waiting",
      "events_dropped_unread_total",
    ]) {
      expect(
        exprs.some((e) => e.includes(needed)),
        needed,
      ).toBe(true);
    }
  });

  it("Prometheus scrapes the pods that carry the prometheus.io annotations", () => {
    const prom = parse(readFileSync(join(DIR, "prometheus.yml"), "utf8")) as {
      scrape_configs: {
        job_name: string;
        kubernetes_sd_configs: { namespaces: { names: string[] } }[];
        relabel_configs: { source_labels: string[]; action?: string }[];
      }[];
    };
    const job = prom.scrape_configs.find((j) => j.job_name === "shopmesh");
    expect(job?.kubernetes_sd_configs[0]?.namespaces.names).toEqual(["shopmesh"]);
    const sources = job?.relabel_configs.flatMap((r) => r.source_labels) ?? [];
    expect(sources).toEqual(
      expect.arrayContaining([
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
        "__meta_kubernetes_pod_annotation_prometheus_io_port",
        "__meta_kubernetes_pod_annotation_prometheus_io_path",
      ]),
    );
    const patch = readFileSync(join(DIR, "metrics.yaml"), "utf8");
    for (const a of ["prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"]) expect(patch).toContain(a);
  });
});
