/**
 * Chaos: the order process is SIGKILLed while 60 sagas are in flight, then
 * restarted on the same database. Invariants, not just "no exception":
 * every order ends CONFIRMED or CANCELLED, captured payments equal confirmed
 * orders one to one, and stock is conserved for every product.
 */
import { describe, expect, it } from "vitest";
import { OrderService, OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { createChannel, createClient } from "../../platform/grpc-client.js";
import { identityMetadata } from "../../platform/identity.js";
import { TestDatabases } from "../../test/db.js";
import { spawnService, tempDir } from "../../test/fixtures.js";
import { expectCheckoutInvariants } from "../../test/invariants.js";

const ORDERS = 60;

describe("order crash recovery", () => {
  it("resumes every saga after SIGKILL mid-burst: nothing lost, nothing charged twice, stock conserved", async () => {
    using dir = tempDir();
    const dbs = new TestDatabases(dir.path);
    await using inventory = await spawnService("inventory", await dbs.env("inventory"));
    // Slow payment keeps many sagas mid-flight when the order process dies.
    await using payment = await spawnService("payment", { ...(await dbs.env("payment")), FAULT_LATENCY_MS: "150" });
    const orderEnv = {
      ...(await dbs.env("order")),
      // On PostgreSQL a restarted replica adopts the dead one's sagas when their lease runs out.
      SAGA_LEASE_MS: "1000",
      INVENTORY_TARGET: inventory.address,
      PAYMENT_TARGET: payment.address,
      SAGA_RETRY_BASE_MS: "20",
      SAGA_RETRY_MAX_MS: "200",
    };
    let order = await spawnService("order", orderEnv);
    let channel = createChannel(order.address);
    const who = { metadata: identityMetadata({ subject: "zoe", roles: ["customer"] }) };
    const products = ["coffee-beans", "ceramic-mug", "hand-grinder", "limited-print", "paper-filters"];
    const placed = await Promise.all(
      Array.from({ length: ORDERS }, async (_, i) => {
        const { order: o } = await createClient(OrderService, channel).placeOrder(
          {
            idempotencyKey: `crash-${i}`,
            items: [{ productId: products[i % products.length] ?? "coffee-beans", quantity: 1 + (i % 3) }],
            cardToken: i % 7 === 0 ? "tok_decline" : "tok_visa",
          },
          who,
        );
        return o?.id ?? "";
      }),
    );
    await new Promise((r) => setTimeout(r, 250));
    expect(await order.kill("SIGKILL")).toBe("SIGKILL");
    channel.close();

    order = await spawnService("order", orderEnv);
    await using _restarted = order;
    const { sagas: resumed } = await order.logLine("resuming sagas left in flight");
    expect(resumed, "the crash should have caught sagas mid-flight").toBeGreaterThan(0);

    channel = createChannel(order.address);
    const orders = createClient(OrderService, channel);
    const final = await Promise.all(
      placed.map(async (orderId) => {
        let last: OrderStatus = OrderStatus.UNSPECIFIED;
        // Generous: what is asserted is where each saga ends, not how soon (on PostgreSQL under load,
        // with processes paused, one watch ran past 30 s).
        for await (const m of orders.watchOrder({ orderId }, { ...who, timeoutMs: 60_000 })) {
          last = m.order?.status ?? last;
        }
        return { orderId, status: last };
      }),
    );
    channel.close();
    for (const f of final) expect([OrderStatus.CONFIRMED, OrderStatus.CANCELLED]).toContain(f.status);
    const confirmed = new Set(final.filter((f) => f.status === OrderStatus.CONFIRMED).map((f) => f.orderId));
    expect(confirmed.size).toBeGreaterThan(0);
    expect(confirmed.size).toBeLessThan(ORDERS);

    const outcome = await expectCheckoutInvariants({
      order: await dbs.location("order"),
      payment: await dbs.location("payment"),
      inventory: await dbs.location("inventory"),
    });
    expect(outcome.confirmed).toEqual(confirmed);
  }, 150_000);
});
