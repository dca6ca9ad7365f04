/**
 * The payment service as a real process: a charge by name through `buf curl`
 * (reflection, JSON mapping of int64), read back with the typed client, a
 * clean exit on SIGTERM, and a bad variable refused at start.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { PaymentService, PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { createChannel, createClient } from "../../platform/index.js";
import { TestDatabases } from "../../test/db.js";
import { bufCurl, exited, ROOT, spawnService, tempDir } from "../../test/fixtures.js";

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
  });

  it("refuses to start on a bad variable, naming it", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "services/payment/main.ts")], {
      cwd: ROOT,
      env: { ...process.env, GRPC_PORT: "not-a-port" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    expect(await exited(child)).toBe(78);
    expect(err).toContain("GRPC_PORT");
  });
});
