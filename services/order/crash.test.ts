/**
 * Chaos: the order process is SIGKILLed while 60 sagas are in flight, then
 * restarted on the same database. Invariants, not just "no exception":
 * every order ends CONFIRMED or CANCELLED, captured payments equal confirmed
 * orders one to one, and stock is conserved for every product.
 */
import { join } from "node:path";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { OrderService, OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { createChannel, createClient, identityMetadata } from "../../platform/index.js";
import { spawnService, tempDir } from "../../test/fixtures.js";
import { DEMO_CATALOGUE } from "../inventory/catalogue.js";

const ORDERS = 60;

function rows<T>(path: string, sql: string): T[] {
  const db = new Database(path, { readonly: true });
  try {
    return db.prepare<[], T>(sql).all();
  } finally {
    db.close();
  }
}

describe("order crash recovery", () => {
  it("resumes every saga after SIGKILL mid-burst: nothing lost, nothing charged twice, stock conserved", async () => {
    using dir = tempDir();
    const db = (name: string) => join(dir.path, `${name}.db`);
    await using inventory = await spawnService("inventory", { DB_PATH: db("inventory") });
    // Slow payment keeps many sagas mid-flight when the order process dies.
    await using payment = await spawnService("payment", { DB_PATH: db("payment"), FAULT_LATENCY_MS: "150" });
    const orderEnv = {
      DB_PATH: db("order"),
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
        for await (const m of orders.watchOrder({ orderId }, { ...who, timeoutMs: 30_000 })) {
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

    // Money: exactly one captured payment per confirmed order, none for cancelled ones.
    const captured = rows<{ order_id: string; n: number }>(
      db("payment"),
      "SELECT order_id, COUNT(*) AS n FROM payments WHERE status = 'CAPTURED' GROUP BY order_id",
    );
    expect(captured.every((c) => c.n === 1)).toBe(true);
    expect(new Set(captured.map((c) => c.order_id))).toEqual(confirmed);

    // Stock: conserved per product, and what is reserved is exactly what confirmed orders hold.
    const lines = rows<{ id: string; items: string; status: string }>(
      db("order"),
      "SELECT id, items, status FROM orders",
    );
    const held = new Map<string, number>();
    for (const o of lines.filter((l) => l.status === "CONFIRMED")) {
      for (const it of JSON.parse(o.items) as { productId: string; quantity: number }[]) {
        held.set(it.productId, (held.get(it.productId) ?? 0) + it.quantity);
      }
    }
    const stock = rows<{ id: string; available: number; reserved: number }>(
      db("inventory"),
      "SELECT id, available, reserved FROM products",
    );
    for (const p of DEMO_CATALOGUE) {
      const s = stock.find((x) => x.id === p.id);
      expect(s && s.available + s.reserved, p.id).toBe(p.available);
      expect(s?.reserved, p.id).toBe(held.get(p.id) ?? 0);
    }
  });
});
