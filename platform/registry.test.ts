/**
 * Client-side service discovery (registry.ts, registry-watch.ts, resolver.ts)
 * against a real nats-server and real gRPC servers:
 * registration with heartbeat and TTL, the `registry:///` resolver, and
 * round_robin over what it resolves.
 */
import { type AddressInfo, createServer, type Socket } from "node:net";
import v8 from "node:v8";
import vm from "node:vm";
import { status } from "@grpc/grpc-js";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { startNats, type TestNats } from "../test/nats.js";
import { RpcError } from "./errors.js";
import type { ServiceImpl } from "./grpc.js";
import { type Client, createChannel, createClient } from "./grpc-client.js";
import { MAX_INSTANCES } from "./instances.js";
import { silentLogger } from "./log.js";
import {
  listInstances,
  openRegistry,
  REGISTRY_SUBJECT_PREFIX,
  type Registration,
  registerInstance,
} from "./registry.js";
import { watchInstances } from "./registry-watch.js";
import { channelOptionsFor, registryChannelOptions, useRegistryResolver } from "./resolver.js";
import { bind, type RunningServer, startGrpcServer } from "./server.js";

const log = silentLogger();
const TTL_MS = 1_500;
const HEARTBEAT_MS = 400;

let nats: TestNats;
/** The clients' connection: the resolver's and the test's view of the registry. */
let nc: NatsConnection;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  nats = await startNats();
  nc = await connectNats();
  // Whoever creates the bucket fixes its TTL: create it with the short test TTL first.
  await openRegistry(nc, { ttlMs: TTL_MS });
  useRegistryResolver(nc, log);
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(async () => {
  await nc?.close();
  await nats?.[Symbol.asyncDispose]();
});

/** Reconnects quickly, so the outage test's restart is short. */
const connectNats = () => connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Inventory whose GetProduct answers with the instance's tag as the product name. */
function tagged(tag: string): ServiceImpl<typeof InventoryService> {
  const unused = () => {
    throw new Error("not used in this test");
  };
  return {
    getProduct: (req) => ({ product: { id: req.productId, name: tag } }),
    listProducts: unused,
    reserveStock: unused,
    releaseStock: unused,
    restock: unused,
  };
}

/** One service instance as its own "process": a gRPC server and its own NATS connection. */
interface Instance {
  readonly tag: string;
  readonly server: RunningServer;
  readonly registration: Registration;
  /** Deregisters, then drains. */
  stop(): Promise<void>;
  /** Dies without deregistering: the connection (so the heartbeat) and the server end at once. */
  crash(): Promise<void>;
}

async function startInstance(service: string, tag: string): Promise<Instance> {
  const server = await startGrpcServer({
    host: "127.0.0.1",
    port: 0,
    services: [bind(InventoryService, tagged(tag))],
    log,
  });
  const own = await connectNats();
  const registration = await registerInstance({
    nc: own,
    service,
    address: server.address,
    log,
    heartbeatMs: HEARTBEAT_MS,
    ttlMs: TTL_MS,
  });
  const instance: Instance = {
    tag,
    server,
    registration,
    async stop() {
      await registration.stop();
      await server.stop(1_000);
      await own.close();
    },
    async crash() {
      await Promise.all([own.close(), server.stop(0)]);
    },
  };
  cleanups.push(async () => {
    await registration.stop();
    await server.stop(0);
    await own.close();
  });
  return instance;
}

function clientFor(service: string, withOptions = true): Client<typeof InventoryService> {
  const target = `registry:///${service}`;
  const channel = createChannel(target, withOptions ? registryChannelOptions() : {});
  cleanups.push(() => channel.close());
  return createClient(InventoryService, channel);
}

/**
 * Which instance answers one call. Retries UNAVAILABLE a few times, as the
 * resilient client (platform/resilience.ts) does in production: a call
 * picked for an instance in the instant it dies fails UNAVAILABLE.
 */
async function whoAnswers(client: Client<typeof InventoryService>, attempts = 3): Promise<string> {
  for (let i = 1; ; i++) {
    try {
      const res = await client.getProduct({ productId: "coffee-beans" }, { timeoutMs: 1_000 });
      return res.product?.name ?? "";
    } catch (err) {
      if (i >= attempts || !(err instanceof RpcError) || err.code !== status.UNAVAILABLE) throw err;
      await sleep(50);
    }
  }
}

/** Calls until every tag in `tags` has answered at least once (connections come up one by one). */
async function warmUp(client: Client<typeof InventoryService>, tags: readonly string[], timeoutMs = 3_000) {
  const seen = new Set<string>();
  const until = Date.now() + timeoutMs;
  while (!tags.every((t) => seen.has(t))) {
    if (Date.now() > until) throw new Error(`only ${[...seen].join(",")} answered within ${timeoutMs} ms`);
    seen.add(await whoAnswers(client, 10));
  }
}

async function countAnswers(client: Client<typeof InventoryService>, calls: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < calls; i++) {
    const tag = await whoAnswers(client);
    counts[tag] = (counts[tag] ?? 0) + 1;
  }
  return counts;
}

/** Polls `check` until it returns true; returns the elapsed ms, or throws after `timeoutMs`. */
async function within(timeoutMs: number, check: () => Promise<boolean> | boolean): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await check()) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(25);
  }
}

const addressesOf = async (service: string) => (await listInstances(nc, service)).map((e) => e.address).sort();

/** Resolves on the next reconnect of `conn`. */
async function nextReconnect(conn: NatsConnection): Promise<void> {
  for await (const s of conn.status()) if (s.type === "reconnect") return;
}

/** The latest address list a registry watch reported for `service`, kept current. */
function watched(service: string): { latest: () => readonly string[] | undefined } {
  let latest: readonly string[] | undefined;
  const w = watchInstances(nc, service, log, { onChange: (a) => (latest = a) });
  cleanups.push(() => w.stop());
  return { latest: () => latest };
}

describe("registry", () => {
  it("registers an instance under <service>.<instanceId> and rejects bad registrations", async () => {
    const a = await startInstance("inv-reg", "A");
    const entries = await listInstances(nc, "inv-reg");
    expect(entries).toEqual([
      {
        service: "inv-reg",
        address: a.server.address,
        instanceId: a.registration.instanceId,
        startedAt: expect.any(String),
      },
    ]);
    expect(a.registration.key).toBe(`inv-reg.${a.registration.instanceId}`);

    await expect(registerInstance({ nc, service: "inv.reg", address: "127.0.0.1:1", log })).rejects.toThrow(
      /invalid service name/,
    );
    await expect(registerInstance({ nc, service: "inv-reg", address: "nowhere", log })).rejects.toThrow(
      /invalid address/,
    );
    await expect(
      registerInstance({ nc, service: "inv-reg", address: "127.0.0.1:1", log, heartbeatMs: 2_000, ttlMs: 2_000 }),
    ).rejects.toThrow(/below ttlMs/);
    // The bucket already exists with TTL_MS: a heartbeat that is not below it would flap.
    await expect(
      registerInstance({ nc, service: "inv-reg", address: "127.0.0.1:1", log, heartbeatMs: TTL_MS, ttlMs: 6_000 }),
    ).rejects.toThrow(/not above heartbeatMs/);
  });

  it("selects round_robin for registry: and dns: targets, and rejects bad registry targets", () => {
    const rr = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });
    expect(registryChannelOptions()).toEqual({ "grpc.service_config": rr });
    expect(channelOptionsFor("dns:///inventory.shop.svc.cluster.local:50051")).toEqual({ "grpc.service_config": rr });
    expect(channelOptionsFor("registry:///inventory", { "grpc.keepalive_time_ms": 10_000 })).toEqual({
      "grpc.service_config": rr,
      "grpc.keepalive_time_ms": 10_000,
    });
    expect(channelOptionsFor("127.0.0.1:50051")).toEqual({});
    // A target that cannot name a service fails when the channel is made, not on every call.
    expect(() => createChannel("registry:///inventory.v1")).toThrow(/invalid service name/);
  });
});

describe("registry:/// resolver with round_robin", () => {
  it("spreads calls over every registered instance", async () => {
    await startInstance("inv-rr", "A");
    await startInstance("inv-rr", "B");
    const client = clientFor("inv-rr");
    await warmUp(client, ["A", "B"]);
    const counts = await countAnswers(client, 40);
    expect(counts.A ?? 0).toBeGreaterThanOrEqual(10);
    expect(counts.B ?? 0).toBeGreaterThanOrEqual(10);
    expect((counts.A ?? 0) + (counts.B ?? 0)).toBe(40);

    // Without channel options the resolver's own service config still picks round_robin.
    const plain = clientFor("inv-rr", false);
    await warmUp(plain, ["A", "B"]);
    const plainCounts = await countAnswers(plain, 20);
    expect(plainCounts.A ?? 0).toBeGreaterThanOrEqual(5);
    expect(plainCounts.B ?? 0).toBeGreaterThanOrEqual(5);
  });

  it("routes around an instance that dies without deregistering; its entry expires within the TTL", async () => {
    const a = await startInstance("inv-crash", "A");
    const b = await startInstance("inv-crash", "B");
    const client = clientFor("inv-crash");
    const watch = watched("inv-crash");
    await warmUp(client, ["A", "B"]);

    await b.crash();
    const crashedAt = Date.now();
    const left = () => TTL_MS + 1_000 - (Date.now() - crashedAt);
    // Nobody deleted the entry: it stays until the bucket's TTL (max age) removes it.
    expect(await addressesOf("inv-crash")).toContain(b.server.address);
    for (let i = 0; i < 20; i++) expect(await whoAnswers(client)).toBe("A");

    await within(left(), async () => !(await addressesOf("inv-crash")).includes(b.server.address));
    expect(await addressesOf("inv-crash")).toEqual([a.server.address]);
    // nats-server 2.9 sends no watch event for a TTL expiry: the watcher prunes by heartbeat age.
    await within(left(), () => watch.latest()?.join() === a.server.address);
    for (let i = 0; i < 5; i++) expect(await whoAnswers(client, 1)).toBe("A");
  });

  it("drops an instance that died without deregistering within the TTL after a step back of the wall clock", async () => {
    const a = await startInstance("inv-step", "A");
    const b = await startInstance("inv-step", "B");
    const watch = watched("inv-step");
    await within(5_000, () => watch.latest()?.length === 2);
    await b.crash();
    // An NTP correction of a fast clock, or a restored VM: the dead instance's last heartbeat was
    // dated an hour ahead of the clock, and the watch kept it live for the hour.
    const wall = Date.now;
    const step = vi.spyOn(Date, "now").mockImplementation(() => wall() - 3_600_000);
    try {
      await within(TTL_MS + 2_000, () => watch.latest()?.join() === a.server.address);
    } finally {
      step.mockRestore();
    }
  });

  it("drops a gracefully stopped instance at once", async () => {
    const a = await startInstance("inv-graceful", "A");
    const b = await startInstance("inv-graceful", "B");
    const client = clientFor("inv-graceful");
    const watch = watched("inv-graceful");
    await warmUp(client, ["A", "B"]);
    await within(2_000, () => watch.latest()?.length === 2);

    // Timed: the deregistration and the watch hearing it, not the server's drain after them.
    const stoppedAt = Date.now();
    await b.registration.stop();
    expect(await addressesOf("inv-graceful")).toEqual([a.server.address]);
    // Before a heartbeat could have aged out (TTL less one heartbeat): the deregistration did it.
    await within(1_000, () => watch.latest()?.join() === a.server.address);
    expect(Date.now() - stoppedAt).toBeLessThan(TTL_MS);
    await b.stop();
    for (let i = 0; i < 20; i++) expect(await whoAnswers(client)).toBe("A");
  });

  it("sends calls to a restarted instance on its new port", async () => {
    await startInstance("inv-restart", "A");
    const b = await startInstance("inv-restart", "B");
    const client = clientFor("inv-restart");
    await warmUp(client, ["A", "B"]);
    const oldAddress = b.server.address;

    await b.crash();
    const b2 = await startInstance("inv-restart", "B2");
    expect(b2.server.address).not.toBe(oldAddress);
    expect(await addressesOf("inv-restart")).toContain(b2.server.address);
    await warmUp(client, ["A", "B2"]);
    // The crashed entry expires within the TTL, leaving exactly the two live instances.
    await within(TTL_MS + 1_000, async () => !(await addressesOf("inv-restart")).includes(oldAddress));
    const counts = await countAnswers(client, 20);
    expect(Object.keys(counts).sort()).toEqual(["A", "B2"]);
    expect(counts.B2 ?? 0).toBeGreaterThanOrEqual(5);
  });

  it("fails fast with UNAVAILABLE while no instance is registered, and recovers when one is", async () => {
    const client = clientFor("inv-none");
    const call = () => client.getProduct({ productId: "coffee-beans" }, { timeoutMs: 2_000 });

    let started = Date.now();
    const err = await call().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RpcError);
    expect((err as RpcError).code).toBe(status.UNAVAILABLE);
    expect(Date.now() - started).toBeLessThan(1_000);

    const a = await startInstance("inv-none", "A");
    await within(2_000, async () => (await call().catch(() => undefined))?.product?.name === "A");

    // Back to zero after having had an instance: fail fast again, not hang on the departed one.
    await a.stop();
    await within(3_000, async () => {
      started = Date.now();
      const e = await call().then(
        () => undefined,
        (x: unknown) => x,
      );
      return e instanceof RpcError && e.code === status.UNAVAILABLE && Date.now() - started < 500;
    });

    await startInstance("inv-none", "A2");
    await within(2_000, async () => (await call().catch(() => undefined))?.product?.name === "A2");
  });

  it("forgets the subchannels of departed instances, even one still connecting", async () => {
    // Accepts TCP but never speaks HTTP/2: a channel to it stays CONNECTING, so calls queue.
    const sockets = new Set<Socket>();
    const blackHole = createServer((s) => sockets.add(s));
    await new Promise<void>((r) => blackHole.listen(0, "127.0.0.1", r));
    cleanups.push(async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => blackHole.close(r));
    });
    const port = (blackHole.address() as AddressInfo).port;
    const reg = await registerInstance({
      nc,
      service: "inv-stuck",
      address: `127.0.0.1:${port}`,
      log,
      heartbeatMs: HEARTBEAT_MS,
      ttlMs: TTL_MS,
    });
    cleanups.push(() => reg.stop());
    const client = clientFor("inv-stuck");
    const call = () =>
      client.getProduct({ productId: "coffee-beans" }, { timeoutMs: 300 }).then(
        () => undefined,
        (e: unknown) => (e instanceof RpcError ? e.code : e),
      );
    expect(await call()).toBe(status.DEADLINE_EXCEEDED);

    await reg.stop();
    // grpc-js round_robin ignores a resolution error while it has subchannels; the resolver
    // reports an empty list first so the stuck one goes and calls fail fast again.
    await within(3_000, async () => {
      const started = Date.now();
      return (await call()) === status.UNAVAILABLE && Date.now() - started < 200;
    });
  });

  it("keeps routing to the last known instances while NATS is down", async () => {
    const a = await startInstance("inv-outage", "A");
    const b = await startInstance("inv-outage", "B");
    const client = clientFor("inv-outage");
    const watch = watched("inv-outage");
    await warmUp(client, ["A", "B"]);

    const reconnected = nextReconnect(nc);
    await nats.stop();
    try {
      // Longer than the TTL: no heartbeat arrives, yet the instances are fine and stay in use.
      await sleep(TTL_MS + 400);
      expect(watch.latest()).toHaveLength(2);
      const counts = await countAnswers(client, 10);
      expect(counts.A ?? 0).toBeGreaterThanOrEqual(3);
      expect(counts.B ?? 0).toBeGreaterThanOrEqual(3);
    } finally {
      await nats.start();
    }
    // Requests sent while reconnecting get no reply: list only once reconnected.
    await reconnected;
    const reconnectedAt = Date.now();
    // Heartbeats resume after the reconnect; nothing is pruned a TTL later.
    const both = [a.server.address, b.server.address].sort();
    await within(2_000, async () => (await addressesOf("inv-outage")).join() === both.join());
    await sleep(reconnectedAt + TTL_MS + 300 - Date.now());
    expect(watch.latest()).toEqual(both);
    expect(await addressesOf("inv-outage")).toEqual(both);
  });
});

describe("a NATS that freezes", () => {
  it("keeps the last known instances while the server answers nothing over open connections (SIGSTOP)", async () => {
    const a = await startInstance("inv-frozen", "A");
    const b = await startInstance("inv-frozen", "B");
    const client = clientFor("inv-frozen");
    const watch = watched("inv-frozen");
    await warmUp(client, ["A", "B"]);
    const both = [a.server.address, b.server.address].sort();

    nats.pause();
    try {
      // Twice the TTL with no heartbeat and no disconnect: the silence is the server's, not the instances'.
      await sleep(2 * TTL_MS + 500);
      expect(watch.latest()).toEqual(both);
      const counts = await countAnswers(client, 10);
      expect(counts.A ?? 0).toBeGreaterThanOrEqual(3);
      expect(counts.B ?? 0).toBeGreaterThanOrEqual(3);
    } finally {
      nats.resume();
    }
    // The heartbeats it held arrive; nothing is pruned a TTL later.
    await sleep(TTL_MS + 500);
    expect(watch.latest()).toEqual(both);

    // And with the server answering, an instance that dies is still dropped within the TTL.
    await b.crash();
    await within(2 * TTL_MS + 1_000, async () => watch.latest()?.join() === a.server.address);
  });
});

describe("a watcher that stalls", () => {
  it("keeps instances whose heartbeats queued up while this process was blocked", async () => {
    // The instance heartbeats from its own process, so its entries keep arriving while this one is blocked.
    const script = `
      import { connect } from "@nats-io/transport-node";
      import { registerInstance } from "./platform/registry.ts";
      import { silentLogger } from "./platform/log.ts";
      const nc = await connect({ servers: ${JSON.stringify(nats.url)} });
      await registerInstance({ nc, service: "inv-stall", address: "127.0.0.1:1", log: silentLogger(),
        heartbeatMs: ${HEARTBEAT_MS}, ttlMs: ${TTL_MS} });
      console.log("registered");
      setInterval(() => {}, 1000);
    `;
    const { spawn } = await import("node:child_process");
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: new URL("..", import.meta.url).pathname,
      stdio: ["ignore", "pipe", "inherit"],
    });
    cleanups.push(() => void child.kill("SIGKILL"));
    await new Promise<void>((resolve) => child.stdout.on("data", (d: Buffer) => d.includes("registered") && resolve()));
    const seen: (readonly string[])[] = [];
    const w = watchInstances(nc, "inv-stall", log, { onChange: (a) => seen.push(a) });
    cleanups.push(() => w.stop());
    await within(2_000, async () => seen.at(-1)?.length === 1);

    // Blocked past the TTL (a debugger pause, a GC storm): the heartbeats wait in the socket.
    const until = Date.now() + TTL_MS + 1_000;
    while (Date.now() < until) {
      // busy: nothing else runs
    }
    await sleep(HEARTBEAT_MS * 3);
    expect(
      seen.filter((a) => a.length === 0),
      "the instance was never dropped",
    ).toEqual([]);
    expect(seen.at(-1)).toEqual(["127.0.0.1:1"]);
  });
});

describe("a service's registry keys written by whoever holds its NATS user", () => {
  it("cost a follower no memory for keys it ignores, deletions of keys it never knew, or keys put and deleted at speed", async () => {
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as () => void;
    const heap = () => {
      gc();
      gc();
      return process.memoryUsage().heapUsed;
    };
    const writer = await connectNats();
    cleanups.push(() => writer.close());
    const entry = (i: number) => JSON.stringify({ service: "inv-flood", address: `127.0.0.1:${20_000 + i}` });
    const del = headers();
    del.set("KV-Operation", "DEL");
    const key = (name: string) => `${REGISTRY_SUBJECT_PREFIX}inv-flood.${name}`;
    const seen: (readonly string[])[] = [];
    const w = watchInstances(nc, "inv-flood", log, { onChange: (a) => seen.push(a) });
    cleanups.push(() => w.stop());
    await within(2_000, async () => seen.length > 0);
    for (let i = 0; i < MAX_INSTANCES; i++) writer.publish(key(`live${i}`), entry(i));
    await within(2_000, async () => seen.at(-1)?.length === MAX_INSTANCES);

    const before = heap();
    // A key is up to ~4 KB (the server's control line): each of these names ~2 KB.
    const pad = "k".repeat(2_000);
    const burst = async (n: number, write: (i: number) => void) => {
      for (let i = 0; i < n; i++) {
        write(i);
        if (i % 500 === 499) await writer.flush();
      }
      await writer.flush();
    };
    await burst(10_000, (i) => writer.publish(key(`past-the-cap${i}${pad}`), entry(i)));
    await burst(10_000, (i) => writer.publish(key(`never-known${i}${pad}`), "", { headers: del }));
    // Each key put then deleted at once is remembered as deleted for a TTL.
    await burst(MAX_INSTANCES, (i) => writer.publish(key(`live${i}`), "", { headers: del }));
    await burst(40 * MAX_INSTANCES, (i) => {
      const name = key(`churn${i}${pad}`);
      writer.publish(name, entry(i % MAX_INSTANCES));
      writer.publish(name, "", { headers: del });
    });
    await sleep(500);
    const grownMb = (heap() - before) / 1e6;
    // Before: every key each write named was kept (live and delivered: until the watch restarted; deleted: a TTL).
    expect(grownMb, `${grownMb.toFixed(1)} MB held`).toBeLessThan(5);
  }, 60_000);
});
