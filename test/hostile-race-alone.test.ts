/**
 * The races of test/hostile-race.test.ts where each service runs alone (one process, SQLite or a
 * PostgreSQL schema of its own): one idempotency key from 300 callers released together, and
 * CancelOrder racing the saga in both modes while payment is slowed, every order watched — one
 * order, one terminal state each, watchers never going back, money and stock conserved.
 */

import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { RpcError } from "../platform/errors.js";
import { UNFINISHED } from "../services/order/schema.js";
import { expectCheckoutInvariants, forward } from "./invariants.js";
import { type System, startSystem } from "./system.js";

let sys: System;

beforeAll(async () => {
  sys = await startSystem();
});
afterAll(async () => {
  await sys?.[Symbol.asyncDispose]();
});

/** A call's answer, or the code it failed with. */
const settle = (p: Promise<unknown>) =>
  p.then(
    (v) => String(v),
    (err: unknown) => `failed ${err instanceof RpcError ? err.codeName : String(err)}`,
  );

describe("races on one service alone", () => {
  it("PlaceOrder: 300 callers with one key released together get one order", async () => {
    let open = () => {};
    const gate = new Promise<void>((r) => (open = r));
    const req = {
      idempotencyKey: "alone-key",
      items: [{ productId: "paper-filters", quantity: 1 }],
      cardToken: "tok_visa",
    };
    const calls = Array.from({ length: 300 }, () =>
      settle(gate.then(async () => (await sys.orders.placeOrder(req, sys.as("alone"))).order?.id)),
    );
    open();
    const answers = await Promise.all(calls);
    expect(new Set(answers)).toHaveLength(1);
    expect(answers[0]).toMatch(/^ord_/);
  });

  it("PlaceOrder: two bodies under one key, 100 callers each, interleaved: one body wins, the other is ALREADY_EXISTS", async () => {
    for (let round = 0; round < 5; round++) {
      let open = () => {};
      const gate = new Promise<void>((r) => (open = r));
      const body = (productId: string) => ({
        idempotencyKey: `alone-two-${round}`,
        items: [{ productId, quantity: 1 }],
        cardToken: "tok_visa",
      });
      const calls = Array.from({ length: 200 }, (_, i) =>
        settle(
          gate.then(async () => {
            const req = body(i % 2 ? "paper-filters" : "ceramic-mug");
            return (await sys.orders.placeOrder(req, sys.as("alone-two"))).order?.id;
          }),
        ),
      );
      open();
      const answers = await Promise.all(calls);
      const a = new Set(answers.filter((_, i) => i % 2 === 1));
      const b = new Set(answers.filter((_, i) => i % 2 === 0));
      expect([a.size, b.size], `round ${round}: ${[...a]} | ${[...b]}`).toEqual([1, 1]);
      expect(
        [...a, ...b].filter((x) => x === "failed ALREADY_EXISTS"),
        `round ${round}`,
      ).toHaveLength(1);
    }
  });

  it("CancelOrder racing the saga in both modes, payment slowed, every order watched: one end each, conserved", async () => {
    await sys.paymentChaos.setFaults({ faults: { latencyMs: 100 } });
    try {
      const placed = await Promise.all(
        Array.from({ length: 60 }, async (_, i) => {
          const { order } = await sys.orders.placeOrder(
            {
              idempotencyKey: `alone-cancel-${i}`,
              items: [{ productId: i % 2 ? "coffee-beans" : "ceramic-mug", quantity: 1 }],
              cardToken: i % 7 === 0 ? "tok_decline" : "tok_visa",
              sagaMode: i % 2 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
            },
            sys.as("alone"),
          );
          return order?.id ?? "";
        }),
      );
      const watches = placed.map(async (orderId) => {
        const seen: string[] = [];
        for await (const m of sys.orders.watchOrder({ orderId }, { ...sys.as("alone"), timeoutMs: 60_000 })) {
          const s = OrderStatus[m.order?.status ?? 0] ?? "?";
          if (seen.at(-1) !== s) seen.push(s);
          if (s === "CONFIRMED" || s === "CANCELLED") break;
        }
        return seen;
      });
      const cancels = placed.flatMap((orderId, i) =>
        Array.from({ length: 3 }, () =>
          settle(
            new Promise((r) => setTimeout(r, (i * 7) % 300)).then(
              async () => (await sys.orders.cancelOrder({ orderId, reason: "race" }, sys.as("alone"))).order?.status,
            ),
          ),
        ),
      );
      const answers = await Promise.all(cancels);
      expect(answers.filter((a) => a.startsWith("failed") && a !== "failed FAILED_PRECONDITION")).toEqual([]);
      expect((await Promise.all(watches)).filter((s) => !forward(s))).toEqual([]);
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
    const left = async () =>
      (await sys.order.store.db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM orders WHERE ${UNFINISHED}`))?.n ?? 0;
    await expect.poll(left, { timeout: 30_000, interval: 200 }).toBe(0);
    // Inventory hears a choreographed cancel a moment after the order ends (the check waits for it).
    await expectCheckoutInvariants({
      order: sys.order.store.db,
      payment: sys.payment.store.db,
      inventory: sys.inventory.store.db,
    });
  }, 60_000);
});
