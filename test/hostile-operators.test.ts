/**
 * Hostile round on operators racing each other across replicas (postgres project only): two gateways
 * following the registry, two replicas of order, payment and inventory on one PostgreSQL, orders
 * flowing through the gateways — and two operators acting at the same moment: setting a service's
 * faults from both gateways with different settings, setting them while a replica is SIGKILLed, and
 * starting the history rebuild twice at once. Each must end with one effect, state that converges, and
 * a typed error for the loser, never INTERNAL or UNKNOWN.
 */
import { Code, ConnectError, createClient as createConnectClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../contracts/events.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { ChaosService } from "../gen/shopmesh/chaos/v1/chaos_pb.js";
import { OperatorService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { connectBus } from "../platform/bus.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { silentLogger } from "../platform/log.js";
import type { DbLocation } from "../platform/sql.js";
import { withDb } from "./db.js";
import { built, runToEnd, type ServiceProcess, spawnGateway, spawnService } from "./fixtures.js";
import { startNats, type TestNats } from "./nats.js";
import { startPostgres, type TestPostgres } from "./postgres.js";
import { PRODUCTS, replicaEnv, unfinishedOrders } from "./replicas.js";

let pg: TestPostgres;
let nats: TestNats;
let databaseUrl: string;
const at = (schema: string): DbLocation => ({ engine: "postgres", url: databaseUrl, schema, poolSize: 2 });
const replicas: Record<string, ServiceProcess[]> = {};
const started: ServiceProcess[] = [];
const gateways: ServiceProcess[] = [];

async function startReplica(name: string): Promise<ServiceProcess> {
  const p = await spawnService(name, replicaEnv(name, nats.url, databaseUrl, 3), 60_000);
  started.push(p);
  return p;
}

const token = (roles: ("admin" | "customer")[], sub: string) =>
  signDevToken({ JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" }, sub, roles);
const operatorAt = (gw: ServiceProcess) =>
  createConnectClient(
    OperatorService,
    createConnectTransport({ baseUrl: `http://127.0.0.1:${gw.port}`, httpVersion: "1.1" }),
  );

/** The faults each live replica of `name` has in force, read from it directly. */
async function faultsOf(name: string): Promise<string[]> {
  return Promise.all(
    (replicas[name] ?? []).map(async (r) => {
      const c = createChannel(r.address);
      try {
        const { faults } = await createClient(ChaosService, c).getFaults({}, { timeoutMs: 5_000 });
        return JSON.stringify({ latencyMs: faults?.latencyMs, errorRate: faults?.errorRate, down: faults?.down });
      } finally {
        c.close();
      }
    }),
  );
}

/** Orders placed through the gateways, one after another on each, until `stop()`: the statuses seen. */
function traffic(): { stop(): Promise<number[]> } {
  let stopped = false;
  const statuses: number[] = [];
  const run = async (gw: ServiceProcess, w: number) => {
    const auth = `Bearer ${await token(["customer"], `ops-c${w}`)}`;
    for (let i = 0; !stopped; i++) {
      const res = await fetch(`http://127.0.0.1:${gw.port}/shopmesh.order.v1.OrderService/PlaceOrder`, {
        method: "POST",
        headers: { authorization: auth, "content-type": "application/json" },
        body: JSON.stringify({
          idempotencyKey: `ops-${w}-${i}-${Date.now()}`,
          items: [{ productId: PRODUCTS[i % PRODUCTS.length], quantity: 1 }],
          cardToken: "tok_visa",
          sagaMode: i % 2 === 0 ? "SAGA_MODE_ORCHESTRATION" : "SAGA_MODE_CHOREOGRAPHY",
        }),
      }).catch(() => ({ status: 0 }));
      statuses.push(res.status);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const all = Promise.all(gateways.map((gw, w) => run(gw, w)));
  return {
    async stop() {
      stopped = true;
      await all;
      return statuses;
    },
  };
}

beforeAll(async () => {
  pg = await startPostgres();
  databaseUrl = await pg.createDatabase("hostileops");
  nats = await startNats();
  const names = ["inventory", "inventory", "payment", "payment", "order", "order"];
  const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), `registry:///${u}`]));
  const gatewayEnv = {
    HTTP_HOST: "127.0.0.1",
    ...targets,
    NATS_URL: nats.url,
    METRICS_PORT: "0",
    FAULT_INJECTION: "true",
  };
  const [procs, gws] = await Promise.all([
    Promise.all(names.map(startReplica)),
    Promise.all([0, 1].map(() => spawnGateway(gatewayEnv, 60_000))),
  ]);
  for (const [i, n] of names.entries()) replicas[n] = [...(replicas[n] ?? []), procs[i] as ServiceProcess];
  started.push(...gws);
  gateways.push(...gws);
  // Both gateways know both payment replicas before an operator acts.
  const admin = { authorization: `Bearer ${await token(["admin"], "ops-admin")}` };
  for (const gw of gateways) {
    for (let until = Date.now() + 15_000; ; await new Promise((r) => setTimeout(r, 100))) {
      const status = await operatorAt(gw).getSystemStatus({}, { headers: admin });
      if (status.services.find((s) => s.service === "payment")?.instances.length === 2) break;
      if (Date.now() > until) throw new Error(`the gateway at ${gw.address} never saw both payment replicas`);
    }
  }
}, 120_000);

afterAll(async () => {
  await Promise.all(started.map((p) => p.kill("SIGKILL")));
  await nats?.[Symbol.asyncDispose]();
  await pg?.[Symbol.asyncDispose]();
});

describe("two operators setting one service's faults at once, from two gateways", () => {
  it("every replica ends on one setting, one an operator was told is in force; the other is told ABORTED or was overtaken", async () => {
    const h = { headers: { authorization: `Bearer ${await token(["admin"], "ops-admin")}` } };
    const [a, b] = gateways.map(operatorAt);
    const load = traffic();
    const mixes: string[] = [];
    try {
      for (let round = 1; round <= 25; round++) {
        const mine = { latencyMs: round };
        const theirs = { latencyMs: 100 + round };
        const answers = await Promise.allSettled([
          a?.setServiceFaults({ service: "payment", faults: mine }, h),
          b?.setServiceFaults({ service: "payment", faults: theirs }, h),
        ]);
        for (const r of answers) {
          if (r.status === "rejected") expect(ConnectError.from(r.reason).code, String(r.reason)).toBe(Code.Aborted);
        }
        const inForce = await faultsOf("payment");
        if (new Set(inForce).size !== 1) mixes.push(`round ${round}: ${inForce.join(" / ")}`);
        const won = answers.flatMap((r, i) => (r.status === "fulfilled" ? [i === 0 ? mine : theirs] : []));
        expect(won.length, `round ${round}: at least one operator's setting took`).toBeGreaterThan(0);
        expect(
          won.map((w) => JSON.stringify({ latencyMs: w.latencyMs, errorRate: 0, down: false })),
          `round ${round}`,
        ).toContain(inForce[0]);
      }
      expect(mixes, "replicas left on different settings").toEqual([]);
    } finally {
      await a?.setServiceFaults({ service: "payment", faults: {} }, h);
      const statuses = await load.stop();
      expect(statuses.filter((s) => s >= 500 || s === 0)).toEqual([]);
    }
  }, 40_000);
});

describe("an operator setting faults while a replica is SIGKILLed and comes back", () => {
  it("the call answers OK or UNAVAILABLE, never INTERNAL or UNKNOWN; set again, every replica has it", async () => {
    const h = { headers: { authorization: `Bearer ${await token(["admin"], "ops-admin")}` } };
    const [a, b] = gateways.map(operatorAt);
    const payment = replicas.payment as ServiceProcess[];
    // The other operator reads the panel at the same moment: the dead instance is shown not serving,
    // the call itself never fails.
    const [set, killed, status] = await Promise.allSettled([
      a?.setServiceFaults({ service: "payment", faults: { latencyMs: 5 } }, h),
      payment[0]?.kill("SIGKILL"),
      (async () => {
        await new Promise((r) => setTimeout(r, 20));
        return b?.getSystemStatus({}, h);
      })(),
    ]);
    expect(killed).toMatchObject({ status: "fulfilled", value: "SIGKILL" });
    if (set?.status === "rejected") expect(ConnectError.from(set.reason).code).toBe(Code.Unavailable);
    expect(status.status, String(status.status === "rejected" && status.reason)).toBe("fulfilled");
    payment[0] = await startReplica("payment");
    // The dead replica's entry lasts until its TTL: until then a setting cannot reach every instance
    // listed, and says so (UNAVAILABLE); the other operator's clearing races it the whole time.
    const codes = new Set<Code>();
    for (let until = Date.now() + 20_000; ; await new Promise((r) => setTimeout(r, 200))) {
      const answers = await Promise.allSettled([
        a?.setServiceFaults({ service: "payment", faults: { latencyMs: 7 } }, h),
        b?.setServiceFaults({ service: "payment", faults: {} }, h),
      ]);
      for (const r of answers) if (r.status === "rejected") codes.add(ConnectError.from(r.reason).code);
      const inForce = await faultsOf("payment");
      if (answers.every((r) => r.status === "fulfilled" && r.value?.instances === 2) && new Set(inForce).size === 1)
        break;
      if (Date.now() > until) throw new Error(`never converged: ${inForce.join(" / ")}; codes ${[...codes]}`);
    }
    expect([...codes].filter((c) => c !== Code.Unavailable && c !== Code.Aborted)).toEqual([]);
    await a?.setServiceFaults({ service: "payment", faults: {} }, h);
    expect(new Set(await faultsOf("payment"))).toEqual(
      new Set([JSON.stringify({ latencyMs: 0, errorRate: 0, down: false })]),
    );
  }, 40_000);
});

/** services/history/rebuild.ts, as an operator runs it by hand or a Job does. */
function rebuild(): Promise<{ code: number | string; out: string }> {
  const env = { ...process.env };
  for (const k of ["DB", "DB_PATH", "DATABASE_SCHEMA", "PG_PORT", "NATS_PORT"]) delete env[k];
  return runToEnd(process.execPath, built("services/history/rebuild.ts"), {
    env: { ...env, NATS_URL: nats.url, DATABASE_URL: databaseUrl, DATABASE_POOL_SIZE: "3" },
  });
}

describe("two operators starting the history rebuild at once while orders flow and an order replica drains", () => {
  it("one rebuild runs and the other is refused (or runs after it); no call fails; two replicas then serve a view equal to the orders", async () => {
    const load = traffic();
    // Meanwhile an order replica is drained (SIGTERM: it leaves the registry, then ends its calls)
    // while both gateways route to it, and a new one takes its place.
    const order = replicas.order as ServiceProcess[];
    const drained = (async () => {
      expect(await order[0]?.kill("SIGTERM")).toBe(0);
      order[0] = await startReplica("order");
    })();
    const runs = await Promise.all([rebuild(), rebuild()]);
    // Two history replicas on the rebuilt view, started while the order replica may still drain.
    const history = Promise.all([startReplica("history"), startReplica("history")]);
    await drained;
    await new Promise((r) => setTimeout(r, 1_000));
    const statuses = await load.stop();
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    const codes = runs.map((r) => r.code).sort();
    const out = runs.map((r) => r.out).join("\n----\n");
    expect(
      codes.every((c) => c === 0 || c === 1),
      out,
    ).toBe(true);
    expect(codes[0], out).toBe(0);
    for (const r of runs.filter((r) => r.code === 1)) {
      expect(r.out).toContain("is in use by a history service or another rebuild");
    }
    replicas.history = await history;
    for (let until = Date.now() + 30_000; (await unfinishedOrders(at("shopmesh_order"))) > 0; ) {
      if (Date.now() > until) throw new Error("orders still in flight");
      await new Promise((r) => setTimeout(r, 250));
    }
    const q = sql<{ id: string; status: string }>`SELECT id, status FROM orders ORDER BY id`;
    const orders = await withDb(at("shopmesh_order"), (db) => db.all(q));
    const view = async () =>
      withDb(at("shopmesh_history"), (db) =>
        db.all(sql<{ id: string; status: string }>`SELECT order_id AS id, status FROM order_history ORDER BY order_id`),
      );
    for (let until = Date.now() + 20_000; ; await new Promise((r) => setTimeout(r, 250))) {
      const v = await view();
      if (JSON.stringify(v) === JSON.stringify(orders)) break;
      if (Date.now() > until) expect(v).toEqual(orders);
    }
  }, 60_000);
});

describe("two operators reading the dead letters at once, two history replicas on one durable", () => {
  it("one poison event is lettered once, and both listings show it and end", async () => {
    const bus = await connectBus(nats.url, "hostile-operators-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const h = natsHeaders();
      h.set("ce-type", OrderPlacedSchema.typeName);
      h.set("ce-id", "evt_ops_poison");
      await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff, 0xff]), {
        headers: h,
        msgID: "evt_ops_poison",
      });
      for (let until = Date.now() + 10_000; (await bus.jsm.streams.info("DLQ")).state.messages < 1; ) {
        if (Date.now() > until) throw new Error("never dead-lettered");
        await new Promise((r) => setTimeout(r, 100));
      }
      const list = () =>
        runToEnd(process.execPath, [...built("scripts/events.ts"), "--dlq"], {
          env: { ...process.env, NATS_URL: nats.url },
        });
      const listings = await Promise.all([list(), list()]);
      for (const l of listings) {
        expect(l.code, l.out).toBe(0);
        expect(l.out.match(/reason: undecodable shopmesh\.order\.v1\.OrderPlaced payload/g), l.out).toHaveLength(1);
        expect(l.out).toContain("1 dead letter(s)");
      }
      expect((await bus.jsm.streams.info("DLQ")).state.messages).toBe(1);
    } finally {
      await bus.close();
    }
  }, 30_000);
});
