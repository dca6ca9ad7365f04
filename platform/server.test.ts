/**
 * The gRPC server over a real connection: what a proxy's client sees when
 * the callers behind it come and go.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import http2 from "node:http2";
import net from "node:net";
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { envelope, h2Request, h2Session } from "../test/raw.js";
import { capturedLogger } from "../test/system.js";
import type { CallContext, ServiceImpl } from "./grpc.js";
import { createChannel, createClient } from "./grpc-client.js";
import { CONNECTION_LIMITS } from "./grpc-port.js";
import { healthService } from "./health.js";
import { silentLogger } from "./log.js";
import { bind, type RunningServer, startGrpcServer } from "./server.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Every call waits until it is cancelled, or for `?ms` given as the product id. */
function waitingInventory(): ServiceImpl<typeof InventoryService> {
  const wait = (ms: number, ctx: CallContext) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      ctx.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  return {
    listProducts: async () => ({}),
    getProduct: async (req, ctx) => {
      await wait(Number(req.productId) || 60_000, ctx);
      return { product: { id: req.productId } };
    },
    reserveStock: async () => ({}),
    releaseStock: async () => ({}),
    restock: async () => ({}),
  };
}

/** WatchOrder answers one message and ends the stream, as it does for an order that has ended. */
function watchOnce(): ServiceImpl<typeof OrderService> {
  const none = async () => ({});
  return {
    placeOrder: none,
    getOrder: none,
    cancelOrder: none,
    listOrders: none,
    watchOrder: async function* (req) {
      yield { order: { id: req.orderId } };
    },
  };
}

describe("a connection shared by many callers", () => {
  it("outlives thousands of watches stopped at their last message, with another call in flight on it", async () => {
    // A watcher that stops reading once it sees the terminal state would reset a stream the
    // server has already ended. Node's HTTP/2 server closes a connection with INTERNAL_ERROR after
    // 1,000 resets beyond 33/s (its rapid-reset defence, grpc-node#2872), failing every call in
    // flight on it: at 150 orders/s, the benchmark's watchers lost their connection in 10 s.
    const server: RunningServer = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [bind(InventoryService, waitingInventory()), bind(OrderService, watchOnce())],
      log: silentLogger(),
    });
    cleanups.push(() => server.stop(0));
    const channel = createChannel(server.address);
    cleanups.push(() => channel.close());
    const client = createClient(InventoryService, channel);

    // Another caller's call, in flight on the same connection the whole time.
    const bystander = client.getProduct({ productId: "3000" });
    const orders = createClient(OrderService, channel);
    for (let sent = 0; sent < 2_500; sent += 250) {
      await Promise.all(
        Array.from({ length: 250 }, async () => {
          for await (const _ of orders.watchOrder({ orderId: "o" })) break;
        }),
      );
    }
    await expect(bystander).resolves.toMatchObject({ product: { id: "3000" } });
  }, 30_000);
});

describe("a service's port, against clients that connect and hold", () => {
  /**
   * Opens `n` TCP connections that send nothing; resolves once each is open; counts those the server closed
   * (`ended`: those whose end the server sent, which a `halfOpen` one never answers with its own).
   */
  async function holders(port: number, n: number, { halfOpen = false } = {}) {
    const closed = { count: 0, ended: 0 };
    const sockets = await Promise.all(
      Array.from({ length: n }, async () => {
        const s = net.connect({ port, host: "127.0.0.1", allowHalfOpen: halfOpen });
        s.on("error", () => {});
        s.on("end", () => closed.ended++);
        s.on("close", () => closed.count++);
        s.resume(); // reads (and drops) what the server sends, so its closing is seen
        await once(s, "connect");
        return s;
      }),
    );
    cleanups.push(() => {
      for (const s of sockets) s.destroy();
    });
    return closed;
  }

  it("keeps at most maxConnections open: one more is closed as it arrives, and a caller already connected is served", async () => {
    // grpc-js's own listener kept every one: 5,000 that never sent a byte held 5,000 descriptors, 94 MB.
    const log = capturedLogger();
    const server = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [bind(InventoryService, waitingInventory())],
      log: log.log,
      limits: { ...CONNECTION_LIMITS, maxConnections: 20 },
    });
    cleanups.push(() => server.stop(0));
    const channel = createChannel(server.address);
    cleanups.push(() => channel.close());
    const client = createClient(InventoryService, channel);
    await expect(client.getProduct({ productId: "1" })).resolves.toMatchObject({ product: { id: "1" } });

    const closed = await holders(server.port, 30);
    await expect.poll(() => closed.count, { timeout: 2_000 }).toBe(11);
    await expect(client.getProduct({ productId: "2" })).resolves.toMatchObject({ product: { id: "2" } });
    expect(log.lines.filter((l) => String(l.msg).startsWith("gRPC port: a connection refused"))).toHaveLength(1);
  });

  it("closes a connection with no call for the idle time; one with a call in progress stays", async () => {
    const server = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [bind(InventoryService, waitingInventory())],
      log: silentLogger(),
      limits: { ...CONNECTION_LIMITS, idleMs: 300, pingEveryMs: 200, pingTimeoutMs: 300 },
    });
    cleanups.push(() => server.stop(0));
    const silent = await holders(server.port, 1);
    const idle = await h2Session(`http://${server.address}`);
    cleanups.push(() => idle.destroy());
    const busy = await h2Session(`http://${server.address}`);
    cleanups.push(() => busy.destroy());
    const path = "/shopmesh.inventory.v1.InventoryService/GetProduct";
    const headers = { ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" };
    // A call of 2 s (product id "2000": the waiting inventory's delay), in progress past the idle time.
    const call = h2Request(busy, headers, envelope(Buffer.from([10, 4, ...Buffer.from("2000")])), 5_000);

    await expect.poll(() => silent.count, { timeout: 2_000 }).toBe(1);
    await expect.poll(() => idle.closed || idle.destroyed, { timeout: 2_000 }).toBe(true);
    expect(busy.closed || busy.destroyed).toBe(false);
    expect((await call).grpcStatus).toBe(0);
  });

  // Found (review, 2026-12-05): Node ends its side of a connection whose session closed (the idle time's
  // GOAWAY, an unanswered ping) and waits for the peer's end: a peer that never sent it kept its place for
  // good, and maxConnections such peers shut the port to every new caller.
  it("lets go of a connection whose peer never closes its side after the server closed its own: a new caller is served", async () => {
    const server = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [bind(InventoryService, waitingInventory())],
      log: silentLogger(),
      limits: { ...CONNECTION_LIMITS, maxConnections: 2, idleMs: 200, pingEveryMs: 200, pingTimeoutMs: 300 },
    });
    cleanups.push(() => server.stop(0));
    const held = await holders(server.port, 2, { halfOpen: true });
    await expect.poll(() => held.ended, { timeout: 3_000 }).toBe(2);
    const served = async () => {
      const channel = createChannel(server.address);
      try {
        await createClient(InventoryService, channel).getProduct({ productId: "1" }, { timeoutMs: 1_000 });
        return "served";
      } catch (err) {
        return (err as Error).message;
      } finally {
        channel.close();
      }
    };
    await expect.poll(served, { timeout: 3_000 }).toBe("served");
  });

  // Found (review, 2026-12-05): the idle-time test passed with the pings taken out — the idle time closed its
  // silent connection first — so nothing showed that a peer which stops answering is ever let go.
  it("cuts a connection that answers no ping though the idle time is far off: a frozen client's call in progress, one that never sent a byte", async () => {
    const signals: AbortSignal[] = [];
    const waiting = waitingInventory();
    const impl: ServiceImpl<typeof InventoryService> = {
      ...waiting,
      getProduct: (req, ctx) => {
        signals.push(ctx.signal);
        return waiting.getProduct(req, ctx);
      },
    };
    const server = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [bind(InventoryService, impl)],
      log: silentLogger(),
      limits: { ...CONNECTION_LIMITS, idleMs: 60_000, pingEveryMs: 200, pingTimeoutMs: 300 },
    });
    cleanups.push(() => server.stop(0));
    const silent = await holders(server.port, 1);
    // A client process with a call of 60 s in progress (product id "60000"), then frozen (SIGSTOP).
    const request = envelope(Buffer.from([10, 5, ...Buffer.from("60000")])).toString("base64");
    const script = `const s = require("node:http2").connect(process.argv[1]);
      const r = s.request({ ":method": "POST", ":path": "/shopmesh.inventory.v1.InventoryService/GetProduct",
        "content-type": "application/grpc", te: "trailers" });
      r.on("error", () => {}); r.end(Buffer.from(process.argv[2], "base64"));`;
    const client = spawn(process.execPath, ["-e", script, `http://${server.address}`, request], { stdio: "ignore" });
    cleanups.push(() => client.kill("SIGKILL"));
    await expect.poll(() => signals.length, { timeout: 5_000 }).toBe(1);
    process.kill(client.pid ?? 0, "SIGSTOP");

    await expect.poll(() => signals[0]?.aborted, { timeout: 3_000 }).toBe(true);
    await expect.poll(() => silent.count, { timeout: 3_000 }).toBe(1);
  });
});

describe("a call's signal", () => {
  it("aborts when the client cancels, and not after the call was answered", async () => {
    const signals: AbortSignal[] = [];
    const inventory = waitingInventory();
    const server: RunningServer = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [
        bind(InventoryService, {
          ...inventory,
          getProduct: (req, ctx) => {
            signals.push(ctx.signal);
            return inventory.getProduct(req, ctx);
          },
        }),
      ],
      log: silentLogger(),
    });
    cleanups.push(() => server.stop(0));
    const channel = createChannel(server.address);
    cleanups.push(() => channel.close());
    const client = createClient(InventoryService, channel);

    // Answered: grpc-js then reports the call's end as "cancelled", which must not reach the handler.
    await expect(client.getProduct({ productId: "1" })).resolves.toMatchObject({ product: { id: "1" } });
    // Cancelled by its client while the handler waits.
    const ac = new AbortController();
    const cancelled = client.getProduct({ productId: "60000" }, { signal: ac.signal });
    await expect.poll(() => signals.length).toBe(2);
    ac.abort();
    await expect(cancelled).rejects.toThrow();
    await expect.poll(() => signals[1]?.aborted, { timeout: 5_000 }).toBe(true);
    await new Promise((r) => setTimeout(r, 100));
    expect(signals[0]?.aborted).toBe(false);
  });
});

describe("the standard services (health, reflection) under a hostile client", () => {
  it("refuse a request that does not decode INVALID_ARGUMENT, not INTERNAL, and keep serving", async () => {
    const server: RunningServer = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [bind(InventoryService, waitingInventory())],
      log: silentLogger(),
    });
    cleanups.push(() => server.stop(0));
    await using s = await h2Session(`http://${server.address}`);
    const call = (path: string, body: Uint8Array) =>
      h2Request(s, { ":path": path, "content-type": "application/grpc", te: "trailers" }, envelope(body));
    // A length-delimited field whose varint length runs past the end of the message.
    const junk = Buffer.from([0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    for (const path of [
      "/grpc.health.v1.Health/Check",
      "/grpc.health.v1.Health/Watch",
      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]) {
      const res = await call(path, junk);
      expect(res.grpcStatus, path).toBe(3);
      expect(res.grpcMessage, path).toContain(`request is not a valid ${path.slice(1)} request`);
    }
    // Decodable requests are the libraries' own business, as before.
    const unknown = await call("/grpc.health.v1.Health/Check", Buffer.from([0x0a, 0x04, ...Buffer.from("nope")]));
    expect([unknown.grpcStatus, unknown.grpcMessage]).toEqual([5, "Health status unknown for service nope"]);
    const channel = createChannel(server.address);
    cleanups.push(() => channel.close());
    const health = createClient(Health, channel);
    await expect(health.check({ service: "" })).resolves.toMatchObject({
      status: HealthCheckResponse_ServingStatus.SERVING,
    });
    // ListServices (field 7) answers the served services over the same connection.
    const listed = await call(
      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      Buffer.from([0x3a, 0x01, 0x2a]),
    );
    expect(listed.grpcStatus).toBe(0);
    expect(listed.body.toString()).toContain("shopmesh.inventory.v1.InventoryService");
    // A valid request, junk and another valid one in one write: refused, and the call ends (it hung).
    const list = envelope(Buffer.from([0x3a, 0x01, 0x2a]));
    const mixed = await h2Request(
      s,
      {
        ":path": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "content-type": "application/grpc",
        te: "trailers",
      },
      Buffer.concat([list, envelope(junk), list]),
    );
    expect(mixed.grpcStatus).toBe(3);
  });

  it("health forgets a watched name once its last watcher has gone", async () => {
    const health = healthService([""]);
    const server = new grpc.Server();
    health.addToServer(server);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    cleanups.push(() => server.forceShutdown());
    const watched = (health as unknown as { watchers: Map<string, unknown> }).watchers;
    await using s = await h2Session(`http://127.0.0.1:${port}`);
    for (let i = 0; i < 50; i++) {
      const name = Buffer.from(`watched-${i}`);
      const req = s.request({
        ":method": "POST",
        ":path": "/grpc.health.v1.Health/Watch",
        "content-type": "application/grpc",
        te: "trailers",
      });
      req.end(envelope(Buffer.from([0x0a, name.length, ...name])));
      await once(req, "data"); // SERVICE_UNKNOWN, and the watch goes on
      req.close(http2.constants.NGHTTP2_CANCEL);
    }
    await expect.poll(() => watched.size, { timeout: 5_000 }).toBe(0);
  });
});

describe("a refused call's log line", () => {
  it("says why it was refused (a field named msg was overwritten by the line's own message)", async () => {
    const { log, lines } = capturedLogger();
    const server: RunningServer = await startGrpcServer({
      host: "127.0.0.1",
      port: 0,
      services: [bind(InventoryService, waitingInventory())],
      log,
    });
    cleanups.push(() => server.stop(0));
    const channel = createChannel(server.address);
    cleanups.push(() => channel.close());
    // A NUL in a request string is refused before any handler, naming the field.
    await expect(createClient(InventoryService, channel).getProduct({ productId: "a\0b" })).rejects.toThrow();
    const line = lines.find((l) => l.msg === "rpc" && l.code === "INVALID_ARGUMENT");
    expect(JSON.stringify(line)).toMatch(/product_id/);
  });
});
