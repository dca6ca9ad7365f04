/**
 * A payment outage as a user lives it, with real processes: `make run`'s
 * system from its build, payment hard down while 50 orders arrive over 15 s
 * through the gateway in both saga modes, and until each has ended. Each order reaches a state the
 * customer sees as final (CANCELLED, its stock back) within the step budget
 * and a few seconds, while payment is still down; once payment is back every
 * pending refund lands, no cancelled order keeps a capture, captured
 * payments equal confirmed orders one to one, and stock is conserved.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { sql } from "kysely";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { SYSTEM } from "../scripts/layout.js";
import { withDb } from "./db.js";
import { until } from "./events.js";
import { freePort, ROOT, tempDir } from "./fixtures.js";
import { expectCheckoutInvariants } from "./invariants.js";

const NAMES = SYSTEM.map((p) => p.name);
// Orders keep arriving for three step budgets, so early ones are cancelled while later ones still
// arrive and payment's breaker opens and half-opens meanwhile. A budget of 5 s (the setting's own
// minimum is 100 ms) keeps that shape in half the time 10 s over 30 s took.
const BUDGET_MS = 5_000;
const ARRIVALS_MS = 3 * BUDGET_MS;
const ORDERS = 50;

let run: ChildProcess;
let dir: { path: string } & Disposable;
const port: Record<string, number> = {};

beforeAll(async () => {
  dir = tempDir();
  const env: Record<string, string> = { DATA_DIR: dir.path, SAGA_STEP_BUDGET_MS: String(BUDGET_MS) };
  for (const n of NAMES) {
    port[n] = await freePort();
    env[`${n.toUpperCase()}_PORT`] = String(port[n]);
    env[`${n.toUpperCase()}_METRICS_PORT`] = String(await freePort());
  }
  env.NATS_PORT = String(await freePort());
  env.NATS_MONITOR_PORT = String(await freePort());
  run = spawn(process.execPath, [join(ROOT, "dist", "scripts", "run.js")], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: "ignore",
  });
  // Bounded waits that fail naming what never came (200 tries each gave up silently, and a first start
  // on a saturated CI machine has taken over 20 s: run.test.ts).
  const waitFor = async (what: string, f: () => Promise<boolean>, ms: number) => {
    if (!(await until(f, (x) => x, ms))) throw new Error(`make run: ${what} not within ${ms} ms`);
  };
  await waitFor(
    "the gateway ready (/readyz)",
    () =>
      fetch(`http://127.0.0.1:${port.gateway}/readyz`).then(
        (r) => r.ok,
        () => false,
      ),
    60_000,
  );
  // The gateway answers before the services behind it may: wait until each serves gRPC and the
  // gateway reaches the order service (it learns instances from the registry). A loaded CI machine
  // once answered the first order 503.
  const answers = async (f: () => Promise<unknown>) =>
    f().then(
      () => true,
      () => false,
    );
  const auth = `Bearer ${await token()}`;
  for (const n of NAMES.filter((x) => x !== "gateway")) {
    const channel = createChannel(`127.0.0.1:${port[n]}`);
    const chaos = createClient(ChaosService, channel);
    await waitFor(`${n} serving gRPC`, () => answers(() => chaos.getFaults({})), 30_000).finally(() => channel.close());
  }
  const listed = () =>
    fetch(`${gateway()}/v1/orders?pageSize=1`, { headers: { authorization: auth } }).then((r) => {
      if (!r.ok) throw new Error(String(r.status));
    });
  await waitFor("an order listing through the gateway", () => answers(listed), 30_000);
}, 150_000);

afterAll(async () => {
  if (run && run.exitCode === null) {
    run.kill("SIGINT");
    await new Promise((r) => run.once("exit", r));
  }
  dir?.[Symbol.dispose]();
});

const gateway = () => `http://127.0.0.1:${port.gateway}`;
async function token(): Promise<string> {
  const r = await fetch(`${gateway()}/dev/token`, { method: "POST", body: '{"user":"alice"}' });
  return ((await r.json()) as { token: string }).token;
}
it(`payment down while ${ORDERS} orders arrive over ${ARRIVALS_MS / 1000} s (both modes): each CANCELLED within the budget and seconds, stock back; every refund lands after; the books balance`, async () => {
  const auth = `Bearer ${await token()}`;
  const channel = createChannel(`127.0.0.1:${port.payment}`);
  const chaos = createClient(ChaosService, channel);
  await chaos.setFaults({ faults: { down: true } });
  const late: string[] = [];
  try {
    // Orders over three budgets, alternating saga modes.
    const spacing = ARRIVALS_MS / ORDERS;
    for (let i = 0; i < ORDERS; i++) {
      const res = await fetch(`${gateway()}/v1/orders`, {
        method: "POST",
        headers: { authorization: auth, "Idempotency-Key": `outage-${i}` },
        body: JSON.stringify({
          items: [{ productId: i % 3 ? "coffee-beans" : "ceramic-mug", quantity: 1 }],
          cardToken: "tok_visa",
          sagaMode: i % 2 ? "SAGA_MODE_CHOREOGRAPHY" : "SAGA_MODE_ORCHESTRATION",
        }),
      });
      expect(res.status).toBe(200);
      await new Promise((r) => setTimeout(r, spacing));
    }
    // Read from the order service's own database: when each order ended for its customer (its
    // cancel_order step), by the service's clock — refund retries may still change it after.
    const orders = () =>
      withDb({ engine: "sqlite", path: join(dir.path, "order.db") }, (db) =>
        db.all(sql<{ id: string; status: string; reason: string; created_at: number; ended_at: number | null }>`
          SELECT o.id, o.status, o.reason, o.created_at,
            (SELECT MIN(s.at) FROM saga_steps s
              WHERE s.order_id = o.id AND s.name IN ('cancel_order', 'confirm_order') AND s.status = 'SUCCEEDED') AS ended_at
          FROM orders o`),
      );
    let all = await orders();
    for (let i = 0; i < 200 && all.some((o) => o.status !== "CANCELLED" && o.status !== "CONFIRMED"); i++) {
      await new Promise((r) => setTimeout(r, 100));
      all = await orders();
    }
    expect(all).toHaveLength(ORDERS);
    for (const o of all) {
      expect(o.status, o.id).toBe("CANCELLED");
      expect(o.reason, o.id).toMatch(/^payment unavailable/);
      const ms = (o.ended_at ?? Number.POSITIVE_INFINITY) - o.created_at;
      if (ms > BUDGET_MS + 5_000) late.push(`${o.id}: ${ms} ms`);
    }
    expect(late, `within the ${BUDGET_MS} ms step budget and 5 s`).toEqual([]);
    // Still inside the outage: no stock is held for any of them (choreography's release follows its event).
    const held = async () =>
      withDb({ engine: "sqlite", path: join(dir.path, "inventory.db") }, (db) =>
        db.all(sql<{ id: string; reserved: number }>`SELECT id, reserved FROM products WHERE reserved > 0`),
      );
    // The outage lasts until the finally below: a loaded machine may take seconds to deliver the event.
    await expect.poll(held, { timeout: 15_000, interval: 100 }).toEqual([]);
  } finally {
    await chaos.setFaults({ faults: {} });
    channel.close();
  }
  // Payment back: every pending refund lands.
  const pending = () =>
    withDb({ engine: "sqlite", path: join(dir.path, "order.db") }, (db) =>
      db.all(
        sql<{ id: string }>`SELECT id FROM orders WHERE status = 'CANCELLED' AND payment IN ('attempted', 'done')`,
      ),
    );
  for (let i = 0; i < 300 && (await pending()).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
  expect(await pending(), "no refund left pending").toEqual([]);
  const outcome = await expectCheckoutInvariants({
    order: { engine: "sqlite", path: join(dir.path, "order.db") },
    payment: { engine: "sqlite", path: join(dir.path, "payment.db") },
    inventory: { engine: "sqlite", path: join(dir.path, "inventory.db") },
  });
  expect(outcome.cancelled.size).toBe(ORDERS);
}, 150_000);
