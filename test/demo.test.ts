/**
 * `make demo` as a process against a running system whose stock earlier orders changed: the coffee
 * beans the first order needs used up, the limited print restocked past the third's five units.
 * The three scenarios must still end as their titles say.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, it } from "vitest";
import { OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { built, ROOT } from "./fixtures.js";
import { type System, startSystem } from "./system.js";

let sys: System;
beforeAll(async () => {
  sys = await startSystem();
});
afterAll(async () => {
  await sys?.[Symbol.asyncDispose]();
});

it("restocks what the first two scenarios need and asks the third for more than there is", async () => {
  const { order } = await sys.orders.placeOrder(
    {
      idempotencyKey: "demo-test-buy-all",
      items: [{ productId: "coffee-beans", quantity: 100 }],
      cardToken: "tok_visa",
    },
    sys.as("earlier-customer"),
  );
  expect((await sys.settle(order?.id ?? "", "earlier-customer")).status).toBe(OrderStatus.CONFIRMED);
  await sys.products.restock(
    { idempotencyKey: "demo-test-restock", productId: "limited-print", quantity: 9 },
    sys.as("ops", ["admin"]),
  );
  const { stdout } = await promisify(execFile)(process.execPath, built("scripts/demo.ts"), {
    cwd: ROOT,
    env: { ...process.env, ORDER_TARGET: sys.order.address, INVENTORY_TARGET: sys.inventory.address },
    timeout: 60_000,
  });
  expect(stdout).toMatch(/^restocked coffee-beans \(\+22\): earlier orders had used it up$/m);
  expect(stdout).not.toMatch(/restocked ceramic-mug/);
  expect(stdout).toMatch(/1\. succeeds\n\s+order ord_\w+\s+CONFIRMED/);
  expect(stdout).toMatch(/2\. payment declined -> compensated\n\s+order ord_\w+\s+CANCELLED/);
  expect(stdout).toMatch(/3\. out of stock -> no charge attempted\n\s+order ord_\w+\s+CANCELLED/);
  expect(stdout).toMatch(/insufficient stock: limited-print \(requested 11, available 10\)/);
  const { product } = await sys.products.getProduct({ productId: "coffee-beans" });
  expect(product?.available).toBe(20);
}, 90_000);
