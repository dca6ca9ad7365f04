/**
 * Server streams on channels kept under their server's rapid-reset limit (stream-channels.ts), against
 * a real grpc-js server on Node's HTTP/2: Node 20's closes a connection whose peer resets more than
 * 1,000 streams beyond 33 a second, ending every stream on it.
 */
import { afterEach, describe, expect, it } from "vitest";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { tickingOrders } from "../test/watch.js";
import { createChannel, createClient } from "./grpc-client.js";
import { StreamChannels } from "./stream-channels.js";

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe("server streams on reset-bounded channels", () => {
  it("1,500 watches left at once end no other watch; the channels they needed close once they are gone", async () => {
    const { server, left } = await tickingOrders(50);
    cleanups.push(() => server.stop(0));
    const channel = createChannel(server.address);
    const streams = new StreamChannels(server.address);
    cleanups.push(
      () => channel.close(),
      () => streams.close(),
    );
    const client = createClient(OrderService, channel, undefined, undefined, streams.open);

    const bystander = new AbortController();
    const seen = { messages: 0, ended: "" };
    const watching = (async () => {
      for await (const _ of client.watchOrder({ orderId: "bystanders" }, { signal: bystander.signal })) seen.messages++;
    })().catch((e: Error) => (seen.ended = e.message));

    const leave = new AbortController();
    const watches = Array.from({ length: 1_500 }, (_, i) =>
      client.watchOrder({ orderId: `o-${i}` }, { signal: leave.signal })[Symbol.asyncIterator](),
    );
    // Each has its first message, and is read no further.
    await Promise.all(watches.map((w) => w.next()));
    // Their caller leaves them all at once.
    expect(streams.size).toBeGreaterThanOrEqual(4);
    leave.abort();
    await expect.poll(left, { timeout: 20_000 }).toBe(1_500);
    await Promise.all(watches.map((w) => w.next().catch(() => {})));

    const before = seen.messages;
    const going = () => ({ ended: seen.ended, more: seen.messages > before + 3 });
    await expect.poll(going, { timeout: 5_000 }).toEqual({ ended: "", more: true });
    bystander.abort();
    await watching;
    await expect.poll(() => streams.size).toBe(1);
  }, 60_000);
});
