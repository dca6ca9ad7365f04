/**
 * Client-side discovery with real processes: two payment instances register
 * in the NATS KV registry and both receive calls through `registry:///payment`;
 * one is SIGKILLed mid-traffic and callers see no failure; a restarted
 * instance is used again.
 */
import { describe, expect, it } from "vitest";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { connectBus } from "../platform/bus.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { silentLogger } from "../platform/log.js";
import { DEFAULT_POLICY } from "../platform/policy-config.js";
import { createResilientClient } from "../platform/resilience.js";
import { TestDatabases } from "./db.js";
import { type ServiceProcess, spawnService, tempDir } from "./fixtures.js";
import { startNats } from "./nats.js";

async function chargeCount(svc: ServiceProcess): Promise<number> {
  const { port } = (await svc.logLine("metrics on /metrics")) as { port: number };
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text
    .split("\n")
    .find(
      (l) =>
        l.startsWith("rpc_server_duration_seconds_count") && l.includes("ChargePayment") && l.includes('code="OK"'),
    );
  return line ? Number(line.split(" ").at(-1)) : 0;
}

describe("client-side discovery", () => {
  it("spreads calls over live instances, survives a SIGKILL, and uses a restarted instance", async () => {
    using dir = tempDir();
    await using nats = await startNats();
    const common = { NATS_URL: nats.url, METRICS_PORT: "0" };
    const dbs = new TestDatabases(dir.path);
    const paymentEnv = { ...common, ...(await dbs.env("payment")) }; // replicas share one database
    await using _inventory = await spawnService("inventory", { ...common, ...(await dbs.env("inventory")) });
    const a = await spawnService("payment", paymentEnv);
    await using b = await spawnService("payment", paymentEnv);
    await using order = await spawnService("order", {
      ...common,
      ...(await dbs.env("order")),
      INVENTORY_TARGET: "registry:///inventory",
      PAYMENT_TARGET: "registry:///payment",
    });
    const who = { metadata: identityMetadata({ subject: "uma", roles: ["customer"] }) };
    const orderChannel = createChannel(order.address);
    const orders = createClient(OrderService, orderChannel);
    const placeAndSettle = async (key: string) => {
      const { order: o } = await orders.placeOrder(
        { idempotencyKey: key, items: [{ productId: "paper-filters", quantity: 1 }], cardToken: "tok_visa" },
        who,
      );
      let last = OrderStatus.UNSPECIFIED;
      for await (const m of orders.watchOrder({ orderId: o?.id ?? "" }, { ...who, timeoutMs: 15_000 }))
        last = m.order?.status ?? last;
      return last;
    };

    for (let i = 0; i < 12; i++) expect(await placeAndSettle(`spread-${i}`)).toBe(OrderStatus.CONFIRMED);
    expect(await chargeCount(a)).toBeGreaterThan(0);
    expect(await chargeCount(b)).toBeGreaterThan(0);

    // A caller of our own through the registry, as the gateway or order would call.
    const bus = await connectBus(nats.url, "test-caller", silentLogger());
    const payments = createResilientClient(
      "payment",
      PaymentService,
      "registry:///payment",
      { ...DEFAULT_POLICY, retryInitialDelayMs: 20 },
      silentLogger(),
      { nc: bus.nc },
    );
    const { order: known } = await orders.placeOrder(
      { idempotencyKey: "lookup", items: [{ productId: "paper-filters", quantity: 1 }], cardToken: "tok_visa" },
      who,
    );
    await placeAndSettle("lookup");
    let failures = 0;
    let calls = 0;
    let killedAt = 0;
    // Calls until 2 s past the kill and at least 20 of them, however slow the machine.
    const traffic = (async () => {
      const cap = Date.now() + 30_000; // a failed kill below must not leave this running
      while (!(killedAt && Date.now() - killedAt >= 2_000 && calls > 20) && Date.now() < cap) {
        calls++;
        await payments.getPayment({ orderId: known?.id ?? "" }, { timeoutMs: 2_000 }).catch(() => failures++);
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    expect(await a.kill("SIGKILL")).toBe("SIGKILL");
    killedAt = Date.now();
    await traffic;
    expect(calls).toBeGreaterThan(20);
    expect(failures).toBe(0);
    for (let i = 0; i < 4; i++) expect(await placeAndSettle(`after-kill-${i}`)).toBe(OrderStatus.CONFIRMED);

    await using restarted = await spawnService("payment", paymentEnv);
    const end = Date.now() + 15_000;
    let n = 0;
    while ((await chargeCount(restarted)) === 0 && Date.now() < end) await placeAndSettle(`after-restart-${n++}`);
    expect(await chargeCount(restarted)).toBeGreaterThan(0);

    payments.close();
    orderChannel.close();
    await bus.close();
  }, 60_000);
});
