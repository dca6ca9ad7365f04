/**
 * Payment persistence. Every mutation is one IMMEDIATE transaction, so a
 * charge and a void of the same key cannot interleave, in this process or in
 * another on the same file; CHECK constraints keep each row's status, reasons
 * and amount consistent even if a bug slipped past the domain rules.
 */

import { EVENTS } from "../../contracts/events.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../../gen/shopmesh/payment/v1/events_pb.js";
import {
  type Db,
  INBOX_MIGRATION,
  keyUse,
  newId,
  OUTBOX_MIGRATION,
  Outbox,
  openDatabase,
} from "../../platform/index.js";
import {
  authorize,
  type ChargeInput,
  type PaymentRecord,
  type PaymentStatusName,
  type RefundTarget,
  refundAction,
  VOIDED_REASON,
} from "./domain.js";

const MIGRATIONS = [
  `CREATE TABLE payments (
     id              TEXT PRIMARY KEY,
     idempotency_key TEXT NOT NULL UNIQUE,
     kind            TEXT NOT NULL CHECK (kind IN ('CHARGE', 'VOID')),
     fingerprint     TEXT,           -- of the ChargePayment request; NULL for a VOID
     order_id        TEXT NOT NULL,  -- '' for a VOID
     customer_id     TEXT NOT NULL,  -- '' for a VOID
     amount_minor    INTEGER NOT NULL,
     currency        TEXT NOT NULL,  -- '' for a VOID
     status          TEXT NOT NULL CHECK (status IN ('CAPTURED', 'DECLINED', 'REFUNDED')),
     decline_reason  TEXT,           -- set exactly when DECLINED
     refund_reason   TEXT,           -- set exactly when REFUNDED
     created_at      INTEGER NOT NULL,
     updated_at      INTEGER NOT NULL,
     CHECK ((kind = 'VOID') = (fingerprint IS NULL)),
     CHECK ((kind = 'CHARGE' AND amount_minor > 0)
         OR (kind = 'VOID' AND amount_minor = 0 AND status = 'DECLINED')),
     CHECK ((status = 'DECLINED') = (decline_reason IS NOT NULL)),
     CHECK ((status = 'REFUNDED') = (refund_reason IS NOT NULL))
   ) STRICT;
   CREATE INDEX payments_order ON payments (order_id, created_at);`,
  // 2: events (transactional outbox), choreography consumers (inbox), and what
  // payment learns from OrderPlaced to charge later on StockReserved.
  `${OUTBOX_MIGRATION}
   ${INBOX_MIGRATION}
   CREATE TABLE choreography_orders (
     order_id    TEXT PRIMARY KEY,
     customer_id TEXT NOT NULL,
     card_token  TEXT NOT NULL
   ) STRICT;`,
];

/** Result of {@link PaymentStore.charge}. `replayed` is true when the key already had a payment. */
export type ChargeResult =
  | { readonly kind: "charged"; readonly payment: PaymentRecord; readonly replayed: boolean }
  | { readonly kind: "key-reused" };

/** Result of {@link PaymentStore.refund}: what was written, if anything, and the payment now. */
export type RefundResult =
  | { readonly kind: "refunded" | "voided" | "unchanged"; readonly payment: PaymentRecord }
  | { readonly kind: "not-found" };

interface PaymentRow {
  id: string;
  idempotency_key: string;
  kind: PaymentRecord["kind"];
  fingerprint: string | null;
  order_id: string;
  customer_id: string;
  amount_minor: number;
  currency: string;
  status: PaymentStatusName;
  decline_reason: string | null;
  refund_reason: string | null;
  created_at: number;
  updated_at: number;
}

const toPayment = (r: PaymentRow): PaymentRecord => ({
  id: r.id,
  kind: r.kind,
  orderId: r.order_id,
  customerId: r.customer_id,
  amountMinor: r.amount_minor,
  currency: r.currency,
  status: r.status,
  declineReason: r.decline_reason ?? "",
  refundReason: r.refund_reason ?? "",
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

/** The payments table in one SQLite file, with the outbox its events are committed into. */
export class PaymentStore {
  private readonly q;
  /** Events committed together with the changes they record. */
  readonly outbox: Outbox;

  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
  ) {
    this.outbox = new Outbox(db, "payment", EVENTS, clock);
    this.q = {
      rememberOrder: db.prepare<[string, string, string]>(
        "INSERT OR IGNORE INTO choreography_orders (order_id, customer_id, card_token) VALUES (?, ?, ?)",
      ),
      choreographyOrder: db.prepare<[string], { customer_id: string; card_token: string }>(
        "SELECT customer_id, card_token FROM choreography_orders WHERE order_id = ?",
      ),
      byId: db.prepare<[string], PaymentRow>("SELECT * FROM payments WHERE id = ?"),
      byKey: db.prepare<[string], PaymentRow>("SELECT * FROM payments WHERE idempotency_key = ?"),
      latestForOrder: db.prepare<[string], PaymentRow>(
        "SELECT * FROM payments WHERE order_id = ? AND kind = 'CHARGE' ORDER BY created_at DESC, rowid DESC LIMIT 1",
      ),
      insert: db.prepare(
        `INSERT INTO payments (id, idempotency_key, kind, fingerprint, order_id, customer_id, amount_minor, currency,
                               status, decline_reason, refund_reason, created_at, updated_at)
         VALUES (@id, @key, @kind, @fingerprint, @orderId, @customerId, @amountMinor, @currency,
                 @status, @declineReason, NULL, @now, @now)`,
      ),
      markRefunded: db.prepare<[string, number, string]>(
        "UPDATE payments SET status = 'REFUNDED', refund_reason = ?, updated_at = ? WHERE id = ? AND status = 'CAPTURED'",
      ),
      capturedForOrder: db.prepare<[string], { n: number }>(
        "SELECT COUNT(*) AS n FROM payments WHERE order_id = ? AND status = 'CAPTURED'",
      ),
      countByStatus: db.prepare<[], { status: PaymentStatusName; n: number }>(
        "SELECT status, COUNT(*) AS n FROM payments GROUP BY status",
      ),
    };
  }

  /** Opens (and migrates) the store at `path` (`:memory:` for a private in-memory one). */
  static open(path: string, clock: () => number = Date.now): PaymentStore {
    return new PaymentStore(openDatabase(path, MIGRATIONS), clock);
  }

  /** One payment (void tombstones included), or undefined. */
  payment(id: string): PaymentRecord | undefined {
    const row = this.q.byId.get(id);
    return row && toPayment(row);
  }

  /** The latest charge for `orderId` (never a void tombstone), or undefined. */
  latestForOrder(orderId: string): PaymentRecord | undefined {
    const row = this.q.latestForOrder.get(orderId);
    return row && toPayment(row);
  }

  /**
   * Charges once per `input.idempotencyKey`: a repeat with the same
   * fingerprint returns the first payment (captured or declined), a
   * different fingerprint is `key-reused`. A key that was voided answers its
   * void tombstone whatever the request, so a charge that arrives after its
   * compensation never takes money.
   */
  charge(fingerprint: string, input: ChargeInput): ChargeResult {
    return this.db
      .transaction((): ChargeResult => {
        const prior = this.q.byKey.get(input.idempotencyKey);
        switch (keyUse(prior?.fingerprint, fingerprint)) {
          case "key-reused":
            return { kind: "key-reused" };
          case "replay":
          case "voided":
            // A voided key answers its void tombstone, whatever the request: no money is ever taken with it.
            return { kind: "charged", payment: toPayment(prior as PaymentRow), replayed: true };
          case "new":
            break;
        }
        const auth = authorize(input.cardToken, input.amountMinor);
        const now = this.clock();
        const id = newId("pay", now);
        this.q.insert.run({
          id,
          key: input.idempotencyKey,
          kind: "CHARGE",
          fingerprint,
          orderId: input.orderId,
          customerId: input.customerId,
          amountMinor: input.amountMinor,
          currency: input.currency,
          status: auth.status,
          declineReason: auth.status === "DECLINED" ? auth.reason : null,
          now,
        });
        const payment = toPayment(this.q.byId.get(id) as PaymentRow);
        const amount = { currencyCode: payment.currency, amountMinor: BigInt(payment.amountMinor) };
        if (auth.status === "DECLINED") {
          this.outbox.add(PaymentFailedSchema, payment.orderId, {
            paymentId: id,
            customerId: payment.customerId,
            reason: auth.reason,
          });
        } else {
          this.outbox.add(PaymentSucceededSchema, payment.orderId, {
            paymentId: id,
            customerId: payment.customerId,
            amount,
          });
        }
        return { kind: "charged", payment, replayed: false };
      })
      .immediate();
  }

  /**
   * Refunds the payment `target` names, storing `reason`. By charge key with
   * no payment yet, writes a void tombstone for the key instead (`voided`).
   * Throws what {@link refundAction} throws (a DECLINED payment by id)
   * without writing anything.
   */
  refund(target: RefundTarget, reason: string): RefundResult {
    return this.db
      .transaction((): RefundResult => {
        const row =
          target.by === "id" ? this.q.byId.get(target.paymentId) : this.q.byKey.get(target.chargeIdempotencyKey);
        const now = this.clock();
        if (!row) {
          if (target.by === "id") return { kind: "not-found" };
          const id = newId("pay", now);
          this.q.insert.run({
            id,
            key: target.chargeIdempotencyKey,
            kind: "VOID",
            fingerprint: null,
            orderId: "",
            customerId: "",
            amountMinor: 0,
            currency: "",
            status: "DECLINED",
            declineReason: VOIDED_REASON,
            now,
          });
          return { kind: "voided", payment: toPayment(this.q.byId.get(id) as PaymentRow) };
        }
        const payment = toPayment(row);
        if (refundAction(payment, target.by) === "unchanged") return { kind: "unchanged", payment };
        const { changes } = this.q.markRefunded.run(reason, now, payment.id);
        // Unreachable while the transaction holds the write lock; kept so a
        // future change cannot refund twice.
        if (changes !== 1) throw new Error(`payment ${payment.id} changed inside a refund transaction`);
        this.outbox.add(PaymentRefundedSchema, payment.orderId, {
          paymentId: payment.id,
          customerId: payment.customerId,
          amount: { currencyCode: payment.currency, amountMinor: BigInt(payment.amountMinor) },
          reason,
        });
        return { kind: "refunded", payment: toPayment(this.q.byId.get(payment.id) as PaymentRow) };
      })
      .immediate();
  }

  /** Remembers who pays for a choreographed order and with which card (from OrderPlaced). */
  rememberChoreographyOrder(orderId: string, customerId: string, cardToken: string): void {
    this.q.rememberOrder.run(orderId, customerId, cardToken);
  }

  /** The payer of a choreographed order, once its OrderPlaced was seen. */
  choreographyOrder(orderId: string): { customerId: string; cardToken: string } | undefined {
    const r = this.q.choreographyOrder.get(orderId);
    return r && { customerId: r.customer_id, cardToken: r.card_token };
  }

  /** Closes the database. */
  close(): void {
    this.db.close();
  }
}
