/**
 * A soak round (2026-12-05): what grows without bound over time — found by 20 minutes of `make run`
 * under `make load RATE=30` with a hostile client mixed in (cancelled calls, WatchOrder cut mid-stream
 * over HTTP/1.1 and h2c, slow readers, expired deadlines, bad tokens, 429 bursts, fresh principals and
 * addresses, unknown paths and methods), NATS and payment killed and restarted, with every process's
 * descriptors, memory and metric series, NATS's connections and subscriptions, the databases' tables
 * and the files under DATA_DIR sampled every minute. Each `describe` is one finding, reproduced here
 * fast; each test failed on the code it was written against.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { connectBus } from "../platform/bus.js";
import { silentLogger } from "../platform/log.js";
import { recordChild } from "../scripts/data-dir.js";
import { consumerSettled } from "./events.js";
import { exited, tempDir } from "./fixtures.js";
import { type System, startSystem } from "./system.js";

let sys: System;
beforeAll(async () => {
  sys = await startSystem({ order: { SAGA_STEP_BUDGET_MS: "3000" } });
}, 60_000);
afterAll(async () => {
  await sys?.[Symbol.asyncDispose]();
});

let n = 0;
const key = () => `soak-${Date.now()}-${n++}`;

describe("payment's choreography_orders (who pays for a choreographed order, and with which card)", () => {
  // What payment learns from OrderPlaced to charge on StockReserved was never deleted: one row per
  // choreographed order for ever, each with its customer's card token — 6,200 rows after 20 minutes
  // of make load, every one of them for an order long CONFIRMED or CANCELLED. Once the order's charge
  // has been attempted or its key voided by OrderCancelled, nothing reads the row again.
  it("holds no row once every choreographed order has settled, whichever way it ended", async () => {
    const customer = "soak-payer";
    const kinds = [
      { items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_visa" }, // confirmed
      { items: [{ productId: "ceramic-mug", quantity: 1 }], cardToken: "tok_decline" }, // payment declined
      { items: [{ productId: "hand-grinder", quantity: 1_000 }], cardToken: "tok_visa" }, // out of stock
      { items: [{ productId: "paper-filters", quantity: 1 }], cardToken: "tok_visa", cancel: true }, // cancelled at once
    ];
    const placed = await Promise.all(
      Array.from({ length: 24 }, async (_, i) => {
        const { cancel, ...k } = kinds[i % kinds.length] as (typeof kinds)[number];
        const { order } = await sys.orders.placeOrder(
          { idempotencyKey: key(), sagaMode: SagaMode.CHOREOGRAPHY, ...k },
          sys.as(customer),
        );
        if (!order) throw new Error("no order");
        if (cancel) await sys.orders.cancelOrder({ orderId: order.id, reason: "changed my mind" }, sys.as(customer));
        return order.id;
      }),
    );
    for (const id of placed) await sys.settle(id, customer, 30_000);
    // Settled as the order sees it; payment hears of a cancellation (OrderCancelled) just after.
    const rows = async () =>
      (await sys.payment.store.db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM choreography_orders`))?.n;
    await expect.poll(rows, { timeout: 15_000 }).toBe(0);
    // A StockReserved that comes after OrderCancelled forgot the payer (the key is voided) has nothing
    // to charge: settled as a voided key would answer it, neither failed nor dead-lettered.
    const bus = await connectBus(sys.nats.url, "hostile-soak", silentLogger(), { streams: EVENTS.streams });
    try {
      await consumerSettled(bus, "INVENTORY", "payment-inventory", 20_000);
      expect((await bus.jsm.streams.info("DLQ")).state.messages).toBe(0);
    } finally {
      await bus.close();
    }
    const failures = await sys.payment.store.db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM inbox_failures`);
    expect(failures?.n).toBe(0);
  }, 90_000);
});

describe("make run's list of the processes it started (<data dir>/run.children)", () => {
  // A line was appended at every start of a child, restarts included, and only emptied when the next
  // runner started: a service that kept crashing (restarted every 30 s once its backoff is at most)
  // added ~2,900 lines a day for as long as the runner ran — 7 after NATS and payment were killed three
  // times each in the soak. Only the children still running are needed (to stop them should the runner
  // be killed).
  it("lists the children still running, not every child ever started", async () => {
    using dir = tempDir();
    const live = spawn("sleep", ["60"], { stdio: "ignore" });
    recordChild(dir.path, live.pid, "nats");
    try {
      for (let i = 0; i < 40; i++) {
        // A child that crashed and was started again, as the runner's supervision does.
        const crashed = spawn("sleep", ["60"], { stdio: "ignore" });
        recordChild(dir.path, crashed.pid, "payment");
        crashed.kill("SIGKILL");
        await exited(crashed);
      }
      const restarted = spawn("sleep", ["60"], { stdio: "ignore" });
      recordChild(dir.path, restarted.pid, "payment");
      const lines = readFileSync(join(dir.path, "run.children"), "utf8").trim().split("\n");
      expect(lines.map((l) => l.split(" ")[0])).toEqual([String(live.pid), String(restarted.pid)]);
      restarted.kill("SIGKILL");
    } finally {
      live.kill("SIGKILL");
    }
  });
});
