/**
 * The saga orchestrator: drives each order's checkout over gRPC, one step at
 * a time, persisting every step's start and outcome before deciding the next
 * (domain.ts decides; this file only does the calls). Because the state is
 * persisted and every participant call carries an idempotency key derived
 * from saga id + step, a crash at any point is recovered by running the
 * saga again from what is stored: a repeated call returns its first result.
 *
 * Forward steps are retried (the resilient client retries within a call;
 * the saga retries across calls with backoff) until `stepBudgetMs` has passed
 * since the step first started, then the saga compensates. Compensation is
 * retried until it succeeds: it must never be lost.
 */

import { stepKey } from "../../contracts/saga.js";
import type { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { type PaymentService, PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import {
  backoffMs,
  type Client,
  Code,
  contextOf,
  inSpan,
  type Logger,
  RpcError,
  type Telemetry,
} from "../../platform/index.js";
import {
  type CallStep,
  type Decision,
  decide,
  failureKind,
  type OrderRecord,
  onCancelled,
  onCharged,
  onCompensate,
  onConfirmed,
  onDeclined,
  onForwardFailed,
  onRefunded,
  onReleased,
  onReserved,
  onRetrying,
  onStarted,
  type Transition,
} from "./domain.js";
import type { OrderStore } from "./store.js";

/** Timing of saga-level retries, in ms. */
export interface SagaTiming {
  /** How long a forward step may keep failing transiently before the saga compensates. */
  readonly stepBudgetMs: number;
  /** First saga-level backoff. */
  readonly retryBaseMs: number;
  /** Largest saga-level backoff. */
  readonly retryMaxMs: number;
}

/** Dependencies of the orchestrator. */
export interface SagaDeps {
  readonly store: OrderStore;
  readonly inventory: Client<typeof InventoryService>;
  readonly payment: Client<typeof PaymentService>;
  readonly timing: SagaTiming;
  readonly log: Logger;
  readonly clock?: () => number;
  readonly random?: () => number;
  /** Saga step spans, continuing the trace of the request that placed the order. */
  readonly telemetry?: Telemetry;
}

type Outcome = Transition | { readonly retry: string };

const PARTICIPANT: Record<CallStep, string> = {
  reserve_stock: "inventory",
  release_stock: "inventory",
  charge_payment: "payment",
  refund_payment: "payment",
};

function describe(err: unknown): string {
  return err instanceof RpcError ? `${err.codeName}: ${err.message}` : String(err);
}

/** One order's running saga loop. */
interface Loop {
  /** Ends a backoff wait early. */
  wake: () => void;
  done: Promise<void>;
  /** Cancels the loop's call in flight (on stop). Its own, so no signal is shared by every saga. */
  readonly abort: AbortController;
}

/** Runs orchestrated sagas: at most one loop per order, resumable after a crash. */
export class SagaOrchestrator {
  private readonly loops = new Map<string, Loop>();
  private stopped = false;
  private readonly clock: () => number;
  private readonly random: () => number;

  constructor(private readonly deps: SagaDeps) {
    this.clock = deps.clock ?? Date.now;
    this.random = deps.random ?? Math.random;
  }

  /** Starts the saga of `orderId`, or wakes it if it is waiting to retry. */
  kick(orderId: string): void {
    if (this.stopped) return;
    const running = this.loops.get(orderId);
    if (running) {
      running.wake();
      return;
    }
    const loop: Loop = { wake: () => {}, done: Promise.resolve(), abort: new AbortController() };
    loop.done = this.run(orderId, loop)
      .catch((err: unknown) => this.deps.log.error({ err, orderId }, "saga loop crashed; it resumes on restart"))
      .finally(() => this.loops.delete(orderId));
    this.loops.set(orderId, loop);
  }

  /** Resumes every orchestrated saga left unfinished (after a crash or a stop). */
  resumeAll(): number {
    const ids = this.deps.store.activeIds("ORCHESTRATION");
    for (const id of ids) this.kick(id);
    if (ids.length > 0) this.deps.log.info({ sagas: ids.length }, "resuming sagas left in flight");
    return ids.length;
  }

  /** Stops all loops: in-flight calls are cancelled; their sagas resume on the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const l of this.loops.values()) {
      l.abort.abort();
      l.wake();
    }
    await Promise.all([...this.loops.values()].map((l) => l.done));
  }

  private async run(orderId: string, loop: Loop): Promise<void> {
    const { store } = this.deps;
    const signal = loop.abort.signal;
    while (!signal.aborted) {
      const o = store.get(orderId);
      if (!o) return;
      const d = decide(o);
      if (d.kind === "done") return;
      const name =
        d.kind === "call"
          ? d.step
          : d.kind === "confirm"
            ? "confirm_order"
            : d.kind === "compensate"
              ? "compensate"
              : "cancel_order";
      const backoff = await this.step(name, o, () => this.act(o, d, signal));
      if (backoff > 0) await this.sleep(backoff, loop);
    }
  }

  /** Runs one saga action in a span that continues the order's trace (when tracing is on). */
  private step(name: string, o: OrderRecord, fn: () => Promise<number>): Promise<number> {
    const tel = this.deps.telemetry;
    if (!tel) return fn();
    return inSpan(
      tel.tracer,
      `saga ${name}`,
      { parent: contextOf(o.traceparent), attributes: { "order.id": o.id, "saga.step": name } },
      fn,
    );
  }

  /** Performs decision `d` for `o`; returns how long to wait before the next decision (0: go on at once). */
  private async act(o: OrderRecord, d: Exclude<Decision, { kind: "done" }>, signal: AbortSignal): Promise<number> {
    const { store } = this.deps;
    const orderId = o.id;
    switch (d.kind) {
      case "compensate":
        store.apply(orderId, onCompensate(d.reason), { status: "PENDING" });
        return 0;
      case "confirm":
        // Guarded: a cancel that committed first wins, and the next decision compensates.
        store.apply(orderId, onConfirmed(), { status: "PENDING", noCancel: true });
        return 0;
      case "cancel":
        store.apply(orderId, onCancelled(o.reason), { status: "COMPENSATING" });
        return 0;
      case "call": {
        const history = store.steps(orderId).filter((s) => s.name === d.step && s.status === "STARTED");
        const attempt = history.length + 1;
        const since = history[0]?.at ?? this.clock();
        store.apply(orderId, onStarted(o, d.step, attempt));
        const outcome = await this.call(d.step, o, attempt, signal);
        if (signal.aborted) return 0; // stopping: the step's outcome is unknown and is re-driven on restart
        if (!("retry" in outcome)) {
          store.apply(orderId, outcome);
          return 0;
        }
        const forward = d.step === "reserve_stock" || d.step === "charge_payment";
        if (forward && this.clock() - since >= this.deps.timing.stepBudgetMs) {
          const reason = `${PARTICIPANT[d.step]} unavailable: ${outcome.retry}`;
          store.apply(orderId, onForwardFailed(d.step, reason, false, attempt));
          return 0;
        }
        store.apply(orderId, onRetrying(d.step, outcome.retry, attempt));
        const { retryBaseMs, retryMaxMs } = this.deps.timing;
        return backoffMs(attempt, retryBaseMs, retryMaxMs, this.random());
      }
    }
  }

  private sleep(ms: number, loop: Loop): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      loop.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  /** Performs one participant call and maps its result to a transition, or to a retry. */
  private async call(step: CallStep, o: OrderRecord, attempt: number, signal: AbortSignal): Promise<Outcome> {
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
          return payment.status === PaymentStatus.CAPTURED
            ? onCharged(payment.id, attempt)
            : onDeclined(payment.id, payment.declineReason || "declined", attempt);
        }
        case "refund_payment": {
          // By charge key: refunds the payment made with it, or voids the key if no
          // charge happened, so an uncertain charge can never stay taken.
          const { payment } = await this.deps.payment.refundPayment(
            { chargeIdempotencyKey: stepKey(o.id, "charge_payment"), reason: `order ${o.id}: ${o.reason}` },
            opts,
          );
          const what =
            payment?.status === PaymentStatus.REFUNDED
              ? `payment ${payment.id} refunded`
              : "no charge happened (key voided)";
          return onRefunded(what, attempt);
        }
        case "release_stock":
          return await this.release(o, attempt, opts);
      }
    } catch (err) {
      if (!(err instanceof RpcError)) throw err;
      const forward = step === "reserve_stock" || step === "charge_payment";
      if (failureKind(err.code) === "transient") return { retry: describe(err) };
      if (forward) {
        const reason = err.code === Code.FAILED_PRECONDITION ? err.message : describe(err);
        return onForwardFailed(step, reason, true, attempt);
      }
      // A definite refusal of an undo means there is nothing to undo (e.g. NOT_FOUND).
      return step === "refund_payment" ? onRefunded(describe(err), attempt) : onReleased(describe(err), attempt);
    }
  }

  private async reserve(o: OrderRecord, attempt: number, opts: { signal: AbortSignal }): Promise<Outcome> {
    const { reservation } = await this.deps.inventory.reserveStock(
      { idempotencyKey: stepKey(o.id, "reserve_stock"), orderId: o.id, items: [...o.items] },
      opts,
    );
    if (!reservation?.total) throw new Error("ReserveStock answered without a reservation");
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
