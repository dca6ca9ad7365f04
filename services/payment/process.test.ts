/**
 * The payment service as a real process: a charge by name through `buf curl`
 * (reflection, JSON mapping of int64), read back with the typed client, a
 * clean exit on SIGTERM, a bad variable refused at start, and a start that
 * waits for JetStream (as pods do while NATS elects a leader) and stops at
 * once on SIGTERM meanwhile.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PaymentService, PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { createChannel, createClient } from "../../platform/grpc-client.js";
import { TestDatabases } from "../../test/db.js";
import { bufCurl, built, exited, freePort, outputReady, ROOT, spawnService, tempDir } from "../../test/fixtures.js";

describe("payment process", () => {
  it("charges through buf curl, serves the payment to the typed client, and exits 0 on SIGTERM", async () => {
    using dir = tempDir();
    await using svc = await spawnService("payment", await new TestDatabases(dir.path).env("payment"));
    const res = await bufCurl([
      "-d",
      JSON.stringify({
        idempotency_key: "proc-1",
        order_id: "ord-proc-1",
        customer_id: "cus-1",
        amount: { currency_code: "USD", amount_minor: "4200" },
        card_token: "tok_visa",
      }),
      `http://${svc.address}/shopmesh.payment.v1.PaymentService/ChargePayment`,
    ]);
    const charged = JSON.parse(res.stdout) as { payment: { id: string; status: string } };
    expect(charged.payment).toMatchObject({ status: "PAYMENT_STATUS_CAPTURED", amount: { amountMinor: "4200" } });

    const ch = createChannel(svc.address);
    const { payment } = await createClient(PaymentService, ch).getPayment({ orderId: "ord-proc-1" });
    expect(payment).toMatchObject({
      id: charged.payment.id,
      status: PaymentStatus.CAPTURED,
      amount: { amountMinor: 4200n },
    });
    ch.close();

    expect(await svc.kill("SIGTERM")).toBe(0);
  }, 60_000); // a service started (up to 20 s on a loaded machine), buf curl, a drain

  it("refuses to start on a bad variable, naming it", async () => {
    const child = spawn(process.execPath, built("services/payment/main.ts"), {
      cwd: ROOT,
      env: { ...process.env, GRPC_PORT: "not-a-port" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    expect(await exited(child)).toBe(78);
    expect(err).toContain("GRPC_PORT");
  }, 60_000); // a start alone took 9-11 s under load (under tsx)

  it("waits while NATS has no JetStream, exits 0 at once on SIGTERM meanwhile, and starts once JetStream is up", async () => {
    using dir = tempDir();
    const env = await new TestDatabases(dir.path).env("payment");
    const port = await freePort();
    const natsArgs = ["-a", "127.0.0.1", "-p", String(port), "-sd", join(dir.path, "jetstream")];
    const startNats = async (jetstream: boolean) => {
      const c = spawn("nats-server", jetstream ? ["-js", ...natsArgs] : natsArgs, {
        stdio: ["ignore", "pipe", "pipe"],
      });
      await outputReady(c, "Server is ready", "nats-server", 10_000);
      return c;
    };
    const startPayment = () =>
      spawn(process.execPath, built("services/payment/main.ts"), {
        cwd: ROOT,
        env: { ...process.env, ...env, GRPC_PORT: "0", LOG_FORMAT: "json", NATS_URL: `nats://127.0.0.1:${port}` },
        stdio: ["ignore", "pipe", "pipe"],
      });
    const waiting = "JetStream not ready for the streams; waiting";
    let nats = await startNats(false);
    const children = [nats];
    try {
      // Stopped while it waits: no grace period to sit out, nothing to drain.
      const first = startPayment();
      children.push(first);
      await outputReady(first, waiting, "payment", 30_000);
      const stopAt = Date.now();
      first.kill("SIGTERM");
      expect(await exited(first)).toBe(0);
      expect(Date.now() - stopAt).toBeLessThan(3_000);

      // Left waiting: it starts by itself once a server with JetStream is there.
      const second = startPayment();
      children.push(second);
      await outputReady(second, waiting, "payment", 30_000);
      nats.kill("SIGKILL");
      await exited(nats);
      nats = await startNats(true);
      children.push(nats);
      await outputReady(second, "gRPC server listening", "payment", 30_000);
      second.kill("SIGTERM");
      expect(await exited(second)).toBe(0);
    } finally {
      for (const c of children) c.kill("SIGKILL");
    }
    // Two payment starts and two nats-servers, each step bounded on its own (30 s, 10 s, and
    // 3 s for the exit that must be at once): their sum passed the default 30 s on a loaded machine.
  }, 120_000);
});
