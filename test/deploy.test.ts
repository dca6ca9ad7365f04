/**
 * The Kubernetes + Istio deployment (deploy/, Dockerfile), checked offline
 * against the code. No Docker engine, cluster or Istio runs here, so:
 *
 * - every overlay is rendered with `kubectl kustomize` and every object is
 *   validated against the Kubernetes and Istio schemas (kubernetes-models,
 *   @kubernetes-models/istio);
 * - the manifests are cross-checked with what the code declares: the
 *   processes (services/* and gateway), the variables each config.ts reads
 *   (recorded by calling its loadConfig), its ports, its upstream calls (the
 *   `*_TARGET` variables), its streaming RPCs (gen/), its resilience policy;
 * - the image is checked by construction: the Dockerfile's stages, the
 *   .dockerignore allowlist, the same tsc build it runs, and every compiled
 *   entrypoint started from that layout and probed as its Deployment says;
 * - the NATS config is run as a real 3-node JetStream cluster (local
 *   nats-server) on which the code's connectBus creates R3 streams;
 * - the kind JWT flow: a token from deploy/kind/token.sh passes the gateway's
 *   own verifier configured from the rendered manifests, and the ingress
 *   RequestAuthentication holds the same key.
 */
import { execFileSync, spawn } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { get as httpGet } from "node:http";
import { builtinModules } from "node:module";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { pathToFileURL } from "node:url";
import type { DescService } from "@bufbuild/protobuf";
import { IstioOperator } from "@kubernetes-models/istio/install.istio.io/v1alpha1/IstioOperator";
import {
  DestinationRule,
  type IDestinationRule,
} from "@kubernetes-models/istio/networking.istio.io/v1/DestinationRule";
import { Gateway, type IGateway } from "@kubernetes-models/istio/networking.istio.io/v1/Gateway";
import { type IVirtualService, VirtualService } from "@kubernetes-models/istio/networking.istio.io/v1/VirtualService";
import {
  AuthorizationPolicy,
  type IAuthorizationPolicy,
} from "@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy";
import {
  type IPeerAuthentication,
  PeerAuthentication,
} from "@kubernetes-models/istio/security.istio.io/v1/PeerAuthentication";
import {
  type IRequestAuthentication,
  RequestAuthentication,
} from "@kubernetes-models/istio/security.istio.io/v1/RequestAuthentication";
import { Telemetry } from "@kubernetes-models/istio/telemetry.istio.io/v1/Telemetry";
import { exportJWK, importSPKI } from "jose";
import { Deployment, type IDeployment } from "kubernetes-models/apps/v1/Deployment";
import { type IStatefulSet, StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";
import { type IJob, Job } from "kubernetes-models/batch/v1/Job";
import { type IPodDisruptionBudget, PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { ConfigMap, type IConfigMap } from "kubernetes-models/v1/ConfigMap";
import type { IContainer } from "kubernetes-models/v1/Container";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { type IPersistentVolumeClaim, PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import type { IPodSpec } from "kubernetes-models/v1/PodSpec";
import type { IProbe } from "kubernetes-models/v1/Probe";
import { type ISecret, Secret } from "kubernetes-models/v1/Secret";
import { type IService, Service } from "kubernetes-models/v1/Service";
import { type IServiceAccount, ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { BUS_USERS, EVENTS } from "../contracts/events.js";
import { createAuthenticator } from "../gateway/auth.js";
import { loadConfig as loadGatewayConfig } from "../gateway/config.js";
import { OPENAPI_PATH } from "../gateway/openapi.js";
import { OPERATOR_READS, OPERATOR_WRITES } from "../gateway/operator.js";
import { REFLECTION_SERVICES } from "../gateway/reflection.js";
import { ROUTES } from "../gateway/routes.js";
import { findWebDirectory } from "../gateway/web.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { PaymentService } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { connectBus } from "../platform/bus.js";
import { ConfigError } from "../platform/config.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { silentLogger } from "../platform/log.js";
import { openRegistry } from "../platform/registry.js";
import { DEPLOY_USERS_CONF, deployUsersConf, passwordVariable } from "../scripts/nats.js";
import { exited, freePort, ROOT, runToEnd } from "./fixtures.js";

// ---------------------------------------------------------------------------
// Facts of the deployment that are not in the code

const NS = "shopmesh";
const DEPLOY = join(ROOT, "deploy");
const OVERLAYS = join(DEPLOY, "kubernetes", "overlays");
const BASE = join(DEPLOY, "kubernetes", "base");
/** The main overlay (`make deploy`); the others add to it. */
const MAIN_OVERLAY = "kind";
const FAULTS_OVERLAY = "kind-payment-faults";
/** The Istio ingress gateway's identity and labels (istioctl's default profile). */
const INGRESS = "istio-ingressgateway";
const INGRESS_PRINCIPAL = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
const INGRESS_LABELS = { istio: "ingressgateway" };
/**
 * The web shop's files as the gateway serves them without a token (gateway/web.ts: `/` is
 * index.html, the manifest beside it, content-hashed files under assets/).
 */
const WEB_PATHS = ["/", "/index.html", "/manifest.json", "/assets/*"];
/** The container that runs a shopmesh process is named alike in every Deployment. */
const CONTAINER = "server";
/** Dev-only dynamic imports of devDependencies, allowed only where the manifests rule them out. */
const DEV_ONLY_IMPORTS: Record<string, { variable: string; never: string }> = {
  "pino-pretty": { variable: "LOG_FORMAT", never: "pretty" },
};
/** Keys Istio deprecated, by the key of the object that holds them. */
const DEPRECATED: ReadonlyArray<{ parent: string; key: string; use: string }> = [
  { parent: "outlierDetection", key: "consecutiveErrors", use: "consecutive5xxErrors / consecutiveGatewayErrors" },
  { parent: "delay", key: "percent", use: "percentage.value" },
  { parent: "abort", key: "percent", use: "percentage.value" },
  { parent: "*", key: "mirrorPercent", use: "mirrorPercentage" },
];

const NATS_MISSING = "nats-server is not on PATH: apt-get install nats-server (.ci/run installs it)";
const KUBECTL_MISSING =
  "kubectl is not on PATH. test/deploy.test.ts renders deploy/kubernetes/overlays/* with `kubectl kustomize` " +
  "(kubectl >= 1.27, kustomize v5; no cluster needed). The node machine image ships it (google-cloud-cli's kubectl " +
  "package, /usr/bin/kubectl); elsewhere install kubectl, or make .ci/run install it.";

// ---------------------------------------------------------------------------
// Small helpers

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

function tool(
  cmd: string,
  args: readonly string[],
  missing: string,
  env: NodeJS.ProcessEnv = process.env,
  cwd: string = ROOT,
): string {
  try {
    return execFileSync(cmd, args, { cwd, env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    const e = err as { code?: string; stderr?: string; stdout?: string };
    if (e.code === "ENOENT") throw new Error(missing);
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${e.stderr ?? ""}${e.stdout ?? ""}`);
  }
}

function kustomize(dir: string): Obj[] {
  const out = tool("kubectl", ["kustomize", dir], KUBECTL_MISSING);
  return parseAllDocuments(out)
    .map((d) => d.toJS() as Obj | null)
    .filter((o): o is Obj => o !== null);
}

const read = (path: string) => readFileSync(join(ROOT, path), "utf8");
const ofKind = <T>(objs: readonly Obj[], kind: string): T[] => objs.filter((o) => o.kind === kind) as unknown as T[];
const named = <T>(objs: readonly Obj[], kind: string, name: string, ns: string = NS): T | undefined =>
  objs.find((o) => o.kind === kind && o.metadata.name === name && (o.metadata.namespace ?? NS) === ns) as T | undefined;
const selects = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) =>
  selector !== undefined &&
  Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);
const fqdn = (service: string) => `${service}.${NS}.svc.cluster.local`;
const principal = (serviceAccount: string) => `cluster.local/ns/${NS}/sa/${serviceAccount}`;
const sorted = (xs: Iterable<string>) => [...new Set(xs)].sort();
/** Istio's string match in AuthorizationPolicies: exact, prefix `x*`, suffix `*x`, or `*` for any. */
const istioMatches = (pattern: string, value: string) =>
  pattern === "*" ||
  (pattern.endsWith("*") && value.startsWith(pattern.slice(0, -1))) ||
  (pattern.startsWith("*") && value.endsWith(pattern.slice(1))) ||
  pattern === value;

/** "10s", "500ms", "1m", "0s" in ms. */
function durationMs(d: string | undefined): number | undefined {
  if (d === undefined) return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(d);
  if (!m) throw new Error(`not a duration: ${d}`);
  return Number(m[1]) * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[m[2] as "ms" | "s" | "m" | "h"];
}

/** A Kubernetes quantity ("50m", "1", "128Mi", "1Gi") as a number. */
function quantity(q: string | number | undefined): number {
  if (q === undefined) return Number.NaN;
  const m = /^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G)?$/.exec(String(q));
  if (!m) return Number.NaN;
  const unit = { m: 1e-3, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9 };
  return Number(m[1]) * (m[2] ? unit[m[2] as keyof typeof unit] : 1);
}

async function until<T>(what: string, timeoutMs: number, attempt: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${what}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

function httpGetLocal(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpGet({ host: "127.0.0.1", port, path, timeout: 2_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.once("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.once("timeout", () => req.destroy(new Error("timeout")));
    req.once("error", reject);
  });
}

// ---------------------------------------------------------------------------
// What the code declares

type LoadConfig = (env: Readonly<Record<string, string | undefined>>) => Readonly<Record<string, unknown>>;

/** A shopmesh process: services/<name>/main.ts or gateway/main.ts. */
interface Process {
  readonly name: string;
  /** Its folder: "services/order", "gateway". */
  readonly dir: string;
  /** Its entrypoint in the image (compiled main.ts). */
  readonly entry: string;
  readonly load: LoadConfig;
  /** Every variable its loadConfig reads. */
  readonly reads: ReadonlySet<string>;
  /** Its configuration with every variable unset (the defaults). */
  readonly defaults: Readonly<Record<string, unknown>>;
  /** The gRPC services it serves (gen/shopmesh/<name>/v1), none for the gateway. */
  readonly services: readonly DescService[];
}

/** Calls `load` with an env that records every name it asks for. */
function recordReads(load: LoadConfig): { reads: Set<string>; defaults: Readonly<Record<string, unknown>> } {
  const reads = new Set<string>();
  const env = new Proxy<Record<string, string | undefined>>(
    {},
    {
      get: (_t, key) => {
        if (typeof key === "string") reads.add(key);
        return undefined;
      },
      has: (_t, key) => {
        if (typeof key === "string") reads.add(key);
        return false;
      },
    },
  );
  let defaults: Readonly<Record<string, unknown>> = {};
  try {
    defaults = load(env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
  }
  return { reads, defaults };
}

async function discoverProcesses(): Promise<Process[]> {
  const dirs = [
    ...readdirSync(join(ROOT, "services"))
      .filter((n) => existsSync(join(ROOT, "services", n, "main.ts")))
      .map((n) => `services/${n}`),
    "gateway",
  ];
  return Promise.all(
    dirs.map(async (dir) => {
      const name = posix.basename(dir);
      const mod: unknown = await import(pathToFileURL(join(ROOT, dir, "config.ts")).href);
      const load = (mod as { loadConfig?: unknown }).loadConfig;
      if (typeof load !== "function") throw new Error(`${dir}/config.ts exports no loadConfig`);
      const services: DescService[] = [];
      const pb = join(ROOT, "gen", "shopmesh", name, "v1", `${name}_pb.ts`);
      if (dir.startsWith("services/") && existsSync(pb)) {
        const gen: unknown = await import(pathToFileURL(pb).href);
        for (const v of Object.values(gen as Record<string, unknown>)) {
          if (typeof v === "object" && v !== null && (v as { kind?: unknown }).kind === "service")
            services.push(v as DescService);
        }
      }
      return {
        name,
        dir,
        entry: `${dir}/main.js`,
        load: load as LoadConfig,
        ...recordReads(load as LoadConfig),
        services,
      };
    }),
  );
}

const processes = await discoverProcesses();
const byName = new Map(processes.map((p) => [p.name, p]));
/** Processes with a database: on Kubernetes, a schema of the shared PostgreSQL. */
const usesDatabase = (p: Process) => p.reads.has("DATABASE_URL");
const portVar = (p: Process) => (p.reads.has("GRPC_PORT") ? "GRPC_PORT" : "HTTP_PORT");
/** The code's call graph: P calls Q when P's config reads Q_TARGET. */
const upstreamsOf = (p: Process) =>
  processes.filter((q) => q !== p && p.reads.has(`${q.name.toUpperCase()}_TARGET`)).map((q) => q.name);
/** A caller's resilience setting `field` (TIMEOUT_MS, BULKHEAD_LIMIT...) for calls to `q` (per downstream, or UPSTREAM_*). */
function policyOf(config: Readonly<Record<string, unknown>>, q: string, field: string): number | undefined {
  const v = config[`${q.toUpperCase()}_${field}`] ?? config[`UPSTREAM_${field}`];
  return typeof v === "number" ? v : undefined;
}

// ---------------------------------------------------------------------------
// What the manifests say

const overlayNames = readdirSync(OVERLAYS).filter((n) => existsSync(join(OVERLAYS, n, "kustomization.yaml")));
const rendered = new Map(overlayNames.map((n) => [n, kustomize(join(OVERLAYS, n))]));
const main = rendered.get(MAIN_OVERLAY) ?? [];

type Workload = IDeployment | IStatefulSet | IJob;
const podSpec = (w: Workload): IPodSpec => w.spec?.template.spec ?? { containers: [] };
const podLabels = (w: Workload) => w.spec?.template.metadata?.labels ?? {};

function deploymentOf(objs: readonly Obj[], p: Process): IDeployment {
  const found = ofKind<IDeployment>(objs, "Deployment").filter((d) =>
    podSpec(d).containers.some((c) => c.args?.[0] === p.entry),
  );
  if (found.length !== 1) throw new Error(`${found.length} Deployments run ${p.entry} (want 1)`);
  return found[0] as IDeployment;
}

function serverOf(d: IDeployment): IContainer {
  const c = podSpec(d).containers.find((x) => x.name === CONTAINER);
  if (!c) throw new Error(`Deployment ${d.metadata?.name} has no container "${CONTAINER}"`);
  return c;
}

/** The environment a container starts with: envFrom ConfigMaps and Secrets, then env. */
function envOf(objs: readonly Obj[], c: IContainer): Record<string, string> {
  const env: Record<string, string> = {};
  for (const from of c.envFrom ?? []) {
    if (from.prefix) throw new Error(`envFrom prefix ${from.prefix}: the config reads unprefixed names`);
    if (from.configMapRef) {
      const cm = named<IConfigMap>(objs, "ConfigMap", from.configMapRef.name ?? "");
      if (!cm) throw new Error(`ConfigMap ${from.configMapRef.name} is not rendered`);
      Object.assign(env, cm.data ?? {});
    }
    if (from.secretRef) {
      const s = named<ISecret>(objs, "Secret", from.secretRef.name ?? "");
      if (!s) throw new Error(`Secret ${from.secretRef.name} is not rendered`);
      for (const [k, v] of Object.entries(s.data ?? {})) env[k] = Buffer.from(v, "base64").toString("utf8");
      Object.assign(env, s.stringData ?? {});
    }
  }
  for (const e of c.env ?? []) {
    // As the kubelet does: $(NAME) of a variable defined before it is expanded, $$ is a $, and a
    // reference to nothing defined stays as written.
    if (e.value !== undefined)
      env[e.name] = e.value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (ref, name?: string) =>
        name === undefined ? "$" : (env[name] ?? ref),
      );
    else if (e.valueFrom?.configMapKeyRef) {
      const ref = e.valueFrom.configMapKeyRef;
      const v = named<IConfigMap>(objs, "ConfigMap", ref.name ?? "")?.data?.[ref.key];
      if (v === undefined) throw new Error(`${e.name}: ConfigMap ${ref.name} has no key ${ref.key}`);
      env[e.name] = v;
    } else if (e.valueFrom?.secretKeyRef) {
      const ref = e.valueFrom.secretKeyRef;
      const v = named<ISecret>(objs, "Secret", ref.name ?? "")?.data?.[ref.key];
      if (v === undefined) throw new Error(`${e.name}: Secret ${ref.name} has no key ${ref.key}`);
      env[e.name] = Buffer.from(v, "base64").toString("utf8");
    } else env[e.name] = "<from the pod>";
  }
  return env;
}

/** The container port a probe or Service targets (number or port name). */
function containerPort(c: IContainer, port: number | string | undefined): number | undefined {
  if (typeof port === "number") return port;
  return c.ports?.find((p) => p.name === port)?.containerPort;
}

function probePort(c: IContainer, probe: IProbe | undefined): { kind: string; port: number | undefined } {
  if (probe?.grpc) return { kind: "grpc", port: probe.grpc.port };
  if (probe?.tcpSocket) return { kind: "tcp", port: containerPort(c, probe.tcpSocket.port) };
  if (probe?.httpGet) return { kind: "http", port: containerPort(c, probe.httpGet.port) };
  return { kind: "none", port: undefined };
}

/** Workloads (Deployments and StatefulSets) by name. */
function workloads(objs: readonly Obj[]): Map<string, Workload> {
  return new Map(
    [
      ...ofKind<IDeployment>(objs, "Deployment"),
      ...ofKind<IStatefulSet>(objs, "StatefulSet"),
      ...ofKind<IJob>(objs, "Job"),
    ].map((w) => [w.metadata?.name ?? "", w]),
  );
}

/** The workload names behind a principal: those running as its service account, or the ingress. */
function callersOf(objs: readonly Obj[], principals: readonly string[]): string[] {
  const names: string[] = [];
  for (const p of principals) {
    if (p === INGRESS_PRINCIPAL) {
      names.push(INGRESS);
      continue;
    }
    const matching = [...workloads(objs)].filter(
      ([, w]) => principal(podSpec(w).serviceAccountName ?? "default") === p,
    );
    if (matching.length === 0) throw new Error(`principal ${p} is no workload's service account`);
    names.push(...matching.map(([n]) => n));
  }
  return names;
}

/** Callers the ALLOW policies let reach workload `w`, per target port ("*" when a rule names no port). */
function allowedCallers(objs: readonly Obj[], w: Workload): Map<string, string[]> {
  const byPort = new Map<string, string[]>();
  for (const ap of ofKind<IAuthorizationPolicy>(objs, "AuthorizationPolicy")) {
    if ((ap.metadata?.namespace ?? NS) !== NS || (ap.spec?.action ?? "ALLOW") !== "ALLOW") continue;
    if (!selects(ap.spec?.selector?.matchLabels, podLabels(w))) continue;
    for (const rule of ap.spec?.rules ?? []) {
      const principals = (rule.from ?? []).flatMap((f) => f.source?.principals ?? []);
      const ports = (rule.to ?? []).flatMap((t) => t.operation?.ports ?? []);
      for (const port of ports.length > 0 ? ports : ["*"]) {
        byPort.set(port, sorted([...(byPort.get(port) ?? []), ...callersOf(objs, principals)]));
      }
    }
  }
  return byPort;
}

// ---------------------------------------------------------------------------

describe("rendering and schemas", () => {
  const MODELS: Record<string, new (data: never) => { validate(): void }> = {
    "v1/Namespace": Namespace,
    "v1/ServiceAccount": ServiceAccount,
    "v1/Service": Service,
    "v1/ConfigMap": ConfigMap,
    "v1/Secret": Secret,
    "v1/PersistentVolumeClaim": PersistentVolumeClaim,
    "apps/v1/Deployment": Deployment,
    "apps/v1/StatefulSet": StatefulSet,
    "batch/v1/Job": Job,
    "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
    "networking.istio.io/v1/Gateway": Gateway,
    "networking.istio.io/v1/VirtualService": VirtualService,
    "networking.istio.io/v1/DestinationRule": DestinationRule,
    "security.istio.io/v1/PeerAuthentication": PeerAuthentication,
    "security.istio.io/v1/AuthorizationPolicy": AuthorizationPolicy,
    "security.istio.io/v1/RequestAuthentication": RequestAuthentication,
    "telemetry.istio.io/v1/Telemetry": Telemetry,
  };

  it("every overlay renders, the main one and the fault-injection demo among them", () => {
    expect(overlayNames).toEqual(expect.arrayContaining([MAIN_OVERLAY, FAULTS_OVERLAY]));
    for (const [name, objs] of rendered) expect(objs.length, name).toBeGreaterThan(0);
  });

  it.each(overlayNames)("every object of %s validates against its Kubernetes or Istio schema", (overlay) => {
    const problems: string[] = [];
    for (const o of rendered.get(overlay) ?? []) {
      const id = `${o.kind} ${o.metadata.namespace ?? ""}/${o.metadata.name}`;
      const Model = MODELS[`${o.apiVersion}/${o.kind}`];
      if (!Model) {
        problems.push(`${id}: no schema for ${o.apiVersion} (add the model, or use a current apiVersion)`);
        continue;
      }
      // kustomize wraps long base64 values over several lines; the API server's
      // decoder (Go encoding/base64) skips newlines, so validate what it reads.
      const data = o.kind === "Secret" ? (o.data as Record<string, string> | undefined) : undefined;
      const asRead = data
        ? { ...o, data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, v.replace(/\s/g, "")])) }
        : o;
      try {
        new Model(asRead as never).validate();
      } catch (err) {
        problems.push(`${id}: ${(err as Error).message}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it.each(overlayNames)("%s uses no deprecated Istio field", (overlay) => {
    const found: string[] = [];
    const walk = (v: unknown, path: string, parent: string) => {
      if (Array.isArray(v)) {
        for (const [i, x] of v.entries()) walk(x, `${path}[${i}]`, parent);
      } else if (typeof v === "object" && v !== null) {
        for (const [k, x] of Object.entries(v)) {
          const d = DEPRECATED.find((r) => r.key === k && (r.parent === "*" || r.parent === parent));
          if (d) found.push(`${path}.${k} (use ${d.use})`);
          walk(x, `${path}.${k}`, k);
        }
      }
    };
    for (const o of rendered.get(overlay) ?? []) {
      if (o.apiVersion.includes("istio.io")) walk(o.spec, `${o.kind}/${o.metadata.name}.spec`, "spec");
    }
    expect(found).toEqual([]);
  });

  it("namespaces: shopmesh with sidecar injection; only the rules on the ingress live in istio-system", () => {
    for (const objs of rendered.values()) {
      const ns = named<Obj>(objs, "Namespace", NS, NS);
      expect(ns?.metadata.labels?.["istio-injection"]).toBe("enabled");
      for (const o of objs) {
        if (o.kind === "Namespace") continue;
        const selector = (o.spec as { selector?: { matchLabels?: Record<string, string> } } | undefined)?.selector;
        const atIngress =
          (o.kind === "RequestAuthentication" || o.kind === "AuthorizationPolicy") &&
          selects(selector?.matchLabels, INGRESS_LABELS);
        const want = atIngress ? "istio-system" : NS;
        expect(`${o.kind}/${o.metadata.name} in ${o.metadata.namespace}`).toBe(
          `${o.kind}/${o.metadata.name} in ${want}`,
        );
      }
    }
  });

  it("deploy/kind/istio.yaml validates as an IstioOperator and holds apps until their sidecar is up", () => {
    const op = parseYaml(read("deploy/kind/istio.yaml")) as Obj & { spec: Record<string, unknown> };
    expect(() => new IstioOperator(op as never).validate()).not.toThrow();
    expect(op.spec.profile).toBe("default");
    expect(op.spec.meshConfig).toMatchObject({ defaultConfig: { holdApplicationUntilProxyStarts: true } });
  });
});

describe("one manifest set per process", () => {
  it("deploy/kubernetes/base has one folder per process (services/* and gateway) plus nats and postgres", () => {
    const folders = readdirSync(BASE).filter((n) => existsSync(join(BASE, n, "kustomization.yaml")));
    expect(sorted(folders)).toEqual(sorted([...processes.map((p) => p.name), "nats", "postgres"]));
    const istio = readdirSync(join(DEPLOY, "kubernetes", "components", "istio", "services"));
    expect(sorted(istio)).toEqual(sorted(processes.map((p) => `${p.name}.yaml`)));
  });

  describe.each(overlayNames)("%s", (overlay) => {
    const objs = rendered.get(overlay) ?? [];

    it.each(processes.map((p) => p.name))(
      "%s has its Deployment, Service, ServiceAccount, DestinationRule, AuthorizationPolicy and PDB",
      (name) => {
        const p = byName.get(name) as Process;
        const d = deploymentOf(objs, p);
        const labels = podLabels(d);
        expect(d.metadata?.name).toBe(name);
        const svc = named<IService>(objs, "Service", name);
        expect(svc, "Service").toBeDefined();
        expect(selects(svc?.spec?.selector, labels), "Service selects the pods").toBe(true);
        const sa = named<IServiceAccount>(objs, "ServiceAccount", name);
        expect(sa, "ServiceAccount").toBeDefined();
        expect(podSpec(d).serviceAccountName).toBe(name);
        const dr = named<IDestinationRule>(objs, "DestinationRule", name);
        expect(dr?.spec?.host, "DestinationRule host").toBe(fqdn(name));
        const ap = named<IAuthorizationPolicy>(objs, "AuthorizationPolicy", name);
        expect(ap?.spec?.action, "AuthorizationPolicy").toBe("ALLOW");
        expect(selects(ap?.spec?.selector?.matchLabels, labels), "AuthorizationPolicy selects the pods").toBe(true);
        const pdb = ofKind<IPodDisruptionBudget>(objs, "PodDisruptionBudget").filter((b) =>
          selects(b.spec?.selector?.matchLabels, labels),
        );
        expect(pdb.length, "PodDisruptionBudget").toBe(1);
      },
    );

    it("every Deployment runs a process of the code, with the image's entrypoint and the overlay's image", () => {
      const image = /^IMAGE \?= (\S+)$/m.exec(read("deploy/deploy.mk"))?.[1];
      for (const d of ofKind<IDeployment>(objs, "Deployment")) {
        const c = serverOf(d);
        expect(c.command, "command unset: the image's ENTRYPOINT (node) runs").toBeUndefined();
        expect(c.args?.length).toBe(1);
        expect(processes.map((p) => p.entry)).toContain(c.args?.[0]);
        expect(c.image, `${d.metadata?.name} runs IMAGE of deploy/deploy.mk`).toBe(image);
        expect(c.imagePullPolicy, "kind-loaded images are never pulled").toBe("IfNotPresent");
      }
    });
  });
});

describe.each(overlayNames)("%s matches the code", (overlay) => {
  const objs = rendered.get(overlay) ?? [];
  // Computed on first use, inside a test: a broken manifest fails the tests that need it.
  const envs = new Map<string, Record<string, string>>();
  const envFor = (name: string): Record<string, string> => {
    let env = envs.get(name);
    if (!env) {
      env = envOf(objs, serverOf(deploymentOf(objs, byName.get(name) as Process)));
      envs.set(name, env);
    }
    return env;
  };
  const configOf = (p: Process) => p.load(envFor(p.name));

  it.each(processes.map((p) => p.name))("%s: every variable it gets is one its config.ts reads, and parses", (name) => {
    const p = byName.get(name) as Process;
    const env = envFor(name);
    expect(Object.keys(env).filter((k) => !p.reads.has(k))).toEqual([]);
    expect(() => p.load(env)).not.toThrow();
    // What must not fall back to a laptop default in a cluster.
    // (The gateway needs the bus only to read the registry; with DNS targets it has no NATS_URL.)
    const required = [...p.reads].filter(
      (v) =>
        (v === "NATS_URL" && p.services.length > 0) ||
        v === "DATABASE_URL" ||
        v === portVar(p) ||
        v.endsWith("_TARGET"),
    );
    expect(required.filter((v) => env[v] === undefined)).toEqual([]);
  });

  it.each(processes.map((p) => p.name))("%s: container port, Service port and probes match its config", (name) => {
    const p = byName.get(name) as Process;
    const d = deploymentOf(objs, p);
    const c = serverOf(d);
    const port = configOf(p)[portVar(p)];
    expect(typeof port).toBe("number");
    const svc = named<IService>(objs, "Service", name);
    const sp = svc?.spec?.ports ?? [];
    expect(sp.length).toBe(1);
    const servicePort = sp[0];
    expect(containerPort(c, servicePort?.targetPort), "Service targetPort").toBe(port);
    if (p.services.length > 0) {
      expect(servicePort).toMatchObject({ name: "grpc", appProtocol: "grpc", port });
      expect(c.ports?.find((x) => x.name === "grpc")?.containerPort).toBe(port);
      for (const probe of [c.readinessProbe, c.livenessProbe, c.startupProbe])
        expect(probe?.grpc?.port, "gRPC health probes").toBe(port);
      // Readiness by the service's name (NOT_SERVING while its database is unreachable: platform/health.ts),
      // liveness and startup by "" (the process runs): a database down must not restart every pod.
      expect(c.readinessProbe?.grpc?.service).toBe(p.services[0]?.typeName);
      for (const probe of [c.livenessProbe, c.startupProbe]) expect(probe?.grpc?.service ?? "").toBe("");
    } else {
      // The gateway: one HTTP port (HTTP/1.1 and h2c) that also answers /readyz and /healthz.
      expect(servicePort).toMatchObject({ appProtocol: "http2", port });
      expect(probePort(c, c.readinessProbe)).toEqual({ kind: "http", port });
      expect(c.readinessProbe?.httpGet?.path).toBe("/readyz");
      expect(probePort(c, c.livenessProbe)).toEqual({ kind: "http", port });
      expect(c.livenessProbe?.httpGet?.path).toBe("/healthz");
    }
    // Every other port variable the process is given is a declared container port.
    for (const [k, v] of Object.entries(configOf(p))) {
      if (!k.endsWith("_PORT") || k === portVar(p) || v === undefined || envFor(name)[k] === undefined) continue;
      expect(
        c.ports?.some((x) => x.containerPort === v),
        `${k}=${v} is a container port`,
      ).toBe(true);
    }
  });

  it("every *_TARGET is the DNS name and gRPC port of the Service it names; NATS_URL is the nats Service", () => {
    for (const p of processes) {
      const config = configOf(p);
      for (const v of p.reads) {
        if (!v.endsWith("_TARGET")) continue;
        const q = byName.get(v.slice(0, -"_TARGET".length).toLowerCase());
        expect(q, `${p.name} reads ${v}, but there is no such process`).toBeDefined();
        if (!q) continue;
        const port = configOf(q)[portVar(q)];
        expect(config[v], `${p.name} ${v}`).toBe(`dns:///${fqdn(q.name)}:${port}`);
        expect(named<IService>(objs, "Service", q.name)?.spec?.ports?.[0]?.port).toBe(port);
      }
      if (envFor(p.name).NATS_URL !== undefined) {
        const nats = named<IService>(objs, "Service", "nats");
        const client = nats?.spec?.ports?.find((x) => x.name === "tcp-client");
        expect(client?.appProtocol, "NATS speaks first: declared TCP").toBe("tcp");
        expect(config.NATS_URL).toBe(`nats://${fqdn("nats")}:${client?.port}`);
      }
    }
  });

  it("the AuthorizationPolicies' caller graph equals the code's upstream graph", () => {
    const ingressTargets = new Set(
      ofKind<IVirtualService>(objs, "VirtualService")
        .filter((vs) => (vs.spec?.gateways ?? []).length > 0)
        .flatMap((vs) => (vs.spec?.http ?? []).flatMap((r) => (r.route ?? []).map((x) => x.destination?.host))),
    );
    const actual: Record<string, string[]> = {};
    const expected: Record<string, string[]> = {};
    for (const q of processes) {
      const w = deploymentOf(objs, q);
      const port = String(configOf(q)[portVar(q)]);
      const allowed = allowedCallers(objs, w);
      expect([...allowed.keys()], `${q.name}: rules name its port only`).toEqual([port]);
      actual[q.name] = allowed.get(port) ?? [];
      expected[q.name] = sorted([
        ...processes.filter((p) => upstreamsOf(p).includes(q.name)).map((p) => p.name),
        ...(ingressTargets.has(fqdn(q.name)) ? [INGRESS] : []),
      ]);
    }
    const nats = workloads(objs).get("nats");
    expect(nats, "the nats StatefulSet").toBeDefined();
    if (nats) {
      const clientPort = String(podSpec(nats).containers[0]?.ports?.find((x) => x.name === "client")?.containerPort);
      const clusterPort = String(podSpec(nats).containers[0]?.ports?.find((x) => x.name === "cluster")?.containerPort);
      const allowed = allowedCallers(objs, nats);
      expect(sorted(allowed.keys())).toEqual(sorted([clientPort, clusterPort]));
      actual[`nats:${clientPort}`] = allowed.get(clientPort) ?? [];
      actual[`nats:${clusterPort}`] = allowed.get(clusterPort) ?? [];
      // The processes given NATS_URL, and the Job that creates the streams (it too names NATS_URL).
      const jobs = [...workloads(objs)].filter(
        ([, w]) => w.kind === "Job" && podSpec(w).containers.some((c) => c.env?.some((e) => e.name === "NATS_URL")),
      );
      expected[`nats:${clientPort}`] = sorted([
        ...processes.filter((p) => envFor(p.name).NATS_URL !== undefined).map((p) => p.name),
        ...jobs.map(([n]) => n),
      ]);
      expected[`nats:${clusterPort}`] = ["nats"];
    }
    const postgres = workloads(objs).get("postgres");
    expect(postgres, "the postgres StatefulSet").toBeDefined();
    if (postgres) {
      const port = String(podSpec(postgres).containers[0]?.ports?.find((x) => x.name === "postgres")?.containerPort);
      const allowed = allowedCallers(objs, postgres);
      expect([...allowed.keys()]).toEqual([port]);
      actual[`postgres:${port}`] = allowed.get(port) ?? [];
      expected[`postgres:${port}`] = sorted(processes.filter(usesDatabase).map((p) => p.name));
    }
    expect(actual).toEqual(expected);
    // The graph the code has today, spelled out so a change to it is seen here too.
    expect(Object.fromEntries(processes.map((p) => [p.name, upstreamsOf(p)]))).toMatchObject({
      gateway: expect.arrayContaining(["inventory", "payment", "order", "notification", "history"]),
      order: expect.arrayContaining(["inventory", "payment"]),
    });
  });

  it("mTLS is STRICT and everything is denied unless an ALLOW policy names the caller", () => {
    const pas = ofKind<IPeerAuthentication>(objs, "PeerAuthentication");
    expect(pas.map((pa) => [pa.metadata?.namespace, pa.spec?.selector, pa.spec?.mtls?.mode])).toEqual([
      [NS, undefined, "STRICT"],
    ]);
    expect(pas[0]?.spec?.portLevelMtls).toBeUndefined();
    const aps = ofKind<IAuthorizationPolicy>(objs, "AuthorizationPolicy").filter((ap) => ap.metadata?.namespace === NS);
    const denyAll = aps.filter((ap) => !ap.spec?.selector && !ap.spec?.action && (ap.spec?.rules ?? []).length === 0);
    expect(denyAll.length, "one namespace-wide allow-nothing policy").toBe(1);
    for (const ap of aps) {
      if (denyAll.includes(ap)) continue;
      expect(ap.spec?.selector?.matchLabels, `${ap.metadata?.name} selects one workload`).toBeDefined();
      for (const rule of ap.spec?.rules ?? []) {
        const principals = (rule.from ?? []).flatMap((f) => f.source?.principals ?? []);
        expect(principals.length, `${ap.metadata?.name}: every rule names its callers`).toBeGreaterThan(0);
        expect((rule.from ?? []).every((f) => Object.keys(f.source ?? {}).join() === "principals")).toBe(true);
      }
    }
  });

  it("authorization is per method: each caller reaches exactly the RPCs its code calls", () => {
    const upstreamOf = (name: string) => ({ inventory: InventoryService, payment: PaymentService })[name];
    // What the code calls: the gateway's routing table, and the saga's participant calls.
    const expected = new Map<string, Map<string, string[]>>(); // target -> caller -> paths
    const add = (target: string, caller: string, path: string) => {
      const byCaller = expected.get(target) ?? new Map<string, string[]>();
      byCaller.set(caller, sorted([...(byCaller.get(caller) ?? []), path]));
      expected.set(target, byCaller);
    };
    for (const r of ROUTES) for (const m of r.methods) add(r.upstream, "gateway", `/${r.service.typeName}/${m}`);
    // The operator panel: its reads on each service the gateway calls, and its writes (SetFaults)
    // only where the gateway's config turns fault injection on.
    const gateway = byName.get("gateway") as Process;
    const faultInjection = configOf(gateway).FAULT_INJECTION === true;
    // The two lists are written by hand beside the calls: a call added to operator.ts and not to them
    // is denied by the mesh. Every Health or ChaosService method operator.ts calls is in one of them.
    const called = new Set<string>();
    for (const svc of [Health, ChaosService] as DescService[])
      for (const m of svc.methods)
        if (new RegExp(`\\.${m.localName}\\(`).test(read("gateway/operator.ts")))
          called.add(`/${svc.typeName}/${m.name}`);
    expect(sorted([...OPERATOR_READS, ...OPERATOR_WRITES])).toEqual(sorted([...called]));
    for (const target of upstreamsOf(gateway))
      for (const path of [...OPERATOR_READS, ...(faultInjection ? OPERATOR_WRITES : [])]) add(target, "gateway", path);
    for (const [, target, local] of read("services/order/participants.ts").matchAll(
      /this\.deps\.(inventory|payment)\.(\w+)\(/g,
    )) {
      const svc = upstreamOf(target as string) as DescService;
      const m = svc.methods.find((x) => x.localName === local);
      if (!m) throw new Error(`saga calls unknown ${target}.${local}`);
      add(target as string, "order", `/${svc.typeName}/${m.name}`);
    }
    const actual = new Map<string, Map<string, string[]>>();
    for (const ap of ofKind<IAuthorizationPolicy>(objs, "AuthorizationPolicy")) {
      const target = ap.spec?.selector?.matchLabels?.["app.kubernetes.io/name"];
      if (ap.metadata?.namespace !== NS || !target || !expected.has(target)) continue;
      for (const rule of ap.spec?.rules ?? []) {
        const paths = (rule.to ?? []).flatMap((t) => t.operation?.paths ?? []);
        expect(paths.length, `${target}: every rule names its methods`).toBeGreaterThan(0);
        for (const caller of callersOf(
          objs,
          (rule.from ?? []).flatMap((f) => f.source?.principals ?? []),
        )) {
          const byCaller = actual.get(target) ?? new Map<string, string[]>();
          byCaller.set(caller, sorted([...(byCaller.get(caller) ?? []), ...paths]));
          actual.set(target, byCaller);
        }
      }
    }
    expect(actual).toEqual(expected);
    // The ingress lets idle connections to the gateway go before the gateway closes them itself.
    const dr = named<IDestinationRule>(objs, "DestinationRule", "gateway");
    const idle = durationMs(dr?.spec?.trafficPolicy?.connectionPool?.http?.idleTimeout) ?? Number.POSITIVE_INFINITY;
    expect(idle).toBeLessThan(Number(configOf(gateway).HTTP_IDLE_TIMEOUT_MS));
    // In particular: the gateway's identity never reaches a charge, a refund or the saga's stock
    // calls, and sets faults only where fault injection is on.
    const gatewayPaths = [...actual.values()].flatMap((m) => m.get("gateway") ?? []);
    for (const forbidden of [
      "ChargePayment",
      "RefundPayment",
      "ReserveStock",
      "ReleaseStock",
      ...(faultInjection ? [] : OPERATOR_WRITES),
    ]) {
      expect(
        gatewayPaths.some((p) => p.includes(forbidden)),
        forbidden,
      ).toBe(false);
    }
  });

  it("the ingress checks the JWT the gateway expects, forwards it, and requires it where the gateway does", async () => {
    const gateway = byName.get("gateway") as Process;
    const config = configOf(gateway);
    const gws = ofKind<IGateway>(objs, "Gateway");
    expect(gws.map((g) => g.spec?.selector)).toEqual([INGRESS_LABELS]);
    const ras = ofKind<IRequestAuthentication>(objs, "RequestAuthentication");
    expect(ras.length).toBe(1);
    const ra = ras[0];
    expect(ra?.spec?.selector?.matchLabels).toEqual(INGRESS_LABELS);
    const rule = ra?.spec?.jwtRules?.[0];
    expect(ra?.spec?.jwtRules?.length).toBe(1);
    expect(rule?.issuer).toBe(config.JWT_ISSUER);
    expect(rule?.audiences).toEqual([config.JWT_AUDIENCE]);
    expect(rule?.forwardOriginalToken, "the gateway verifies the token again").toBe(true);
    // The ingress's key is the gateway's key.
    expect(config.JWT_JWKS_URL).toBe("");
    const pem = String(config.JWT_PUBLIC_KEY).replaceAll("\\n", "\n");
    const jwk = await exportJWK(await importSPKI(pem, String(config.JWT_PUBLIC_KEY_ALG), { extractable: true }));
    const keys = (JSON.parse(rule?.jwks ?? "{}") as { keys: Array<Record<string, string>> }).keys;
    expect(keys).toEqual([
      expect.objectContaining({ kty: jwk.kty, n: jwk.n, e: jwk.e, alg: config.JWT_PUBLIC_KEY_ALG }),
    ]);
    // Requests without a principal are denied, except what the gateway serves without a token.
    const deny = ofKind<IAuthorizationPolicy>(objs, "AuthorizationPolicy").filter(
      (ap) => ap.spec?.action === "DENY" && selects(ap.spec?.selector?.matchLabels, INGRESS_LABELS),
    );
    expect(deny.length).toBe(1);
    // On a shared ingress the rule must stop at shopmesh's hosts: the ones its Gateway claims.
    const hosts = gws.flatMap((g) => (g.spec?.servers ?? []).flatMap((s) => s.hosts ?? []));
    expect(deny[0]?.spec?.rules).toEqual([
      {
        from: [{ source: { notRequestPrincipals: ["*"] } }],
        to: [
          {
            operation: {
              hosts,
              notMethods: ["OPTIONS"],
              notPaths: [...REFLECTION_SERVICES.map((s) => `/${s.typeName}/*`), ...WEB_PATHS, OPENAPI_PATH],
            },
          },
        ],
      },
    ]);
  });

  it("a token from deploy/kind/token.sh passes the gateway's own verifier, configured as rendered", async () => {
    const missing = "deploy/kind/token.sh needs bash and openssl (apt-get install openssl)";
    const token = tool("bash", ["deploy/kind/token.sh", "alice", "admin,customer"], missing).trim();
    const env = envFor("gateway");
    const authenticate = await createAuthenticator(loadGatewayConfig(env));
    await expect(authenticate(`Bearer ${token}`)).resolves.toMatchObject({
      subject: "alice",
      roles: ["admin", "customer"],
    });
  });

  it("VirtualServices: explicit timeouts and retries, none beside a fault, none shorter than the callers' deadlines", () => {
    const problems: string[] = [];
    // Stream routes have no timeout at all (Istio's default; `0s` is refused): checked below.
    const streamPaths = new Set(
      processes.flatMap((p) =>
        p.services.flatMap((s) =>
          s.methods.filter((m) => m.methodKind !== "unary").map((m) => `/${s.typeName}/${m.name}`),
        ),
      ),
    );
    for (const vs of ofKind<IVirtualService>(objs, "VirtualService")) {
      const name = vs.metadata?.name ?? "";
      const atIngress = (vs.spec?.gateways ?? []).length > 0;
      for (const route of vs.spec?.http ?? []) {
        const where = `${name}/${route.name}`;
        for (const r of route.route ?? []) {
          const host = r.destination?.host ?? "";
          const svc = processes.find((p) => fqdn(p.name) === host);
          if (!svc) problems.push(`${where}: destination ${host} is no process's Service`);
          else if (r.destination?.port?.number !== configOf(svc)[portVar(svc)])
            problems.push(`${where}: destination port ${r.destination?.port?.number}`);
        }
        if (route.fault) {
          // A route with faults still gets the mesh's default retries unless it says none: it must,
          // so that what reacts to the faults is the caller's own policy. No timeout either.
          if (route.retries?.attempts !== 0) problems.push(`${where}: fault injection without retries: {attempts: 0}`);
          if (route.timeout !== undefined) problems.push(`${where}: fault injection and a timeout on one route`);
          continue;
        }
        // The mesh retries only what never reached a server; answers are the app's to retry.
        const on = (route.retries?.retryOn ?? "").split(",").filter(Boolean);
        const answered = on.filter((c) => !["connect-failure", "refused-stream"].includes(c));
        if (answered.length > 0) problems.push(`${where}: mesh retries answers (${answered.join(",")})`);
        // Explicit, or Istio's default retry policy applies.
        const stream = (route.match ?? []).some((m) => streamPaths.has(m.uri?.exact ?? ""));
        if (route.timeout === undefined && !stream) problems.push(`${where}: no timeout`);
        if (route.retries?.attempts === undefined) problems.push(`${where}: no explicit retries`);
        const attempts = route.retries?.attempts ?? 0;
        // The callers' cockatiel policy retries with backoff; the mesh adds at most one.
        if (attempts > (atIngress ? 0 : 1)) problems.push(`${where}: ${attempts} mesh retries`);
        const timeout = durationMs(route.timeout) ?? 0;
        if (timeout === 0) continue; // a stream route, checked below
        const target = processes.find((p) => fqdn(p.name) === route.route?.[0]?.destination?.host);
        if (!target) continue;
        const callers = atIngress ? [] : processes.filter((p) => upstreamsOf(p).includes(target.name));
        for (const p of callers) {
          const deadline = policyOf(configOf(p), target.name, "TIMEOUT_MS") ?? 0;
          if (timeout < deadline) problems.push(`${where}: ${route.timeout} < ${p.name}'s deadline ${deadline} ms`);
        }
        if (atIngress) {
          for (const [k, v] of Object.entries(configOf(target))) {
            // HTTP_*_TIMEOUT_MS bound how long a client may take to send; the call deadlines are the rest.
            if (k.endsWith("_TIMEOUT_MS") && !k.startsWith("HTTP_") && typeof v === "number" && timeout < v)
              problems.push(`${where}: ${route.timeout} < the gateway's ${k}=${v}`);
          }
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it("server-streaming RPCs get a route of their own without timeout, before the default route", () => {
    const streamRoutes = (vs: IVirtualService | undefined, path: string) => {
      const http = vs?.spec?.http ?? [];
      const at = http.findIndex((r) => (r.match ?? []).some((m) => m.uri?.exact === path));
      const catchAll = http.findIndex((r) => (r.match ?? []).length === 0);
      return { at, catchAll, route: http[at] };
    };
    const check = (vs: IVirtualService | undefined, path: string) => {
      const { at, catchAll, route } = streamRoutes(vs, path);
      expect(at, `${vs?.metadata?.name}: a route for ${path}`).toBeGreaterThanOrEqual(0);
      expect(at, `${path} before the catch-all`).toBeLessThan(catchAll);
      expect(route?.timeout).toBeUndefined();
      expect(route?.retries?.attempts).toBe(0);
    };
    const ingress = ofKind<IVirtualService>(objs, "VirtualService").find((vs) => (vs.spec?.gateways ?? []).length > 0);
    let streams = 0;
    for (const p of processes) {
      for (const s of p.services) {
        for (const m of s.methods) {
          if (m.methodKind === "unary") continue;
          streams++;
          check(named<IVirtualService>(objs, "VirtualService", p.name), `/${s.typeName}/${m.name}`);
        }
      }
    }
    for (const r of ROUTES) {
      for (const m of r.service.methods) {
        if (m.methodKind !== "unary" && r.methods.includes(m.name)) check(ingress, `/${r.service.typeName}/${m.name}`);
      }
    }
    expect(streams, "WatchOrder at least").toBeGreaterThan(0);
  });

  it("DestinationRules: a mesh bulkhead above each caller's own and its held streams; ejection never of every pod", () => {
    const gatewayCalls = Number(configOf(byName.get("gateway") as Process).HTTP_MAX_CALLS);
    for (const q of processes) {
      const dr = named<IDestinationRule>(objs, "DestinationRule", q.name);
      const pool = dr?.spec?.trafficPolicy?.connectionPool;
      const od = dr?.spec?.trafficPolicy?.outlierDetection;
      expect(pool?.http?.http2MaxRequests, `${q.name} http2MaxRequests`).toBeGreaterThan(0);
      expect(pool?.tcp?.maxConnections, `${q.name} maxConnections`).toBeGreaterThan(0);
      for (const p of processes.filter((x) => upstreamsOf(x).includes(q.name))) {
        const limit = policyOf(configOf(p), q.name, "BULKHEAD_LIMIT") ?? 0;
        expect(pool?.http?.http2MaxRequests, `${q.name}: above ${p.name}'s bulkhead`).toBeGreaterThanOrEqual(limit);
      }
      // Every open server stream is a request for the pool as long as it lives: a gateway pod may hold
      // HTTP_MAX_CALLS of them, and so may the ingress in front of it.
      const streams = q.services.some((s) => s.methods.some((m) => m.methodKind === "server_streaming"));
      if (streams || q.name === "gateway") {
        expect(pool?.http?.http2MaxRequests, `${q.name}: room for the streams`).toBeGreaterThanOrEqual(gatewayCalls);
      }
      expect((od?.consecutive5xxErrors ?? 0) + (od?.consecutiveGatewayErrors ?? 0)).toBeGreaterThan(0);
      expect(durationMs(od?.interval)).toBeGreaterThan(0);
      expect(durationMs(od?.baseEjectionTime)).toBeGreaterThan(0);
      // Never every pod: with the replicas it runs, at least one always takes traffic.
      const replicas = deploymentOf(objs, q).spec?.replicas ?? 1;
      const ejectable = Math.floor((replicas * (od?.maxEjectionPercent ?? 10)) / 100);
      expect(ejectable, `${q.name}: ${od?.maxEjectionPercent}% of ${replicas} pods`).toBeLessThan(replicas);
      expect(od?.minHealthPercent, `${q.name}: detection stops before too few are left`).toBeGreaterThan(0);
    }
  });

  it("the registry is off on Kubernetes (DNS targets), and every process handles signals from its first line", () => {
    for (const p of processes) {
      const env = envFor(p.name);
      const targets = Object.entries(env).filter(([k]) => k.endsWith("_TARGET"));
      expect(
        targets.filter(([, v]) => v.startsWith("registry:")),
        `${p.name} uses no registry target`,
      ).toEqual([]);
      if (p.reads.has("DISCOVERY_REGISTER")) expect(env.DISCOVERY_REGISTER, `${p.name} registers`).toBe("false");
    }
    // runService installs SIGTERM/SIGINT handlers before it awaits anything: a starting pod stops on SIGTERM.
    const lifecycle = read("platform/lifecycle.ts");
    const body = lifecycle.slice(lifecycle.indexOf("export async function runService"));
    expect(body.indexOf('process.on("SIGTERM"')).toBeGreaterThan(0);
    expect(body.indexOf('process.on("SIGTERM"')).toBeLessThan(body.indexOf("await "));
  });

  it("pods: non-root, read-only root filesystem, no privileges, requests and limits, probes, a graceful stop", () => {
    const problems: string[] = [];
    for (const [name, w] of workloads(objs)) {
      const spec = podSpec(w);
      const sc = spec.securityContext;
      if (sc?.runAsNonRoot !== true || !((sc.runAsUser ?? 0) > 0)) problems.push(`${name}: not non-root`);
      if (sc?.seccompProfile?.type !== "RuntimeDefault") problems.push(`${name}: no RuntimeDefault seccomp`);
      if (spec.automountServiceAccountToken !== false) problems.push(`${name}: mounts an API token it never uses`);
      for (const c of spec.containers) {
        const csc = c.securityContext;
        if (csc?.readOnlyRootFilesystem !== true) problems.push(`${name}/${c.name}: writable root filesystem`);
        if (csc?.allowPrivilegeEscalation !== false) problems.push(`${name}/${c.name}: privilege escalation`);
        if (!csc?.capabilities?.drop?.includes("ALL")) problems.push(`${name}/${c.name}: capabilities not dropped`);
        for (const r of ["cpu", "memory"]) {
          const req = quantity(c.resources?.requests?.[r]);
          const lim = quantity(c.resources?.limits?.[r]);
          if (!(req > 0 && lim >= req)) problems.push(`${name}/${c.name}: ${r} request ${req} / limit ${lim}`);
        }
        // A Job's container runs to its end: nothing to probe.
        if (w.kind !== "Job" && (!c.readinessProbe || !c.livenessProbe))
          problems.push(`${name}/${c.name}: readiness and liveness probes`);
      }
    }
    for (const p of processes) {
      const d = deploymentOf(objs, p);
      const preStopMs = (serverOf(d).lifecycle?.preStop?.sleep?.seconds ?? 0) * 1000;
      const graceMs = (podSpec(d).terminationGracePeriodSeconds ?? 30) * 1000;
      const drainMs = Number(configOf(p).SHUTDOWN_GRACE_MS ?? 0);
      if (graceMs <= preStopMs + drainMs)
        problems.push(`${p.name}: grace ${graceMs} ms <= preStop ${preStopMs} + SHUTDOWN_GRACE_MS ${drainMs}`);
      // Read-only root: whatever the process writes goes to a mounted volume.
      const mounts = (serverOf(d).volumeMounts ?? []).map((m) => m.mountPath);
      if (!mounts.includes("/tmp")) problems.push(`${p.name}: no writable /tmp`);
    }
    expect(problems).toEqual([]);
  });

  it("every process runs at least two replicas with a budget that keeps one up; no process has a volume of its own", () => {
    for (const p of processes) {
      const d = deploymentOf(objs, p);
      const labels = podLabels(d);
      const pdb = ofKind<IPodDisruptionBudget>(objs, "PodDisruptionBudget").find((b) =>
        selects(b.spec?.selector?.matchLabels, labels),
      );
      expect(d.spec?.replicas ?? 1, `${p.name} replicas`).toBeGreaterThanOrEqual(2);
      expect(d.spec?.strategy?.type ?? "RollingUpdate", `${p.name} rolls`).toBe("RollingUpdate");
      expect(pdb?.spec?.minAvailable, `${p.name}: one replica stays up`).toBeGreaterThanOrEqual(1);
      expect(podSpec(d).volumes?.filter((v) => v.persistentVolumeClaim) ?? [], `${p.name}: no PVC`).toEqual([]);
      // The local SQLite default must never be what a replica uses in a cluster.
      if (usesDatabase(p)) expect(configOf(p).DATABASE_URL, `${p.name}: DATABASE_URL`).toMatch(/^postgres:\/\//);
    }
    expect(ofKind<IPersistentVolumeClaim>(objs, "PersistentVolumeClaim")).toEqual([]);
  });

  it("DATABASE_URL names the postgres Service's DNS name and port, the database PostgreSQL creates and the service's own role", () => {
    const sts = named<IStatefulSet>(objs, "StatefulSet", "postgres");
    const container = sts?.spec?.template.spec?.containers[0];
    const pgEnv = container ? envOf(objs, container) : {};
    const svc = named<IService>(objs, "Service", "postgres");
    const port = svc?.spec?.ports?.[0];
    expect(containerPort(container as IContainer, port?.targetPort)).toBe(5432);
    expect(sts?.spec?.volumeClaimTemplates?.[0]?.spec?.accessModes).toEqual(["ReadWriteOnce"]);
    for (const p of processes.filter(usesDatabase)) {
      const url = new URL(String(configOf(p).DATABASE_URL));
      expect(url.host, p.name).toBe(`${fqdn("postgres")}:${port?.port}`);
      // Its own role (base/postgres/roles.sh), not the superuser: test/deploy-review.test.ts.
      expect(decodeURIComponent(url.username), p.name).toBe(p.name);
      expect(decodeURIComponent(url.password), p.name).toBe(pgEnv[`${p.name.toUpperCase()}_DB_PASSWORD`]);
      expect(url.pathname, p.name).toBe(`/${pgEnv.POSTGRES_DB}`);
    }
  });

  it("observability: prometheus.io annotations point at each process's METRICS_PORT", () => {
    for (const p of processes) {
      const d = deploymentOf(objs, p);
      const a = d.spec?.template.metadata?.annotations ?? {};
      if (a["prometheus.io/scrape"] !== "true") continue;
      expect(p.reads.has("METRICS_PORT"), `${p.name} reads METRICS_PORT`).toBe(true);
      expect(Number(a["prometheus.io/port"])).toBe(configOf(p).METRICS_PORT);
      expect(a["prometheus.io/path"]).toBe("/metrics");
    }
  });
});

describe("the operator panel's fault controls", () => {
  const gateway = byName.get("gateway") as Process;
  const policies = (objs: readonly Obj[]) =>
    ofKind<IAuthorizationPolicy>(objs, "AuthorizationPolicy").filter((ap) => ap.metadata?.namespace === NS);
  const writes = (paths: readonly string[]) => paths.some((path) => OPERATOR_WRITES.includes(path));
  /** The gateway's FAULT_INJECTION (as set, as parsed), and who may call SetFaults on which workload. */
  function faultControls(objs: readonly Obj[]) {
    const env = envOf(objs, serverOf(deploymentOf(objs, gateway)));
    const setFaults: Record<string, string[]> = {};
    for (const ap of policies(objs)) {
      const target = ap.spec?.selector?.matchLabels?.["app.kubernetes.io/name"] ?? "";
      for (const rule of ap.spec?.rules ?? []) {
        if (!writes((rule.to ?? []).flatMap((t) => t.operation?.paths ?? []))) continue;
        const callers = callersOf(
          objs,
          (rule.from ?? []).flatMap((f) => f.source?.principals ?? []),
        );
        setFaults[target] = sorted([...(setFaults[target] ?? []), ...callers]);
      }
    }
    return { variable: env.FAULT_INJECTION, enabled: gateway.load(env).FAULT_INJECTION, setFaults };
  }

  it("on in kind-payment-faults only: FAULT_INJECTION=true at the gateway and SetFaults from it on each service", () => {
    expect(faultControls(rendered.get(FAULTS_OVERLAY) ?? [])).toEqual({
      variable: "true",
      enabled: true,
      setFaults: Object.fromEntries(upstreamsOf(gateway).map((service) => [service, ["gateway"]])),
    });
    // make deploy: the variable unset (its default, off) and no one may set faults through the mesh.
    expect(faultControls(main)).toEqual({ variable: undefined, enabled: false, setFaults: {} });
    for (const overlay of overlayNames.filter((n) => n !== FAULTS_OVERLAY))
      expect(faultControls(rendered.get(overlay) ?? []).setFaults, overlay).toEqual({});
  });

  it("kind-payment-faults adds the SetFaults rules and changes no other rule of kind's policies", () => {
    const withoutWrites = (objs: readonly Obj[]) =>
      policies(objs).map((ap) => ({
        name: ap.metadata?.name,
        spec: {
          ...ap.spec,
          rules: (ap.spec?.rules ?? []).filter((r) => !writes((r.to ?? []).flatMap((t) => t.operation?.paths ?? []))),
        },
      }));
    expect(withoutWrites(rendered.get(FAULTS_OVERLAY) ?? [])).toEqual(withoutWrites(main));
  });
});

describe("NATS JetStream cluster", () => {
  const objs = main;
  const sts = named<IStatefulSet>(objs, "StatefulSet", "nats");
  const files = named<IConfigMap>(
    objs,
    "ConfigMap",
    sts?.spec?.template.spec?.volumes?.find((v) => v.configMap)?.configMap?.name ?? "",
  )?.data;
  const conf = files?.["nats.conf"];
  const usersConf = files?.["users.conf"] ?? "";
  // nats-server's environment as the StatefulSet gives it (every user's password among it).
  const serverEnv = sts ? envOf(objs, podSpec(sts).containers[0] as IContainer) : {};
  const credentials = named<ISecret>(objs, "Secret", "nats-credentials")?.data ?? {};
  const passwordOf = (user: string) => Buffer.from(credentials[user] ?? "", "base64").toString("utf8");
  // Made when the suite runs, not when it is collected: a run that skips it (`-t` another name) left it behind.
  let dir = "";
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "shopmesh-deploy-nats-"));
    writeFileSync(join(dir, "users.conf"), usersConf);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("its users are the code's (BUS_USERS, as scripts/nats-users.ts writes them), each password given to nats-server", () => {
    expect(usersConf, `${DEPLOY_USERS_CONF} is stale: npx tsx scripts/nats-users.ts`).toBe(deployUsersConf());
    expect(conf).toMatch(/^include \.\/users\.conf$/m);
    for (const { user } of BUS_USERS) {
      expect(passwordOf(user), `nats-credentials has ${user}'s password`).not.toBe("");
      expect(serverEnv[passwordVariable(user)], `nats-server reads ${user}'s password`).toBe(passwordOf(user));
    }
  });

  it("every process given NATS_URL connects as the user of its name, with that user's password", () => {
    const users = processes.filter((p) => envOfMain(p).NATS_URL !== undefined);
    expect(users.length).toBeGreaterThan(0);
    for (const p of users) {
      const env = envOfMain(p);
      expect([env.NATS_USER, env.NATS_PASSWORD], p.name).toEqual([p.name, passwordOf(p.name)]);
      const config = p.load(env) as { NATS_USER?: string };
      expect(config.NATS_USER, `${p.name} reads NATS_USER`).toBe(p.name);
    }
  });

  it("one server per node (required), enough kind workers for it, a pinned patch, GOMEMLIMIT below the limit", () => {
    const spec = sts?.spec?.template.spec;
    const required = spec?.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? [];
    expect(required.map((t) => [t.topologyKey, t.labelSelector?.matchLabels])).toContainEqual([
      "kubernetes.io/hostname",
      sts?.spec?.selector.matchLabels,
    ]);
    const kind = parseYaml(read("deploy/kind/cluster.yaml")) as { nodes: Array<{ role: string }> };
    expect(kind.nodes.filter((n) => n.role === "worker").length).toBeGreaterThanOrEqual(sts?.spec?.replicas ?? 3);
    const c = spec?.containers[0];
    expect(c?.image).toMatch(/^nats:\d+\.\d+\.\d+(-[a-z]+)?(@sha256:[0-9a-f]{64})?$/);
    const goMemLimit = c?.env?.find((e) => e.name === "GOMEMLIMIT")?.value ?? "";
    expect(quantity(goMemLimit.replace(/B$/, ""))).toBeGreaterThan(0);
    expect(quantity(goMemLimit.replace(/B$/, ""))).toBeLessThan(quantity(c?.resources?.limits?.memory));
  });

  it("three servers, routes to each pod of the headless Service, JetStream on the volume", () => {
    expect(sts?.spec?.replicas).toBe(3);
    expect(sts?.spec?.podManagementPolicy).toBe("Parallel");
    const headless = named<IService>(objs, "Service", sts?.spec?.serviceName ?? "");
    expect(headless?.spec?.clusterIP).toBe("None");
    expect(headless?.spec?.publishNotReadyAddresses).toBe(true);
    // Each route names the route user and its password (nats.conf's cluster authorization).
    expect(conf).toMatch(/authorization\s*\{\s*user: route\s+password: \$ROUTE_NATS_PASSWORD\s/);
    expect(serverEnv.ROUTE_NATS_PASSWORD).toBe(passwordOf("route"));
    expect(passwordOf("route"), "a password a URL holds as it is").toMatch(/^[A-Za-z0-9._~-]{16,}$/);
    const routes = [...(conf ?? "").matchAll(/^\s*\$(NATS_ROUTE_\d)$/gm)].map((m) => serverEnv[m[1] as string]);
    const clusterPort = sts?.spec?.template.spec?.containers[0]?.ports?.find((x) => x.name === "cluster");
    expect(routes).toEqual(
      [0, 1, 2].map(
        (i) =>
          `nats://route:${passwordOf("route")}@nats-${i}.${headless?.metadata?.name}.${NS}.svc.cluster.local:${clusterPort?.containerPort}`,
      ),
    );
    expect(conf).toMatch(/jetstream\s*\{[^}]*store_dir:\s*\/data/);
    expect(sts?.spec?.volumeClaimTemplates?.[0]?.metadata?.name).toBe("data");
  });

  it("nats-server accepts the rendered config (nats-server -t)", () => {
    const file = join(dir, "as-rendered.conf");
    writeFileSync(file, conf ?? "");
    tool("nats-server", ["-t", "-c", file], NATS_MISSING, { ...process.env, ...serverEnv, SERVER_NAME: "nats-0" });
  });

  /** What a NATS server answers on `port` to `lines`, sent after its INFO (until it closes, or 3 s). */
  function routeConnect(port: number, lines: string): Promise<string> {
    return new Promise((resolve) => {
      let out = "";
      const socket = netConnect(port, "127.0.0.1");
      const done = () => {
        clearTimeout(cap);
        socket.destroy();
        resolve(out);
      };
      const cap = setTimeout(done, 3_000);
      socket.on("data", (b: Buffer) => {
        if (!out) socket.write(lines);
        out += b.toString();
      });
      socket.on("close", done);
      socket.on("error", done);
    });
  }

  /** A server of the cluster exited while it formed. */
  class Exited extends Error {}

  /**
   * Starts the rendered config as three local servers and waits until each sees a 3-peer meta group.
   * The route ports must be known before the servers start (each names the others), so they are
   * picked free beforehand — and another process can take one before nats-server binds it. A server
   * that exits (a port taken) fails this attempt at once, with its output; the caller tries again on
   * fresh ports.
   */
  async function startCluster(attempt: number) {
    const ports = await Promise.all(
      [0, 1, 2].map(async () => ({ client: await freePort(), cluster: await freePort(), monitor: await freePort() })),
    );
    const children = ports.map((p, i) => {
      const local = (conf ?? "")
        .replace(/^listen: 0\.0\.0\.0:4222$/m, `listen: 127.0.0.1:${p.client}`)
        .replace(/^http: 0\.0\.0\.0:8222$/m, `http: 127.0.0.1:${p.monitor}`)
        .replace(/^(\s*)listen: 0\.0\.0\.0:6222$/m, `$1listen: 127.0.0.1:${p.cluster}`)
        .replace(/store_dir: \/data/, `store_dir: ${join(dir, `nats-${attempt}-${i}`)}`)
        .replace(/pid_file: \S+/, `pid_file: ${join(dir, `nats-${attempt}-${i}.pid`)}`);
      // The routes' URLs, as the StatefulSet writes them, to the local servers.
      const routes = Object.fromEntries(
        [0, 1, 2].map((j) => [
          `NATS_ROUTE_${j}`,
          (serverEnv[`NATS_ROUTE_${j}`] ?? "").replace(/@nats-\d\.[\w.-]+:6222$/, `@127.0.0.1:${ports[j]?.cluster}`),
        ]),
      );
      expect(local + Object.values(routes).join()).not.toMatch(/0\.0\.0\.0|svc\.cluster\.local|\/data\b/);
      const file = join(dir, `nats-${attempt}-${i}.conf`);
      writeFileSync(file, local);
      const child = spawn("nats-server", ["-c", file], {
        env: { ...process.env, ...serverEnv, ...routes, SERVER_NAME: `nats-${i}` },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      child.stdout?.on("data", (b: Buffer) => (out += b.toString()));
      child.stderr?.on("data", (b: Buffer) => (out += b.toString()));
      child.once("error", (err) => (out += `${err.message}\n${NATS_MISSING}`));
      return { child, output: () => out };
    });
    const stop = () =>
      Promise.all(
        children.map(({ child }) => {
          const done = exited(child);
          child.kill("SIGTERM");
          return done;
        }),
      );
    try {
      // Every server sees the same JetStream meta leader of a 3-peer group.
      const deadline = Date.now() + 30_000;
      for (const [i, p] of ports.entries()) {
        for (;;) {
          const gone = children.findIndex(({ child }) => child.exitCode !== null || child.signalCode !== null);
          if (gone >= 0) throw new Exited(`nats-${gone} exited:\n${children[gone]?.output()}`);
          const meta = await httpGetLocal(p.monitor, "/jsz").then(
            (r) => (JSON.parse(r.body) as { meta_cluster?: { leader?: string; cluster_size?: number } }).meta_cluster,
            () => undefined,
          );
          if (meta?.leader && meta.cluster_size === 3) break;
          if (Date.now() > deadline) {
            throw new Error(`nats-${i} not in a 3-node JetStream cluster after 30 s:\n${children[i]?.output()}`);
          }
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    } catch (err) {
      await stop();
      throw err;
    }
    return { url: ports.map((p) => `nats://127.0.0.1:${p.client}`).join(","), routePort: ports[0]?.cluster ?? 0, stop };
  }

  it("started as three local servers, it forms a JetStream cluster; the nats-streams Job creates R3 streams there, and each service may publish its own events only", async () => {
    let cluster: Awaited<ReturnType<typeof startCluster>> | undefined;
    for (let attempt = 1; !cluster; attempt++) {
      try {
        cluster = await startCluster(attempt);
      } catch (err) {
        // Only a server that exited (its port taken meanwhile) is worth another try.
        if (!(err instanceof Exited) || attempt === 3) throw err;
      }
    }
    try {
      // A connection to the route port that does not name the route user (none, or a wrong password)
      // is refused: a bare CONNECT was answered PONG, and a route reaches every account.
      // It names the cluster, which is no secret (a server's INFO says it).
      const name = /cluster\s*\{\s*name:\s*(\S+)/.exec(conf ?? "")?.[1];
      for (const who of ["", '"user":"route","pass":"guessed",']) {
        const answer = await routeConnect(
          cluster.routePort,
          `CONNECT {${who}"verbose":false,"name":"rogue","cluster":"${name}"}\r\nPING\r\n`,
        );
        expect(answer, who || "no user").toMatch(/-ERR 'Authorization Violation'/);
        expect(answer, who || "no user").not.toMatch(/PONG/);
      }
      // The Job's container, as the image runs it (its script from the sources), on this cluster.
      const job = named<IJob>(objs, "Job", "nats-streams");
      const c = job ? (podSpec(job).containers[0] as IContainer) : undefined;
      const script = (c?.args?.[0] ?? "").replace(/\.js$/, ".ts");
      const env = { ...process.env, ...(c ? envOf(objs, c) : {}), NATS_URL: cluster.url };
      const provision = await runToEnd(process.execPath, ["--import", "tsx", script], { env });
      expect(provision.code, provision.out).toBe(0);
      // A service's own user finds the streams there as it would create them (R3), so it waits for nothing.
      const bus = await connectBus(cluster.url, "deploy-test", silentLogger(), {
        streams: EVENTS.streams,
        replicas: 3,
        auth: { user: "order", pass: passwordOf("order") },
      });
      try {
        for (const s of EVENTS.streams) {
          const info = await bus.jsm.streams.info(s.name);
          expect(info.config.num_replicas, s.name).toBe(3);
          expect(info.cluster?.replicas?.length, `${s.name} has two followers`).toBe(2);
        }
        // Where the service registry is on, its bucket is replicated like the streams.
        const registry = await openRegistry(bus.nc, { replicas: 3 });
        expect((await registry.status()).replicas, "registry bucket replicas").toBe(3);
        const kind = (name: string) => EVENTS.kinds.find((k) => k.typeName.endsWith(name))?.subject ?? "";
        expect((await bus.js.publish(kind("OrderPlaced"), new Uint8Array([1]))).stream).toBe("ORDER");
        await expect(bus.js.publish(kind("StockReleased"), new Uint8Array([1]))).rejects.toThrow(/Permissions/);
      } finally {
        await bus.close();
      }
    } finally {
      await cluster.stop();
    }
  }, 120_000);

  it("every process that uses NATS creates its streams with as many replicas as the cluster has nodes", () => {
    // The gateway publishes and consumes nothing: it may read the service registry, and creates no stream.
    expect(byName.get("gateway")?.reads.has("NATS_STREAM_REPLICAS")).toBe(false);
    const users = processes.filter((x) => x.reads.has("NATS_URL") && x.name !== "gateway");
    expect(users.length).toBeGreaterThan(0);
    for (const p of users) {
      expect(p.reads.has("NATS_STREAM_REPLICAS"), p.name).toBe(true);
      const config = p.load(envOfMain(p));
      expect(config.NATS_STREAM_REPLICAS, p.name).toBe(sts?.spec?.replicas);
    }
  });
});

function envOfMain(p: Process): Record<string, string> {
  return envOf(main, serverOf(deploymentOf(main, p)));
}

// ---------------------------------------------------------------------------

interface Instruction {
  readonly stage: string;
  readonly op: string;
  readonly args: string;
}

/** The Dockerfile's instructions (continuations joined, comments dropped), each with its stage. */
function dockerfile(): { args: Record<string, string>; steps: Instruction[] } {
  const lines = read("Dockerfile")
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const args: Record<string, string> = {};
  const steps: Instruction[] = [];
  let stage = "";
  for (const line of lines) {
    const m = /^(\w+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const op = (m[1] ?? "").toUpperCase();
    const rest = m[2] ?? "";
    if (op === "ARG" && stage === "") {
      const [k, v] = rest.split("=");
      args[k ?? ""] = v ?? "";
    }
    if (op === "FROM") stage = /\bAS\s+(\S+)/i.exec(rest)?.[1] ?? `stage${steps.length}`;
    steps.push({ stage, op, args: rest });
  }
  return { args, steps };
}

/** Whether the .dockerignore lets `path` (relative, posix) into the build context. */
function inContext(path: string, patterns: readonly string[]): boolean {
  let included = true;
  for (const raw of patterns) {
    const negate = raw.startsWith("!");
    const pattern = posix.normalize(negate ? raw.slice(1) : raw).replace(/^\/|\/$/g, "");
    const re = new RegExp(
      `^${pattern
        .split("**")
        .map((part) =>
          part
            .replace(/[.+^${}()|[\]\\]/g, "\\$&")
            .replace(/\*/g, "[^/]*")
            .replace(/\?/g, "[^/]"),
        )
        .join(".*")
        .replace(/\.\*\//g, "(?:.*/)?")}$`,
    );
    // A pattern matching a directory applies to everything below it.
    const parts = path.split("/");
    const hit = parts.some((_, i) => re.test(parts.slice(0, i + 1).join("/")));
    if (hit) included = negate;
  }
  return included;
}

function filesUnder(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => posix.join(posix.relative(ROOT, e.parentPath.replaceAll("\\", "/")), e.name));
}

describe("the image (Dockerfile), by construction", () => {
  const { args, steps } = dockerfile();
  const stages = [...new Set(steps.map((s) => s.stage))];
  const runtime = stages.at(-1) ?? "";
  const inRuntime = steps.filter((s) => s.stage === runtime);
  const ignore = read(".dockerignore")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  // Made when the suite runs, as the NATS suite's directory above.
  let app = "";
  const packageJson = JSON.parse(read("package.json")) as {
    dependencies: Record<string, string>;
    devDependencies: Record<string, string>;
  };

  let context = "";
  const build = steps.find((s) => s.op === "RUN" && /\btsc\b/.test(s.args));
  const webBuild = steps.find((s) => s.op === "RUN" && /\bweb\/build\.ts\b/.test(s.args));
  // web/build.ts is written separately from this check; until it exists the page's layout is not built here.
  const webBuildExists = existsSync(join(ROOT, "web", "build.ts"));

  beforeAll(() => {
    app = mkdtempSync(join(tmpdir(), "shopmesh-deploy-image-"));
    context = mkdtempSync(join(tmpdir(), "shopmesh-deploy-context-"));
    // The build stage sees only what it copies: lay that out alone (tests dropped, as .dockerignore
    // drops them), so a source the build needs but does not copy fails here as it would in docker build.
    for (const s of steps.filter((x) => x.stage === build?.stage && x.op === "COPY" && !x.args.includes("--from="))) {
      const parts = s.args.split(/\s+/);
      const dest = parts.at(-1) ?? ".";
      for (const src of parts.slice(0, -1)) {
        const target =
          dest.endsWith("/") || parts.length > 2 ? join(context, dest, posix.basename(src)) : join(context, dest);
        cpSync(join(ROOT, src), target, { recursive: true, filter: (f) => !f.endsWith(".test.ts") });
      }
    }
    symlinkSync(join(ROOT, "node_modules"), join(context, "node_modules"), "dir");
    const project = /-p\s+(\S+)/.exec(build?.args ?? "")?.[1] ?? "";
    // The runtime stage's layout: package.json, node_modules, and what the build stage's tsc emits.
    tool(
      join(ROOT, "node_modules", ".bin", "tsc"),
      ["-p", join(context, project), "--outDir", app],
      "typescript is not installed",
    );
    // The build stage's web build, as the Dockerfile runs it, writes into the context's dist/, which the
    // runtime copies to the image's root (COPY --from=build /app/dist ./) beside the compiled tree.
    if (webBuild && webBuildExists) {
      tool("sh", ["-c", webBuild.args], "sh is not installed", process.env, context);
      cpSync(join(context, "dist"), app, { recursive: true });
    }
    writeFileSync(join(app, "package.json"), read("package.json"));
    symlinkSync(join(ROOT, "node_modules"), join(app, "node_modules"), "dir");
  }, 60_000);
  afterAll(() => {
    rmSync(app, { recursive: true, force: true });
    rmSync(context, { recursive: true, force: true });
  });

  it("multi-stage on a Node LTS base; production dependencies only; build tools and tsc stay behind", () => {
    const base = /^node:(\d+)-/.exec(args.NODE_IMAGE ?? "");
    expect(base, "ARG NODE_IMAGE=node:<major>-...").not.toBeNull();
    const major = Number(base?.[1]);
    expect(major % 2 === 0 && major >= 22, `Node ${major} is a current LTS line`).toBe(true);
    expect(stages.length).toBeGreaterThanOrEqual(3);
    const copies = inRuntime.filter((s) => s.op === "COPY");
    const nodeModules = copies.find((s) => /\snode_modules$/.test(s.args));
    const from = /--from=(\S+)/.exec(nodeModules?.args ?? "")?.[1];
    const install = steps.find((s) => s.stage === from && s.op === "RUN" && /npm ci/.test(s.args));
    expect(install?.args, "node_modules from a stage that installs production dependencies only").toMatch(/--omit=dev/);
    expect(install?.args).toMatch(/npm rebuild better-sqlite3/);
    expect(
      inRuntime.filter((s) => s.op === "RUN"),
      "nothing is installed or built in the runtime stage",
    ).toEqual([]);
    expect(copies.map((s) => s.args)).toContain("package.json ./");
  });

  it("carries the OpenAPI document where the gateway looks for it (gen/ beside the compiled gateway/)", () => {
    const copy = inRuntime.find((s) => s.op === "COPY" && /\/gen\/openapi\s/.test(s.args));
    expect(copy?.args, "COPY --from=build /app/gen/openapi gen/openapi").toMatch(
      /^--from=\S+ \/app\/gen\/openapi gen\/openapi$/,
    );
    const dist = inRuntime.find((s) => s.op === "COPY" && /\/app\/dist \.\/$/.test(s.args));
    expect(dist, "the compiled tree at the image's root, so gateway/ and gen/ are siblings").toBeDefined();
  });

  it("builds the web page in the build stage into dist/, which the runtime copies beside the compiled gateway/", () => {
    const inBuild = steps.filter((s) => s.stage === build?.stage);
    const copyWeb = inBuild.findIndex((s) => s.op === "COPY" && s.args === "web web");
    expect(copyWeb, "COPY web web in the build stage").toBeGreaterThanOrEqual(0);
    expect(webBuild?.stage, "RUN ... web/build.ts in the build stage").toBe(build?.stage);
    expect(inBuild.indexOf(webBuild as Instruction), "the web build runs after web/ is copied").toBeGreaterThan(
      copyWeb,
    );
    // tsc writes dist/ (deploy/tsconfig.build.json outDir) and the web build dist/web: one tree, copied whole.
    const outDir = (JSON.parse(read("deploy/tsconfig.build.json")) as { compilerOptions: { outDir: string } })
      .compilerOptions.outDir;
    expect(posix.normalize(posix.join("deploy", outDir))).toBe("dist");
    const dist = inRuntime.find((s) => s.op === "COPY" && /\/app\/dist \.\/$/.test(s.args));
    expect(dist?.args).toBe(`--from=${build?.stage} /app/dist ./`);
  });

  it.skipIf(!webBuildExists)(
    "the built page lands where the gateway finds it, and the ingress lets every file of it through without a token",
    () => {
      const web = join(app, "web");
      expect(findWebDirectory(join(app, "gateway")), "web/manifest.json beside the compiled gateway/").toBe(web);
      expect(existsSync(join(web, "index.html")), "index.html").toBe(true);
      const notPaths = ofKind<IAuthorizationPolicy>(main, "AuthorizationPolicy")
        .filter((ap) => ap.spec?.action === "DENY" && selects(ap.spec?.selector?.matchLabels, INGRESS_LABELS))
        .flatMap((ap) =>
          (ap.spec?.rules ?? []).flatMap((r) => (r.to ?? []).flatMap((t) => t.operation?.notPaths ?? [])),
        );
      const urls = [
        "/",
        ...readdirSync(web, { recursive: true, withFileTypes: true })
          .filter((e) => e.isFile())
          .map(
            (e) =>
              `/${posix.relative(web.replaceAll("\\", "/"), posix.join(e.parentPath.replaceAll("\\", "/"), e.name))}`,
          ),
      ];
      expect(urls.filter((u) => !notPaths.some((p) => istioMatches(p, u)))).toEqual([]);
    },
  );

  it("runs as a numeric non-root user, node as ENTRYPOINT, one process per argument", () => {
    const user = inRuntime.filter((s) => s.op === "USER").at(-1)?.args ?? "";
    expect(user).toMatch(/^\d+(:\d+)?$/);
    expect(Number(user.split(":")[0])).toBeGreaterThan(0);
    const uid = Number(user.split(":")[0]);
    for (const d of ofKind<IDeployment>(main, "Deployment"))
      expect(podSpec(d).securityContext?.runAsUser, "the pods run as the image's user").toBe(uid);
    const entrypoint = JSON.parse(inRuntime.find((s) => s.op === "ENTRYPOINT")?.args ?? "[]") as string[];
    expect(entrypoint[0]).toBe("node");
    const cmd = JSON.parse(inRuntime.find((s) => s.op === "CMD")?.args ?? "[]") as string[];
    expect(processes.map((p) => p.entry)).toContain(cmd[0]);
  });

  it("every COPY source exists and is let in by .dockerignore; tests, keys and local data stay out", () => {
    for (const s of steps.filter((x) => x.op === "COPY" && !x.args.includes("--from="))) {
      const sources = s.args.split(/\s+/).slice(0, -1);
      for (const src of sources) {
        expect(existsSync(join(ROOT, src)), `COPY ${src}`).toBe(true);
        const files = existsSync(join(ROOT, src)) && statSync(join(ROOT, src)).isDirectory() ? filesUnder(src) : [src];
        const admitted = files.filter((f) => inContext(f, ignore));
        expect(admitted.length, `COPY ${src}: .dockerignore lets it in`).toBeGreaterThan(0);
        // Every source file the build compiles is in the context.
        for (const f of files)
          if (f.endsWith(".ts") && !f.endsWith(".test.ts")) expect(inContext(f, ignore), f).toBe(true);
      }
    }
    for (const f of [
      "deploy/kind/dev-jwt/private.pem",
      "node_modules/yaml/package.json",
      ".git/HEAD",
      ".data/x.db",
      "test/deploy.test.ts",
      "services/order/saga.test.ts",
      "Dockerfile",
    ])
      expect(inContext(f, ignore), f).toBe(false);
  });

  it("every entrypoint (the Dockerfile's CMD, each Deployment's argument) is in the compiled layout", () => {
    const cmd = JSON.parse(inRuntime.find((s) => s.op === "CMD")?.args ?? "[]") as string[];
    const entries = new Set([
      cmd[0] ?? "",
      ...ofKind<IDeployment>(main, "Deployment").map((d) => serverOf(d).args?.[0] ?? ""),
    ]);
    for (const e of entries) expect(existsSync(join(app, e)), e).toBe(true);
    expect(existsSync(join(app, "services", "order", "saga.test.js")), "tests are not compiled in").toBe(false);
  });

  it("the compiled code imports only production dependencies (npm ci --omit=dev suffices)", () => {
    const problems: string[] = [];
    const builtins = new Set(builtinModules);
    for (const file of readdirSync(app, { recursive: true, withFileTypes: true })) {
      if (!file.isFile() || !file.name.endsWith(".js") || file.parentPath.includes("node_modules")) continue;
      // The web page's bundle runs in the browser, not in node.
      if (posix.relative(app, file.parentPath.replaceAll("\\", "/")).split("/")[0] === "web") continue;
      const text = readFileSync(join(file.parentPath, file.name), "utf8");
      const specs = [
        ...[...text.matchAll(/(?:^|[;\s])(?:import|export)\s[^;'"]*?from\s*["']([^"']+)["']/g)].map((m) => ({
          spec: m[1] ?? "",
          dynamic: false,
        })),
        ...[...text.matchAll(/^import\s*["']([^"']+)["']/gm)].map((m) => ({ spec: m[1] ?? "", dynamic: false })),
        ...[...text.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)].map((m) => ({ spec: m[1] ?? "", dynamic: true })),
      ];
      for (const { spec, dynamic } of specs) {
        if (spec.startsWith(".") || spec.startsWith("node:") || builtins.has(spec)) continue;
        const pkg = spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : (spec.split("/")[0] ?? "");
        if (packageJson.dependencies[pkg]) continue;
        const devOnly = DEV_ONLY_IMPORTS[pkg];
        if (dynamic && devOnly && packageJson.devDependencies[pkg]) {
          for (const p of processes) {
            if (envOfMain(p)[devOnly.variable] === devOnly.never) problems.push(`${p.name} sets ${devOnly.variable}`);
          }
          continue;
        }
        problems.push(`${posix.relative(app, file.parentPath)}/${file.name} imports ${spec}`);
      }
    }
    expect(problems).toEqual([]);
  });

  it("each compiled process starts from that layout, passes its Deployment's probes and stops on SIGTERM", async () => {
    const data = join(app, "data");
    mkdirSync(data);
    // Ports handed out here: freePort() closes the port it found, so two calls made at the same time
    // can find the same one (a process was once given one port for gRPC and metrics, and failed).
    const handedOut = new Set<number>();
    // Settled, not Promise.all: that ended the test at the first process to fail, the others still being
    // probed; the worker then exited before their finally stopped them, and they outlived the run.
    const started = await Promise.allSettled(
      processes.map(async (p) => {
        const d = deploymentOf(main, p);
        const c = serverOf(d);
        const env = { ...envOfMain(p) };
        // Local stand-ins for what only a cluster has.
        const ports = new Map<number, number>();
        for (const [k, v] of Object.entries(env)) {
          if (k.endsWith("_PORT")) {
            let local = await freePort();
            while (handedOut.has(local)) local = await freePort();
            handedOut.add(local);
            ports.set(Number(v), local);
            env[k] = String(local);
          }
          if (k.endsWith("_TARGET")) env[k] = "127.0.0.1:9";
        }
        if (p.reads.has("GRPC_HOST")) env.GRPC_HOST = "127.0.0.1";
        if (p.reads.has("HTTP_HOST")) env.HTTP_HOST = "127.0.0.1";
        env.NATS_URL = "off";
        if (env.DATABASE_URL) {
          // The cluster's PostgreSQL: a SQLite file stands in (the store suites cover both engines).
          delete env.DATABASE_URL;
          env.DB_PATH = join(data, `${p.name}.db`);
        }
        const child = spawn(process.execPath, [c.args?.[0] ?? ""], {
          cwd: app,
          env: { PATH: process.env.PATH ?? "", NODE_ENV: "production", ...env },
          stdio: ["ignore", "pipe", "pipe"],
        });
        let out = "";
        child.stdout?.on("data", (b: Buffer) => (out += b.toString()));
        child.stderr?.on("data", (b: Buffer) => (out += b.toString()));
        try {
          for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) {
            const { kind, port } = probePort(c, probe);
            const local = ports.get(port ?? -1);
            if (local === undefined) throw new Error(`${p.name}: probe on unmapped port ${port}`);
            await until(`${p.name} ${kind} probe on ${port}\n${out}`, 20_000, async () => {
              if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}`);
              if (kind === "grpc") {
                const channel = createChannel(`127.0.0.1:${local}`);
                try {
                  const res = await createClient(Health, channel).check(
                    { service: probe?.grpc?.service ?? "" },
                    { timeoutMs: 1_000 },
                  );
                  if (res.status !== HealthCheckResponse_ServingStatus.SERVING) throw new Error(String(res.status));
                } finally {
                  channel.close();
                }
              } else if (kind === "http") {
                const { status } = await httpGetLocal(local, probe?.httpGet?.path ?? "/");
                if (status !== 200) throw new Error(`HTTP ${status}`);
              } else if (kind === "tcp") {
                await new Promise<void>((resolve, reject) => {
                  const s = netConnect(local, "127.0.0.1", () => {
                    s.end();
                    resolve();
                  });
                  s.once("error", reject);
                });
              } else throw new Error(`unexpected probe kind ${kind}`);
            });
          }
          const scrape = d.spec?.template.metadata?.annotations?.["prometheus.io/port"];
          if (scrape) {
            const local = ports.get(Number(scrape)) ?? -1;
            const path = d.spec?.template.metadata?.annotations?.["prometheus.io/path"] ?? "";
            expect((await httpGetLocal(local, path)).status, `${p.name} ${path}`).toBe(200);
          }
        } finally {
          const done = exited(child);
          child.kill("SIGTERM");
          expect(await done, `${p.name} exit code on SIGTERM\n${out}`).toBe(0);
        }
      }),
    );
    for (const s of started) if (s.status === "rejected") throw s.reason;
  }, 60_000);
});

// ---------------------------------------------------------------------------

describe("kind, Makefile targets and docs agree", () => {
  const mk = read("deploy/deploy.mk");
  const varOf = (name: string) => new RegExp(`^${name} [:?]?= (\\S+)$`, "m").exec(mk)?.[1] ?? "";
  const cluster = parseYaml(read("deploy/kind/cluster.yaml")) as { kind: string; nodes: Array<{ image?: string }> };
  const docs = existsSync(join(ROOT, "docs", "deploy.md")) ? read("docs/deploy.md") : "";

  it("the kind cluster pins one node image by digest", () => {
    expect(cluster.kind).toBe("Cluster");
    const images = new Set(cluster.nodes.map((n) => n.image));
    expect(images.size).toBe(1);
    expect([...images][0]).toMatch(/^kindest\/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}$/);
  });

  it("the targets of issue 7 exist and expand to commands on files that exist (make -n)", () => {
    const targets = ["kind-up", "images", "kind-load", "deploy", "deploy-faults", "port-forward", "kind-down"];
    const included = /^include deploy\/deploy\.mk$/m.test(read("Makefile"));
    const files = included ? ["-f", "Makefile"] : ["-f", "Makefile", "-f", "deploy/deploy.mk"];
    const out = tool("make", ["-n", ...files, ...targets], "make is not installed");
    for (const t of targets) expect(mk).toMatch(new RegExp(`^${t}:.*## `, "m"));
    for (const path of out.match(/deploy\/[\w./-]+/g) ?? []) expect(existsSync(join(ROOT, path)), path).toBe(true);
    expect(out).toContain(`istio-${varOf("ISTIO_VERSION")}/bin/istioctl`);
  });

  it("the one documented command is the same in README and docs/deploy.md, and runs the whole chain in order", () => {
    const command = /`(make kind-up[^`]*)`/.exec(read("README.md"))?.[1] ?? "";
    expect(command).toBe("make kind-up deploy");
    // Every shell block of docs/deploy.md that brings the system up gives exactly that command.
    const blocks = [...docs.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1] ?? "");
    const upLines = blocks
      .flatMap((b) => b.split("\n"))
      .filter((l) => /^make (kind-up|images|kind-load|deploy)(\s|$)/.test(l));
    expect(upLines.length).toBeGreaterThanOrEqual(2);
    for (const line of upLines) expect(line.split("#")[0]?.trim()).toBe(command);
    // make -n shows what that command runs: nothing a first run needs is left to another target.
    const out = tool("make", ["-n", "-f", "Makefile", ...command.split(" ").slice(1)], "make is not installed");
    const chain = [
      "kind create cluster",
      "istioctl install",
      `docker build --provenance=false -t ${varOf("IMAGE")} .`,
      "docker save",
      "kind load image-archive",
      "delete job nats-streams",
      `apply -k ${varOf("OVERLAY")}`,
      "rollout restart deployment",
      "rollout status statefulset/nats",
      "wait --for=condition=complete job/nats-streams",
      "rollout status statefulset/postgres",
      "rollout status $d",
    ];
    let at = -1;
    for (const step of chain) {
      const found = out.indexOf(step, at + 1);
      expect(found, `${step} after the previous step in:\n${out}`).toBeGreaterThan(at);
      at = found;
    }
    // No readiness wait that can pass before the restarted pods exist (the Job's is on a Job made afresh).
    expect(out.replace(/-n shopmesh wait --for=condition=complete job\/nats-streams /, "")).not.toMatch(
      /-n shopmesh wait /,
    );
  });

  it("docs/deploy.md names the pinned versions and every target", () => {
    expect(docs).not.toBe("");
    for (const v of [
      varOf("ISTIO_VERSION"),
      varOf("KIND_VERSION"),
      (cluster.nodes[0]?.image ?? "").split("@")[0] ?? "",
    ])
      expect(docs, v).toContain(v);
    for (const t of [
      "kind-up",
      "images",
      "kind-load",
      "deploy",
      "deploy-faults",
      "port-forward",
      "kind-token",
      "kind-down",
    ])
      expect(docs).toContain(`make ${t}`);
  });
});
