/**
 * PaymentService over real gRPC: the app on an ephemeral port with a real
 * database (SQLite or PostgreSQL, per the run), called through the generated
 * typed client.
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import { PaymentService, PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { Code } from "../../platform/errors.js";
import type { Client } from "../../platform/grpc-client.js";
import { identityMetadata } from "../../platform/identity.js";
import type { Role } from "../../platform/identity-rule.js";
import { silentLogger } from "../../platform/log.js";
import { snapshot as dbSnapshot } from "../../test/db.js";
import { capturedPayments, paymentsByStatus } from "../../test/probes.js";
import { expectRpcError } from "../../test/rpc.js";
import { type ServiceUnderTest, startServiceUnderTest } from "../../test/system.js";
import { type PaymentApp, startPayment } from "./app.js";
import { loadConfig } from "./config.js";
import type { PaymentRecord } from "./domain.js";

let sut: ServiceUnderTest<PaymentApp, typeof PaymentService>;
let app: PaymentApp;
let payments: Client<typeof PaymentService>;

beforeAll(async () => {
  sut = await startServiceUnderTest("payment", PaymentService, (env) => startPayment(loadConfig(env), silentLogger()));
  ({ app, client: payments } = sut);
});
afterAll(() => sut?.[Symbol.asyncDispose]());

/** Every row of the service's database, to prove a rejected call changed nothing. */
const snapshot = () => dbSnapshot(app.store.db);

let seq = 0;
const key = () => `test-key-${++seq}`;
const order = () => `ord-${++seq}`;

/** A ChargePaymentRequest as the tests build it. */
interface ChargeReq {
  idempotencyKey: string;
  orderId: string;
  customerId: string;
  amount?: { currencyCode: string; amountMinor: bigint } | undefined;
  cardToken: string;
}

/** A valid charge for a fresh key and order; `patch` overrides fields. */
const chargeReq = (patch: Partial<ChargeReq> = {}): ChargeReq => ({
  idempotencyKey: key(),
  orderId: order(),
  customerId: "cus-1",
  amount: { currencyCode: "USD", amountMinor: 2500n },
  cardToken: "tok_visa",
  ...patch,
});

const charge = async (patch: Partial<ChargeReq> = {}) => {
  const { payment } = await payments.chargePayment(chargeReq(patch));
  if (!payment) throw new Error("ChargePayment returned no payment");
  return payment;
};

describe("ChargePayment", () => {
  it("captures an approved charge with its order, customer, amount and times", async () => {
    const req = chargeReq({ customerId: "cus-7" });
    const before = Date.now();
    const p = (await payments.chargePayment(req)).payment;
    expect(p).toMatchObject({
      orderId: req.orderId,
      customerId: "cus-7",
      amount: { currencyCode: "USD", amountMinor: 2500n },
      status: PaymentStatus.CAPTURED,
      declineReason: "",
    });
    expect(p?.id).toMatch(/^pay_/);
    expect(p?.createdAt && timestampMs(p.createdAt)).toBeGreaterThanOrEqual(before);
    expect(p?.updatedAt).toEqual(p?.createdAt);
    expect(await capturedPayments(app.store.db, req.orderId)).toBe(1);
  });

  it.each([
    ["tok_decline", 2500n, "card declined"],
    ["tok_insufficient", 2500n, "insufficient funds"],
    ["tok_visa", 1_000_001n, "over limit"],
  ])(
    "declines %s for %d as %j: a DECLINED payment, not an error, and nothing captured",
    async (cardToken, amountMinor, reason) => {
      const req = chargeReq({ cardToken, amount: { currencyCode: "USD", amountMinor } });
      const p = (await payments.chargePayment(req)).payment;
      expect(p).toMatchObject({ status: PaymentStatus.DECLINED, declineReason: reason, amount: { amountMinor } });
      expect(await capturedPayments(app.store.db, req.orderId)).toBe(0);
    },
  );

  it("captures exactly at the provider limit", async () => {
    expect((await charge({ amount: { currencyCode: "USD", amountMinor: 1_000_000n } })).status).toBe(
      PaymentStatus.CAPTURED,
    );
  });

  it("replays the first payment for the same key and request, approved or declined, writing nothing", async () => {
    for (const cardToken of ["tok_visa", "tok_decline"]) {
      const req = chargeReq({ cardToken });
      const first = (await payments.chargePayment(req)).payment;
      const s = await snapshot();
      const again = (await payments.chargePayment(req)).payment;
      expect(again).toEqual(first);
      expect(await snapshot()).toBe(s);
    }
  });

  it("rejects the same key with a different request as ALREADY_EXISTS, writing nothing", async () => {
    const req = chargeReq();
    await payments.chargePayment(req);
    const s = await snapshot();
    await expectRpcError(
      payments.chargePayment({ ...req, amount: { currencyCode: "USD", amountMinor: 2501n } }),
      Code.ALREADY_EXISTS,
    );
    await expectRpcError(payments.chargePayment({ ...req, cardToken: "tok_other" }), Code.ALREADY_EXISTS);
    expect(await snapshot()).toBe(s);
  });

  it("charges once under 20 concurrent retries of one key", async () => {
    const req = chargeReq();
    const results = await Promise.all(Array.from({ length: 20 }, () => payments.chargePayment(req)));
    expect(new Set(results.map((r) => r.payment?.id)).size).toBe(1);
    expect(await capturedPayments(app.store.db, req.orderId)).toBe(1);
  });

  it("rejects bad input with INVALID_ARGUMENT naming the field, and changes nothing", async () => {
    const cases: [Partial<ChargeReq>, string][] = [
      [{ idempotencyKey: "" }, "idempotency_key"],
      [{ idempotencyKey: "has space" }, "idempotency_key"],
      [{ orderId: "" }, "order_id"],
      [{ customerId: "" }, "customer_id"],
      [{ amount: undefined }, "amount"],
      [{ amount: { currencyCode: "USD", amountMinor: 0n } }, "amount.amount_minor"],
      [{ amount: { currencyCode: "USD", amountMinor: -100n } }, "amount.amount_minor"],
      [{ amount: { currencyCode: "USD", amountMinor: 2n ** 53n } }, "amount.amount_minor"],
      [{ amount: { currencyCode: "usd", amountMinor: 100n } }, "amount.currency_code"],
      [{ amount: { currencyCode: "", amountMinor: 100n } }, "amount.currency_code"],
      [{ cardToken: "" }, "card_token"],
    ];
    const s = await snapshot();
    for (const [patch, field] of cases) {
      await expectRpcError(payments.chargePayment(chargeReq(patch)), Code.INVALID_ARGUMENT, field);
    }
    expect(await snapshot()).toBe(s);
  });
});

describe("RefundPayment", () => {
  it("refunds a captured payment by id, storing the reason, and answers a repeat unchanged", async () => {
    const p = await charge();
    const refunded = (await payments.refundPayment({ paymentId: p.id, reason: "order cancelled" })).payment;
    expect(refunded).toMatchObject({ id: p.id, status: PaymentStatus.REFUNDED, declineReason: "", amount: p.amount });
    if (!refunded?.updatedAt || !p.createdAt) throw new Error("payment without timestamps");
    expect(timestampMs(refunded.updatedAt)).toBeGreaterThanOrEqual(timestampMs(p.createdAt));
    expect((await app.store.payment(p.id))?.refundReason).toBe("order cancelled");
    expect(await capturedPayments(app.store.db, p.orderId)).toBe(0);

    const s = await snapshot();
    const twice = (await payments.refundPayment({ paymentId: p.id, reason: "another reason" })).payment;
    expect(twice).toEqual(refunded);
    expect(await snapshot()).toBe(s);
  });

  it("refuses to refund a declined payment by id (FAILED_PRECONDITION) and an unknown one (NOT_FOUND)", async () => {
    const declined = await charge({ cardToken: "tok_decline" });
    const s = await snapshot();
    await expectRpcError(payments.refundPayment({ paymentId: declined.id }), Code.FAILED_PRECONDITION);
    await expectRpcError(payments.refundPayment({ paymentId: "pay_unknown" }), Code.NOT_FOUND);
    expect(await snapshot()).toBe(s);
  });

  it("voids an unused charge key, so a late charge with it is DECLINED 'voided' and takes nothing", async () => {
    const req = chargeReq();
    const voided = (await payments.refundPayment({ chargeIdempotencyKey: req.idempotencyKey, reason: "timeout" }))
      .payment;
    expect(voided).toMatchObject({ status: PaymentStatus.DECLINED, declineReason: "voided", orderId: "" });
    expect(voided?.amount).toBeUndefined();

    const late = (await payments.chargePayment(req)).payment;
    expect(late).toEqual(voided);
    // Whatever the late request says, the key stays voided.
    expect((await payments.chargePayment({ ...req, cardToken: "tok_other" })).payment).toEqual(voided);
    expect(await capturedPayments(app.store.db, req.orderId)).toBe(0);

    // Voiding again is idempotent; and by id, a void is a declined payment.
    const s = await snapshot();
    expect((await payments.refundPayment({ chargeIdempotencyKey: req.idempotencyKey })).payment).toEqual(voided);
    expect(await snapshot()).toBe(s);
    await expectRpcError(payments.refundPayment({ paymentId: voided?.id ?? "" }), Code.FAILED_PRECONDITION);
  });

  it("refunds by charge key after a capture, and answers a declined charge's key unchanged", async () => {
    const req = chargeReq();
    const p = (await payments.chargePayment(req)).payment;
    const refunded = (await payments.refundPayment({ chargeIdempotencyKey: req.idempotencyKey, reason: "saga" }))
      .payment;
    expect(refunded).toMatchObject({ id: p?.id, status: PaymentStatus.REFUNDED });
    expect((await payments.refundPayment({ chargeIdempotencyKey: req.idempotencyKey })).payment).toEqual(refunded);
    expect(await capturedPayments(app.store.db, req.orderId)).toBe(0);

    const declinedReq = chargeReq({ cardToken: "tok_insufficient" });
    const declined = (await payments.chargePayment(declinedReq)).payment;
    const s = await snapshot();
    expect((await payments.refundPayment({ chargeIdempotencyKey: declinedReq.idempotencyKey })).payment).toEqual(
      declined,
    );
    expect(await snapshot()).toBe(s);
  });

  it("never leaves money taken when a charge and its compensation race", async () => {
    const reqs = Array.from({ length: 20 }, () => chargeReq());
    await Promise.all(
      reqs.flatMap((req) => [
        payments.chargePayment(req),
        payments.refundPayment({ chargeIdempotencyKey: req.idempotencyKey, reason: "race" }),
      ]),
    );
    for (const req of reqs) expect(await capturedPayments(app.store.db, req.orderId)).toBe(0);
  });

  it("rejects bad input with INVALID_ARGUMENT naming the field, and changes nothing", async () => {
    const s = await snapshot();
    await expectRpcError(payments.refundPayment({}), Code.INVALID_ARGUMENT, "payment_id");
    await expectRpcError(
      payments.refundPayment({ paymentId: "pay_1", chargeIdempotencyKey: "k" }),
      Code.INVALID_ARGUMENT,
      "payment_id",
    );
    await expectRpcError(payments.refundPayment({ paymentId: "not valid" }), Code.INVALID_ARGUMENT, "payment_id");
    await expectRpcError(
      payments.refundPayment({ chargeIdempotencyKey: "has space" }),
      Code.INVALID_ARGUMENT,
      "charge_idempotency_key",
    );
    await expectRpcError(
      payments.refundPayment({ paymentId: "pay_1", reason: "x".repeat(501) }),
      Code.INVALID_ARGUMENT,
      "reason",
    );
    await expectRpcError(
      payments.refundPayment({ paymentId: "pay_1", reason: "forged\nline" }),
      Code.INVALID_ARGUMENT,
      "reason",
    );
    expect(await snapshot()).toBe(s);
  });
});

describe("GetPayment", () => {
  it("gets a payment by id, and by order the latest charge for it", async () => {
    const orderId = order();
    const declined = await charge({ orderId, cardToken: "tok_decline" });
    await new Promise((r) => setTimeout(r, 5));
    const captured = await charge({ orderId });
    expect((await payments.getPayment({ paymentId: declined.id })).payment).toEqual(declined);
    expect((await payments.getPayment({ orderId })).payment).toEqual(captured);
  });

  it("answers NOT_FOUND for unknown ids and orders, and INVALID_ARGUMENT without either", async () => {
    await expectRpcError(payments.getPayment({ paymentId: "pay_unknown" }), Code.NOT_FOUND);
    await expectRpcError(payments.getPayment({ orderId: "ord-unknown" }), Code.NOT_FOUND);
    await expectRpcError(payments.getPayment({}), Code.INVALID_ARGUMENT, "payment_id");
    await expectRpcError(payments.getPayment({ paymentId: "a b" }), Code.INVALID_ARGUMENT, "payment_id");
    await expectRpcError(payments.getPayment({ orderId: "a b" }), Code.INVALID_ARGUMENT, "order_id");
  });

  it("shows a payment to its owner and admins, and hides it from other customers as NOT_FOUND", async () => {
    const p = await charge({ customerId: "cus-owner" });
    const as = (subject: string, roles: Role[]) => ({ metadata: identityMetadata({ subject, roles }) });

    expect((await payments.getPayment({ paymentId: p.id }, as("cus-owner", ["customer"]))).payment).toEqual(p);
    expect((await payments.getPayment({ orderId: p.orderId }, as("ops", ["admin"]))).payment).toEqual(p);

    const stranger = as("cus-other", ["customer"]);
    const hidden = await expectRpcError(payments.getPayment({ paymentId: p.id }, stranger), Code.NOT_FOUND);
    const missing = await expectRpcError(payments.getPayment({ paymentId: "pay_nope" }, stranger), Code.NOT_FOUND);
    // Same shape as a payment that does not exist: existence is not revealed.
    expect(hidden.message.replace(p.id, "ID")).toBe(missing.message.replace("pay_nope", "ID"));
    await expectRpcError(payments.getPayment({ orderId: p.orderId }, stranger), Code.NOT_FOUND);
  });
});

describe("the store's answers", () => {
  it("are what a read of the row gives: a capture, a decline, a void and a refund", async () => {
    const { store } = app;
    const input = (cardToken: string) => ({
      idempotencyKey: key(),
      orderId: order(),
      customerId: "cus-store",
      amountMinor: 1234,
      currency: "EUR",
      cardToken,
    });
    // Each compared with the row right after it was written (the capture is refunded below).
    const answers: PaymentRecord[] = [];
    const written = async (p: PaymentRecord) => {
      expect(await store.payment(p.id)).toEqual(p);
      answers.push(p);
    };
    for (const cardToken of ["tok_visa", "tok_decline"]) {
      const r = await store.charge(`fp-${cardToken}`, input(cardToken), SagaMode.ORCHESTRATION);
      if (r.kind !== "charged") throw new Error(r.kind);
      await written(r.payment);
    }
    const voided = await store.refund({ by: "key", chargeIdempotencyKey: key() }, "", SagaMode.ORCHESTRATION);
    if (voided.kind === "not-found") throw new Error(voided.kind);
    await written(voided.payment);
    const refunded = await store.refund({ by: "id", paymentId: answers[0]?.id ?? "" }, "why", SagaMode.ORCHESTRATION);
    if (refunded.kind === "not-found") throw new Error(refunded.kind);
    await written(refunded.payment);
    expect(answers.map((p) => [p.kind, p.status])).toEqual([
      ["CHARGE", "CAPTURED"],
      ["CHARGE", "DECLINED"],
      ["VOID", "DECLINED"],
      ["CHARGE", "REFUNDED"],
    ]);
  });
});

describe("payments table", () => {
  it("keeps the columns other services' tests query through its database", async () => {
    const db = app.store.db;
    const columns = (
      await db.all(
        db.engine === "sqlite"
          ? sql<{ name: string }>`SELECT name FROM pragma_table_info('payments')`
          : sql<{ name: string }>`SELECT column_name AS name FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = 'payments'`,
      )
    ).map((c) => c.name);
    expect(columns).toEqual(
      expect.arrayContaining([
        "order_id",
        "status",
        "idempotency_key",
        "amount_minor",
        "currency",
        "customer_id",
        "decline_reason",
        "refund_reason",
        "created_at",
        "updated_at",
      ]),
    );
    const counts = await paymentsByStatus(app.store.db);
    expect(Object.keys(counts).sort()).toEqual(["CAPTURED", "DECLINED", "REFUNDED"]);
    expect(counts.CAPTURED).toBeGreaterThan(0);
  });
});
