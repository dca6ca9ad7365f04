/**
 * An upgrade round (2026-12-05): what a data directory written by an older version meets after
 * `git pull` and `make run` — found by running the versions of 2026-12-02 (fe7e836) and 2026-12-04
 * (9755f40) under `make load`, killing them outright mid-load, and starting this one on their
 * DATA_DIR. Each fixture is built with the older version's migration SQL, copied from git history,
 * and opened with today's code. Each `describe` is one finding; each test failed on the code it was
 * written against.
 */
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import Database from "better-sqlite3";
import { describe, expect, it } from "vitest";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { installLeanAsyncBind } from "../platform/async-bind.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { silentLogger } from "../platform/log.js";
import { preparedJetStreamDir } from "../scripts/nats.js";
import { type InventoryApp, startInventory } from "../services/inventory/app.js";
import { loadConfig as inventoryConfig } from "../services/inventory/config.js";
import { startPayment } from "../services/payment/app.js";
import { loadConfig as paymentConfig } from "../services/payment/config.js";
import { PaymentStore } from "../services/payment/store.js";
import { TestDatabases } from "./db.js";
import { exited, freePort, outputReady, spawnService, tempDir } from "./fixtures.js";
import { startNats } from "./nats.js";

/** payment's migrations 1-3 as fe7e836 (2026-12-02) wrote them. */
const PAYMENT_AT_FE7E836 = [
  `CREATE TABLE payments (
     id              TEXT PRIMARY KEY,
     idempotency_key TEXT NOT NULL UNIQUE,
     kind            TEXT NOT NULL CHECK (kind IN ('CHARGE', 'VOID')),
     fingerprint     TEXT,
     order_id        TEXT NOT NULL,
     customer_id     TEXT NOT NULL,
     amount_minor    INTEGER NOT NULL,
     currency        TEXT NOT NULL,
     status          TEXT NOT NULL CHECK (status IN ('CAPTURED', 'DECLINED', 'REFUNDED')),
     decline_reason  TEXT,
     refund_reason   TEXT,
     created_at      INTEGER NOT NULL,
     updated_at      INTEGER NOT NULL,
     CHECK ((kind = 'VOID') = (fingerprint IS NULL)),
     CHECK ((kind = 'CHARGE' AND amount_minor > 0)
         OR (kind = 'VOID' AND amount_minor = 0 AND status = 'DECLINED')),
     CHECK ((status = 'DECLINED') = (decline_reason IS NOT NULL)),
     CHECK ((status = 'REFUNDED') = (refund_reason IS NOT NULL))
   ) STRICT;
   CREATE INDEX payments_order ON payments (order_id, created_at);`,
  `CREATE TABLE outbox (
     seq         INTEGER PRIMARY KEY AUTOINCREMENT,
     event_id    TEXT NOT NULL UNIQUE,
     type        TEXT NOT NULL,
     subject     TEXT NOT NULL,
     payload     BLOB NOT NULL,
     order_id    TEXT NOT NULL,
     traceparent TEXT NOT NULL DEFAULT '',
     created_at  INTEGER NOT NULL,
     sent_at     INTEGER
   ) STRICT;
   CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
   CREATE TABLE inbox (
     consumer   TEXT NOT NULL,
     event_id   TEXT NOT NULL,
     type       TEXT NOT NULL,
     handled_at INTEGER NOT NULL,
     PRIMARY KEY (consumer, event_id)
   ) STRICT;
   CREATE TABLE choreography_orders (
     order_id    TEXT PRIMARY KEY,
     customer_id TEXT NOT NULL,
     card_token  TEXT NOT NULL
   ) STRICT;`,
  "ALTER TABLE outbox ADD COLUMN claimed_by TEXT; ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;",
];

/** A SQLite file at `path` as an older version left it: its migrations applied, then `fill`. */
function olderDatabase(path: string, list: readonly string[], fill: (db: Database.Database) => void): void {
  const db = new Database(path);
  list.forEach((m, i) => {
    db.exec(m);
    db.pragma(`user_version = ${i + 1}`);
  });
  fill(db);
  db.close();
}

describe("payment's choreography_orders written before 660b3ae (payers never forgotten)", () => {
  // Before 660b3ae payment kept a choreographed order's payer, card token and all, for ever; since,
  // it forgets it once the charge key is used (charged, declined, or voided by OrderCancelled). A data
  // directory of an older version kept every row it had: after 45 s of make load on fe7e836 and an
  // upgrade, 452 rows, every one for an order whose charge key was long used, were never deleted.
  it("keeps no payer of an order whose charge key is used, and keeps the payer of an order still waiting", async () => {
    using dir = tempDir();
    const path = join(dir.path, "payment.db");
    olderDatabase(path, PAYMENT_AT_FE7E836, (db) => {
      const payer = db.prepare("INSERT INTO choreography_orders VALUES (?, 'cus_1', 'tok_visa')");
      for (const id of ["ord_charged", "ord_declined", "ord_voided", "ord_waiting"]) payer.run(id);
      const pay = db.prepare(`INSERT INTO payments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 1, 1)`);
      pay.run(
        "pay_1",
        "ord_charged:charge_payment",
        "CHARGE",
        "f",
        "ord_charged",
        "cus_1",
        2400,
        "USD",
        "CAPTURED",
        null,
      );
      pay.run(
        "pay_2",
        "ord_declined:charge_payment",
        "CHARGE",
        "f",
        "ord_declined",
        "cus_1",
        2400,
        "USD",
        "DECLINED",
        "card declined",
      );
      pay.run("pay_3", "ord_voided:charge_payment", "VOID", null, "", "", 0, "", "DECLINED", "voided");
    });
    const store = await PaymentStore.open({ engine: "sqlite", path });
    await store.close();
    const db = new Database(path, { readonly: true });
    const left = db.prepare("SELECT order_id FROM choreography_orders ORDER BY order_id").pluck().all();
    db.close();
    expect(left).toEqual(["ord_waiting"]);
  });
});

describe("a choreographed order in flight when the order service stopped (a crash, an upgrade's git pull and build)", () => {
  // The step budget's sweep cancels a choreographed order that made no progress for
  // SAGA_STEP_BUDGET_MS, leaving out the time the order process stood still (frozen, stalled) — but
  // not the time it was not running at all. Restarted more than a budget after it stopped (git pull,
  // make build, make run), its first sweep (a quarter budget after start) cancelled every
  // choreographed order in flight as "inventory unavailable" or "payment unavailable", before the
  // events waiting for it were read and whether or not the participant had answered: 6 orders
  // cancelled, each charged and refunded, after an upgrade from fe7e836 on PostgreSQL.
  // The budget runs from the restarted process's start, and its start-up is part of it: at 3 s, a
  // start of 1 s on a busy machine (2026-12-06, two cores loaded) left half a second between the
  // inventory's return and the sweep that would cancel the order for a participant that was back.
  const BUDGET_MS = 8_000;
  it("gets the whole budget from the restart before it is cancelled", async () => {
    installLeanAsyncBind();
    using dir = tempDir();
    await using nats = await startNats();
    const dbs = new TestDatabases(dir.path);
    const log = silentLogger();
    const base = { GRPC_HOST: "127.0.0.1", GRPC_PORT: "0", SHUTDOWN_GRACE_MS: "2000", NATS_URL: nats.url };
    const inventoryAt = async () => startInventory(inventoryConfig({ ...base, ...(await dbs.env("inventory")) }), log);
    let inventory: InventoryApp | undefined = await inventoryAt();
    const payment = await startPayment(paymentConfig({ ...base, ...(await dbs.env("payment")) }), log);
    const orderEnv = {
      NATS_URL: nats.url,
      ...(await dbs.env("order")),
      INVENTORY_TARGET: inventory.address,
      PAYMENT_TARGET: payment.address,
      SAGA_STEP_BUDGET_MS: String(BUDGET_MS),
    };
    let order = await spawnService("order", orderEnv, 60_000);
    const as = { metadata: identityMetadata({ subject: "upgrader", roles: ["customer"] }) };
    try {
      // Inventory is out while the order service is down, and back soon after it restarts.
      await inventory.stop();
      inventory = undefined;
      let channel = createChannel(order.address);
      const { order: placed } = await createClient(OrderService, channel).placeOrder(
        {
          idempotencyKey: "upgrade-budget",
          sagaMode: SagaMode.CHOREOGRAPHY,
          items: [{ productId: "ceramic-mug", quantity: 1 }],
          cardToken: "tok_visa",
        },
        as,
      );
      channel.close();
      await order.kill("SIGKILL");
      await sleep(BUDGET_MS + 500);
      const restarted = Date.now();
      order = await spawnService("order", orderEnv, 60_000);
      channel = createChannel(order.address);
      const orders = createClient(OrderService, channel);
      // Half a budget from the restart, however long its start took: past its first sweep (a quarter
      // budget after it began), which cancelled the order before the fix, and well within the budget.
      await sleep(Math.max(0, restarted + BUDGET_MS / 2 - Date.now()));
      inventory = await inventoryAt();
      let status = OrderStatus.PENDING;
      let reason = "";
      for (const until = Date.now() + 20_000; status === OrderStatus.PENDING && Date.now() < until; await sleep(100)) {
        const { order: o } = await orders.getOrder({ orderId: placed?.id ?? "" }, as);
        status = o?.status ?? OrderStatus.PENDING;
        reason = o?.statusReason ?? "";
      }
      channel.close();
      expect({ status: OrderStatus[status], reason }).toEqual({ status: "CONFIRMED", reason: "" });
    } finally {
      await order.kill("SIGKILL");
      await inventory?.stop();
      await payment.stop();
    }
  }, 90_000);
});

/** Runs a nats-server with its store in `storeDir` while `use` runs, given its URL. */
async function withNatsOn<T>(storeDir: string, use: (url: string) => Promise<T>): Promise<T> {
  const port = await freePort();
  const child = spawn("nats-server", ["-js", "-sd", storeDir, "-a", "127.0.0.1", "-p", String(port)], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    await outputReady(child, "Server is ready", "nats-server", 10_000);
    return await use(`nats://127.0.0.1:${port}`);
  } finally {
    const done = exited(child);
    child.kill("SIGTERM");
    await done;
  }
}

describe("make run DB=postgres on a data directory from before 4ad9e0c (one NATS store for both databases)", () => {
  // 4ad9e0c (2026-12-03) gave PostgreSQL's streams a store of their own, <DATA_DIR>/nats/postgres;
  // before, they were in <DATA_DIR>/nats. On a data directory of fe7e836 the new make run DB=postgres
  // started NATS on an empty store: every event the outboxes had marked sent was gone. After a kill
  // mid-load, 64 of 207 orders never reached history, 74 never reached notification, a cancelled
  // order's stock stayed reserved and 4 cancelled orders waited for their refund's answer for good.
  it("starts the bus on the streams PostgreSQL's services wrote to before", async () => {
    using dir = tempDir();
    const data = dir.path;
    // What fe7e836's make run DB=postgres left: its PostgreSQL data directory, its streams in nats/.
    mkdirSync(join(data, "postgres"), { recursive: true });
    writeFileSync(join(data, "postgres", "PG_VERSION"), "15\n");
    mkdirSync(join(data, "nats"), { recursive: true });
    await withNatsOn(join(data, "nats"), async (url) => {
      const nc = await connect({ servers: url });
      await (await jetstreamManager(nc)).streams.add({ name: "ORDER", subjects: ["order.>"] });
      const js = jetstream(nc);
      for (const id of ["a", "b", "c"]) await js.publish(`order.order.placed.choreography`, id, { msgID: id });
      await nc.close();
    });
    const store = preparedJetStreamDir(data, "postgres");
    const messages = await withNatsOn(store, async (url) => {
      const nc = await connect({ servers: url });
      try {
        const jsm = await jetstreamManager(nc);
        const names: string[] = [];
        for await (const name of jsm.streams.names()) names.push(name);
        return names.includes("ORDER") ? (await jsm.streams.info("ORDER")).state.messages : 0;
      } finally {
        await nc.close();
      }
    });
    expect(messages).toBe(3);
    // A database made after the split keeps its own store: nothing is copied over it again.
    expect(preparedJetStreamDir(data, "postgres")).toBe(store);
  });

  it("gives a PostgreSQL database made since (no data directory before the store) a store of its own", async () => {
    using dir = tempDir();
    mkdirSync(join(dir.path, "nats", "jetstream", "SQLITE_RUNS_ACCOUNT"), { recursive: true });
    const store = preparedJetStreamDir(dir.path, "postgres");
    expect(readdirSync(store)).toEqual([]);
  });
});
