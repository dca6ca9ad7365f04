/**
 * Hostile round on scale-out as an operator runs it (postgres project only): a fresh PostgreSQL set
 * up by the deployment's own roles.sh, every service connecting as its own least-privilege role (not
 * the superuser test/scale-out.test.ts uses), two replicas of order, payment and inventory, one of
 * notification and history — then replicas of all three SIGKILLed mid-burst in both saga modes, every
 * backend of a role ended by pg_terminate_backend while it relays, and the history view rebuilt as
 * the history role while orders keep flowing. Invariants are read from the databases afterwards, as
 * the superuser; what the services do, they do as their roles.
 */
import { type ChildProcess, execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET, targetVariable } from "../gateway/config.js";
import { UPSTREAMS } from "../gateway/routes.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { type Bus, connectBus } from "../platform/bus.js";
import { RpcError } from "../platform/errors.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { silentLogger } from "../platform/log.js";
import type { DbLocation } from "../platform/sql.js";
import { withDb } from "./db.js";
import { built, exited, ROOT, runToEnd, type ServiceProcess, spawnGateway, spawnService } from "./fixtures.js";
import { expectCheckoutInvariants, expectEffectsOnce, expectFencedStepLog, expectOutboxDrained } from "./invariants.js";
import { startNats, type TestNats } from "./nats.js";
import { startPostgres, type TestPostgres } from "./postgres.js";
import { orderReplicasClient, PRODUCTS, replicaEnv, unfinishedOrders, customer as who } from "./replicas.js";

const SERVICES = ["inventory", "payment", "order", "notification", "history"] as const;
type Service = (typeof SERVICES)[number];
const REPLICAS: Record<Service, number> = { inventory: 2, payment: 2, order: 2, notification: 1, history: 1 };
const PASSWORD = "not-a-secret";
const log = silentLogger();

let server: TestPostgres;
let nats: TestNats;
let bus: Bus;
let dbName: string;
/** A service's own role's URL, as its Deployment gets it from the postgres-credentials Secret. */
const roleUrl = (role: Service) => `postgres://${role}:${PASSWORD}@127.0.0.1:${server.port}/${dbName}`;
/** A schema as the superuser sees it (for the checks only). */
const admin = (schema: string): DbLocation => ({
  engine: "postgres",
  url: `postgres://postgres@127.0.0.1:${server.port}/${dbName}`,
  schema,
  poolSize: 2,
});
const dbs = {
  get order() {
    return admin("shopmesh_order");
  },
  get payment() {
    return admin("shopmesh_payment");
  },
  get inventory() {
    return admin("shopmesh_inventory");
  },
};

const replicas: Record<string, ServiceProcess[]> = {};
const started: ServiceProcess[] = [];

const envOf = (name: Service) => replicaEnv(name, nats.url, roleUrl(name), 4);

async function startReplica(name: Service): Promise<ServiceProcess> {
  const p = await spawnService(name, envOf(name), 90_000);
  started.push(p);
  return p;
}

/** Replaces every replica that has exited. */
async function revive(): Promise<void> {
  for (const [name, list] of Object.entries(replicas)) {
    for (const [i, r] of list.entries()) {
      if (r.child.exitCode !== null || r.child.signalCode !== null) list[i] = await startReplica(name as Service);
    }
  }
}

const orderClient = () =>
  orderReplicasClient(
    (replicas.order ?? []).map((r) => r.address),
    log,
  );

/** Places `n` orders (keys `prefix-i`), both saga modes, paced; the ids placed and the client failures. */
async function burst(prefix: string, n: number, gapMs = 40): Promise<{ placed: string[]; failures: string[] }> {
  const orders = orderClient();
  const placed: string[] = [];
  const failures: string[] = [];
  const place = async (i: number) => {
    try {
      const { order } = await orders.placeOrder(
        {
          idempotencyKey: `${prefix}-${i}`,
          items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 + (i % 2) }],
          cardToken: i % 9 === 0 ? "tok_decline" : "tok_visa",
          sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
        },
        { ...who(`c${i % 7}`), timeoutMs: 30_000 },
      );
      placed.push(order?.id ?? "");
    } catch (err) {
      failures.push(err instanceof RpcError ? `${err.codeName}: ${err.message}` : String(err));
    }
  };
  try {
    const inFlight: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      inFlight.push(place(i));
      if (i % 10 === 9) await new Promise((r) => setTimeout(r, gapMs));
    }
    await Promise.all(inFlight);
  } finally {
    orders.close();
  }
  return { placed, failures };
}

const unfinished = () => unfinishedOrders(dbs.order);

async function allSettled(): Promise<void> {
  await expect.poll(unfinished, { timeout: 120_000, interval: 250 }).toBe(0);
}

beforeAll(async () => {
  server = await startPostgres();
  dbName = new URL(await server.createDatabase("hostilescale")).pathname.slice(1);
  // The deployment's roles.sh, as the image runs it on an empty volume.
  const script = readFileSync(join(ROOT, "deploy/kubernetes/base/postgres/roles.sh"), "utf8");
  execFileSync("bash", ["-c", `set -Eeo pipefail\n${script}`], {
    env: {
      ...process.env,
      ...Object.fromEntries(SERVICES.map((s) => [`${s.toUpperCase()}_DB_PASSWORD`, PASSWORD])),
      POSTGRES_USER: "postgres",
      POSTGRES_DB: dbName,
      PGHOST: "127.0.0.1",
      PGPORT: String(server.port),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  nats = await startNats();
  bus = await connectBus(nats.url, "hostile-scale-test", log);
  // Every replica of every service at once, on schemas that exist but hold nothing yet: a rollout of a
  // fresh cluster. Each replica migrates (or waits for its sibling to) as its own role.
  const all = SERVICES.flatMap((s) => Array.from({ length: REPLICAS[s] }, () => s));
  const procs = await Promise.all(all.map((s) => startReplica(s)));
  for (const s of SERVICES) replicas[s] = procs.filter((_, i) => all[i] === s);
}, 240_000);

afterAll(async () => {
  await Promise.all(started.map((p) => p.kill("SIGKILL")));
  await bus?.close();
  await nats?.[Symbol.asyncDispose]();
  await server?.[Symbol.asyncDispose]();
});

describe("a fresh cluster, every replica started at once as its own role", () => {
  it("each schema is migrated once, owned by its role alone, and no replica logged an error", async () => {
    for (const s of SERVICES) {
      const owners = await withDb(admin(`shopmesh_${s}`), (q) =>
        q.all(sql<{ owner: string; n: number }>`SELECT tableowner AS owner, COUNT(*) AS n FROM pg_tables
          WHERE schemaname = ${`shopmesh_${s}`} GROUP BY tableowner`),
      );
      expect(
        owners.map((o) => o.owner),
        s,
      ).toEqual([s]);
      const versions = await withDb(admin(`shopmesh_${s}`), (q) =>
        q.all(sql<{ version: number }>`SELECT version FROM schema_version`),
      );
      expect(versions.length, `${s}: one schema_version row`).toBe(1);
    }
    for (const p of started) {
      const errors = p
        .output()
        .split("\n")
        .filter((l) => /"level":(50|60)|"level":"(error|fatal)"/.test(l));
      expect(errors, p.address).toEqual([]);
    }
  });
});

describe("replicas of order, payment and inventory SIGKILLed mid-burst, both saga modes", () => {
  it("no order lost or stuck, none charged twice, stock conserved, every effect once", async () => {
    const run = burst("kill", 240);
    // One of each, in turn, while sagas are in flight on every replica; each comes back at once.
    for (const name of ["payment", "order", "inventory"] as const) {
      await new Promise((r) => setTimeout(r, 1_000));
      const list = replicas[name] as ServiceProcess[];
      expect(await list[0]?.kill("SIGKILL")).toBe("SIGKILL");
      list[0] = await startReplica(name);
    }
    const { placed, failures } = await run;
    expect(failures).toEqual([]);
    expect(new Set(placed).size).toBe(240);
    await allSettled();
    const outcome = await expectCheckoutInvariants(dbs);
    expect(outcome.confirmed.size + outcome.cancelled.size).toBeGreaterThanOrEqual(240);
    await expectFencedStepLog(dbs.order);
    await expectEffectsOnce(bus, admin);
  }, 300_000);
});

describe("a rolling update mid-burst: a replica of payment, order and inventory SIGTERMed in turn, its successor up first", () => {
  it("each drains and exits 0 with no error logged, no client call fails, every invariant holds, every effect once", async () => {
    const run = burst("rollout", 240);
    const stopped: ServiceProcess[] = [];
    // As a Deployment with maxSurge 1 and maxUnavailable 0 rolls: the new pod is ready before the old one's SIGTERM.
    for (const name of ["payment", "order", "inventory"] as const) {
      await new Promise((r) => setTimeout(r, 1_000));
      const list = replicas[name] as ServiceProcess[];
      const old = list[0] as ServiceProcess;
      list[0] = await startReplica(name);
      expect(await old.kill("SIGTERM"), `${name} exit code\n${old.output()}`).toBe(0);
      stopped.push(old);
    }
    const { placed, failures } = await run;
    expect(failures).toEqual([]);
    expect(new Set(placed).size).toBe(240);
    await allSettled();
    const outcome = await expectCheckoutInvariants(dbs);
    expect(outcome.confirmed.size + outcome.cancelled.size).toBeGreaterThanOrEqual(240);
    await expectFencedStepLog(dbs.order);
    await expectEffectsOnce(bus, admin);
    for (const p of stopped) {
      const errors = p
        .output()
        .split("\n")
        .filter((l) => /"level":(50|60)/.test(l));
      expect(errors, p.address).toEqual([]);
      expect(p.output(), p.address).toContain('"msg":"draining calls in flight"');
    }
  }, 300_000);
});

/** Ends every backend of `roles` (as an operator's pg_terminate_backend would); how many. */
async function terminate(roles: readonly string[]): Promise<number> {
  const c = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${server.port}/${dbName}` });
  await c.connect();
  try {
    const { rows } = await c.query<{ ok: boolean }>(
      "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE usename = ANY($1) AND datname = $2",
      [roles, dbName],
    );
    return rows.filter((r) => r.ok).length;
  } finally {
    await c.end();
  }
}

describe("every backend of order, payment and inventory terminated while they relay, again and again", () => {
  it("the replicas reconnect; nothing is published twice or dropped, every invariant holds", async () => {
    // The replicas running now (those a rollout above stopped, exiting 0, are not among them).
    const running = started.filter((p) => p.child.exitCode === null && p.child.signalCode === null);
    const run = burst("terminated", 200);
    let ended = 0;
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 600));
      ended += await terminate(["order", "payment", "inventory"]);
    }
    const { placed, failures } = await run;
    expect(ended, "backends ended").toBeGreaterThan(0);
    expect(failures).toEqual([]);
    expect(new Set(placed).size).toBe(200);
    expect(
      running.filter((p) => p.child.exitCode !== null),
      "no replica died of it",
    ).toEqual([]);
    await allSettled();
    await expectCheckoutInvariants(dbs);
    await expectFencedStepLog(dbs.order);
    await expectEffectsOnce(bus, admin);
  }, 300_000);
});

/** services/history/rebuild.ts as the history role (as a Job would run it with history's Secret key). */
function rebuild(): Promise<{ code: number | string; out: string }> {
  const env = { ...process.env };
  for (const k of ["DB", "DB_PATH", "DATABASE_SCHEMA", "PG_PORT", "NATS_PORT"]) delete env[k];
  return runToEnd(process.execPath, built("services/history/rebuild.ts"), {
    env: { ...env, NATS_URL: nats.url, DATABASE_URL: roleUrl("history"), DATABASE_POOL_SIZE: "4" },
  });
}

describe("the history view rebuilt as the history role while orders keep flowing", () => {
  it("refused while history runs; with it stopped, swapped in, and once history is back the view equals the orders", async () => {
    const refused = await rebuild();
    expect(refused.out).toContain("in use by a history service");
    expect(refused.code).toBe(1);

    const history = replicas.history as ServiceProcess[];
    expect(await history[0]?.kill("SIGTERM")).toBe(0);
    const run = burst("rebuilt", 150, 200);
    await new Promise((r) => setTimeout(r, 1_000));
    const done = await rebuild();
    expect(done.out, done.out).toContain("orders in the view, now schema shopmesh_history");
    expect(done.code, done.out).toBe(0);
    history[0] = await startReplica("history");
    const { placed, failures } = await run;
    expect(failures).toEqual([]);
    expect(new Set(placed).size).toBe(150);
    await allSettled();
    await expectCheckoutInvariants(dbs);
    await expectEffectsOnce(bus, admin);
    const [orders, views] = await Promise.all([
      withDb(dbs.order, (q) => q.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM orders`)),
      withDb(admin("shopmesh_history"), (q) => q.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM order_history`)),
    ]);
    expect(views?.n).toBe(orders?.n);
    // The view is history's still: its schema and every table in it.
    const owners = await withDb(admin("shopmesh_history"), (q) =>
      q.all(sql<{ owner: string }>`SELECT DISTINCT pg_get_userbyid(nspowner) AS owner FROM pg_namespace
        WHERE nspname LIKE 'shopmesh_history%' UNION SELECT DISTINCT tableowner FROM pg_tables
        WHERE schemaname LIKE 'shopmesh_history%'`),
    );
    expect(owners.map((o) => o.owner)).toEqual(["history"]);
  }, 300_000);
});

describe("no role was refused anything, whatever happened above", () => {
  it("no process logged a permission error", () => {
    // PostgreSQL's insufficient_privilege (42501), by its messages or its code as a logged error
    // carries it: a bare "42501" also matches hex trace ids and decimals — the likely cause of the one
    // unexplained failure (a local CI run of daddb66, whose line was not shown). One string, so a
    // failure's first line (all CI keeps) shows the line itself, not "Array(1)".
    const refusals = started.flatMap((p) =>
      p
        .output()
        .split("\n")
        .filter((l) => /permission denied|must be (owner|superuser|member)|"code":"42501"/.test(l))
        .map((l) => `pid ${p.child.pid}: ${l.slice(0, 600)}`),
    );
    expect(refusals.join(" | ")).toBe("");
  });
});

describe("every replica of payment and inventory SIGKILLed at once mid-burst, then both order replicas at once", () => {
  it("the sagas wait the outage out and the orders finish; every invariant holds, every effect once", async () => {
    const run = burst("outage", 160);
    await new Promise((r) => setTimeout(r, 1_000));
    await Promise.all([...(replicas.payment ?? []), ...(replicas.inventory ?? [])].map((p) => p.kill("SIGKILL")));
    const { placed, failures } = await run;
    expect(failures).toEqual([]);
    expect(new Set(placed).size).toBe(160);
    // Sagas waiting on both order replicas for payment and inventory: then nobody holds them.
    const inFlight = await unfinished();
    expect(inFlight, "orders in flight when both order replicas die").toBeGreaterThan(0);
    await Promise.all((replicas.order ?? []).map((p) => p.kill("SIGKILL")));
    await revive();
    await allSettled();
    await expectCheckoutInvariants(dbs);
    await expectFencedStepLog(dbs.order);
    await expectEffectsOnce(bus, admin);
  }, 300_000);
});

describe("the gateway following order replicas through the registry while they die and freeze", () => {
  it("a SIGKILLed replica costs no client a 5xx; a frozen one is left once its entry expires", async () => {
    const targets = Object.fromEntries(UPSTREAMS.map((u) => [targetVariable(u), `registry:///${u}`]));
    const gw = await spawnGateway({
      HTTP_HOST: "127.0.0.1",
      ...targets,
      NATS_URL: nats.url,
      METRICS_PORT: "0",
      RATE_LIMIT_IP_RPS: "100000",
      RATE_LIMIT_IP_BURST: "600",
      RATE_LIMIT_RPS: "100000",
      RATE_LIMIT_BURST: "600",
    });
    started.push(gw);
    const token = await signDevToken(
      { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" },
      "gwclient",
      ["customer"],
    );
    const statuses: { at: number; status: number; body: string }[] = [];
    let stop = false;
    let n = 0;
    const worker = async () => {
      while (!stop) {
        const i = n++;
        const res = await fetch(`http://127.0.0.1:${gw.port}/shopmesh.order.v1.OrderService/PlaceOrder`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({
            idempotencyKey: `gw-${i}`,
            items: [{ productId: PRODUCTS[i % PRODUCTS.length], quantity: 1 }],
            cardToken: "tok_visa",
            sagaMode: i % 2 === 0 ? "SAGA_MODE_ORCHESTRATION" : "SAGA_MODE_CHOREOGRAPHY",
          }),
        }).catch((err: Error) => ({ status: 0, text: async () => err.message }));
        statuses.push({ at: Date.now(), status: res.status, body: res.status === 200 ? "" : await res.text() });
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const workers = Array.from({ length: 4 }, worker);
    const order = replicas.order as ServiceProcess[];
    const metricsPort = Number((await gw.logLine("metrics on /metrics")).port);
    /** The order instances the gateway holds: its per-instance breaker gauge's lines for them. */
    const instances = async () =>
      (await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text())
        .split("\n")
        .filter((l) => l.startsWith("endpoint_circuit_breaker_state{") && l.includes('downstream="order"'));
    const holds = async (address: string) =>
      (await instances()).some((l) => l.includes(`:${address.split(":").at(-1)}"`));
    let frozenAt = 0;
    let leftAt = 0;
    try {
      await expect.poll(() => statuses.filter((s) => s.status === 200).length, { timeout: 30_000 }).toBeGreaterThan(20);
      const killedAt = Date.now();
      expect(await order[0]?.kill("SIGKILL")).toBe("SIGKILL");
      order[0] = await startReplica("order");
      await new Promise((r) => setTimeout(r, 3_000));
      const afterKill = statuses.filter((s) => s.at >= killedAt);
      expect(afterKill.filter((s) => s.status !== 200)).toEqual([]);
      const frozen = order[1] as ServiceProcess;
      expect(await holds(frozen.address), `the gateway holds ${frozen.address}: ${await instances()}`).toBe(true);
      frozenAt = Date.now();
      process.kill(frozen.child.pid ?? 0, "SIGSTOP");
      // No heartbeat refreshes its entry: it expires within the registry's TTL (6 s), and the gateway
      // leaves the replica — waited for, up to the 15 s this once slept for good. Calls go on after that.
      await expect
        .poll(() => holds(frozen.address), {
          timeout: 15_000,
          interval: 100,
          message: "the gateway still holds the frozen replica 15 s after the freeze",
        })
        .toBe(false);
      leftAt = Date.now();
      const late = () => statuses.filter((s) => s.at >= leftAt).length;
      await expect.poll(late, { timeout: 15_000, interval: 100 }).toBeGreaterThan(10);
    } finally {
      process.kill(order[1]?.child.pid ?? 0, "SIGCONT");
      stop = true;
      // The calls still running are awaited, and counted below.
      await Promise.all(workers);
    }
    const during = statuses.filter((s) => s.at >= frozenAt);
    const late = during.filter((s) => s.at >= leftAt);
    console.log(
      `hostile-scale: frozen order replica: ${during.length} calls, ${during.filter((s) => s.status !== 200).length} failed (${[
        ...new Set(during.filter((s) => s.status !== 200).map((s) => `${s.status} ${s.body.slice(0, 120)}`)),
      ].join("; ")}); left ${leftAt - frozenAt} ms after the freeze, ${late.length} calls since`,
    );
    expect(late.length, "calls still made after the gateway left the frozen replica").toBeGreaterThan(10);
    expect(late.filter((s) => s.status !== 200)).toEqual([]);
    await allSettled();
    await expectCheckoutInvariants(dbs);
  }, 120_000);
});

/** Node's `--import` of a module that sets this process's clock `ms` ahead (a node whose clock is off). */
const clockAhead = (ms: number) => [
  "--import",
  `data:text/javascript,const now = Date.now; Date.now = () => now() + ${ms};`,
];

describe("an order replica on a node whose clock is two minutes ahead, SIGKILLed", () => {
  it("the sagas it drove are adopted by the others within the lease, not once their clocks reach its own", async () => {
    const AHEAD_MS = 120_000;
    const skewed = await spawnService("order", envOf("order"), 90_000, clockAhead(AHEAD_MS));
    started.push(skewed);
    // Payment frozen: the sagas the skewed replica starts stay in flight until it dies.
    const payment = replicas.payment as ServiceProcess[];
    for (const p of payment) process.kill(p.child.pid ?? 0, "SIGSTOP");
    let held = 0;
    try {
      const orders = createClient(OrderService, createChannel(skewed.address));
      await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          orders.placeOrder(
            {
              idempotencyKey: `skew-${i}`,
              items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 }],
              cardToken: "tok_visa",
              sagaMode: SagaMode.ORCHESTRATION,
            },
            { ...who(`s${i % 5}`), timeoutMs: 30_000 },
          ),
        ),
      );
      held = await withDb(dbs.order, async (q) => {
        const r = await q.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM orders
          WHERE status IN ('PENDING', 'COMPENSATING') AND owner LIKE ${`%/${skewed.child.pid}/%`}`);
        return r?.n ?? 0;
      });
      expect(await skewed.kill("SIGKILL")).toBe("SIGKILL");
    } finally {
      for (const p of payment) process.kill(p.child.pid ?? 0, "SIGCONT");
    }
    expect(held, "sagas in flight on the skewed replica when it died").toBeGreaterThan(0);
    const killedAt = Date.now();
    // A dead replica's sagas are adopted within the lease (1.5 s): give them twenty times that.
    await expect.poll(unfinished, { timeout: 30_000, interval: 250 }).toBe(0);
    console.log(
      `hostile-scale: ${held} sagas on the skewed replica; all done ${Date.now() - killedAt} ms after its kill`,
    );
    await expectCheckoutInvariants(dbs);
    await expectFencedStepLog(dbs.order);
  }, 180_000);
});

describe("an order replica whose clock is two minutes ahead dies holding its outbox claim", () => {
  it("another replica's relay publishes the event once the claim's 5 s are up, not two minutes later", async () => {
    // The earlier tests' last events may still be unsent: the skewed relay, claiming one of them at
    // its start, died before it listened (CI, 2026-12-05). Its own order's row must be the first it takes.
    await expectOutboxDrained(admin("shopmesh_order"));
    const skewed = await spawnService(
      "order",
      { ...envOf("order"), FAULT_CRASH_BEFORE_PUBLISH: "true" },
      90_000,
      clockAhead(120_000),
    );
    started.push(skewed);
    const req = {
      idempotencyKey: "skew-relay",
      items: [{ productId: "coffee-beans", quantity: 1 }],
      cardToken: "tok_visa",
      sagaMode: SagaMode.CHOREOGRAPHY,
    };
    // Its relay claims the OrderPlaced row and dies right before publishing it: right after the commit,
    // so the answer may come first or never (the kill ends the call; CI met the latter under load).
    // The other order replicas are stopped meanwhile: their relays' sweep (every second) could take
    // the row first, and the skewed one, never publishing, never died (CI, 2026-12-06: timed out).
    const others = (replicas.order ?? []).map((r) => r.child.pid ?? 0);
    for (const pid of others) process.kill(pid, "SIGSTOP");
    try {
      await createClient(OrderService, createChannel(skewed.address))
        .placeOrder(req, { ...who("skew"), timeoutMs: 30_000 })
        .catch(() => undefined);
      const died = await Promise.race([exited(skewed.child), new Promise((r) => setTimeout(r, 30_000, "alive"))]);
      expect(died, "the skewed replica's relay took its order's event and crashed before publishing").toBe("SIGKILL");
    } finally {
      for (const pid of others) process.kill(pid, "SIGCONT");
    }
    const diedAt = Date.now();
    // The same key, at another replica, finds the order the dead one accepted.
    const { order: placed } = await orderClient().placeOrder(req, { ...who("skew"), timeoutMs: 30_000 });
    expect(placed?.id).toMatch(/.+/);
    await expect.poll(unfinished, { timeout: 30_000, interval: 250 }).toBe(0);
    console.log(`hostile-scale: choreographed order ${placed?.id} done ${Date.now() - diedAt} ms after the relay died`);
    await expectCheckoutInvariants(dbs);
    await expectEffectsOnce(bus, admin);
  }, 120_000);
});

/**
 * How many backends of `role` wait on a lock (of kind `event`, e.g. "advisory", when given), read on a
 * connection of its own: a transaction sees pg_stat_activity as it was at its first read.
 */
async function lockWaiters(role: string, event?: string): Promise<number> {
  const c = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${server.port}/${dbName}` });
  await c.connect();
  try {
    const { rows } = await c.query<{ n: string }>(
      `SELECT COUNT(*) AS n FROM pg_stat_activity
        WHERE usename = $1 AND wait_event_type = 'Lock' AND ($2::text IS NULL OR wait_event = $2)`,
      [role, event ?? null],
    );
    return Number(rows[0]?.n ?? 0);
  } finally {
    await c.end();
  }
}

describe("the notification replica told SIGTERM while its handler waits on a lock an operator's transaction holds", () => {
  it("exits within its grace, saying what it left; once the lock is gone every event takes effect once", async () => {
    const list = replicas.notification as ServiceProcess[];
    expect(await list[0]?.kill("SIGTERM")).toBe(0);
    const held = await spawnService("notification", { ...envOf("notification"), SHUTDOWN_GRACE_MS: "2000" }, 90_000);
    started.push(held);
    list[0] = held;
    const operator = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${server.port}/${dbName}` });
    await operator.connect();
    try {
      await operator.query("BEGIN");
      await operator.query("LOCK TABLE shopmesh_notification.notifications IN EXCLUSIVE MODE");
      const { failures } = await burst("locked", 20);
      expect(failures).toEqual([]);
      const waiting = () => lockWaiters("notification");
      await expect.poll(waiting, { timeout: 60_000, interval: 100 }).toBeGreaterThan(0);
      const signalled = Date.now();
      const code = await Promise.race([
        held.kill("SIGTERM"),
        new Promise((r) => setTimeout(r, 15_000, "still running 15 s after SIGTERM")),
      ]);
      expect(code, held.output()).toBe(0);
      expect(Date.now() - signalled).toBeLessThan(6_000);
      expect(held.output()).toContain('"msg":"waiting for the event handlers in progress"');
    } finally {
      await operator.query("COMMIT").catch(() => {});
      await operator.end();
    }
    await revive();
    await allSettled();
    await expectEffectsOnce(bus, admin);
  }, 180_000);
});

describe("an order replica told SIGTERM while an operator's transaction locks the orders its calls and sagas write", () => {
  it("exits 0 soon after its grace, saying what it left; once the lock is gone every order placed ends", async () => {
    const extra = await spawnService("order", { ...envOf("order"), SHUTDOWN_GRACE_MS: "2000" }, 90_000);
    started.push(extra);
    const operator = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${server.port}/${dbName}` });
    await operator.connect();
    const channel = createChannel(extra.address);
    const req = (i: number) => ({
      idempotencyKey: `order-locked-${i}`,
      items: [{ productId: PRODUCTS[i % PRODUCTS.length] ?? "coffee-beans", quantity: 1 }],
      cardToken: "tok_visa",
    });
    try {
      await operator.query("BEGIN");
      await operator.query("LOCK TABLE shopmesh_order.orders IN EXCLUSIVE MODE");
      const placing = Array.from({ length: 5 }, (_, i) =>
        createClient(OrderService, channel)
          .placeOrder(req(i), { ...who("locked"), timeoutMs: 30_000 })
          .catch((e: unknown) => e),
      );
      const waiting = () => lockWaiters("order");
      await expect.poll(waiting, { timeout: 60_000, interval: 100 }).toBeGreaterThan(0);
      const signalled = Date.now();
      const code = await Promise.race([
        extra.kill("SIGTERM"),
        new Promise((r) => setTimeout(r, 20_000, "still running 20 s after SIGTERM")),
      ]);
      expect(code, extra.output()).toBe(0);
      expect(Date.now() - signalled).toBeLessThan(8_000);
      expect(extra.output()).toContain(`"msg":"waiting for the service's own work to stop"`);
      // Cut at the grace: refused retryably, so a client calls again (below, on another replica).
      for (const r of await Promise.all(placing)) expect((r as RpcError).codeName).toBe("UNAVAILABLE");
    } finally {
      channel.close();
      await operator.query("COMMIT").catch(() => {});
      await operator.end();
    }
    const orders = orderClient();
    try {
      for (let i = 0; i < 5; i++) await orders.placeOrder(req(i), { ...who("locked"), timeoutMs: 30_000 });
    } finally {
      orders.close();
    }
    await allSettled();
    await expectCheckoutInvariants(dbs);
    await expectFencedStepLog(dbs.order);
  }, 180_000);
});

describe("a payment replica told SIGTERM while it waits for the migration lock a sibling holds", () => {
  it("exits 0 at once, the schema as it was; a replica started afterwards starts", async () => {
    const operator = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${server.port}/${dbName}` });
    await operator.connect();
    const version = () =>
      withDb(admin("shopmesh_payment"), (q) => q.all(sql<{ version: number }>`SELECT version FROM schema_version`));
    const before = await version();
    let child: ChildProcess | undefined;
    try {
      await operator.query("BEGIN");
      await operator.query("SELECT pg_advisory_xact_lock(hashtext($1))", ["shopmesh.migrate.shopmesh_payment"]);
      const env = { ...process.env, LOG_FORMAT: "json", LOG_LEVEL: "info", GRPC_PORT: "0", ...envOf("payment") };
      const run = runToEnd(process.execPath, built("services/payment/main.ts"), {
        env,
        onStart: (c) => (child = c),
      });
      const waiting = () => lockWaiters("payment", "advisory");
      await expect.poll(waiting, { timeout: 60_000, interval: 100 }).toBe(1);
      const signalled = Date.now();
      child?.kill("SIGTERM");
      const { code, out } = await run;
      expect(code, out).toBe(0);
      expect(Date.now() - signalled, out).toBeLessThan(3_000);
      // What it waited for, said while it waited (it was silent until the lock came).
      expect(out).toContain('"msg":"waiting for the migration lock: another process is migrating this schema"');
      expect(out).toContain('"msg":"signal while starting: exiting"');
    } finally {
      if (child?.exitCode === null) child.kill("SIGKILL");
      await operator.query("COMMIT").catch(() => {});
      await operator.end();
    }
    // PostgreSQL notices the gone client only once the lock is granted (its answer then has nowhere to
    // go): the backend waits until then, and ends, its transaction undone, having changed nothing.
    await expect.poll(() => lockWaiters("payment", "advisory"), { timeout: 10_000, interval: 100 }).toBe(0);
    expect(await version()).toEqual(before);
    const after = await startReplica("payment");
    expect(await after.kill("SIGTERM")).toBe(0);
  }, 120_000);
});
