/**
 * Payment persistence, on SQLite or PostgreSQL. Every mutation is one
 * serialised transaction (see platform/sql.ts), so a charge and a void of
 * the same key cannot interleave, in any process or replica; CHECK
 * constraints keep each row's status, reasons and amount consistent even if
 * a bug slipped past the domain rules.
 */
import { EVENTS } from "../../contracts/events.js";
import type { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../../gen/shopmesh/payment/v1/events_pb.js";
import {
  type Db,
  type DbLocation,
  INBOX_FAILURES_MIGRATION,
  INBOX_MIGRATION,
  INBOX_PURGE_MIGRATION,
  keyUse,
  type Logger,
  migrations,
  newId,
  OUTBOX_CLAIMS_MIGRATION,
  OUTBOX_INDEXES_MIGRATION,
  OUTBOX_MIGRATION,
  Outbox,
  openDatabase,
  sql,
  type Tx,
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

const PAYMENTS = `CREATE TABLE payments (
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
   CREATE INDEX payments_order ON payments (order_id, created_at);`;

const CHOREOGRAPHY_ORDERS = `CREATE TABLE choreography_orders (
     order_id    TEXT PRIMARY KEY,
     customer_id TEXT NOT NULL,
     card_token  TEXT NOT NULL
   )`;

const MIGRATIONS = migrations([
  PAYMENTS,
  // 2: events (transactional outbox), choreography consumers (inbox), and what
  // payment learns from OrderPlaced to charge later on StockReserved.
  `${OUTBOX_MIGRATION}\n${INBOX_MIGRATION}\n${CHOREOGRAPHY_ORDERS} STRICT;`,
  // 3: relays claim outbox rows (several replicas).
  OUTBOX_CLAIMS_MIGRATION,
  // 4: consumers count each event's failures across restarts and replicas (the dead-letter limit).
  INBOX_FAILURES_MIGRATION,
  // 5: the relay finds an order's earlier unsent row, and the sent rows to purge, without reading every row.
  OUTBOX_INDEXES_MIGRATION,
  // 6: the inbox forgets an event after INBOX_KEEP_MS (its purge reads by this index).
  INBOX_PURGE_MIGRATION,
  // 7: the payers an older version kept for ever (before forgetChoreographyOrder): every row whose
  // charge key (stepKey(order_id, "charge_payment")) is used, as rememberChoreographyOrder deletes one.
  `DELETE FROM choreography_orders WHERE EXISTS
     (SELECT 1 FROM payments WHERE idempotency_key = choreography_orders.order_id || ':charge_payment');`,
]);

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

/** The payments table, with the outbox its events are committed into. */
export class PaymentStore {
  /** Events committed together with the changes they record. */
  readonly outbox: Outbox;

  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
  ) {
    this.outbox = new Outbox("payment", EVENTS, clock);
  }

  /** Opens (and migrates) the store at `location`. */
  static async open(location: DbLocation, clock: () => number = Date.now, log?: Logger): Promise<PaymentStore> {
    return new PaymentStore(await openDatabase(location, MIGRATIONS, log), clock);
  }

  private async byId(q: Db | Tx, id: string): Promise<PaymentRecord | undefined> {
    const row = await q.one(sql<PaymentRow>`SELECT * FROM payments WHERE id = ${id}`);
    return row && toPayment(row);
  }

  /** Writes a new payment and returns it as a read of its row would (so the call reads nothing back). */
  private async insert(
    tx: Tx,
    p: Omit<PaymentRecord, "refundReason" | "updatedAt" | "declineReason"> & {
      key: string;
      fingerprint: string | null;
      declineReason: string | null;
    },
  ): Promise<PaymentRecord> {
    await tx.run(sql`INSERT INTO payments (id, idempotency_key, kind, fingerprint, order_id, customer_id, amount_minor,
        currency, status, decline_reason, refund_reason, created_at, updated_at)
      VALUES (${p.id}, ${p.key}, ${p.kind}, ${p.fingerprint}, ${p.orderId}, ${p.customerId}, ${p.amountMinor},
        ${p.currency}, ${p.status}, ${p.declineReason}, NULL, ${p.createdAt}, ${p.createdAt})`);
    return {
      id: p.id,
      kind: p.kind,
      orderId: p.orderId,
      customerId: p.customerId,
      amountMinor: p.amountMinor,
      currency: p.currency,
      status: p.status,
      declineReason: p.declineReason ?? "",
      refundReason: "",
      createdAt: p.createdAt,
      updatedAt: p.createdAt,
    };
  }

  /** One payment (void tombstones included), or undefined. */
  payment(id: string): Promise<PaymentRecord | undefined> {
    return this.byId(this.db, id);
  }

  /** The latest charge for `orderId` (never a void tombstone), or undefined. */
  async latestForOrder(orderId: string): Promise<PaymentRecord | undefined> {
    const row = await this.db.one(sql<PaymentRow>`SELECT * FROM payments WHERE order_id = ${orderId} AND kind = 'CHARGE'
      ORDER BY created_at DESC, id DESC LIMIT 1`);
    return row && toPayment(row);
  }

  /**
   * Charges once per `input.idempotencyKey`: a repeat with the same
   * fingerprint returns the first payment (captured or declined), a
   * different fingerprint is `key-reused`. A key that was voided answers its
   * void tombstone whatever the request, so a charge that arrives after its
   * compensation never takes money. Runs in `tx` when given (the consumer's).
   */
  charge(fingerprint: string, input: ChargeInput, sagaMode: SagaMode, tx?: Tx): Promise<ChargeResult> {
    return this.db.within(tx, async (tx): Promise<ChargeResult> => {
      const prior = await tx.one(
        sql<PaymentRow>`SELECT * FROM payments WHERE idempotency_key = ${input.idempotencyKey}`,
      );
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
      const declineReason = auth.status === "DECLINED" ? auth.reason : null;
      const fields = { id, kind: "CHARGE" as const, orderId: input.orderId, customerId: input.customerId };
      const money = { amountMinor: input.amountMinor, currency: input.currency, status: auth.status, createdAt: now };
      const payment = await this.insert(tx, {
        ...fields,
        ...money,
        key: input.idempotencyKey,
        fingerprint,
        declineReason,
      });
      const about = { orderId: payment.orderId, sagaMode };
      if (auth.status === "DECLINED") {
        await this.outbox.add(tx, PaymentFailedSchema, about, {
          paymentId: id,
          customerId: payment.customerId,
          reason: auth.reason,
        });
      } else {
        const amount = { currencyCode: payment.currency, amountMinor: BigInt(payment.amountMinor) };
        await this.outbox.add(tx, PaymentSucceededSchema, about, {
          paymentId: id,
          customerId: payment.customerId,
          amount,
        });
      }
      return { kind: "charged", payment, replayed: false };
    });
  }

  /**
   * Refunds the payment `target` names, storing `reason`. By charge key with
   * no payment yet, writes a void tombstone for the key instead (`voided`).
   * Throws what {@link refundAction} throws (a DECLINED payment by id)
   * without writing anything. Runs in `tx` when given (the consumer's).
   */
  refund(target: RefundTarget, reason: string, sagaMode: SagaMode, tx?: Tx): Promise<RefundResult> {
    return this.db.within(tx, async (tx): Promise<RefundResult> => {
      const row =
        target.by === "id"
          ? await tx.one(sql<PaymentRow>`SELECT * FROM payments WHERE id = ${target.paymentId} ${tx.forUpdate}`)
          : await tx.one(
              sql<PaymentRow>`SELECT * FROM payments WHERE idempotency_key = ${target.chargeIdempotencyKey} ${tx.forUpdate}`,
            );
      const now = this.clock();
      if (!row) {
        if (target.by === "id") return { kind: "not-found" };
        const payment = await this.insert(tx, {
          id: newId("pay", now),
          key: target.chargeIdempotencyKey,
          kind: "VOID",
          fingerprint: null,
          orderId: "",
          customerId: "",
          amountMinor: 0,
          currency: "",
          status: "DECLINED",
          declineReason: VOIDED_REASON,
          createdAt: now,
        });
        return { kind: "voided", payment };
      }
      const payment = toPayment(row);
      if (refundAction(payment, target.by) === "unchanged") return { kind: "unchanged", payment };
      const changes =
        await tx.run(sql`UPDATE payments SET status = 'REFUNDED', refund_reason = ${reason}, updated_at = ${now}
        WHERE id = ${payment.id} AND status = 'CAPTURED'`);
      // Unreachable while the row is locked; kept so a future change cannot refund twice.
      if (changes !== 1) throw new Error(`payment ${payment.id} changed inside a refund transaction`);
      await this.outbox.add(
        tx,
        PaymentRefundedSchema,
        { orderId: payment.orderId, sagaMode },
        {
          paymentId: payment.id,
          customerId: payment.customerId,
          amount: { currencyCode: payment.currency, amountMinor: BigInt(payment.amountMinor) },
          reason,
        },
      );
      return { kind: "refunded", payment: { ...payment, status: "REFUNDED", refundReason: reason, updatedAt: now } };
    });
  }

  /**
   * Remembers who pays for a choreographed order and with which card (from OrderPlaced), in `tx` —
   * until {@link forgetChoreographyOrder}. Not when its charge key already has a payment (an
   * OrderPlaced redelivered after OrderCancelled voided the key): nothing will be charged with it.
   */
  async rememberChoreographyOrder(
    tx: Tx,
    orderId: string,
    customerId: string,
    cardToken: string,
    chargeKey: string,
  ): Promise<void> {
    await tx.run(sql`INSERT INTO choreography_orders (order_id, customer_id, card_token)
      SELECT ${orderId}, ${customerId}, ${cardToken}
      WHERE NOT EXISTS (SELECT 1 FROM payments WHERE idempotency_key = ${chargeKey})
      ON CONFLICT (order_id) DO NOTHING`);
    // Looked again, after the insert: on PostgreSQL an OrderCancelled handled at once by another replica
    // may have voided the key since the check above (its forget made the insert wait for its commit).
    await tx.run(sql`DELETE FROM choreography_orders WHERE order_id = ${orderId}
      AND EXISTS (SELECT 1 FROM payments WHERE idempotency_key = ${chargeKey})`);
  }

  /**
   * Forgets the payer of a choreographed order, in `tx`: once its charge was attempted (StockReserved)
   * or its key voided or refunded (OrderCancelled), nothing reads it again. Kept, every order's row and
   * card token stayed for ever (6,200 rows after 20 minutes of make load).
   */
  async forgetChoreographyOrder(tx: Tx, orderId: string): Promise<void> {
    // Inserted first, so an OrderPlaced inserting the payer at once (another replica, PostgreSQL) is
    // waited for and deleted, or waits for this commit and looks again; a delete alone sees neither.
    await tx.run(sql`INSERT INTO choreography_orders (order_id, customer_id, card_token)
      VALUES (${orderId}, '', '') ON CONFLICT (order_id) DO NOTHING`);
    await tx.run(sql`DELETE FROM choreography_orders WHERE order_id = ${orderId}`);
  }

  /** Whether the charge key has a payment (a charge, or the void tombstone of a compensation), in `tx`. */
  async chargeKeyUsed(tx: Tx, chargeKey: string): Promise<boolean> {
    return (await tx.one(sql`SELECT 1 AS used FROM payments WHERE idempotency_key = ${chargeKey}`)) !== undefined;
  }

  /** The payer of a choreographed order, once its OrderPlaced was seen. */
  async choreographyOrder(tx: Tx, orderId: string): Promise<{ customerId: string; cardToken: string } | undefined> {
    const r = await tx.one(
      sql<{
        customer_id: string;
        card_token: string;
      }>`SELECT customer_id, card_token FROM choreography_orders WHERE order_id = ${orderId}`,
    );
    return r && { customerId: r.customer_id, cardToken: r.card_token };
  }

  /** Closes the database. */
  close(): Promise<void> {
    return this.db.close();
  }
}
