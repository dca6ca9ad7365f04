/**
 * The resilient client over real gRPC: real servers on ephemeral ports with
 * small scripted handlers (real network, fake business), real channels and
 * real deadlines. Assertions are on status codes, call counts and timings,
 * never on message text.
 */

import { getEventListeners } from "node:events";
import { type AddressInfo, connect, createServer, type Socket } from "node:net";
import type { DescService } from "@bufbuild/protobuf";
import { Metadata } from "@grpc/grpc-js";
import { afterEach, describe, expect, it, vi } from "vitest";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { expectRpcError } from "../test/rpc.js";
import { ConfigError, parseEnv } from "./config.js";
import { Code, RpcError, ServiceError } from "./errors.js";
import type { CallContext, ServiceImpl } from "./grpc.js";
import { createChannel, createClient } from "./grpc-client.js";
import { silentLogger } from "./log.js";
import { CallerDeadlineError, callersDeadline, isIdempotent, isRetryable, retriedCalls } from "./policy.js";
import { DEFAULT_POLICY, type PolicyConfig, policyEnv } from "./policy-config.js";
import { createResilientClient, type PolicyEvents, type ResilientClient } from "./resilience.js";
import { bind, type RunningServer, startGrpcServer } from "./server.js";
import { createTelemetry } from "./telemetry.js";

/** What the fake downstream does with one call. */
type Behaviour = { kind: "ok" } | { kind: "fail"; code: Code } | { kind: "delay"; ms: number };
const OK: Behaviour = { kind: "ok" };
const fail = (code: Code): Behaviour => ({ kind: "fail", code });
const delay = (ms: number): Behaviour => ({ kind: "delay", ms });

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Resolves true when `signal` aborts before `ms` have passed, false otherwise. */
function waitOrAbort(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(true);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(false);
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Polls `cond` every 10 ms for up to `ms`; returns its last value. */
async function eventually(cond: () => boolean, ms: number): Promise<boolean> {
  const until = performance.now() + ms;
  while (!cond() && performance.now() < until) await sleep(10);
  return cond();
}

/**
 * Calls `client` every 20 ms while `more()` and for at most `ms`, each failing UNAVAILABLE (refused by an
 * open circuit, or its failing half-open probe): an open circuit calls come to is not probed by its
 * instance's health check (idle-probe.ts), one of the calls is.
 */
async function keepCalling(
  client: ResilientClient<typeof InventoryService>,
  more: () => boolean,
  ms: number,
): Promise<void> {
  const until = performance.now() + ms;
  while (performance.now() < until && more()) {
    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    await sleep(20);
  }
}

/** Counts calls and behaves as scripted: queued behaviours first, then the standing one. */
class FakeDownstream {
  calls = 0;
  /** Calls whose `ctx.signal` aborted while the handler was waiting. */
  aborts = 0;
  inFlight = 0;
  maxInFlight = 0;
  private script: Behaviour[] = [];
  private standing: Behaviour = OK;

  /** Every later call behaves as `b` (drops anything scripted). */
  always(b: Behaviour): void {
    this.script = [];
    this.standing = b;
  }

  /** The next calls behave as `bs`, in order, then as the standing behaviour. */
  next(...bs: Behaviour[]): void {
    this.script.push(...bs);
  }

  resetCounters(): void {
    this.calls = 0;
    this.aborts = 0;
    this.maxInFlight = this.inFlight;
  }

  async handle(ctx: CallContext): Promise<void> {
    this.calls++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      const b = this.script.shift() ?? this.standing;
      if (b.kind === "fail") throw new ServiceError(b.code, "scripted failure");
      if (b.kind === "delay" && (await waitOrAbort(b.ms, ctx.signal))) {
        this.aborts++;
        throw new ServiceError(Code.CANCELLED, "caller gave up");
      }
    } finally {
      this.inFlight--;
    }
  }
}

function inventoryImpl(fake: FakeDownstream): ServiceImpl<typeof InventoryService> {
  const unary = async (_req: unknown, ctx: CallContext) => {
    await fake.handle(ctx);
    return {};
  };
  return { listProducts: unary, getProduct: unary, reserveStock: unary, releaseStock: unary, restock: unary };
}

function orderImpl(fake: FakeDownstream): ServiceImpl<typeof OrderService> {
  const unary = async (_req: unknown, ctx: CallContext) => {
    await fake.handle(ctx);
    return {};
  };
  return {
    placeOrder: unary,
    getOrder: unary,
    cancelOrder: unary,
    listOrders: unary,
    watchOrder: async function* (_req, ctx) {
      await fake.handle(ctx);
      yield {};
    },
  };
}

/** Teardown steps of the running test, run last-in first-out (channels before their servers). */
const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const step of cleanups.splice(0).reverse()) await step();
});

interface Downstream {
  readonly fake: FakeDownstream;
  readonly server: RunningServer;
}

async function serve(binding: (fake: FakeDownstream) => ReturnType<typeof bind>): Promise<Downstream> {
  const fake = new FakeDownstream();
  const server = await startGrpcServer({ host: "127.0.0.1", port: 0, services: [binding(fake)], log: silentLogger() });
  cleanups.push(() => server.stop(0));
  return { fake, server };
}

const startInventory = () => serve((fake) => bind(InventoryService, inventoryImpl(fake)));
const startOrder = () => serve((fake) => bind(OrderService, orderImpl(fake)));

/** Small, explicit timings; each test overrides what it exercises. */
const BASE: PolicyConfig = {
  ...DEFAULT_POLICY,
  timeoutMs: 1_000,
  retryMaxAttempts: 3,
  retryInitialDelayMs: 5,
  retryMaxDelayMs: 20,
  breakerConsecutiveFailures: 100,
  breakerFailureRatio: 0,
  breakerWindowMs: 1_000,
  breakerHalfOpenAfterMs: 200,
  bulkheadLimit: 32,
  bulkheadQueue: 64,
};

function resilient<S extends DescService>(
  name: string,
  service: S,
  server: RunningServer,
  policy: Partial<PolicyConfig>,
  events?: PolicyEvents,
): ResilientClient<S> {
  const channel = createChannel(server.address);
  cleanups.push(() => channel.close());
  return createResilientClient(name, service, channel, { ...BASE, ...policy }, silentLogger(), { events });
}

/** Runs `f` and returns how long it took to settle, in ms. */
function median(xs: readonly number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] as number;
}

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

const req = { productId: "p-1" };

describe("retry", () => {
  it("retries UNAVAILABLE until the call succeeds", async () => {
    const { fake, server } = await startInventory();
    const retries: string[] = [];
    const client = resilient(
      "inventory",
      InventoryService,
      server,
      { retryMaxAttempts: 4 },
      {
        onRetry: (_d, _m, _a, code) => retries.push(code),
      },
    );
    fake.next(fail(Code.UNAVAILABLE), fail(Code.UNAVAILABLE));

    await expect(client.getProduct(req)).resolves.toBeDefined();
    expect(fake.calls).toBe(3);
    expect(retries).toEqual(["UNAVAILABLE", "UNAVAILABLE"]);
  });

  it.each([
    ["FAILED_PRECONDITION", Code.FAILED_PRECONDITION],
    ["INVALID_ARGUMENT", Code.INVALID_ARGUMENT],
    ["NOT_FOUND", Code.NOT_FOUND],
  ])("never retries a business error (%s): one call", async (_name, code) => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { retryMaxAttempts: 4 });
    fake.always(fail(code));

    await expectRpcError(client.getProduct(req), code);
    expect(fake.calls).toBe(1);
  });

  it("gives up after retryMaxAttempts attempts in total", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { retryMaxAttempts: 3 });
    fake.always(fail(Code.UNAVAILABLE));

    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(fake.calls).toBe(3);
    await sleep(50);
    expect(fake.calls).toBe(3);
  });

  it("retryMaxAttempts 1 means no retry", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { retryMaxAttempts: 1 });
    fake.always(fail(Code.UNAVAILABLE));

    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(fake.calls).toBe(1);
  });
});

describe("retry by idempotency", () => {
  const policy = { timeoutMs: 150, retryMaxAttempts: 3 };

  it("retries an attempt that times out (DEADLINE_EXCEEDED) for an idempotent method", async () => {
    const { fake, server } = await startInventory();
    const retries: string[] = [];
    const client = resilient("inventory", InventoryService, server, policy, {
      onRetry: (_d, method, _a, code) => retries.push(`${method}:${code}`),
    });
    fake.always(delay(2_000));

    await expectRpcError(client.getProduct(req), Code.DEADLINE_EXCEEDED);
    expect(retries).toEqual(["GetProduct:DEADLINE_EXCEEDED", "GetProduct:DEADLINE_EXCEEDED"]);
    // Every attempt reached the server and was cancelled there by its deadline.
    expect(await eventually(() => fake.calls === 3 && fake.aborts === 3, 3_000)).toBe(true);
  });

  it("retries RESOURCE_EXHAUSTED for an idempotent method", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, policy);
    fake.next(fail(Code.RESOURCE_EXHAUSTED));

    await expect(client.reserveStock({ idempotencyKey: "k" })).resolves.toBeDefined();
    expect(fake.calls).toBe(2);
  });

  it("never retries DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED for a method without idempotency level (CancelOrder)", async () => {
    const { fake, server } = await startOrder();
    const retries: string[] = [];
    const client = resilient("order", OrderService, server, policy, {
      onRetry: (_d, method, _a, code) => retries.push(`${method}:${code}`),
    });
    fake.always(delay(2_000));

    await expectRpcError(client.cancelOrder({ orderId: "o-1" }), Code.DEADLINE_EXCEEDED);
    await sleep(100);
    expect(fake.calls).toBe(1);

    fake.always(fail(Code.RESOURCE_EXHAUSTED));
    await expectRpcError(client.cancelOrder({ orderId: "o-1" }), Code.RESOURCE_EXHAUSTED);
    expect(fake.calls).toBe(2);
    expect(retries).toEqual([]);
  });

  it("retries UNAVAILABLE even for a method without idempotency level", async () => {
    const { fake, server } = await startOrder();
    const client = resilient("order", OrderService, server, policy);
    fake.next(fail(Code.UNAVAILABLE), fail(Code.UNAVAILABLE));

    await expect(client.cancelOrder({ orderId: "o-1" })).resolves.toBeDefined();
    expect(fake.calls).toBe(3);
  });

  it("lists for rpc_client_retries_total each unary method with exactly the codes isRetryable retries it on", () => {
    for (const service of [OrderService, InventoryService]) {
      const listed = retriedCalls(service).map((r) => `${r.method}:${r.code}`);
      const retried = service.methods
        .filter((m) => m.methodKind === "unary")
        .flatMap((m) =>
          Object.values(Code)
            .filter((c): c is Code => typeof c === "number")
            .filter((c) => isRetryable(new RpcError(c, "x", new Metadata()), isIdempotent(m)))
            .map((c) => `${m.name}:${Code[c]}`),
        );
      expect(listed.sort()).toEqual(retried.sort());
    }
    expect(retriedCalls(OrderService).filter((r) => r.method === "CancelOrder")).toEqual([
      { method: "CancelOrder", code: "UNAVAILABLE" },
    ]);
    expect(retriedCalls(OrderService).some((r) => r.method === "WatchOrder")).toBe(false);
  });

  it("lists only the methods a caller makes, and refuses a name the service has no method of", async () => {
    expect(retriedCalls(OrderService, ["CancelOrder", "WatchOrder"])).toEqual([
      { method: "CancelOrder", code: "UNAVAILABLE" },
    ]);
    expect(() => retriedCalls(InventoryService, ["ReserveStock", "reserveStock"])).toThrow(/reserveStock/);
    const telemetry = createTelemetry("test");
    const channel = createChannel("127.0.0.1:1");
    const c = createResilientClient("inventory", InventoryService, channel, BASE, silentLogger(), {
      telemetry,
      calls: ["ReleaseStock"],
    });
    c.close();
    channel.close();
    const series = (await telemetry.metrics.retries.get()).values.map((v) => `${v.labels.method}:${v.labels.code}`);
    expect(series.sort()).toEqual([
      "ReleaseStock:DEADLINE_EXCEEDED",
      "ReleaseStock:RESOURCE_EXHAUSTED",
      "ReleaseStock:UNAVAILABLE",
    ]);
  });
});

describe("circuit breaker (consecutive failures)", () => {
  const policy = { retryMaxAttempts: 1, breakerConsecutiveFailures: 3, timeoutMs: 1_000 };

  it("opens after N failures, fails fast without the network while open, closes after a good probe", async () => {
    // Long enough that 20 fail-fast calls fit inside it on a loaded machine.
    const halfOpenAfter = 1_500;
    const { fake, server } = await startInventory();
    const changes: string[] = [];
    const client = resilient(
      "inventory",
      InventoryService,
      server,
      { ...policy, breakerHalfOpenAfterMs: halfOpenAfter },
      { onBreakerStateChange: (_d, s) => changes.push(s) },
    );
    fake.always(fail(Code.UNAVAILABLE));

    for (let i = 0; i < 2; i++) await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(client.state().breaker).toBe("closed");
    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    const openedAt = performance.now();
    expect(client.state().breaker).toBe("open");
    expect(fake.calls).toBe(3);

    const latencies: number[] = [];
    for (let i = 0; i < 20; i++) {
      latencies.push(await timed(() => expectRpcError(client.getProduct(req), Code.UNAVAILABLE)));
    }
    // All 20 ran inside the open period, so none of them could have been a half-open probe.
    expect(performance.now() - openedAt).toBeLessThan(halfOpenAfter);
    expect(median(latencies)).toBeLessThan(50);
    expect(fake.calls).toBe(3);
    expect(client.state().breaker).toBe("open");

    fake.always(OK);
    await sleep(halfOpenAfter + 50);
    await expect(client.getProduct(req)).resolves.toBeDefined();
    expect(fake.calls).toBe(4);
    expect(client.state().breaker).toBe("closed");
    expect(changes).toEqual(["open", "half-open", "closed"]);

    // Closed again: calls reach the server.
    await client.getProduct(req);
    expect(fake.calls).toBe(5);
  });

  it("fails fast while open even when the downstream hangs (far below the attempt timeout)", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {
      ...policy,
      timeoutMs: 150,
      breakerHalfOpenAfterMs: 5_000,
    });
    fake.always(delay(2_000));

    for (let i = 0; i < 3; i++) await expectRpcError(client.getProduct(req), Code.DEADLINE_EXCEEDED);
    expect(client.state().breaker).toBe("open");
    const callsWhenOpened = fake.calls;

    const latencies: number[] = [];
    for (let i = 0; i < 20; i++) {
      latencies.push(await timed(() => expectRpcError(client.getProduct(req), Code.UNAVAILABLE)));
    }
    expect(median(latencies)).toBeLessThan(50);
    expect(fake.calls).toBe(callsWhenOpened);
  });

  it("goes back to open when the half-open probe fails", async () => {
    const { fake, server } = await startInventory();
    const changes: string[] = [];
    const client = resilient(
      "inventory",
      InventoryService,
      server,
      { ...policy, breakerHalfOpenAfterMs: 200 },
      { onBreakerStateChange: (_d, s) => changes.push(s) },
    );
    fake.always(fail(Code.UNAVAILABLE));
    for (let i = 0; i < 3; i++) await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(client.state().breaker).toBe("open");

    // Calls keep coming (refused while open): the first past the wait is the probe. (A circuit no call
    // comes to is probed with the instance's health check instead: "an open circuit no call comes to".)
    await keepCalling(client, () => fake.calls === 3, 5_000);
    expect(fake.calls).toBe(4);
    expect(client.state().breaker).toBe("open");
    expect(changes).toEqual(["open", "half-open", "open"]);

    // Open again: the next call fails fast without touching the server.
    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(fake.calls).toBe(4);
  });

  it("counts every retry attempt and stops retrying once the breaker opens", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {
      retryMaxAttempts: 5,
      breakerConsecutiveFailures: 3,
      breakerHalfOpenAfterMs: 5_000,
    });
    fake.always(fail(Code.UNAVAILABLE));

    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(fake.calls).toBe(3);
    expect(client.state().breaker).toBe("open");
  });
});

describe("circuit breaker (failure ratio)", () => {
  it("opens once the failure ratio in the window exceeds breakerFailureRatio, not on consecutive failures", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {
      retryMaxAttempts: 1,
      breakerFailureRatio: 0.5,
      // Every call below falls in one window, however slow the machine.
      breakerWindowMs: 3_000,
      // Ignored in ratio mode: 3 consecutive failures below must not open it.
      breakerConsecutiveFailures: 2,
      breakerHalfOpenAfterMs: 5_000,
    });
    for (let i = 0; i < 4; i++) await client.getProduct(req);

    fake.always(fail(Code.UNAVAILABLE));
    for (let i = 0; i < 3; i++) await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    // 3 failures of 7 calls: below the ratio.
    expect(client.state().breaker).toBe("closed");

    let failures = 3;
    while (client.state().breaker === "closed" && failures < 10) {
      await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
      failures++;
    }
    expect(client.state().breaker).toBe("open");
    // Opens as soon as failures are more than half of the calls (5 of 9), not later.
    expect(failures).toBe(5);

    const calls = fake.calls;
    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(fake.calls).toBe(calls);
  });
});

describe("business errors", () => {
  it.each([
    ["consecutive", { breakerConsecutiveFailures: 3 }],
    ["ratio", { breakerFailureRatio: 0.5, breakerWindowMs: 1_000 }],
  ])("never open the %s breaker, even 20 in a row", async (_name, breaker) => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { retryMaxAttempts: 3, ...breaker });

    for (let i = 0; i < 20; i++) {
      const code = i % 2 === 0 ? Code.FAILED_PRECONDITION : Code.NOT_FOUND;
      fake.next(fail(code));
      await expectRpcError(client.getProduct(req), code);
    }
    expect(fake.calls).toBe(20);
    expect(client.state().breaker).toBe("closed");
    await expect(client.getProduct(req)).resolves.toBeDefined();
    expect(fake.calls).toBe(21);
  });
});

describe("bulkhead", () => {
  it("bounds calls in flight plus queued, rejects the rest at once, and isolates other downstreams", async () => {
    const inv = await startInventory();
    const ord = await startOrder();
    let rejections = 0;
    const saturated = resilient(
      "inventory",
      InventoryService,
      inv.server,
      { bulkheadLimit: 2, bulkheadQueue: 1, timeoutMs: 5_000 },
      { onBulkheadRejected: () => rejections++ },
    );
    const other = resilient("order", OrderService, ord.server, { bulkheadLimit: 2, bulkheadQueue: 1 });
    // Connect both channels first so connection setup is not measured.
    await saturated.getProduct(req);
    await other.getOrder({ orderId: "o-1" });
    inv.fake.resetCounters();
    ord.fake.resetCounters();
    inv.fake.always(delay(1_500));

    const t0 = performance.now();
    const outcomes = Array.from({ length: 6 }, () =>
      saturated.getProduct(req).then(
        () => ({ ok: true as const, ms: performance.now() - t0 }),
        (err: unknown) => ({ ok: false as const, err, ms: performance.now() - t0 }),
      ),
    );
    expect(saturated.state()).toMatchObject({ inFlight: 2, queued: 1 });

    // The other downstream's client is unaffected while this one is saturated.
    const otherLatencies: number[] = [];
    for (let i = 0; i < 5; i++) otherLatencies.push(await timed(() => other.getOrder({ orderId: "o-1" })));
    // Far below the 1,500 ms a call queued behind the saturated downstream would take.
    expect(Math.max(...otherLatencies)).toBeLessThan(1_000);
    expect(ord.fake.calls).toBe(5);
    expect(other.state()).toMatchObject({ breaker: "closed", inFlight: 0, queued: 0 });
    expect(saturated.state()).toMatchObject({ inFlight: 2, queued: 1 });

    const settled = await Promise.all(outcomes);
    const ok = settled.filter((o) => o.ok);
    const rejected = settled.filter((o) => !o.ok);
    expect(ok).toHaveLength(3);
    expect(rejected).toHaveLength(3);
    for (const r of rejected) {
      expect(r.err).toBeInstanceOf(RpcError);
      expect((r.err as RpcError).code).toBe(Code.RESOURCE_EXHAUSTED);
      expect(r.ms).toBeLessThan(1_000); // refused at once, not after a 1,500 ms call
    }
    expect(rejections).toBe(3);
    expect(inv.fake.calls).toBe(3);
    expect(inv.fake.maxInFlight).toBe(2);
    // The queued call only started once a slot was free: two 1,500 ms calls back to back.
    expect(Math.max(...ok.map((o) => o.ms))).toBeGreaterThanOrEqual(2_950);
    expect(saturated.state()).toMatchObject({ breaker: "closed", inFlight: 0, queued: 0 });
  });
});

describe("deadlines", () => {
  it("propagates the caller's deadline through a front service and cancels the downstream work", async () => {
    const down = await startInventory();
    const inventory = resilient("inventory", InventoryService, down.server, { timeoutMs: 10_000, retryMaxAttempts: 3 });
    const front = await serve(() =>
      bind(OrderService, {
        ...orderImpl(new FakeDownstream()),
        getOrder: async (_req, ctx) => {
          await inventory.getProduct(req, { deadline: ctx.deadline });
          return {};
        },
      }),
    );
    const channel = createChannel(front.server.address);
    cleanups.push(() => channel.close());
    const client = createClient(OrderService, channel);
    // Connect client → front → downstream first so connection setup is not measured.
    await client.getOrder({ orderId: "o-1" }, { timeoutMs: 5_000 });
    down.fake.resetCounters();
    down.fake.always(delay(3_000));

    const elapsed = await timed(() =>
      expectRpcError(client.getOrder({ orderId: "o-1" }, { timeoutMs: 1_000 }), Code.DEADLINE_EXCEEDED),
    );
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(elapsed).toBeLessThan(2_500); // not the downstream's 3 s
    // The downstream saw its deadline (not the policy's 10 s) and stopped working.
    expect(await eventually(() => down.fake.aborts >= 1, 3_000)).toBe(true);
    expect(down.fake.calls).toBeGreaterThanOrEqual(1);
  });

  it("caps each attempt's deadline at the caller's deadline", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { timeoutMs: 10_000, retryMaxAttempts: 3 });
    await client.getProduct(req);
    fake.resetCounters();
    fake.always(delay(3_000));

    const elapsed = await timed(() =>
      expectRpcError(client.getProduct(req, { deadline: Date.now() + 300 }), Code.DEADLINE_EXCEEDED),
    );
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(1_000); // not the downstream's 3 s, nor a retry past the deadline
    expect(await eventually(() => fake.aborts >= 1, 3_000)).toBe(true);
  });

  it("fails a call whose deadline already passed without calling the server or counting a failure", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {
      retryMaxAttempts: 3,
      breakerConsecutiveFailures: 1,
    });

    for (let i = 0; i < 5; i++) {
      await expectRpcError(client.getProduct(req, { deadline: Date.now() - 1 }), Code.DEADLINE_EXCEEDED);
    }
    expect(fake.calls).toBe(0);
    expect(client.state().breaker).toBe("closed");
    await expect(client.getProduct(req)).resolves.toBeDefined();
    expect(fake.calls).toBe(1);
  });
});

describe("a DEADLINE_EXCEEDED the caller's deadline explains", () => {
  // A downstream enforcing the deadline it was sent (grpc-timeout) can answer before the call's own
  // timer fires on a busy event loop: five such answers opened the gateway's breaker in a loaded CI
  // run, and the calls after them were 503. The race itself is the event loop's; its verdict is this.
  const theirs = new RpcError(Code.DEADLINE_EXCEEDED, "Deadline exceeded", new Metadata());
  it("is the caller's (no breaker counts it, no policy retries it) at or after the deadline sent", () => {
    expect(callersDeadline(theirs, 1_000, 1_000)).toBeInstanceOf(CallerDeadlineError);
    expect(callersDeadline(theirs, 1_000, 999)).toBeInstanceOf(CallerDeadlineError); // sent rounded up
    expect(isRetryable(callersDeadline(theirs, 1_000, 1_200), true)).toBe(false);
  });
  it("is the downstream's before it, without a deadline, or for any other code", () => {
    expect(callersDeadline(theirs, 1_000, 990)).toBe(theirs);
    expect(callersDeadline(theirs, undefined, 5_000)).toBe(theirs);
    const down = new RpcError(Code.UNAVAILABLE, "down", new Metadata());
    expect(callersDeadline(down, 1_000, 2_000)).toBe(down);
  });
});

/** Regressions: each of these was a defect found in review, now fixed. */
describe("regressions", () => {
  // resilience.ts attemptOptions(): the caller's relative timeoutMs is recomputed from "now" on every
  // attempt, so with retries the call can take retryMaxAttempts × timeoutMs (~1,500 ms here, not ~300).
  it("a caller's timeoutMs bounds the whole call, retries included", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { timeoutMs: 10_000, retryMaxAttempts: 5 });
    await client.getProduct(req);
    fake.always(delay(3_000));

    const elapsed = await timed(() =>
      expectRpcError(client.getProduct(req, { timeoutMs: 300 }), Code.DEADLINE_EXCEEDED),
    );
    expect(elapsed).toBeLessThan(1_000); // the defect took ~1,500
  });

  // The caller's deadline is only checked when an attempt starts: a call waiting in the bulkhead queue
  // waits for a free slot however long that takes (~2,000 ms here for a 200 ms deadline).
  it("a call queued in the bulkhead fails at its deadline", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {
      bulkheadLimit: 1,
      bulkheadQueue: 1,
      timeoutMs: 3_000,
    });
    await client.getProduct(req);
    fake.always(delay(2_000));
    const busy = client.getProduct(req);

    const elapsed = await timed(() =>
      expectRpcError(client.getProduct(req, { deadline: Date.now() + 200 }), Code.DEADLINE_EXCEEDED),
    );
    await busy;
    expect(elapsed).toBeLessThan(1_000); // the defect took ~2,000
  });

  // cockatiel 3's bulkhead, taking a queued call whose caller gave up, rejects it and takes no next one:
  // a call queued behind it waited for a slot though none was in use, until its own deadline (3,000 ms
  // here) or, without one, until some later call finished.
  it("a call queued behind one whose deadline passed runs when the slot frees", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { bulkheadLimit: 1, bulkheadQueue: 2 });
    await client.getProduct(req);
    fake.next(delay(500));
    const busy = client.getProduct(req);
    const gaveUp = expectRpcError(client.getProduct(req, { deadline: Date.now() + 100 }), Code.DEADLINE_EXCEEDED);
    const t0 = performance.now();
    const behind = client.getProduct(req, { deadline: Date.now() + 3_000 });
    await gaveUp;

    await busy;
    await behind;
    expect(performance.now() - t0).toBeLessThan(1_500); // the defect took ~3,000 (DEADLINE_EXCEEDED)
    expect(client.state()).toMatchObject({ inFlight: 0, queued: 0 });
  });

  // cockatiel's bulkhead (3.2 and 4.0 alike) keeps a queued call whose caller gave up in its queue until its
  // turn: a live call behind it was shed RESOURCE_EXHAUSTED, "bulkhead full", for a caller long gone.
  it("a queued call whose caller gave up leaves the queue at once: it sheds no live call", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { bulkheadLimit: 1, bulkheadQueue: 1 });
    await client.getProduct(req);
    fake.next(delay(500));
    const busy = client.getProduct(req);
    await expectRpcError(client.getProduct(req, { deadline: Date.now() + 100 }), Code.DEADLINE_EXCEEDED);
    expect(client.state()).toMatchObject({ inFlight: 1, queued: 0 });

    await expect(client.getProduct(req, { deadline: Date.now() + 3_000 })).resolves.toBeDefined();
    await busy;
    expect(client.state()).toMatchObject({ inFlight: 0, queued: 0 });
  });

  // The same for a server stream: it waited in the queue without its caller's signal or deadline.
  it("a queued stream whose caller gave up (cancel, deadline) leaves the queue at once: it sheds no live call", async () => {
    const { fake, server } = await startOrder();
    const client = resilient("order", OrderService, server, { bulkheadLimit: 1, bulkheadQueue: 1 });
    await client.getOrder({ orderId: "o-1" });
    fake.next(delay(1_000));
    const busy = client.getOrder({ orderId: "o-1" });
    const first = async (stream: AsyncIterable<unknown>) => {
      for await (const _ of stream) return;
    };
    const ac = new AbortController();
    const cancelled = first(client.watchOrder({ orderId: "o-1" }, { signal: ac.signal }));
    expect(client.state()).toMatchObject({ inFlight: 1, queued: 1 });
    ac.abort();
    await expectRpcError(cancelled, Code.CANCELLED);
    expect(client.state()).toMatchObject({ inFlight: 1, queued: 0 });
    await expectRpcError(first(client.watchOrder({ orderId: "o-1" }, { timeoutMs: 100 })), Code.DEADLINE_EXCEEDED);
    expect(client.state()).toMatchObject({ inFlight: 1, queued: 0 });

    await expect(client.getOrder({ orderId: "o-1" }, { deadline: Date.now() + 3_000 })).resolves.toBeDefined();
    await busy;
    expect(client.state()).toMatchObject({ inFlight: 0, queued: 0 });
  });

  // While a half-open probe runs, cockatiel makes every other call wait for the probe's outcome (up to the
  // probe's timeoutMs) instead of failing fast, past the waiting caller's own deadline (~2,000 ms here for 200).
  it("a call arriving during a half-open probe does not wait past its deadline", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {
      retryMaxAttempts: 1,
      breakerConsecutiveFailures: 1,
      breakerHalfOpenAfterMs: 100,
      timeoutMs: 2_000,
    });
    fake.always(fail(Code.UNAVAILABLE));
    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    await sleep(150);
    fake.always(delay(3_000));
    const probe = client.getProduct(req).catch(() => undefined);

    const elapsed = await timed(() => client.getProduct(req, { deadline: Date.now() + 200 }).catch(() => undefined));
    await probe;
    expect(elapsed).toBeLessThan(1_000); // the defect took ~2,000
  });

  // CallerDeadlineError is excluded from the breaker's failures, and cockatiel treats an unhandled error
  // from a half-open probe as a success: a caller with an expired deadline closes the breaker without the
  // downstream ever being called.
  it("a probe that never reached the downstream does not close the breaker", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {
      retryMaxAttempts: 1,
      breakerConsecutiveFailures: 1,
      breakerHalfOpenAfterMs: 400,
    });
    fake.always(fail(Code.UNAVAILABLE));
    await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    const openedAt = performance.now();
    expect(client.state().breaker).toBe("open");
    // Calls refused for a while, so that past the wait the circuit is not yet probed by its health check.
    await keepCalling(client, () => true, 250);
    await sleep(450 - (performance.now() - openedAt));

    await expectRpcError(client.getProduct(req, { deadline: Date.now() - 1 }), Code.DEADLINE_EXCEEDED);
    expect(fake.calls).toBe(1);
    expect(client.state().breaker).not.toBe("closed");
  });

  // An already aborted caller signal makes cockatiel's bulkhead throw TaskCancelledError, which
  // toClientError() does not map: the caller gets a non-RpcError (the plain client gives CANCELLED).
  it("a call with an aborted signal fails with an RpcError CANCELLED", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {});
    const ac = new AbortController();
    ac.abort();

    await expectRpcError(client.getProduct(req, { signal: ac.signal }), Code.CANCELLED);
    expect(fake.calls).toBe(0);
  });

  // compose.ts sends one call per order line (up to 50) under one request's signal, each with a deadline.
  it("one caller's signal over 12 calls with deadlines: at most one listener on it, and its abort cancels all at once and downstream", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, { retryMaxAttempts: 3, bulkheadLimit: 20 });
    await client.getProduct(req);
    fake.resetCounters();
    fake.always(delay(3_000));
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on("warning", onWarning);
    const ac = new AbortController();
    try {
      const calls = Array.from({ length: 12 }, () =>
        expectRpcError(client.getProduct(req, { signal: ac.signal, timeoutMs: 5_000 }), Code.CANCELLED),
      );
      expect(await eventually(() => fake.calls === 12, 3_000)).toBe(true);
      expect(getEventListeners(ac.signal, "abort").length).toBeLessThanOrEqual(1);
      const elapsed = await timed(async () => {
        ac.abort();
        await Promise.all(calls);
      });
      expect(elapsed).toBeLessThan(1_000); // not the downstream's 3 s, nor the 5 s deadline
      expect(await eventually(() => fake.aborts === 12, 3_000)).toBe(true);
      expect(fake.calls).toBe(12); // a cancelled call is not retried
    } finally {
      process.off("warning", onWarning);
    }
    expect(warnings).toEqual([]);
  });

  it("a call with an already aborted signal and a deadline is CANCELLED and never sent", async () => {
    const { fake, server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {});
    const ac = new AbortController();
    ac.abort();

    await expectRpcError(client.getProduct(req, { signal: ac.signal, timeoutMs: 5_000 }), Code.CANCELLED);
    expect(fake.calls).toBe(0);
  });

  // cockatiel's SamplingBreaker throws for a threshold >= 1: config must refuse it at start instead.
  it("accepts every breakerFailureRatio that policyEnv accepts, and policyEnv refuses 1", async () => {
    const { server } = await startInventory();
    expect(() => resilient("inventory", InventoryService, server, { breakerFailureRatio: 0.99 })).not.toThrow();
    expect(() => parseEnv(policyEnv("X"), { X_BREAKER_FAILURE_RATIO: "1" })).toThrow(ConfigError);
  });

  // grpc.ts createClient() adds an "abort" listener (closing over the call) to the attempt's signal and
  // never removes it; with no caller signal that is cockatiel's process-wide never-aborted signal, so
  // every call through a resilient client leaks one listener for the life of the process.
  it("leaves no abort listener behind once calls have settled", async () => {
    const { server } = await startInventory();
    const client = resilient("inventory", InventoryService, server, {});
    await client.getProduct(req);
    const spy = vi.spyOn(EventTarget.prototype, "addEventListener");
    const signals = new Set<AbortSignal>();
    const caller = new AbortController();
    try {
      for (let i = 0; i < 30; i++) await client.getProduct(req);
      // A caller's own signal with a deadline: the call follows it, then lets go of it.
      for (let i = 0; i < 30; i++) await client.getProduct(req, { signal: caller.signal, timeoutMs: 5_000 });
      spy.mock.calls.forEach(([type], i) => {
        const target = spy.mock.contexts[i];
        if (type === "abort" && target instanceof AbortSignal) signals.add(target);
      });
    } finally {
      spy.mockRestore();
    }
    const lingering = [...signals]
      .filter((s) => !s.aborted)
      .reduce((n, s) => n + getEventListeners(s, "abort").length, 0);
    expect(lingering).toBe(0);
  });
});

describe("per instance", () => {
  /** A client over two instances of inventory, A then B. */
  async function twoInstances(policy: Partial<PolicyConfig>, events?: PolicyEvents) {
    const a = await startInventory();
    const b = await startInventory();
    const client = createResilientClient(
      "inventory",
      InventoryService,
      `ipv4:${a.server.address},${b.server.address}`,
      { ...BASE, ...policy },
      silentLogger(),
      { events },
    );
    cleanups.push(() => client.close());
    return { a, b, client };
  }

  it("one failing instance opens its own circuit only: every call succeeds on the other, and the downstream stays closed", async () => {
    const changes: string[] = [];
    const { a, b, client } = await twoInstances(
      { retryMaxAttempts: 2, breakerConsecutiveFailures: 3, breakerHalfOpenAfterMs: 60_000 },
      { onBreakerStateChange: (_d, s) => changes.push(s) },
    );
    a.fake.always(fail(Code.UNAVAILABLE));
    for (let i = 0; i < 30; i++) await client.getProduct(req);
    // A was tried until its circuit opened, each failure retried on B; then it was skipped.
    expect(a.fake.calls).toBe(3);
    expect(b.fake.calls).toBe(30);
    const state = client.state();
    expect(state.breaker).toBe("closed");
    expect(state.endpoints).toEqual(
      expect.arrayContaining([
        { address: a.server.address, breaker: "open" },
        { address: b.server.address, breaker: "closed" },
      ]),
    );
    expect(changes).toEqual([]);
  });

  it("fails fast only when every instance's circuit is open", async () => {
    const changes: string[] = [];
    const { a, b, client } = await twoInstances(
      { retryMaxAttempts: 1, breakerConsecutiveFailures: 2, breakerHalfOpenAfterMs: 60_000 },
      { onBreakerStateChange: (_d, s) => changes.push(s) },
    );
    a.fake.always(fail(Code.UNAVAILABLE));
    b.fake.always(fail(Code.UNAVAILABLE));
    for (let i = 0; i < 4; i++) await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(client.state().breaker).toBe("open");
    expect(changes).toEqual(["open"]);
    const calls = a.fake.calls + b.fake.calls;
    const err = await expectRpcError(client.getProduct(req), Code.UNAVAILABLE);
    expect(err.message).toContain("circuit open on every instance");
    expect(a.fake.calls + b.fake.calls).toBe(calls);
  });

  it("calls in flight on an instance that dies are retried on the other: no call fails", async () => {
    const a = await startInventory();
    const b = await startInventory();
    // A is reached through a TCP relay: cutting it is what a killed process looks like (connections reset, no GOAWAY).
    const sockets = new Set<Socket>();
    const relay = createServer((inbound) => {
      const outbound = connect(Number(a.server.address.split(":")[1]), "127.0.0.1");
      for (const s of [inbound, outbound]) {
        sockets.add(s);
        s.on("error", () => {});
      }
      inbound.pipe(outbound).pipe(inbound);
    });
    await new Promise<void>((r) => relay.listen(0, "127.0.0.1", r));
    cleanups.push(() => new Promise((r) => relay.close(r)));
    const killed = `127.0.0.1:${(relay.address() as AddressInfo).port}`;
    const client = createResilientClient(
      "inventory",
      InventoryService,
      `ipv4:${killed},${b.server.address}`,
      { ...BASE, retryMaxAttempts: 3, breakerConsecutiveFailures: 5 },
      silentLogger(),
    );
    cleanups.push(() => client.close());
    a.fake.always(delay(300));
    b.fake.always(delay(20));
    const calls = Array.from({ length: 20 }, () => client.getProduct(req));
    // However slow the machine, A holds calls when it dies.
    await expect.poll(() => a.fake.inFlight, { timeout: 5_000, interval: 10 }).toBeGreaterThan(0);
    relay.close();
    for (const s of sockets) s.resetAndDestroy();
    const settled = await Promise.allSettled(calls);
    expect(
      settled.filter((s) => s.status === "rejected").map((s) => String((s as PromiseRejectedResult).reason)),
    ).toEqual([]);
    expect(b.fake.calls).toBeGreaterThanOrEqual(20);
    expect(client.state().breaker).toBe("closed");
  });
});

describe("an open circuit no call comes to (idle-probe.ts)", () => {
  const H = 200;
  /** How long a probe may take to close a circuit: many waits, for a loaded machine (a poll ends at its first success). */
  const CLOSES_WITHIN = H * 50;

  /**
   * Waits (up to CLOSES_WITHIN) until `enough()` holds while `c`'s circuit is open, no probe under way;
   * returns when, from performance.now(). Checked in one tick with the state, so counts read right
   * after it agree.
   */
  async function betweenProbes(c: ResilientClient<typeof InventoryService>, enough: () => boolean): Promise<number> {
    for (const end = performance.now() + CLOSES_WITHIN; performance.now() < end; await sleep(5)) {
      if (c.state().breaker === "open" && enough()) return performance.now();
    }
    throw new Error(`not open with enough probes within ${CLOSES_WITHIN} ms`);
  }
  const policy: Partial<PolicyConfig> = {
    retryMaxAttempts: 1,
    breakerConsecutiveFailures: 2,
    breakerHalfOpenAfterMs: H,
  };

  /** Inventory on a port it can be started on again after a stop (a process that died and came back). */
  async function restartable() {
    const fake = new FakeDownstream();
    let server: RunningServer | undefined;
    const start = async (port: number) => {
      server = await startGrpcServer({
        host: "127.0.0.1",
        port,
        services: [bind(InventoryService, inventoryImpl(fake))],
        log: silentLogger(),
      });
      return server;
    };
    const { port } = await start(0);
    cleanups.push(() => server?.stop(0));
    return { fake, port, server: () => server as RunningServer, restart: () => start(port) };
  }

  /** A client of `port` by address (its unary calls over the plain HTTP/2 session) with its gauges in `telemetry`. */
  function client(port: number, events?: PolicyEvents) {
    const telemetry = createTelemetry("test");
    const c = createResilientClient(
      "inventory",
      InventoryService,
      `127.0.0.1:${port}`,
      { ...BASE, ...policy },
      silentLogger(),
      { events, telemetry },
    );
    cleanups.push(() => c.close());
    const gauge = async (name: string) =>
      (await telemetry.metrics.registry.getSingleMetric(name)?.get())?.values.find(
        (v) => v.labels.downstream === "inventory",
      )?.value;
    return { c, gauge };
  }

  it("closes by itself once the instance is back, with no call after the outage: state and gauges say closed", async () => {
    const ds = await restartable();
    const { c, gauge } = client(ds.port);
    await ds.server().stop(0);
    for (let i = 0; i < 2; i++) await expectRpcError(c.getProduct(req), Code.UNAVAILABLE);
    expect(c.state().breaker).toBe("open");
    expect(await gauge("circuit_breaker_state")).toBe(1);

    await ds.restart();
    // No call was made since: the instance's health check was the probe. Waited for, not slept on: on a
    // loaded machine the probe that closes it may come later than five waits.
    await expect.poll(() => c.state().breaker, { timeout: CLOSES_WITHIN, interval: 10 }).toBe("closed");
    expect(await gauge("circuit_breaker_state")).toBe(0);
    expect(await gauge("endpoint_circuit_breaker_state")).toBe(0);
    expect(ds.fake.calls).toBe(0);
    await expect(c.getProduct(req)).resolves.toBeDefined();
    expect(ds.fake.calls).toBe(1);
  });

  /** A listener on `port` that counts the connections made to it and drops each at once (an instance that is not there). */
  async function refusing(port: number) {
    let connections = 0;
    const listener = createServer((socket) => {
      connections++;
      socket.on("error", () => {});
      socket.destroy();
    });
    await new Promise<void>((r) => listener.listen(port, "127.0.0.1", r));
    const close = () => new Promise<void>((r) => listener.close(() => r()));
    cleanups.push(close);
    return { connections: () => connections, close };
  }

  it("stays open while the instance is unreachable, probing it at most once per half-open wait", async () => {
    const ds = await restartable();
    const changes: string[] = [];
    const { c, gauge } = client(ds.port, { onBreakerStateChange: (_d, s) => changes.push(s) });
    await ds.server().stop(0);
    const gone = await refusing(ds.port);
    for (let i = 0; i < 2; i++) await expectRpcError(c.getProduct(req), Code.UNAVAILABLE);
    const opened = gone.connections();
    const openedAt = performance.now();

    // Two probes at least, counted while the circuit is open: a probe under way has turned it half-open
    // before its connection reaches the listener (read then, the counts differ by one).
    const counted = await betweenProbes(c, () => gone.connections() - opened >= 2);
    const probes = gone.connections() - opened;
    const waits = (counted - openedAt) / H;
    // Each probe's failure opened it for another full wait: no more than one per wait, and it did probe.
    expect(probes).toBeGreaterThanOrEqual(2);
    expect(probes).toBeLessThanOrEqual(Math.floor(waits));
    expect(changes.filter((s) => s === "half-open").length).toBe(probes);
    expect(await gauge("circuit_breaker_state")).not.toBe(0);
    expect(changes.filter((s) => s === "closed")).toEqual([]);

    await gone.close();
    await ds.restart();
    await expect.poll(() => c.state().breaker, { timeout: CLOSES_WITHIN, interval: 10 }).toBe("closed");
    expect(ds.fake.calls).toBe(0);
  });

  it("stays open while the instance answers its health check NOT_SERVING, closes once it is ready", async () => {
    const ds = await restartable();
    const { c } = client(ds.port);
    await ds.server().stop(0);
    for (let i = 0; i < 2; i++) await expectRpcError(c.getProduct(req), Code.UNAVAILABLE);
    // Back, but its database unreachable (platform/health.ts): not ready.
    (await ds.restart()).setReady(false);
    await sleep(H * 4);
    expect(c.state().breaker).not.toBe("closed");

    ds.server().setReady(true);
    await expect.poll(() => c.state().breaker, { timeout: CLOSES_WITHIN, interval: 10 }).toBe("closed");
    expect(ds.fake.calls).toBe(0);
  });

  it("a circuit a probe closed opens again at the first call that fails, as after a half-open probe", async () => {
    const ds = await restartable();
    const changes: string[] = [];
    const { c } = client(ds.port, { onBreakerStateChange: (_d, s) => changes.push(s) });
    // Ready, yet failing its calls (as payment under a fault injected "down"): its health check passes.
    ds.fake.always(fail(Code.UNAVAILABLE));
    for (let i = 0; i < 2; i++) await expectRpcError(c.getProduct(req), Code.UNAVAILABLE);
    await expect.poll(() => c.state().breaker, { timeout: CLOSES_WITHIN, interval: 10 }).toBe("closed");
    expect(changes).toEqual(["open", "half-open", "closed"]);

    // One failure, not breakerConsecutiveFailures: the first call is the real probe.
    await expectRpcError(c.getProduct(req), Code.UNAVAILABLE);
    expect(c.state().breaker).toBe("open");
    expect(ds.fake.calls).toBe(3);
    await expectRpcError(c.getProduct(req), Code.UNAVAILABLE);
    expect(ds.fake.calls).toBe(3);

    // A call that succeeds ends the probation: it takes breakerConsecutiveFailures again to open.
    ds.fake.always(OK);
    await expect.poll(() => c.state().breaker, { timeout: CLOSES_WITHIN, interval: 10 }).toBe("closed");
    await c.getProduct(req);
    ds.fake.always(fail(Code.UNAVAILABLE));
    await expectRpcError(c.getProduct(req), Code.UNAVAILABLE);
    expect(c.state().breaker).toBe("closed");
  });
});
