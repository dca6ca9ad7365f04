/**
 * The inventory service as a real process: reflection seen by `buf curl`,
 * standard health, graceful drain on SIGTERM, data surviving a restart, and a
 * bad variable refused at start.
 */
import { spawn } from "node:child_process";
import { describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { ChaosService } from "../../gen/shopmesh/chaos/v1/chaos_pb.js";
import { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { createChannel, createClient } from "../../platform/grpc-client.js";
import { TestDatabases } from "../../test/db.js";
import { bufCurl, built, exited, ROOT, spawnService, tempDir } from "../../test/fixtures.js";

describe("inventory process", () => {
  it("lists its methods over reflection to buf curl and answers a call by name", async () => {
    using dir = tempDir();
    await using svc = await spawnService("inventory", await new TestDatabases(dir.path).env("inventory"));
    const { stdout } = await bufCurl(["--list-methods", `http://${svc.address}`]);
    const methods = stdout.trim().split("\n");
    for (const m of ["ListProducts", "GetProduct", "ReserveStock", "ReleaseStock", "Restock"]) {
      expect(methods).toContain(`shopmesh.inventory.v1.InventoryService/${m}`);
    }
    expect(methods).toContain("grpc.health.v1.Health/Check");
    const res = await bufCurl([
      "-d",
      '{"product_id":"ceramic-mug"}',
      `http://${svc.address}/shopmesh.inventory.v1.InventoryService/GetProduct`,
    ]);
    expect(JSON.parse(res.stdout)).toMatchObject({ product: { id: "ceramic-mug", available: 200 } });
  });

  it("reports SERVING, drains an in-flight call on SIGTERM, and keeps its data across a restart", async () => {
    using dir = tempDir();
    const env = await new TestDatabases(dir.path).env("inventory");
    let svc = await spawnService("inventory", env);
    const ch = createChannel(svc.address);
    const health = createClient(Health, ch);
    expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    expect((await health.check({ service: "shopmesh.inventory.v1.InventoryService" })).status).toBe(
      HealthCheckResponse_ServingStatus.SERVING,
    );

    const inventory = createClient(InventoryService, ch);
    const reserved = (
      await inventory.reserveStock({
        idempotencyKey: "survive-1",
        orderId: "o-1",
        items: [{ productId: "coffee-beans", quantity: 7 }],
      })
    ).reservation;

    // A slow call is in flight when SIGTERM arrives: it completes, then the process exits 0.
    await createClient(ChaosService, ch).setFaults({ faults: { latencyMs: 700 } });
    const slow = inventory.getProduct({ productId: "coffee-beans" });
    await new Promise((r) => setTimeout(r, 150));
    const code = svc.kill("SIGTERM");
    expect((await slow).product?.available).toBe(93);
    expect(await code).toBe(0);
    ch.close();

    svc = await spawnService("inventory", env);
    await using _restarted = svc;
    const ch2 = createChannel(svc.address);
    const again = createClient(InventoryService, ch2);
    expect((await again.getProduct({ productId: "coffee-beans" })).product).toMatchObject({
      available: 93,
      reserved: 7,
    });
    // The reservation and its key survived too: a replay returns the first result.
    const replay = (
      await again.reserveStock({
        idempotencyKey: "survive-1",
        orderId: "o-1",
        items: [{ productId: "coffee-beans", quantity: 7 }],
      })
    ).reservation;
    expect(replay?.id).toBe(reserved?.id);
    ch2.close();
  }, 60_000); // two services started and a drain: most of the default 30 s on a loaded machine

  it("refuses to start on a bad variable, naming it", async () => {
    const child = spawn(process.execPath, built("services/inventory/main.ts"), {
      cwd: ROOT,
      env: { ...process.env, GRPC_PORT: "not-a-port", FAULT_ERROR_RATE: "2" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    expect(await exited(child)).toBe(78);
    expect(err).toContain("GRPC_PORT");
    expect(err).toContain("FAULT_ERROR_RATE");
  });
});
