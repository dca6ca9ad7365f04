/**
 * The orchestrator's calls to the saga's participants: each step as one
 * keyed call to inventory or payment, its answer mapped to the transition
 * to persist (domain.ts), or to a retry when the outcome is unknown or the
 * participant is out of reach (`notSent`: the call never left this process).
 */
import { refundReason, stepKey } from "../../contracts/saga.js";
import { type InventoryService, ReservationStatus } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { type PaymentService, PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { type Client, Code, RpcError } from "../../platform/index.js";
import {
  type CallStep,
  failureKind,
  type OrderRecord,
  onCharged,
  onDeclined,
  onForwardFailed,
  onRefunded,
  onReleased,
  onReserved,
  type Transition,
} from "./domain.js";

/** Which participant each call step goes to. */
export const PARTICIPANT: Readonly<Record<CallStep, string>> = {
  reserve_stock: "inventory",
  release_stock: "inventory",
  charge_payment: "payment",
  refund_payment: "payment",
};

/**
 * The methods of each participant the saga calls (the class below): their clients' retries are
 * exported at 0 from the start, no other method's (app.ts).
 */
export const PARTICIPANT_CALLS = {
  inventory: ["ReserveStock", "ReleaseStock"],
  payment: ["ChargePayment", "RefundPayment"],
} as const satisfies Readonly<Record<string, readonly string[]>>;

/** A step's outcome to persist, or a transient failure to retry (`notSent`: it never left this process). */
export type Outcome =
  | Transition
  | {
      readonly retry: string;
      readonly notSent: boolean;
      /** A definite refusal, retried all the same (a refund: the money is still taken). */
      readonly refused?: boolean;
    };

/** What this process says of a call that got no answer of the participant's own, by code. */
const NO_ANSWER: Partial<Record<Code, string>> = {
  [Code.UNAVAILABLE]: "unavailable",
  [Code.DEADLINE_EXCEEDED]: "did not answer in time",
  [Code.CANCELLED]: "call cancelled",
};

/**
 * A failed call as the step log records it — which its customer reads (GetOrder, WatchOrder, the web
 * shop): the participant's own refusal, or this process's words for a call the policy never sent (a
 * breaker open, a bulkhead full). A transport failure's message names the instance's address
 * (h2-bytes.ts: a refused connection, an answer without a status), which is no customer's business:
 * it becomes a sentence naming the participant (operators have the breaker's log lines and the
 * client metrics, per downstream).
 */
function describeFailure(err: RpcError, participant: string): string {
  const transport = err.broken || err.code in NO_ANSWER || err.code === Code.INTERNAL || err.code === Code.UNKNOWN;
  if (err.notSent || !transport) {
    return `${err.codeName}: ${err.message}`;
  }
  return `${err.codeName}: ${participant} ${NO_ANSWER[err.code] ?? "gave no usable answer"}`;
}

/**
 * A participant's answer in a state this version cannot act on: an enum value of a newer version of
 * its contract (a rolling upgrade), or one no forward step should get back. Its outcome is unknown,
 * as a call's that timed out: retried, and past the step budget compensated (a refund or a release
 * by the step's key, which the participant that answered knows how to do).
 */
function unreadable(rpc: string, names: Readonly<Record<number, string>>, status: number): Outcome {
  return {
    retry: `${rpc} answered with a status this version does not act on: ${names[status] ?? status}`,
    notSent: false,
  };
}

/** The saga's participant calls. */
export class Participants {
  constructor(
    private readonly deps: {
      readonly inventory: Client<typeof InventoryService>;
      readonly payment: Client<typeof PaymentService>;
    },
  ) {}

  /** Performs one participant call and maps its result to a transition, or to a retry. */
  async call(step: CallStep, o: OrderRecord, attempt: number, signal: AbortSignal): Promise<Outcome> {
    const opts = { signal };
    try {
      switch (step) {
        case "reserve_stock":
          return await this.reserve(o, attempt, opts);
        case "charge_payment": {
          const { payment } = await this.deps.payment.chargePayment(
            {
              idempotencyKey: stepKey(o.id, "charge_payment"),
              orderId: o.id,
              customerId: o.customerId,
              amount: { currencyCode: o.currency ?? "", amountMinor: BigInt(o.totalMinor ?? 0) },
              cardToken: o.cardToken,
            },
            opts,
          );
          if (!payment) throw new Error("ChargePayment answered without a payment");
          if (payment.status === PaymentStatus.CAPTURED) return onCharged(payment.id, attempt);
          if (payment.status === PaymentStatus.DECLINED) {
            return onDeclined(payment.id, payment.declineReason || "declined", attempt);
          }
          // Taken for a decline, a newer payment's status (a hold, a capture pending) was never refunded.
          return unreadable("ChargePayment", PaymentStatus, payment.status);
        }
        case "refund_payment": {
          // By charge key: refunds the payment made with it, or voids the key if no
          // charge happened, so an uncertain charge can never stay taken.
          const { payment } = await this.deps.payment.refundPayment(
            { chargeIdempotencyKey: stepKey(o.id, "charge_payment"), reason: refundReason(o.id, o.reason) },
            opts,
          );
          if (payment?.status === PaymentStatus.REFUNDED) return onRefunded(`payment ${payment.id} refunded`, attempt);
          if (payment?.status === PaymentStatus.DECLINED) return onRefunded("no charge happened (key voided)", attempt);
          // Neither: the money may still be taken (a newer payment's status), so the refund stays pending.
          return { ...unreadable("RefundPayment", PaymentStatus, payment?.status ?? 0), refused: true };
        }
        case "release_stock":
          return await this.release(o, attempt, opts);
      }
    } catch (err) {
      if (!(err instanceof RpcError)) throw err;
      const describe = (e: RpcError) => describeFailure(e, PARTICIPANT[step]);
      const forward = step === "reserve_stock" || step === "charge_payment";
      if (failureKind(err.code) === "transient") return { retry: describe(err), notSent: err.notSent };
      if (forward) {
        const reason = err.code === Code.FAILED_PRECONDITION ? err.message : describe(err);
        return onForwardFailed(step, reason, true, attempt);
      }
      // A refund by charge key never finds nothing to undo (it voids the key instead): any refusal
      // means the money is still taken, so the refund stays pending and is retried (the order is
      // cancelled meanwhile, compensation.ts) — it was once taken as done, and the money kept.
      if (step === "refund_payment") return { retry: describe(err), notSent: false, refused: true };
      // A definite refusal of a release means there is nothing to release (e.g. NOT_FOUND).
      return onReleased(describe(err), attempt);
    }
  }

  private async reserve(o: OrderRecord, attempt: number, opts: { signal: AbortSignal }): Promise<Outcome> {
    const { reservation } = await this.deps.inventory.reserveStock(
      { idempotencyKey: stepKey(o.id, "reserve_stock"), orderId: o.id, items: [...o.items] },
      opts,
    );
    if (!reservation?.total) throw new Error("ReserveStock answered without a reservation");
    if (reservation.status !== ReservationStatus.RESERVED) {
      return unreadable("ReserveStock", ReservationStatus, reservation.status);
    }
    return onReserved(
      {
        reservationId: reservation.id,
        totalMinor: Number(reservation.total.amountMinor),
        currency: reservation.total.currencyCode,
      },
      attempt,
    );
  }

  private async release(o: OrderRecord, attempt: number, opts: { signal: AbortSignal }): Promise<Outcome> {
    let reservationId = o.reservationId;
    if (!reservationId) {
      // The reservation's outcome is unknown: ask again with the same key, which
      // returns the first result (or reserves now, which is released right away).
      try {
        const { reservation } = await this.deps.inventory.reserveStock(
          { idempotencyKey: stepKey(o.id, "reserve_stock"), orderId: o.id, items: [...o.items] },
          opts,
        );
        reservationId = reservation?.id ?? "";
      } catch (err) {
        if (err instanceof RpcError && failureKind(err.code) === "definite") {
          return onReleased(`nothing was reserved (${err.codeName})`, attempt);
        }
        throw err;
      }
    }
    await this.deps.inventory.releaseStock({ reservationId }, opts);
    return onReleased(`reservation ${reservationId} released`, attempt);
  }
}
