/**
 * Events survive crashes and outages: an order process killed between its
 * commit and the publish still publishes after restart, and a NATS outage
 * while orders are placed loses and duplicates nothing, in both saga modes.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import { OrderPlacedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import { OrderService, OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { connectBus } from "../../platform/bus.js";
import { createChannel, createClient } from "../../platform/grpc-client.js";
import { identityMetadata } from "../../platform/identity.js";
import { silentLogger } from "../../platform/log.js";
import { TestDatabases } from "../../test/db.js";
import { spawnService, tempDir } from "../../test/fixtures.js";
import { startNats } from "../../test/nats.js";
import { capturedPayments } from "../../test/probes.js";
import { startSystem } from "../../test/system.js";

/** The ORDER stream's messages, in stream order: each one's event type and subject, and its bytes. */
async function orderStream(url: string): Promise<{ type: string; subject: string; data: Uint8Array }[]> {
  const bus = await connectBus(url, "test-reader", silentLogger(), { streams: EVENTS.streams });
  try {
    const info = await bus.jsm.streams.info("ORDER");
    const out = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      const m = await bus.jsm.streams.getMessage("ORDER", { seq }).catch(() => null);
      if (m) out.push({ type: m.header?.get("ce-type") ?? "", subject: m.subject, data: m.data });
    }
    return out;
  } finally {
    await bus.close();
  }
}

/** Order ids of every OrderPlaced in the ORDER stream, one entry per message. */
async function placedEvents(url: string): Promise<string[]> {
  return (await orderStream(url))
    .filter((m) => m.subject.startsWith("order.order.placed."))
    .map((m) => fromBinary(OrderPlacedSchema, m.data).meta?.orderId ?? "");
}

describe("events survive failures", () => {
  it("order killed between commit and publish: the event is published after restart, once, before the order's next", async () => {
    using dir = tempDir();
    await using nats = await startNats();
    const dbs = new TestDatabases(dir.path);
    const env = async (name: string) => ({ ...(await dbs.env(name)), NATS_URL: nats.url });
    await using inventory = await spawnService("inventory", await env("inventory"));
    await using payment = await spawnService("payment", await env("payment"));
    const orderEnv = { ...(await env("order")), INVENTORY_TARGET: inventory.address, PAYMENT_TARGET: payment.address };
    await using doomed = await spawnService("order", { ...orderEnv, FAULT_CRASH_BEFORE_PUBLISH: "true" });
    const who = { metadata: identityMetadata({ subject: "kim", roles: ["customer"] }) };
    const req = {
      idempotencyKey: "crash-before-publish",
      items: [{ productId: "coffee-beans", quantity: 1 }],
      cardToken: "tok_visa",
    };
    let ch = createChannel(doomed.address);
    // The process dies right after committing the order and its OrderPlaced: the reply may never come
    // (the kill ends the call), or come first. Generous: a call given up on mid-way may never commit.
    await createClient(OrderService, ch)
      .placeOrder(req, { ...who, timeoutMs: 30_000 })
      .catch(() => undefined);
    // Its relay kills it at the first publish; nothing here signals it. (The reply comes right after
    // the commit, before the relay's claim: a SIGTERM sent then raced the crash, and on a loaded
    // machine the process sometimes stopped gracefully instead, exit 0, nothing proven.)
    await expect.poll(() => doomed.child.signalCode ?? doomed.child.exitCode, { timeout: 20_000 }).toBe("SIGKILL");
    ch.close();
    expect(await placedEvents(nats.url)).toEqual([]);

    await using order = await spawnService("order", orderEnv);
    ch = createChannel(order.address);
    const orders = createClient(OrderService, ch);
    // The same key finds the order the crashed process accepted.
    const { order: accepted } = await orders.placeOrder(req, who);
    const id = accepted?.id ?? "";
    let last = OrderStatus.UNSPECIFIED;
    // Generous: the dead process's saga lease runs out first (5 s on PostgreSQL), on a machine maybe busy.
    for await (const m of orders.watchOrder({ orderId: id }, { ...who, timeoutMs: 30_000 }))
      last = m.order?.status ?? last;
    ch.close();
    expect(last).toBe(OrderStatus.CONFIRMED);
    // On SQLite the new process takes the dead relay's claim on the row at start; on PostgreSQL
    // (replicas) the claim runs out first (5 s). Either way the order's OrderConfirmed, committed by
    // the resumed saga meanwhile, waits for it: it went out first, overtaking its OrderPlaced.
    await expect.poll(async () => (await orderStream(nats.url)).length, { timeout: 20_000, interval: 100 }).toBe(2);
    expect(await placedEvents(nats.url)).toEqual([id]);
    expect((await orderStream(nats.url)).map((m) => m.type)).toEqual([
      "shopmesh.order.v1.OrderPlaced",
      "shopmesh.order.v1.OrderConfirmed",
    ]);
  }, 120_000);

  it("NATS down for seconds while orders are placed: every order completes, no event lost or duplicated", async () => {
    await using sys = await startSystem({ order: { SAGA_RETRY_BASE_MS: "50" } });
    const who = sys.as("lee");
    await sys.nats.stop();
    const placed: { id: string; mode: SagaMode }[] = [];
    for (let i = 0; i < 10; i++) {
      const sagaMode = i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY;
      const { order } = await sys.orders.placeOrder(
        {
          idempotencyKey: `outage-${i}`,
          items: [{ productId: "ceramic-mug", quantity: 1 }],
          cardToken: "tok_visa",
          sagaMode,
        },
        who,
      );
      placed.push({ id: order?.id ?? "", mode: sagaMode });
    }
    await new Promise((r) => setTimeout(r, 3_000));
    // Orchestrated orders do not need the bus to complete; their events wait in the outbox.
    const backlog = async () => (await sys.order.events.relay?.backlog())?.count;
    expect(await backlog()).toBeGreaterThanOrEqual(10);
    await sys.nats.start();

    const done = await Promise.all(placed.map((p) => sys.settle(p.id, "lee", 30_000)));
    expect(done.map((o) => OrderStatus[o.status])).toEqual(Array(10).fill("CONFIRMED"));
    for (const o of done) expect(await capturedPayments(sys.payment.store.db, o.id)).toBe(1);
    const end = Date.now() + 10_000;
    while ((await backlog()) !== 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    expect(await backlog()).toBe(0);
    const events = await placedEvents(sys.nats.url);
    expect([...events].sort()).toEqual(placed.map((p) => p.id).sort());
  });
});
