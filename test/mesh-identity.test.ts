/**
 * Identity across layers on Kubernetes + Istio (2026-12-06), offline: an identity two layers read
 * differently is a bug. A service believes `x-shopmesh-subject` / `x-shopmesh-roles`
 * (platform/identity.ts) from whoever reaches its port; the mesh decides who that is, by the
 * caller's SPIFFE principal (its service account). So the code's readers of identity and the
 * rendered AuthorizationPolicies must agree, in every overlay: what is checked here and not in
 * test/deploy.test.ts (which derives the caller graph and the per-method lists of the main overlay).
 * The other half, that the gateway sets identity itself and drops a client's, runs for real in
 * test/hostile-identity.test.ts.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { DescService } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { HistoryService } from "../gen/shopmesh/history/v1/history_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { NotificationService } from "../gen/shopmesh/notification/v1/notification_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { faultEnv } from "../platform/chaos.js";
import { ROOT } from "./fixtures.js";
import { renderOverlays } from "./overlays.js";

interface Obj {
  kind: string;
  metadata: { name: string; namespace?: string };
  // biome-ignore lint/suspicious/noExplicitAny: rendered YAML, read field by field
  spec?: any;
}

const NS = "shopmesh";
const rendered = renderOverlays<Obj>();
const overlays = [...rendered.keys()];

/** The trust domain istioctl installs with deploy/kind/istio.yaml (Istio's default unless it says). */
const istio = parseYaml(readFileSync(join(ROOT, "deploy", "kind", "istio.yaml"), "utf8"));
const TRUST_DOMAIN: string = istio?.spec?.meshConfig?.trustDomain ?? "cluster.local";
const GATEWAY = `${TRUST_DOMAIN}/ns/${NS}/sa/gateway`;

const SERVICES: Record<string, DescService> = {
  inventory: InventoryService,
  payment: PaymentService,
  order: OrderService,
  notification: NotificationService,
  history: HistoryService,
};

/**
 * The RPC paths of `service` whose handler (services/<service>/api.ts) may read the caller's
 * identity: it names requireIdentity or identityOf, or takes the call's context at all (where the
 * metadata is) — counted in, so a helper reading it on the handler's behalf is not missed.
 */
function identityReaders(service: string): string[] {
  const src = readFileSync(join(ROOT, "services", service, "api.ts"), "utf8");
  const desc = SERVICES[service] as DescService;
  const paths: string[] = [];
  const heads = [...src.matchAll(/^ {4}async \*?(\w+)\(([^)]*)\)/gm)];
  for (const [i, m] of heads.entries()) {
    const body = src.slice(m.index, heads[i + 1]?.index ?? src.length);
    const method = desc.methods.find((x) => x.localName === m[1]);
    if (!method) continue;
    if (/\bctx\b/.test(m[2] ?? "") || /requireIdentity|identityOf/.test(body))
      paths.push(`/${desc.typeName}/${method.name}`);
  }
  return paths;
}

/** Who the ALLOW policies of `objs` let call `path` of the workload labelled `name`: principals, "*" for anyone. */
function callersOfPath(objs: readonly Obj[], name: string, path: string): string[] {
  const callers: string[] = [];
  for (const ap of objs) {
    if (ap.kind !== "AuthorizationPolicy" || (ap.metadata.namespace ?? NS) !== NS) continue;
    if ((ap.spec?.action ?? "ALLOW") !== "ALLOW") continue;
    if (ap.spec?.selector?.matchLabels?.["app.kubernetes.io/name"] !== name) continue;
    for (const rule of ap.spec?.rules ?? []) {
      const paths: string[] = (rule.to ?? []).flatMap(
        (t: { operation?: { paths?: string[] } }) => t.operation?.paths ?? [],
      );
      const reaches =
        paths.length === 0 || paths.some((p) => p === path || (p.endsWith("*") && path.startsWith(p.slice(0, -1))));
      if (!reaches) continue;
      const from = (rule.from ?? []) as Array<{ source?: Record<string, string[]> }>;
      if (from.length === 0) callers.push("*");
      for (const f of from) {
        const keys = Object.keys(f.source ?? {});
        // Anything but a list of principals (namespaces, ipBlocks, notPrincipals...) is not one identity.
        if (keys.join() !== "principals") callers.push("*");
        else callers.push(...(f.source?.principals ?? []));
      }
    }
  }
  return [...new Set(callers)].sort();
}

/** Every (service, path, caller) where a caller other than the gateway reaches a reader of identity. */
function identityLeaks(objs: readonly Obj[]): string[] {
  const leaks: string[] = [];
  for (const service of Object.keys(SERVICES))
    for (const path of identityReaders(service))
      for (const caller of callersOfPath(objs, service, path))
        if (caller !== GATEWAY) leaks.push(`${path} <- ${caller}`);
  return leaks;
}

describe("identity metadata is believed only from the gateway's principal", () => {
  it("the code's readers of identity are the gateway's routes that act for a caller", () => {
    // Spelled out so a new reader (or a handler that stops reading it) is seen here.
    expect(Object.fromEntries(Object.keys(SERVICES).map((s) => [s, identityReaders(s)]))).toEqual({
      inventory: ["/shopmesh.inventory.v1.InventoryService/Restock"],
      payment: ["/shopmesh.payment.v1.PaymentService/GetPayment"],
      order: [
        "/shopmesh.order.v1.OrderService/PlaceOrder",
        "/shopmesh.order.v1.OrderService/GetOrder",
        "/shopmesh.order.v1.OrderService/CancelOrder",
        "/shopmesh.order.v1.OrderService/ListOrders",
        "/shopmesh.order.v1.OrderService/WatchOrder",
      ],
      notification: ["/shopmesh.notification.v1.NotificationService/ListNotifications"],
      history: ["/shopmesh.history.v1.HistoryService/ListOrderHistory"],
    });
  });

  it.each(overlays)("%s: no workload but the gateway reaches a handler that reads identity", (overlay) => {
    const objs = rendered.get(overlay) ?? [];
    expect(identityLeaks(objs)).toEqual([]);
    // Each is reachable by the gateway (else the public API is broken, not safe).
    for (const service of Object.keys(SERVICES))
      for (const path of identityReaders(service)) expect(callersOfPath(objs, service, path), path).toEqual([GATEWAY]);
  });

  it("the check sees a leak: order (allowed ChargePayment) also given GetPayment, or a rule open to a namespace", () => {
    const objs = structuredClone(rendered.get("kind") ?? []);
    const payment = objs.find((o) => o.kind === "AuthorizationPolicy" && o.metadata.name === "payment");
    const orderRule = payment?.spec?.rules?.find((r: { from: Array<{ source: { principals: string[] } }> }) =>
      r.from[0]?.source.principals.includes(`${TRUST_DOMAIN}/ns/${NS}/sa/order`),
    );
    orderRule.to[0].operation.paths.push("/shopmesh.payment.v1.PaymentService/GetPayment");
    const order = objs.find((o) => o.kind === "AuthorizationPolicy" && o.metadata.name === "order");
    order?.spec?.rules?.push({ from: [{ source: { namespaces: [NS] } }], to: [{ operation: { ports: ["50053"] } }] });
    expect(identityLeaks(objs)).toEqual([
      `/shopmesh.payment.v1.PaymentService/GetPayment <- ${TRUST_DOMAIN}/ns/${NS}/sa/order`,
      "/shopmesh.order.v1.OrderService/PlaceOrder <- *",
      "/shopmesh.order.v1.OrderService/GetOrder <- *",
      "/shopmesh.order.v1.OrderService/CancelOrder <- *",
      "/shopmesh.order.v1.OrderService/ListOrders <- *",
      "/shopmesh.order.v1.OrderService/WatchOrder <- *",
    ]);
  });

  it("the saga's calls carry no identity: order's participant calls send only their abort signal", () => {
    // ReserveStock, ReleaseStock, ChargePayment and RefundPayment read none (above), and order, which
    // reaches them, sends none: a customer's identity never travels beyond the gateway's own hop.
    const src = readFileSync(join(ROOT, "services", "order", "participants.ts"), "utf8");
    expect(src).not.toMatch(/identityMetadata|x-shopmesh|metadata/);
  });
});

describe("every principal the policies name is in the mesh's trust domain", () => {
  // Istio matches `principals` against `<trust domain>/ns/<ns>/sa/<sa>` of the caller's certificate;
  // a principal in another domain matches nothing, and one ALLOW rule quietly names no one.
  it.each(overlays)("%s: each is <trust domain>/ns/<ns>/sa/<a service account that exists>", (overlay) => {
    const objs = rendered.get(overlay) ?? [];
    const accounts = new Set(
      objs.filter((o) => o.kind === "ServiceAccount").map((o) => `${TRUST_DOMAIN}/ns/${NS}/sa/${o.metadata.name}`),
    );
    accounts.add(`${TRUST_DOMAIN}/ns/istio-system/sa/istio-ingressgateway-service-account`);
    const named = objs
      .filter((o) => o.kind === "AuthorizationPolicy")
      .flatMap((ap) => (ap.spec?.rules ?? []) as Array<{ from?: Array<{ source?: { principals?: string[] } }> }>)
      .flatMap((r) => (r.from ?? []).flatMap((f) => f.source?.principals ?? []));
    expect(named.length).toBeGreaterThan(0);
    expect(named.filter((p) => !accounts.has(p))).toEqual([]);
    expect(istio?.spec?.meshConfig?.trustDomainAliases ?? []).toEqual([]);
  });
});

describe("ports no rule names — metrics, NATS monitoring — are reached by no workload", () => {
  // /metrics (METRICS_PORT, on 0.0.0.0) and nats-server's monitoring (8222: /connz lists every client
  // and its subscriptions) are read by Istio's metrics merging and the kubelet's rewritten probes,
  // both from inside the pod; nothing in the mesh needs them.
  it.each(overlays)("%s: every ALLOW rule names a port, and none is a metrics or monitoring port", (overlay) => {
    const objs = rendered.get(overlay) ?? [];
    const quiet = new Set<string>();
    for (const w of objs.filter((o) => ["Deployment", "StatefulSet"].includes(o.kind)))
      for (const c of w.spec?.template?.spec?.containers ?? [])
        for (const p of c.ports ?? []) if (["metrics", "monitor"].includes(p.name)) quiet.add(String(p.containerPort));
    expect([...quiet].sort()).toEqual(["8222", "9464"]);
    const ports = objs
      .filter((o) => o.kind === "AuthorizationPolicy" && (o.spec?.action ?? "ALLOW") === "ALLOW")
      .filter((o) => o.metadata.namespace === NS)
      .flatMap((ap) => (ap.spec?.rules ?? []) as Array<{ to?: Array<{ operation?: { ports?: string[] } }> }>)
      .map((r) => (r.to ?? []).flatMap((t) => t.operation?.ports ?? []));
    expect(ports.filter((p) => p.length === 0).length, "a rule without ports reaches every port").toBe(0);
    expect(ports.flat().filter((p) => quiet.has(p))).toEqual([]);
  });
});

describe("NATS: the route port is the nats servers' alone, and the mesh is all that says so", () => {
  // nats.conf's cluster block has no authorization: nats-server 2.9.10 answered a CONNECT from a
  // stranger on the route port (no user, no password) with PONG, and a route publishes and subscribes
  // in every account — the per-service users of users.conf do not apply to it. Only the mesh's rule
  // keeps it to the nats pods (docs/deploy.md, "Before anything but a laptop").
  it.each(overlays)("%s: 6222 admits the nats principal and no other; 4222 no gateway", (overlay) => {
    const objs = rendered.get(overlay) ?? [];
    const byPort = new Map<string, string[]>();
    for (const ap of objs) {
      if (ap.kind !== "AuthorizationPolicy" || (ap.metadata.namespace ?? NS) !== NS) continue;
      if (
        (ap.spec?.action ?? "ALLOW") !== "ALLOW" ||
        ap.spec?.selector?.matchLabels?.["app.kubernetes.io/name"] !== "nats"
      )
        continue;
      for (const rule of ap.spec?.rules ?? []) {
        const from = (rule.from ?? []) as Array<{ source?: Record<string, string[]> }>;
        const who = from.flatMap((f) =>
          Object.keys(f.source ?? {}).join() === "principals" ? (f.source?.principals ?? []) : ["*"],
        );
        for (const t of rule.to ?? [{}])
          for (const port of t.operation?.ports ?? ["*"])
            byPort.set(port, [...(byPort.get(port) ?? []), ...(from.length ? who : ["*"])]);
      }
    }
    expect(byPort.get("*")).toBeUndefined();
    expect(byPort.get("6222")).toEqual([`${TRUST_DOMAIN}/ns/${NS}/sa/nats`]);
    expect(byPort.get("4222")).not.toContain(GATEWAY);
  });
});

describe("no overlay starts a process with faults: they come only from the mesh and the panel", () => {
  // Every process reads faultEnv at start (platform/chaos.ts): latency, errors, hard down, and the
  // chaos tests' SIGKILLs before a publish or after a commit. None of it is the panel's or the mesh's
  // to switch off again: ChaosService.SetFaults (kind-payment-faults only) sets latency, errors and
  // down, never the SIGKILLs, and `make deploy` leaves a ConfigMap's variable where it was.
  /** Every fault variable a container of `objs` is given, as `Kind/name: VARIABLE`. */
  function faultVariables(objs: readonly Obj[]): string[] {
    const names = new Set(Object.keys(faultEnv));
    const found: string[] = [];
    for (const w of objs.filter((o) => ["Deployment", "StatefulSet", "Job"].includes(o.kind))) {
      for (const c of [
        ...(w.spec?.template?.spec?.containers ?? []),
        ...(w.spec?.template?.spec?.initContainers ?? []),
      ]) {
        const keys: string[] = (c.env ?? []).map((e: { name: string }) => e.name);
        for (const from of c.envFrom ?? []) {
          const cm = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name === from.configMapRef?.name);
          keys.push(...Object.keys((cm as { data?: object } | undefined)?.data ?? {}));
        }
        for (const k of keys) if (names.has(k)) found.push(`${w.kind}/${w.metadata.name}: ${k}`);
      }
    }
    return found;
  }

  it.each(overlays)("%s: no container is given a FAULT_* variable of faultEnv", (overlay) => {
    expect(faultVariables(rendered.get(overlay) ?? [])).toEqual([]);
  });

  it("the check sees one: FAULT_CRASH_AFTER_COMMIT in payment's ConfigMap", () => {
    const objs = structuredClone(rendered.get("kind") ?? []) as Array<Obj & { data?: Record<string, string> }>;
    const payment = objs.find((o) => o.kind === "Deployment" && o.metadata.name === "payment");
    const name = payment?.spec?.template?.spec?.containers?.[0]?.envFrom?.find(
      (f: { configMapRef?: { name: string } }) => f.configMapRef,
    )?.configMapRef?.name;
    const cm = objs.find((o) => o.kind === "ConfigMap" && o.metadata.name === name);
    if (cm) cm.data = { ...cm.data, FAULT_CRASH_AFTER_COMMIT: "true" };
    expect(faultVariables(objs)).toEqual(["Deployment/payment: FAULT_CRASH_AFTER_COMMIT"]);
  });
});
