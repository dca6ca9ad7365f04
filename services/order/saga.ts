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
 *
 * Several replicas share the sagas through leases in the store: a replica
 * drives only the sagas it holds (those it placed, and those it adopted
 * after their owner's lease ran out), renews its leases while it drives
 * them, and writes every step with the lease's fencing token — so a replica
 * that lost its lease (paused, cut off) stops at its next write instead of
 * racing the new owner. On a graceful stop it gives its leases back.
 */

import type { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import type { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import {
  backoffMs,
  type Client,
  contextOf,
  inSpan,
  type Logger,
  type Telemetry,
  type Tx,
} from "../../platform/index.js";
import {
  type CallStep,
  type Decision,
  decide,
  type OrderRecord,
  type OrderStatus,
  onCancelled,
  onCancelledRefundPending,
  onCompensate,
  onConfirmed,
  onForwardFailed,
  onRetrying,
  onStarted,
  type Progress,
  type Transition,
} from "./domain.js";
import { Participants } from "./participants.js";
import type { StoredStep } from "./schema.js";
import type { Lease, OrderStore } from "./store.js";

/** Timing of saga-level retries, in ms. */
export interface SagaTiming {
  /** How long a forward step may keep failing transiently before the saga compensates. */
  readonly stepBudgetMs: number;
  /** First saga-level backoff. */
  readonly retryBaseMs: number;
  /** Largest saga-level backoff. */
  readonly retryMaxMs: number;
}

/** How this replica holds sagas. */
export interface SagaLeasing {
  /** This replica's name in the orders' `owner` column (unique per running process). */
  readonly owner: string;
  /** How long a lease lasts without renewal: a dead replica's sagas are adopted after at most this long. */
  readonly ms: number;
  /**
   * Adopt every unfinished saga at start, leased or not: right only when no
   * other process can be driving them (SQLite: one process per file), so a
   * restart resumes at once instead of after the dead process's lease.
   */
  readonly adoptAllAtStart: boolean;
}

/** Dependencies of the orchestrator. */
export interface SagaDeps {
  readonly store: OrderStore;
  readonly leasing: SagaLeasing;
  readonly inventory: Client<typeof InventoryService>;
  readonly payment: Client<typeof PaymentService>;
  readonly timing: SagaTiming;
  readonly log: Logger;
  readonly clock?: () => number;
  readonly random?: () => number;
  /** Saga step spans, continuing the trace of the request that placed the order. */
  readonly telemetry?: Telemetry;
}

/** What {@link SagaOrchestrator.act} returns when the lease was lost: the loop stops. */
const FENCED = -1;

const PARTICIPANT: Record<CallStep, string> = {
  reserve_stock: "inventory",
  release_stock: "inventory",
  charge_payment: "payment",
  refund_payment: "payment",
};

/** A call step started (its STARTED entry committed) and not yet sent. */
interface Started {
  readonly step: CallStep;
  readonly attempt: number;
  /** When the step first started (its budget runs from there), epoch ms. */
  readonly since: number;
  /** What the step had done before this attempt: an attempt that is never sent changes nothing. */
  readonly before: Progress | undefined;
}

/** What one saga action left behind. */
interface Acted {
  /** How long to wait before the next decision, ms (0: go on at once), or FENCED. */
  readonly wait: number;
  /** The order as the action's commit left it; undefined: read it again. */
  readonly order?: OrderRecord;
  /** The next call, started in that same commit. */
  readonly started?: Started;
}

/** One order's running saga loop. */
interface Loop {
  /** The lease this loop drives the saga under. */
  readonly lease: Lease;
  /**
   * STARTED entries per call step so far (count, and when the first was written): read from the
   * step log once when the loop starts, then kept here. Only the lease holder's loop writes them.
   */
  readonly starts: Map<CallStep, { count: number; since: number }>;
  /** Ends a backoff wait early. */
  wake: () => void;
  done: Promise<void>;
  /** Cancels the loop's call in flight (on stop). Its own, so no signal is shared by every saga. */
  readonly abort: AbortController;
}

/** Runs orchestrated sagas: at most one loop per order (and per cluster, by lease), resumable after a crash. */
export class SagaOrchestrator {
  private readonly loops = new Map<string, Loop>();
  private stopped = false;
  private sweeper: NodeJS.Timeout | undefined;
  private readonly clock: () => number;
  private readonly random: () => number;
  private readonly participants: Participants;

  constructor(private readonly deps: SagaDeps) {
    this.participants = new Participants(deps);
    this.clock = deps.clock ?? Date.now;
    this.random = deps.random ?? Math.random;
  }

  /** The lease new orders of this replica are placed under. */
  get lease(): { owner: string; ms: number } {
    return { owner: this.deps.leasing.owner, ms: this.deps.leasing.ms };
  }

  /**
   * Adopts the sagas no live replica holds and keeps doing so (with lease
   * renewal) every third of the lease. Returns how many sagas it adopted now.
   */
  async start(): Promise<number> {
    const { leasing, log } = this.deps;
    const adopted = await this.adopt(leasing.adoptAllAtStart ? "all" : "expired");
    if (adopted > 0) log.info({ sagas: adopted, at: "start" }, "resuming sagas left in flight");
    this.sweeper = setInterval(() => void this.sweep(), Math.max(50, Math.floor(leasing.ms / 3)));
    this.sweeper.unref();
    return adopted;
  }

  /** Claims sagas (those without a live lease, or all) and starts their loops; how many. */
  private async adopt(scope: "expired" | "all"): Promise<number> {
    const claimed = await this.deps.store.claimSagas(this.deps.leasing.owner, this.deps.leasing.ms, scope);
    for (const c of claimed) this.drive(c.id, c.fence);
    return claimed.length;
  }

  /** Renews the leases of running loops, then adopts orphaned sagas. */
  private async sweep(): Promise<void> {
    if (this.stopped) return;
    const { store, leasing, log } = this.deps;
    try {
      await store.renewLeases(leasing.owner, [...this.loops.keys()], leasing.ms);
      const adopted = await this.adopt("expired");
      // Their owner stopped renewing (it died, hung, or lost the database) or gave them back.
      if (adopted > 0) log.warn({ sagas: adopted, at: "lease expiry" }, "resuming sagas left in flight");
    } catch (err) {
      log.warn({ err }, "lease sweep failed; retrying on the next one");
    }
  }

  /** Starts driving the saga of `orderId` under lease token `fence` (this replica just placed or claimed it). */
  /**
   * Starts the saga of order `o`, being placed in `tx` under lease token `fence`: its first call's
   * STARTED entry commits with the order, and the saga is driven from there once `tx` commits.
   * Returns the order and its step log as `tx` leaves them.
   */
  async begin(o: OrderRecord, fence: number, tx: Tx): Promise<{ order: OrderRecord; steps: StoredStep[] }> {
    const d = decide(o);
    if (d.kind !== "call") {
      tx.afterCommit(() => this.drive(o.id, fence, { order: o }));
      return { order: o, steps: [] };
    }
    const started = this.started(o, d.step, undefined);
    const r = await this.deps.store.apply(o.id, onStarted(o, d.step, 1), {
      lease: { owner: this.deps.leasing.owner, fence },
      tx,
    });
    if (r.kind !== "applied") throw new Error(`order ${o.id} changed while it was placed (${r.kind})`);
    tx.afterCommit(() => this.drive(o.id, fence, { order: r.order, started }));
    return { order: r.order, steps: [r.step] };
  }

  /**
   * Starts driving the saga of `orderId` under lease token `fence` (this replica just placed or
   * claimed it). `fresh`: the order as this replica just placed it (its step log holds at most
   * the start of `fresh.started`), so nothing needs reading.
   */
  drive(orderId: string, fence: number, fresh?: { order: OrderRecord; started?: Started }): void {
    if (this.stopped) return;
    const running = this.loops.get(orderId);
    if (running) {
      // Our own lease ran out (a stall) and we claimed it again: the old loop's view may be stale; start afresh.
      running.abort.abort();
      running.wake();
      void running.done.then(() => this.drive(orderId, fence));
      return;
    }
    const loop: Loop = {
      lease: { owner: this.deps.leasing.owner, fence },
      starts: new Map(),
      wake: () => {},
      done: Promise.resolve(),
      abort: new AbortController(),
    };
    // A change made anywhere (a cancel on another replica) wakes the saga if it waits to retry.
    const unwatch = this.deps.store.onChange(orderId, () => loop.wake());
    loop.done = this.run(orderId, loop, fresh)
      .catch((err: unknown) =>
        // Its lease is no longer renewed: the saga is adopted again (by any replica) once it runs out.
        this.deps.log.error({ err, orderId }, "saga loop crashed; it is adopted again when its lease runs out"),
      )
      .finally(() => {
        unwatch();
        this.loops.delete(orderId);
      });
    this.loops.set(orderId, loop);
  }

  /** Wakes the saga of `orderId` if this replica drives it and it is waiting (a cancel was requested). */
  wake(orderId: string): void {
    this.loops.get(orderId)?.wake();
  }

  /** Stops all loops (in-flight calls are cancelled) and gives their leases back to the other replicas. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweeper);
    for (const l of this.loops.values()) {
      l.abort.abort();
      l.wake();
    }
    await Promise.all([...this.loops.values()].map((l) => l.done));
    await this.deps.store.releaseLeases(this.deps.leasing.owner).catch((err: unknown) => {
      this.deps.log.warn({ err }, "could not give the saga leases back; they are adopted when they run out");
    });
  }

  /** Drives the saga of `orderId` until it is done (see {@link drive} for `fresh`). */
  private async run(
    orderId: string,
    loop: Loop,
    fresh: { order: OrderRecord; started?: Started } | undefined,
  ): Promise<void> {
    const { store } = this.deps;
    const signal = loop.abort.signal;
    for (const s of fresh ? [] : await store.steps(orderId)) {
      const step = s.name as CallStep;
      if (s.status !== "STARTED" || !(step in PARTICIPANT)) continue;
      const seen = loop.starts.get(step);
      loop.starts.set(step, { count: (seen?.count ?? 0) + 1, since: seen?.since ?? s.at });
    }
    if (fresh?.started) this.record(fresh.started, loop);
    // The order as the last commit left it: read again only after a wait (a cancel may have come).
    let o: OrderRecord | undefined = fresh?.order;
    let started: Started | undefined = fresh?.started;
    while (!signal.aborted) {
      o ??= await store.get(orderId);
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
      const current = o;
      const ready = d.kind === "call" && started?.step === d.step ? started : undefined;
      const next = await this.step(name, current, () => this.act(current, d, loop, ready));
      if (next.wait === FENCED) {
        this.deps.log.warn({ orderId, fence: loop.lease.fence }, "saga lease lost to another replica; stopping here");
        return;
      }
      o = next.order;
      started = next.started;
      if (next.wait > 0) {
        o = undefined;
        started = undefined;
        await this.sleep(next.wait, loop);
      }
    }
  }

  /** Runs one saga action in a span that continues the order's trace (when tracing is on). */
  private step(name: string, o: OrderRecord, fn: () => Promise<Acted>): Promise<Acted> {
    const tel = this.deps.telemetry;
    if (!tel) return fn();
    return inSpan(
      tel.tracer,
      `saga ${name}`,
      { parent: contextOf(o.traceparent), attributes: { "order.id": o.id, "saga.step": name } },
      fn,
    );
  }

  /** The transition (with its guard) that carries out a decision needing no call. */
  private static transitionOf(
    o: OrderRecord,
    d: Extract<Decision, { kind: "confirm" | "compensate" | "cancel" }>,
  ): [Transition, { status: OrderStatus; noCancel?: boolean }] {
    switch (d.kind) {
      case "compensate":
        return [onCompensate(d.reason), { status: "PENDING" }];
      case "confirm":
        // Guarded: a cancel that committed first wins, and the next decision compensates.
        return [onConfirmed(), { status: "PENDING", noCancel: true }];
      case "cancel":
        return [onCancelled(o.reason), { status: "COMPENSATING" }];
    }
  }

  /**
   * Commits `t` (under `guard`) and, in the same transaction, what the saga decides next as long as
   * it needs no call — a confirmation, a turn to compensation, the cancel — and then the start of
   * the next call, so that call goes out right after this one commit instead of after two or three
   * (each waits for its flush to disk). The guarantees are those of separate commits: a STARTED
   * entry is durable before its call is sent, every change is guarded and fenced as it would be on
   * its own, and a cancel that committed first is seen (the transaction holds the order's lock).
   */
  private settle(
    o: OrderRecord,
    t: Transition,
    guard: { status: OrderStatus; noCancel?: boolean } | undefined,
    loop: Loop,
  ): Promise<Acted> {
    const { store } = this.deps;
    const { lease } = loop;
    return store.db.transaction(async (tx): Promise<Acted> => {
      let r = await store.apply(o.id, t, guard ? { guard, lease, tx } : { lease, tx });
      for (;;) {
        if (r.kind === "fenced") return { wait: FENCED };
        if (r.kind === "skipped") return { wait: 0 };
        const order = r.order;
        const d = decide(order);
        if (d.kind === "done") return { wait: 0, order };
        if (d.kind === "call") {
          const started = this.started(order, d.step, loop);
          const s = await store.apply(order.id, onStarted(order, d.step, started.attempt), { lease, tx });
          if (s.kind !== "applied") return { wait: s.kind === "fenced" ? FENCED : 0 };
          tx.afterCommit(() => this.record(started, loop));
          return { wait: 0, order: s.order, started };
        }
        const [next, g] = SagaOrchestrator.transitionOf(order, d);
        r = await store.apply(order.id, next, { guard: g, lease, tx });
      }
    });
  }

  /** The start of `step`'s next attempt for `o`, as far as `loop` has seen its step log (none: the first). */
  private started(o: OrderRecord, step: CallStep, loop: Loop | undefined): Started {
    const seen = loop?.starts.get(step);
    return {
      step,
      attempt: (seen?.count ?? 0) + 1,
      since: seen?.since ?? this.clock(),
      before: step === "reserve_stock" ? o.stock : step === "charge_payment" ? o.payment : undefined,
    };
  }

  /** Notes a committed STARTED entry. */
  private record(s: Started, loop: Loop): void {
    loop.starts.set(s.step, { count: s.attempt, since: s.since });
  }

  /** Performs decision `d` for `o` (its call already started when `ready`); see {@link Acted}. */
  private async act(
    o: OrderRecord,
    d: Exclude<Decision, { kind: "done" }>,
    loop: Loop,
    ready: Started | undefined,
  ): Promise<Acted> {
    const { store } = this.deps;
    const { lease } = loop;
    const signal = loop.abort.signal;
    const apply = async (t: Transition, guard?: { status: OrderStatus; noCancel?: boolean }) => {
      const r = await store.apply(o.id, t, guard ? { guard, lease } : { lease });
      return r.kind === "fenced" ? FENCED : 0;
    };
    if (d.kind !== "call") {
      const [t, guard] = SagaOrchestrator.transitionOf(o, d);
      return this.settle(o, t, guard, loop);
    }
    let s = ready;
    if (!s) {
      s = this.started(o, d.step, loop);
      if ((await apply(onStarted(o, d.step, s.attempt))) === FENCED) return { wait: FENCED };
      this.record(s, loop);
    }
    const { attempt, since, before } = s;
    const outcome = await this.participants.call(d.step, o, attempt, signal);
    if (signal.aborted) return { wait: 0 }; // stopping: the step's outcome is unknown and is re-driven by the next owner
    if (!("retry" in outcome)) return this.settle(o, outcome, undefined, loop);
    const neverSent = outcome.notSent && before !== undefined ? { before } : undefined;
    const forward = d.step === "reserve_stock" || d.step === "charge_payment";
    if (forward && this.clock() - since >= this.deps.timing.stepBudgetMs) {
      const reason = `${PARTICIPANT[d.step]} unavailable: ${outcome.retry}`;
      return this.settle(o, onForwardFailed(d.step, reason, neverSent?.before === "none", attempt), undefined, loop);
    }
    if ((await apply(onRetrying(d.step, outcome.retry, attempt, neverSent))) === FENCED) return { wait: FENCED };
    if (d.step === "refund_payment" && o.status === "COMPENSATING") {
      // Stock is already back (it goes first): cancel now, with the refund pending, instead of
      // holding the order open for as long as payment is out; the refund goes on being retried.
      const cancelled = await apply(onCancelledRefundPending(o.reason, outcome.retry), { status: "COMPENSATING" });
      if (cancelled === FENCED) return { wait: FENCED };
    }
    const { retryBaseMs, retryMaxMs } = this.deps.timing;
    return { wait: backoffMs(attempt, retryBaseMs, retryMaxMs, this.random()) };
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
}
