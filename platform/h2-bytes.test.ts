/**
 * The fast path's upstream client (h2-bytes.ts) against a real grpc-js
 * server: what a caller sees must be what grpc-js would give — the answer's
 * bytes, the status and details of an error, UNAVAILABLE for an instance
 * that is not there, DEADLINE_EXCEEDED (and the server's call cancelled) at
 * the deadline, CANCELLED on abort — and a restarted server is reached again.
 */
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { connectivityState, Metadata } from "@grpc/grpc-js";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  GetProductRequestSchema,
  GetProductResponseSchema,
  InventoryService,
} from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { freePort } from "../test/fixtures.js";
import { Code, NotFoundError, RpcError } from "./errors.js";
import type { CallContext, ServiceImpl } from "./grpc.js";
import { createChannel, createClient } from "./grpc-client.js";
import { createH2BytesClient } from "./h2-bytes.js";
import { silentLogger } from "./log.js";
import { bind, type RunningServer, startGrpcServer } from "./server.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const seen = { requestIds: [] as string[], cancelled: 0, slowAnswered: 0 };
const impl = {
  async getProduct(req: { productId: string }, ctx: CallContext) {
    seen.requestIds.push(String(ctx.metadata.get("x-request-id")[0] ?? ""));
    if (req.productId === "missing") throw new NotFoundError("product", req.productId);
    if (req.productId === "slow") {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          seen.slowAnswered++;
          resolve();
        }, 1_000);
        ctx.signal.addEventListener("abort", () => {
          seen.cancelled++;
          clearTimeout(t);
          resolve();
        });
      });
    }
    return { product: { id: req.productId, name: `name of ${req.productId}` } };
  },
  listProducts: async () => ({ products: [] }),
  reserveStock: async () => ({}),
  releaseStock: async () => ({}),
  restock: async () => ({}),
} as unknown as ServiceImpl<typeof InventoryService>;

async function serve(port = 0): Promise<RunningServer> {
  const server = await startGrpcServer({
    host: "127.0.0.1",
    port,
    services: [bind(InventoryService, impl)],
    log: silentLogger(),
  });
  cleanups.push(() => server.stop(0));
  return server;
}

const request = (productId: string) =>
  toBinary(GetProductRequestSchema, create(GetProductRequestSchema, { productId }));

function client(address: string) {
  const c = createH2BytesClient(InventoryService, address);
  cleanups.push(() => c.close());
  return c.bytes.getProduct as (m: Uint8Array, o?: object) => Promise<Uint8Array>;
}

async function rejection(p: Promise<unknown>): Promise<RpcError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RpcError);
  return err as RpcError;
}

describe("HTTP/2 bytes client", () => {
  it("a long deadline does not end the call early (grpc-timeout has at most 8 digits; timers at most 2^31-1 ms)", async () => {
    const server = await serve();
    const call = client(server.address);
    // ~27.8 hours: as "100000500m" (9 digits), grpc-js's server reads the 8 digits it allows, "00000500m": 500 ms.
    const longish = await call(request("slow"), { timeoutMs: 100_000_500 }).then(
      () => "answered",
      (e: RpcError) => Code[e.code],
    );
    // 30 days: past setTimeout's 2^31-1 ms, which Node runs after 1 ms instead.
    const month = await call(request("slow"), { timeoutMs: 30 * 24 * 3600 * 1000 }).then(
      () => "answered",
      (e: RpcError) => Code[e.code],
    );
    expect({ longish, month }).toEqual({ longish: "answered", month: "answered" });
  });

  it("answers with the encoded response, sending the caller's metadata", async () => {
    const server = await serve();
    const md = new Metadata();
    md.set("x-request-id", "req-42");
    const answer = await client(server.address)(request("coffee-beans"), { metadata: md });
    expect(fromBinary(GetProductResponseSchema, answer).product?.id).toBe("coffee-beans");
    expect(seen.requestIds.at(-1)).toBe("req-42");
  });

  it("a business error keeps its code, message and details", async () => {
    const server = await serve();
    const err = await rejection(client(server.address)(request("missing")));
    expect(err.code).toBe(Code.NOT_FOUND);
    expect(err.details.map((d) => d.$typeName)).toContain("google.rpc.ResourceInfo");
    expect(err.message).toContain("missing");
  });

  it("an instance that is not there is UNAVAILABLE", async () => {
    const err = await rejection(client(`127.0.0.1:${await freePort()}`)(request("coffee-beans")));
    expect(err.code).toBe(Code.UNAVAILABLE);
  });

  it("an instance whose connection failed is failing for a second, and no longer after a step back of the wall clock", async () => {
    const c = createH2BytesClient(InventoryService, `127.0.0.1:${await freePort()}`);
    cleanups.push(() => c.close());
    await rejection((c.bytes.getProduct as (m: Uint8Array) => Promise<Uint8Array>)(request("coffee-beans")));
    expect(c.failing()).toBe(true);
    // An NTP correction of a fast clock, or a restored VM: the instance was picked last for the hour.
    const wall = Date.now;
    const step = vi.spyOn(Date, "now").mockImplementation(() => wall() - 3_600_000);
    try {
      await new Promise((r) => setTimeout(r, 1_100));
      expect(c.failing()).toBe(false);
    } finally {
      step.mockRestore();
    }
  });

  it("the deadline ends the call and the server's work; an abort is CANCELLED", async () => {
    const server = await serve();
    const call = client(server.address);
    const before = seen.cancelled;
    const started = performance.now();
    const late = await rejection(call(request("slow"), { deadline: Date.now() + 80 }));
    expect(late.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(performance.now() - started).toBeLessThan(800); // not the handler's 1 s
    await expect.poll(() => seen.cancelled).toBeGreaterThan(before);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    expect((await rejection(call(request("slow"), { signal: ac.signal }))).code).toBe(Code.CANCELLED);
  });

  it("reaches a restarted server on the same address again", async () => {
    const port = await freePort();
    const first = await serve(port);
    const call = client(first.address);
    await call(request("a"));
    await first.stop(0);
    expect((await rejection(call(request("b")))).code).toBe(Code.UNAVAILABLE);
    await serve(port);
    await expect
      .poll(
        () =>
          call(request("c")).then(
            () => true,
            () => false,
          ),
        { timeout: 5_000 },
      )
      .toBe(true);
  });

  // A closed stream's wrapper is freed only by a full collection, and until then every scavenge keeps
  // what its listeners reach — the whole call — and promotes it: nothing of the call may stay on it.
  it("lets go of each call once its stream has closed: answered, failed, past its deadline, cancelled", async () => {
    const server = await serve();
    const streams: http2.ClientHttp2Stream[] = [];
    let closes = 0;
    const connect = http2.connect;
    const spy = vi.spyOn(http2, "connect").mockImplementation((...args: Parameters<typeof connect>) => {
      const session = connect(...args);
      const request = session.request.bind(session);
      session.request = (...r: Parameters<typeof request>) => {
        const stream = request(...r);
        streams.push(stream);
        stream.once("close", () => closes++);
        return stream;
      };
      return session;
    });
    try {
      const call = client(server.address);
      await call(request("coffee-beans"));
      expect((await rejection(call(request("missing")))).code).toBe(Code.NOT_FOUND);
      expect((await rejection(call(request("slow"), { deadline: Date.now() + 50 }))).code).toBe(Code.DEADLINE_EXCEEDED);
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 50);
      expect((await rejection(call(request("slow"), { signal: ac.signal }))).code).toBe(Code.CANCELLED);
    } finally {
      spy.mockRestore();
    }
    expect(streams).toHaveLength(4);
    await expect.poll(() => closes).toBe(4); // 'close' comes a tick after the stream is marked closed
    for (const s of streams) {
      for (const event of ["response", "trailers", "data", "close"]) expect(s.listenerCount(event), event).toBe(0);
      expect(s.listenerCount("error")).toBe(1); // one that captures nothing: an error after close must not throw
    }
  });

  it("maps a call that ends without a gRPC status as grpc-js does: only what the server never took is UNAVAILABLE", async () => {
    // A bare HTTP/2 server answering each path its own wrong way.
    const server = http2.createServer();
    server.on("stream", (stream, headers) => {
      const path = String(headers[":path"]);
      stream.on("error", () => {});
      if (path.endsWith("/ListProducts")) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      else if (path.endsWith("/ReserveStock")) stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      else if (path.endsWith("/ReleaseStock")) stream.respond({ ":status": 503 }, { endStream: true });
      else {
        stream.respond({ ":status": 200, "content-type": "application/grpc" });
        stream.end(Buffer.alloc(5 * 1024 * 1024));
      }
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    cleanups.push(() => new Promise((r) => server.close(r)));
    const c = createH2BytesClient(InventoryService, `127.0.0.1:${(server.address() as AddressInfo).port}`);
    cleanups.push(() => c.close());
    const call = (m: string) => (c.bytes[m] as (b: Uint8Array) => Promise<Uint8Array>)(request("x"));
    expect((await rejection(call("listProducts"))).code).toBe(Code.INTERNAL); // the server may have acted
    expect((await rejection(call("reserveStock"))).code).toBe(Code.UNAVAILABLE); // it did not take the call
    expect((await rejection(call("releaseStock"))).code).toBe(Code.UNAVAILABLE); // HTTP 503
    expect((await rejection(call("restock"))).code).toBe(Code.RESOURCE_EXHAUSTED); // over 4 MiB
  });

  it("carries a typed client's unary calls (grpc-client.ts): the answer decoded, errors as grpc-js gives them, an answer that does not decode INTERNAL", async () => {
    const server = await serve();
    const bytes = createH2BytesClient(InventoryService, server.address);
    cleanups.push(() => bytes.close());
    const channel = createChannel(server.address);
    cleanups.push(() => channel.close());
    const typed = createClient(InventoryService, channel, undefined, bytes.bytes);
    const { product } = await typed.getProduct({ productId: "coffee-beans" });
    expect(product?.name).toBe("name of coffee-beans");
    const missing = await rejection(typed.getProduct({ productId: "missing" }));
    expect(missing.code).toBe(Code.NOT_FOUND);
    expect(missing.details.map((d) => d.$typeName)).toContain("google.rpc.ResourceInfo");
    // Neither call touched grpc-js: its channel never connected.
    expect(channel.getChannel().getConnectivityState(false)).toBe(connectivityState.IDLE);
    // A server whose answer is not a GetProductResponse (field 1 says length 100, and 1 byte follows).
    const liar = http2.createServer();
    liar.on("stream", (stream) => {
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(Buffer.from([0, 0, 0, 0, 3, 0x0a, 100, 1]));
    });
    await new Promise<void>((r) => liar.listen(0, "127.0.0.1", r));
    cleanups.push(() => new Promise((r) => liar.close(r)));
    const address = `127.0.0.1:${(liar.address() as AddressInfo).port}`;
    const liarBytes = createH2BytesClient(InventoryService, address);
    cleanups.push(() => liarBytes.close());
    const lied = createClient(InventoryService, createChannel(address), undefined, liarBytes.bytes);
    const bad = await rejection(lied.getProduct({ productId: "x" }));
    expect(bad.code).toBe(Code.INTERNAL);
    expect(bad.message).toContain("Response message parsing error");
  });
  // Node's HTTP/2 server (nghttp2's rapid-reset defence) closes a connection whose peer resets more than
  // 1,000 streams beyond 33 a second, failing every call in flight on it; Node 20 allows no more.
  describe("cancels at over 1,000 a second, as a gateway carries many clients' over one connection", () => {
    /** `call`s of a slow product in a loop until `until` resolves: what each ended with. */
    async function bystander(call: ReturnType<typeof client>, until: Promise<unknown>) {
      const outcomes: string[] = [];
      let going = true;
      void until.finally(() => {
        going = false;
      });
      while (going)
        outcomes.push(
          await call(request("slow")).then(
            () => "OK",
            (e: RpcError) => `${Code[e.code]} ${e.message}`,
          ),
        );
      return outcomes;
    }
    const cancelled = (call: ReturnType<typeof client>, afterMs: number) => {
      const ac = new AbortController();
      setTimeout(() => ac.abort(), afterMs);
      return call(request("slow"), { signal: ac.signal }).then(
        () => "OK",
        (e: RpcError) => Code[e.code],
      );
    };

    it("3,000 calls reset one after another fail no other call, and none runs on at the server", async () => {
      const server = await serve();
      const call = client(server.address);
      seen.slowAnswered = 0;
      const storm = (async () => {
        const ends: string[] = [];
        for (let batch = 0; batch < 15; batch++)
          ends.push(...(await Promise.all(Array.from({ length: 200 }, () => cancelled(call, 20)))));
        return ends;
      })();
      const [others, ends] = await Promise.all([bystander(call, storm), storm]);
      expect(new Set(ends)).toEqual(new Set(["CANCELLED"]));
      expect(others.length).toBeGreaterThan(0);
      expect(new Set(others)).toEqual(new Set(["OK"]));
      // Every cancel was a reset the server acted on: the only calls that ran their second are the others.
      await new Promise((resolve) => setTimeout(resolve, 1_200));
      expect(seen.slowAnswered).toBe(others.length);
    }, 60_000);

    it("1,500 calls cancelled at once on one connection: those past its budget are dropped unreset, and nothing else fails", async () => {
      const server = await serve();
      const call = client(server.address);
      seen.cancelled = 0;
      seen.slowAnswered = 0;
      const first = call(request("slow"));
      const all = Array.from({ length: 1_500 }, () => cancelled(call, 100));
      const others = bystander(call, Promise.all(all));
      expect(new Set(await Promise.all(all))).toEqual(new Set(["CANCELLED"]));
      expect(
        await first.then(
          () => "OK",
          (e: RpcError) => Code[e.code],
        ),
      ).toBe("OK");
      expect(new Set(await others)).toEqual(new Set(["OK"]));
      // The server saw no more resets than it takes on one connection (the client stops at ~900:
      // reset-budget.ts); the calls left unreset ran to their end, as did the bystanders'.
      expect(seen.cancelled).toBeGreaterThan(400);
      expect(seen.cancelled).toBeLessThanOrEqual(1_000);
      const answered = 1_500 - 1_000 + 1 + (await others).length;
      await expect.poll(() => seen.slowAnswered).toBeGreaterThanOrEqual(answered);
    }, 60_000);
  });
});
