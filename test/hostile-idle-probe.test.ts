/**
 * The idle circuit's probe (platform/idle-probe.ts, docs/resilience.md "An open circuit no call comes
 * to"), attacked over real gRPC: real servers on ephemeral ports, a real HTTP/2 listener that takes a
 * stream and never answers, a plain grpc-js server with no health service. Each test opens a client's
 * circuit on an instance, then leaves it with no call.
 */
import { createHook } from "node:async_hooks";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { connect } from "@nats-io/transport-node";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { startGateway } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, loadConfig as gatewayConfig, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { Code, ServiceError } from "../platform/errors.js";
import { grpcHandlers, grpcServiceDefinition } from "../platform/grpc.js";
import { type Logger, silentLogger } from "../platform/log.js";
import { DEFAULT_POLICY, type PolicyConfig } from "../platform/policy-config.js";
import { registerInstance } from "../platform/registry.js";
import { createResilientClient, type PolicyEvents } from "../platform/resilience.js";
import { bind, startGrpcServer } from "../platform/server.js";
import { createTelemetry, type Telemetry } from "../platform/telemetry.js";
import { startTracing } from "../platform/tracing.js";
import { startNats } from "./nats.js";
import { expectRpcError } from "./rpc.js";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const H = 200;
const POLICY: PolicyConfig = {
  ...DEFAULT_POLICY,
  timeoutMs: 300,
  retryMaxAttempts: 1,
  breakerConsecutiveFailures: 2,
  breakerFailureRatio: 0,
  breakerHalfOpenAfterMs: H,
};
const req = { productId: "p-1" };

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const step of cleanups.splice(0).reverse()) await step();
});

function client(target: string, events?: PolicyEvents, policy: Partial<PolicyConfig> = {}) {
  const c = createResilientClient("inventory", InventoryService, target, { ...POLICY, ...policy }, silentLogger(), {
    events,
  });
  cleanups.push(() => c.close());
  return c;
}

/** Inventory whose every call fails `code` and counts, its health as `ready` says. */
async function failingInventory(code = Code.UNAVAILABLE, observed: { log?: Logger; telemetry?: Telemetry } = {}) {
  const state = { calls: 0, fail: true };
  const unary = async () => {
    state.calls++;
    await sleep(20);
    if (state.fail) throw new ServiceError(code, "scripted failure");
    return {};
  };
  const server = await startGrpcServer({
    host: "127.0.0.1",
    port: 0,
    services: [
      bind(InventoryService, {
        listProducts: unary,
        getProduct: unary,
        reserveStock: unary,
        releaseStock: unary,
        restock: unary,
      }),
    ],
    log: observed.log ?? silentLogger(),
    ...(observed.telemetry ? { telemetry: observed.telemetry } : {}),
  });
  cleanups.push(() => server.stop(0));
  return { state, server, target: `127.0.0.1:${server.port}` };
}

describe("a probe-closed circuit on probation, under concurrent calls", () => {
  it("lets one call through to an instance that is ready yet fails its calls, as a half-open probe would", async () => {
    const inv = await failingInventory();
    const changes: string[] = [];
    const c = client(inv.target, { onBreakerStateChange: (_d, s) => changes.push(s) });
    for (let i = 0; i < 2; i++) await c.getProduct(req).catch(() => {}); // UNAVAILABLE (or a cold start past 300 ms)
    expect(c.state().breaker).toBe("open");
    // Health SERVING: the probe closes it (probation).
    await expect.poll(() => c.state().breaker, { timeout: H * 5, interval: 10 }).toBe("closed");
    inv.state.calls = 0;

    // A burst after the quiet: before the probe, the first call was the half-open probe and the others
    // were refused once it failed. On probation, the same: one call reaches the failing instance.
    const burst = await Promise.allSettled(Array.from({ length: 20 }, () => c.getProduct(req)));
    expect(burst.every((r) => r.status === "rejected")).toBe(true);
    expect(inv.state.calls).toBe(1);
    expect(c.state().breaker).toBe("open");
  });

  it("a call that succeeds on probation lets the waiting ones through", async () => {
    const inv = await failingInventory();
    const c = client(inv.target);
    for (let i = 0; i < 2; i++) await c.getProduct(req).catch(() => {}); // UNAVAILABLE (or a cold start past 300 ms)
    await expect.poll(() => c.state().breaker, { timeout: H * 5, interval: 10 }).toBe("closed");
    inv.state.fail = false;
    inv.state.calls = 0;
    const burst = await Promise.allSettled(Array.from({ length: 20 }, () => c.getProduct(req)));
    expect(burst.filter((r) => r.status === "fulfilled").length).toBe(20);
    expect(inv.state.calls).toBe(20);
    expect(c.state().breaker).toBe("closed");
  });
});

describe("what the health check answers", () => {
  it("an instance that does not serve the service (its health check NOT_FOUND) stays open", async () => {
    const inv = await failingInventory();
    const changes: string[] = [];
    const c = client(inv.target, { onBreakerStateChange: (_d, s) => changes.push(s) });
    for (let i = 0; i < 2; i++) await c.getProduct(req).catch(() => {}); // UNAVAILABLE (or a cold start past 300 ms)
    expect(c.state().breaker).toBe("open");
    // Inventory's address taken again by a server of another service (its port reused).
    await inv.server.stop(0);
    const other = await startGrpcServer({
      host: "127.0.0.1",
      port: inv.server.port,
      services: [
        bind(OrderService, {
          placeOrder: async () => ({}),
          getOrder: async () => ({}),
          cancelOrder: async () => ({}),
          listOrders: async () => ({}),
          watchOrder: async function* () {},
        }),
      ],
      log: silentLogger(),
    });
    cleanups.push(() => other.stop(0));
    await sleep(H * 4);
    expect(changes).not.toContain("closed");
    expect(c.state().breaker).not.toBe("closed");
  });

  it("an instance with no health service at all (UNIMPLEMENTED) stays open", async () => {
    const server = new grpc.Server();
    server.addService(
      grpcServiceDefinition(InventoryService),
      grpcHandlers(
        InventoryService,
        {
          listProducts: async () => {
            throw new ServiceError(Code.UNAVAILABLE, "down");
          },
          getProduct: async () => {
            throw new ServiceError(Code.UNAVAILABLE, "down");
          },
          reserveStock: async () => ({}),
          releaseStock: async () => ({}),
          restock: async () => ({}),
        },
        { log: silentLogger() },
      ),
    );
    const port = await new Promise<number>((r, j) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? j(e) : r(p))),
    );
    cleanups.push(() => server.forceShutdown());
    const changes: string[] = [];
    const c = client(`127.0.0.1:${port}`, { onBreakerStateChange: (_d, s) => changes.push(s) });
    for (let i = 0; i < 2; i++) await c.getProduct(req).catch(() => {}); // UNAVAILABLE (or a cold start past 300 ms)
    expect(c.state().breaker).toBe("open");
    await sleep(H * 4);
    expect(changes).not.toContain("closed");
  });
});

describe("an instance that takes the connection and never answers", () => {
  it("the probe's deadline is honoured and the circuit opens again; one probe per wait", async () => {
    const streams: number[] = [];
    const h2 = http2.createServer();
    h2.on("stream", (s) => {
      streams.push(performance.now());
      s.on("error", () => {});
    });
    await new Promise<void>((r) => h2.listen(0, "127.0.0.1", r));
    cleanups.push(
      () =>
        new Promise<void>((r) => {
          for (const s of sessions) s.destroy();
          h2.close(() => r());
        }),
    );
    const sessions = new Set<http2.ServerHttp2Session>();
    h2.on("session", (s) => sessions.add(s));
    const changes: [string, number][] = [];
    const c = client(`127.0.0.1:${(h2.address() as AddressInfo).port}`, {
      onBreakerStateChange: (_d, s) => changes.push([s, performance.now()]),
    });
    for (let i = 0; i < 2; i++) await expectRpcError(c.getProduct(req), Code.DEADLINE_EXCEEDED);
    expect(c.state().breaker).toBe("open");
    const before = streams.length;
    const t0 = performance.now();
    await sleep(H * 8);
    const probes = streams.length - before;
    // Each probe waits out its 300 ms deadline, then opens it for another 200 ms wait: ~1 per 500 ms.
    expect(probes).toBeGreaterThanOrEqual(2);
    expect(probes).toBeLessThanOrEqual(Math.ceil((performance.now() - t0) / (H + POLICY.timeoutMs)) + 1);
    const halfOpens = changes.filter(([s]) => s === "half-open").map(([, t]) => t);
    const reopened = changes.filter(([s, t]) => s === "open" && t > (halfOpens[0] ?? Infinity)).map(([, t]) => t);
    expect(reopened.length).toBeGreaterThanOrEqual(1);
    // Reopened at the probe's deadline (300 ms), not held half-open.
    expect((reopened[0] as number) - (halfOpens[0] as number)).toBeGreaterThanOrEqual(POLICY.timeoutMs - 20);
    expect((reopened[0] as number) - (halfOpens[0] as number)).toBeLessThan(POLICY.timeoutMs + 200);
    expect(changes.map(([s]) => s)).not.toContain("closed");
  });
});

/**
 * An instance answering every call UNAVAILABLE (trailers-only), counting the calls per path; while
 * `hangs()` it takes every call and never answers.
 */
async function unavailableInstance(hangs: () => boolean = () => false) {
  const paths = new Map<string, number>();
  const h2 = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (s) => sessions.add(s));
  h2.on("stream", (s, headers) => {
    const path = String(headers[":path"]);
    paths.set(path, (paths.get(path) ?? 0) + 1);
    s.on("error", () => {});
    if (!hangs())
      s.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "14" }, { endStream: true });
  });
  await new Promise<void>((r) => h2.listen(0, "127.0.0.1", r));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sessions) s.destroy();
        h2.close(() => r());
      }),
  );
  const checks = () => paths.get("/grpc.health.v1.Health/Check") ?? 0;
  return { address: `127.0.0.1:${(h2.address() as AddressInfo).port}`, checks };
}

/** The idle probe's timers alive in this process (idle-probe.ts `fire`). */
function probeTimers() {
  const alive = new Set<number>();
  const hook = createHook({
    init(id, type, _trigger, resource) {
      if (type === "Timeout" && (resource as { _onTimeout?: { name?: string } })._onTimeout?.name === "fire")
        alive.add(id);
    },
    destroy(id) {
      alive.delete(id);
    },
  }).enable();
  cleanups.push(() => hook.disable());
  return { count: () => alive.size };
}

describe("many instances, and instances that come and go", () => {
  it("50 open circuits: each instance probed at most once per wait, and every one probed", async () => {
    const instances = await Promise.all(Array.from({ length: 50 }, () => unavailableInstance()));
    const c = client(`ipv4:${instances.map((i) => i.address).join(",")}`);
    for (let i = 0; i < 100 && c.state().breaker !== "open"; i++) await c.getProduct(req).catch(() => {});
    expect(c.state().breaker).toBe("open");
    const before = instances.map((i) => i.checks());
    const probes = () => instances.map((i, n) => i.checks() - (before[n] as number));
    const t0 = performance.now();
    await sleep(H * 6);
    // Every one probed twice: within six waits on a quiet machine; on a loaded one (two workers on two
    // cores) one of the fifty was still at one after them, so it is waited for, and the bound below is
    // the waits that passed in fact.
    await expect.poll(() => Math.min(...probes()), { timeout: 10_000, interval: 20 }).toBeGreaterThanOrEqual(2);
    const waits = (performance.now() - t0) / H;
    expect(Math.max(...probes())).toBeLessThanOrEqual(Math.ceil(waits));
  });

  it("registry churn while circuits are open: a departed instance's probe timer goes, and it is never probed again", async () => {
    // Torn down last: after the connection and the client.
    const nats = await startNats();
    cleanups.push(() => nats[Symbol.asyncDispose]());
    const nc = await connect({ servers: nats.url });
    cleanups.push(() => nc.close());
    const timers = probeTimers();
    const c = createResilientClient("inventory", InventoryService, "registry:///inventory", POLICY, silentLogger(), {
      nc,
    });
    cleanups.push(() => c.close());
    for (let round = 0; round < 3; round++) {
      const instances = await Promise.all(Array.from({ length: 5 }, () => unavailableInstance()));
      const regs = await Promise.all(
        instances.map((i) => registerInstance({ nc, service: "inventory", address: i.address, log: silentLogger() })),
      );
      await expect.poll(() => c.state().endpoints.length, { timeout: 5_000, interval: 20 }).toBe(5);
      for (let i = 0; i < 50 && c.state().breaker !== "open"; i++) await c.getProduct(req).catch(() => {});
      expect(c.state().breaker).toBe("open");
      await sleep(H * 2);
      expect(timers.count()).toBeGreaterThan(0);
      // At most one per instance once the loop has turned: a probe timer that fired in the same turn as
      // this test's own sleep is counted until its destroy hook runs (queued, after the next one was set).
      await expect.poll(() => timers.count(), { timeout: 2_000, interval: 20 }).toBeLessThanOrEqual(5);
      await Promise.all(regs.map((r) => r.stop()));
      await expect.poll(() => c.state().endpoints.length, { timeout: 5_000, interval: 20 }).toBe(0);
      // A probe under way as its instance left is cancelled, yet its headers may still be on the wire.
      await sleep(50);
      const after = instances.map((i) => i.checks());
      await sleep(H * 3);
      expect(instances.map((i) => i.checks())).toEqual(after);
      // Cleared timers are destroyed at the next turn of the loop.
      await expect.poll(() => timers.count(), { timeout: 1_000, interval: 20 }).toBe(0);
    }
  }, 60_000);
});

describe("what a probe leaves behind", () => {
  it("no span, no rpc_client_* or rpc_server_* sample, no access line — where a call leaves each", async () => {
    const exporter = new InMemorySpanExporter();
    const stopTracing = await startTracing({
      service: "t",
      otlpEndpoint: "",
      traceFile: "",
      sampleRatio: 1,
      extra: [new SimpleSpanProcessor(exporter)],
    });
    cleanups.push(stopTracing);
    const serverTelemetry = createTelemetry("inventory");
    // Every line, the access log's debug lines of calls answered OK among them.
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: "debug" }, { write: (l: string) => void lines.push(JSON.parse(l)) });
    const inv = await failingInventory(Code.UNAVAILABLE, { log, telemetry: serverTelemetry });
    const clientTelemetry = createTelemetry("order");
    // 300 ms a call (POLICY's) failed the one call below that must succeed, DEADLINE_EXCEEDED, on a
    // loaded machine with tracing and a debug log on: 2 s here; the probe is what is watched, not its deadline.
    const policy = { ...POLICY, timeoutMs: 2_000 };
    const c = createResilientClient("inventory", InventoryService, inv.target, policy, silentLogger(), {
      telemetry: clientTelemetry,
    });
    cleanups.push(() => c.close());
    for (let i = 0; i < 2; i++) await c.getProduct(req).catch(() => {}); // UNAVAILABLE
    inv.state.fail = false;
    const seen = async () => ({
      spans: exporter.getFinishedSpans().map((s) => s.name),
      client: await clientTelemetry.metrics.registry.getMetricsAsJSON(),
      server: await serverTelemetry.metrics.registry.getMetricsAsJSON(),
      lines: lines.length,
      access: lines.filter((l) => JSON.stringify(l).includes("GetProduct") || JSON.stringify(l).includes("Health")),
    });
    const mentions = (x: unknown, what: string) => JSON.stringify(x).includes(what);
    const before = await seen();
    // Probed, and closed by it (health SERVING), no call made: nothing else closes it, however long it takes.
    await expect.poll(() => c.state().breaker, { timeout: 5_000, interval: 10 }).toBe("closed");
    const after = await seen();
    expect(inv.state.calls).toBe(2);
    expect(after.spans).toEqual(before.spans);
    for (const what of ["Health", "Check"]) {
      expect(mentions(after.spans, what)).toBe(false);
      expect(
        mentions(
          after.client.filter((m) => m.name.startsWith("rpc_client_")),
          what,
        ),
      ).toBe(false);
      expect(
        mentions(
          after.server.filter((m) => m.name.startsWith("rpc_server_")),
          what,
        ),
      ).toBe(false);
      expect(mentions(after.access, what)).toBe(false);
    }
    expect(after.access.length).toBe(before.access.length);
    expect(after.lines).toBe(before.lines); // no line at all of the server's while probed
    // Where a call leaves each (so the above could see a probe): one more call, counted everywhere.
    await c.getProduct(req);
    const call = await seen();
    expect(mentions(call.spans, "GetProduct")).toBe(true);
    expect(call.access.length).toBeGreaterThan(after.access.length);
    expect(
      mentions(
        call.client.filter((m) => m.name === "rpc_client_duration_seconds"),
        '"OK"',
      ),
    ).toBe(true);
    expect(
      mentions(
        call.server.filter((m) => m.name === "rpc_server_duration_seconds"),
        '"OK"',
      ),
    ).toBe(true);
  });
});

describe("a process shutting down with open circuits", () => {
  it.each([
    ["at once when it closes its client (the probe cancelled)", true, 1_000],
    // Its timer is unref'd, but a probe in flight is a call in flight: held to its deadline (3 s here).
    ["by the probe's deadline when it leaves its client open", false, 4_500],
  ])(
    "exits %s, a probe in flight to an instance that never answers",
    async (_how, close, ms) => {
      // Answers UNAVAILABLE until the circuit is open, then takes every stream and never answers.
      let hang = false;
      const instance = await unavailableInstance(() => hang);
      const script = `
      import { createResilientClient } from "./platform/resilience.ts";
      import { DEFAULT_POLICY } from "./platform/policy-config.ts";
      import { silentLogger } from "./platform/log.ts";
      import { InventoryService } from "./gen/shopmesh/inventory/v1/inventory_pb.ts";
      const c = createResilientClient("inventory", InventoryService, "${instance.address}",
        { ...DEFAULT_POLICY, timeoutMs: 3000, retryMaxAttempts: 1, breakerConsecutiveFailures: 2, breakerHalfOpenAfterMs: 200 },
        silentLogger());
      for (let i = 0; i < 2; i++) await c.getProduct({ productId: "p" }).catch(() => {});
      console.log("open " + c.state().breaker);
      process.stdin.once("data", () => {
        console.log("stopping");
        ${close ? "c.close();" : ""}
        process.stdin.destroy();
      });
    `;
      const { spawn } = await import("node:child_process");
      const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
        cwd: new URL("..", import.meta.url).pathname,
        stdio: ["pipe", "pipe", "inherit"],
      });
      cleanups.push(() => void child.kill("SIGKILL"));
      let out = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
      });
      const exited = new Promise<number>((r) => child.once("exit", () => r(performance.now())));
      await expect.poll(() => out, { timeout: 15_000, interval: 20 }).toContain("open open");
      hang = true;
      await expect.poll(() => instance.checks(), { timeout: 2_000, interval: 10 }).toBe(1);
      const t0 = performance.now();
      child.stdin.write("stop\n");
      const took = (await exited) - t0;
      expect(out).toContain("stopping");
      expect(took).toBeLessThan(ms);
    },
    30_000,
  );
});

describe("the gateway's upstream circuits", () => {
  it("an upstream circuit no call comes to closes once the upstream is back, probed over the gateway's own session", async () => {
    const inv = await failingInventory();
    const gw = await startGateway(
      gatewayConfig({
        HTTP_HOST: "127.0.0.1",
        HTTP_PORT: "0",
        ...Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), inv.target])),
        UPSTREAM_RETRY_MAX_ATTEMPTS: "1",
        UPSTREAM_BREAKER_CONSECUTIVE_FAILURES: "2",
        UPSTREAM_BREAKER_HALF_OPEN_AFTER_MS: String(H),
      }),
      silentLogger(),
    );
    cleanups.push(() => gw.stop());
    const token = await signDevToken(
      { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
      "gia",
      ["customer"],
    );
    const list = () =>
      fetch(`${gw.url}/shopmesh.inventory.v1.InventoryService/ListProducts`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: "{}",
      }).then((r) => r.status);
    const gauge = async () =>
      (await gw.telemetry.metrics.registry.getSingleMetric("circuit_breaker_state")?.get())?.values.find(
        (v) => v.labels.downstream === "inventory",
      )?.value;
    for (let i = 0; i < 2; i++) expect(await list()).toBe(503);
    expect(await gauge()).toBe(1);
    const calls = inv.state.calls;

    inv.state.fail = false; // back, and nothing calls it
    await expect.poll(gauge, { timeout: H * 5, interval: 20 }).toBe(0);
    expect(inv.state.calls).toBe(calls);
    expect(await list()).toBe(200);
  });
});
