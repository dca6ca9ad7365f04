/**
 * A review of the Kubernetes + Istio deployment (2026-12-04), as someone who applies it to a kind
 * cluster with Istio tomorrow: what the API server, istiod's validating webhook and the Istio CRDs'
 * own rules would refuse, and what the manifests grant that the code's design denies. Offline, like
 * test/deploy.test.ts (whose checks are not repeated): the overlays rendered with `kubectl
 * kustomize`, the rules taken from Istio's source. Each `describe` is one finding.
 */
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { ROOT } from "./fixtures.js";

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  [key: string]: unknown;
}

const OVERLAYS = join(ROOT, "deploy", "kubernetes", "overlays");
const overlays = readdirSync(OVERLAYS);
const rendered = new Map(
  overlays.map((o) => {
    const yaml = execFileSync("kubectl", ["kustomize", join(OVERLAYS, o)], { encoding: "utf8" });
    const objs = parseAllDocuments(yaml)
      .map((d) => d.toJS() as Obj | null)
      .filter((x): x is Obj => x !== null);
    return [o, objs] as const;
  }),
);

/** Every string value under `value`, with its path. */
function* strings(value: unknown, path: string): Generator<[string, string]> {
  if (typeof value === "string") yield [path, value];
  else if (Array.isArray(value)) for (const [i, v] of value.entries()) yield* strings(v, `${path}[${i}]`);
  else if (value !== null && typeof value === "object")
    for (const [k, v] of Object.entries(value)) yield* strings(v, `${path}.${k}`);
}

describe("Istio durations are ones istiod accepts (a stream route's `timeout: 0s` was refused)", () => {
  // istiod's validating webhook checks every duration with ValidateDuration (pkg/config/validation/
  // agent/validation.go: "duration must be greater than 1ms", "only durations to ms precision are
  // supported"), and the CRDs carry the same rule in CEL (`duration(self) >= duration('1ms')`), so
  // `kubectl apply` refuses the object: `timeout: 0s` on the WatchOrder routes failed `make deploy`.
  // No timeout at all is written by leaving `timeout` out: Istio's route default is none
  // (pilot/pkg/networking/core/route/route.go setTimeout: Notimeout unless the route sets one).
  const DURATION = /^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$/;
  const NS_PER = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 6e10, h: 3.6e12 } as const;

  it.each(overlays)("%s: every duration in an Istio object is at least 1 ms, to the millisecond", (overlay) => {
    const problems: string[] = [];
    let durations = 0;
    for (const o of rendered.get(overlay) ?? []) {
      if (!o.apiVersion.includes("istio.io/")) continue;
      for (const [path, v] of strings(o.spec, "spec")) {
        const m = DURATION.exec(v);
        if (!m) continue;
        durations++;
        const ns = Number(m[1]) * NS_PER[m[2] as keyof typeof NS_PER];
        if (ns < 1e6) problems.push(`${o.kind}/${o.metadata.name} ${path}: ${v} < 1ms`);
        else if (ns % 1e6 !== 0) problems.push(`${o.kind}/${o.metadata.name} ${path}: ${v} finer than 1ms`);
      }
    }
    expect(durations, "the routes' timeouts at least").toBeGreaterThan(0);
    expect(problems).toEqual([]);
  });
});
