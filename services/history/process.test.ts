/**
 * The history service and its rebuild command as real processes: the
 * service builds the view from the bus and exits 0 on SIGTERM; with the
 * database gone, `rebuild.ts` replays the streams, prints its progress and
 * exits 0, and the view is back as it was.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { HistoryService } from "../../gen/shopmesh/history/v1/history_pb.js";
import { StockReservedSchema } from "../../gen/shopmesh/inventory/v1/events_pb.js";
import { OrderConfirmedSchema, OrderPlacedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import { OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentSucceededSchema } from "../../gen/shopmesh/payment/v1/events_pb.js";
import { PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { connectBus } from "../../platform/bus.js";
import { createChannel, createClient } from "../../platform/grpc-client.js";
import { identityMetadata } from "../../platform/identity.js";
import { silentLogger } from "../../platform/log.js";
import { dropDatabase, snapshot, TestDatabases, withDb } from "../../test/db.js";
import { consumerSettled, event, publishEvents, until } from "../../test/events.js";
import { bufCurl, built, exited, ROOT, spawnService, tempDir } from "../../test/fixtures.js";
import { startNats } from "../../test/nats.js";
import { lockRebuild } from "./rebuild-aside.js";

/** Starts `services/history/<script>` from its build in dist/ (as make run and make history-rebuild do) with `env` (JSON logs). */
const launch = (script: string, env: Record<string, string>) =>
  spawn(process.execPath, built(`services/history/${script}`), {
    cwd: ROOT,
    env: { ...process.env, LOG_FORMAT: "json", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });

/** Runs `services/history/rebuild.ts` as its own process; its exit code and output. */
async function rebuild(
  env: Record<string, string>,
): Promise<{ code: number | string; stdout: string; stderr: string }> {
  const child = launch("rebuild.ts", env);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const code = await exited(child);
  return { code, stdout, stderr };
}

describe("history process", () => {
  it("serves the view built from the bus; the rebuild command restores it after the database is lost", async () => {
    await using nats = await startNats();
    using dir = tempDir();
    const dbs = new TestDatabases(dir.path);
    const location = await dbs.location("history");
    const env = { ...(await dbs.env("history")), NATS_URL: nats.url };
    const view = () => withDb(location, (db) => snapshot(db, ["order_history"]));
    const bus = await connectBus(nats.url, "history-process-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const svc = await spawnService("history", env);
      await using _svc = svc;
      await publishEvents(bus, [
        event(OrderPlacedSchema, "ord-p1", { customerId: "lea", items: [{ productId: "paper-filters", quantity: 3 }] }),
        event(StockReservedSchema, "ord-p1", { total: { currencyCode: "USD", amountMinor: 1200n } }),
        event(PaymentSucceededSchema, "ord-p1", {
          customerId: "lea",
          amount: { currencyCode: "USD", amountMinor: 1200n },
        }),
        event(OrderConfirmedSchema, "ord-p1", {
          customerId: "lea",
          total: { currencyCode: "USD", amountMinor: 1200n },
        }),
      ]);
      for (const [stream, durable] of [
        ["ORDER", "history-order"],
        ["INVENTORY", "history-inventory"],
        ["PAYMENT", "history-payment"],
      ] as const) {
        await consumerSettled(bus, stream, durable);
      }
      const ch = createChannel(svc.address);
      const lea = { metadata: identityMetadata({ subject: "lea", roles: ["customer"] }) };
      const { entries } = await createClient(HistoryService, ch).listOrderHistory({}, lea);
      ch.close();
      expect(entries).toHaveLength(1);
      expect(entries[0]).toMatchObject({
        orderId: "ord-p1",
        status: OrderStatus.CONFIRMED,
        paymentStatus: PaymentStatus.CAPTURED,
        total: { amountMinor: 1200n },
      });
      expect(await svc.kill("SIGTERM")).toBe(0);
      const before = await view();

      await dropDatabase(location);
      const run = await rebuild(env);
      expect(run.code, run.stderr).toBe(0);
      expect(run.stdout).toContain("ORDER: 2 events (2 applied, 0 duplicates, 0 skipped)");
      expect(run.stdout).toContain("INVENTORY: 1 events (1 applied");
      expect(run.stdout).toContain("PAYMENT: 1 events (1 applied");
      expect(run.stdout).toMatch(/total: 4 events \(4 applied, 0 duplicates, 0 skipped\) in \d+\.\d+ s; 1 orders/);
      expect(await view()).toBe(before);
    } finally {
      await bus.close();
    }
  });

  it("a rebuild is refused while the service runs, and a service started while a rebuild runs waits for it to end", async () => {
    await using nats = await startNats();
    using dir = tempDir();
    const dbs = new TestDatabases(dir.path);
    const location = await dbs.location("history");
    const env = { ...(await dbs.env("history")), NATS_URL: nats.url };
    {
      await using _svc = await spawnService("history", env);
      // It would swap the view from under the service, which would go on serving (and on SQLite
      // writing into) the one replaced: what it applied meanwhile was lost for good.
      const run = await rebuild(env);
      expect(run.code, run.stdout).toBe(1);
      expect(run.stderr).toMatch(
        /history rebuild refused: the view .* is in use by a history service or another rebuild/,
      );
    }
    // A rebuild holds the lock: a service starting meanwhile waits, and serves once it has ended.
    const { release } = await lockRebuild(location);
    const child = launch("main.ts", { LOG_LEVEL: "info", GRPC_PORT: "0", ...env });
    try {
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      const waiting = "a history rebuild is running: waiting for it to end (its view is served once it has)";
      await until(
        () => out,
        (o) => o.includes(waiting),
        60_000,
      );
      await new Promise((r) => setTimeout(r, 500));
      expect(out).not.toContain("gRPC server listening");
      await release();
      expect(
        await until(
          () => out,
          (o) => o.includes("gRPC server listening"),
          30_000,
        ),
      ).toContain("gRPC server listening");
    } finally {
      await release();
      const done = exited(child);
      child.kill("SIGTERM");
      expect(await done).toBe(0);
    }
  }, 90_000);

  it("names over reflection (v1 and v1alpha) only the services it serves, not those its imports declare", async () => {
    using dir = tempDir();
    await using svc = await spawnService("history", await new TestDatabases(dir.path).env("history"));
    const served = ["grpc.health.v1.Health", "shopmesh.chaos.v1.ChaosService", "shopmesh.history.v1.HistoryService"];
    for (const protocol of ["grpc-v1", "grpc-v1alpha"]) {
      const { stdout } = await bufCurl(["--list-services", "--reflect-protocol", protocol, `http://${svc.address}`]);
      // history.proto imports order.proto and payment.proto for their enums; their services are not here.
      expect(stdout.trim().split("\n").sort(), protocol).toEqual(served);
    }
    // The imported files are still described, for the types the served methods use.
    const { stdout } = await bufCurl(["--list-methods", `http://${svc.address}`]);
    expect(stdout).toContain("shopmesh.history.v1.HistoryService/ListOrderHistory");
  });

  it("refuses to rebuild without the bus, naming the variable", async () => {
    using dir = tempDir();
    const run = await rebuild({ DB_PATH: join(dir.path, "h.db"), NATS_URL: "off" });
    expect(run.code).toBe(78);
    expect(run.stderr).toContain("NATS_URL");
  });
});
