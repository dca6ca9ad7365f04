/**
 * The saga orchestrator: drives each order's checkout over gRPC, one step at
 * a time, persisting every step's start and outcome before deciding the next
 * (domain.ts decides; saga-loop.ts runs one order's saga, saga-step.ts one
 * step of it). Because the state is persisted and every participant call
 * carries an idempotency key derived from saga id + step, a crash at any
 * point is recovered by running the saga again from what is stored: a
 * repeated call returns its first result.
 *
 * Forward steps are retried (the resilient client retries within a call;
 * the saga retries across calls with backoff) until `stepBudgetMs` has passed
 * since the step first started, then the saga compensates (compensation.ts).
 * Compensation is retried until it succeeds: it must never be lost.
 *
 * Several replicas share the sagas through leases in the store (this file):
 * a replica drives only the sagas it holds (those it placed, and those it
 * adopted after their owner's lease ran out), renews its leases while it
 * drives them, and writes every step with the lease's fencing token — so a
 * replica that lost its lease (paused, cut off) stops at its next write
 * instead of racing the new owner. On a graceful stop it gives its leases back.
 */

import type { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import type { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import type { Client, Logger, Telemetry, Tx } from "../../platform/index.js";
import { decide, type OrderRecord, onStarted } from "./domain.js";
import { Participants } from "./participants.js";
import { type Fresh, SagaLoop } from "./saga-loop.js";
import type { SagaContext } from "./saga-step.js";
import type { StoredStep } from "./schema.js";
import { StepStarts } from "./step-log.js";
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
  /**
   * How long this process stood still after a time (platform/stall.ts): a step's budget leaves it
   * out, since a freeze of this process is no participant's failure. None by default.
   */
  readonly stalledSince?: (since: number) => number;
  readonly random?: () => number;
  /** Saga step spans, continuing the trace of the request that placed the order. */
  readonly telemetry?: Telemetry;
}

/** Runs orchestrated sagas: at most one loop per order (and per cluster, by lease), resumable after a crash. */
export class SagaOrchestrator {
  /** The running loops by order, each with what settles once it has ended and been forgotten. */
  private readonly loops = new Map<string, { loop: SagaLoop; done: Promise<void> }>();
  private stopped = false;
  private sweeper: NodeJS.Timeout | undefined;
  /**
   * The sweeps running now (stop() waits for them). They may overlap: one slowed by a loaded
   * database must not hold back the next, which may be the one that adopts a dead replica's sagas.
   */
  private readonly sweeps = new Set<Promise<void>>();
  private readonly ctx: SagaContext;

  constructor(private readonly deps: SagaDeps) {
    this.ctx = {
      deps,
      clock: deps.clock ?? Date.now,
      random: deps.random ?? Math.random,
      participants: new Participants(deps),
    };
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
    this.sweeper = setInterval(
      () => {
        const sweep = this.sweep().finally(() => this.sweeps.delete(sweep));
        this.sweeps.add(sweep);
      },
      Math.max(50, Math.floor(leasing.ms / 3)),
    );
    this.sweeper.unref();
    return adopted;
  }

  /** Claims sagas (those without a live lease, or all) and starts their loops; how many. */
  private async adopt(scope: "expired" | "all"): Promise<number> {
    const claimed = await this.deps.store.claimSagas(this.deps.leasing.owner, this.deps.leasing.ms, scope);
    for (const c of claimed) this.drive(c.id, c.fence);
    return claimed.length;
  }

  /** Adopts orphaned sagas, then renews the leases of running loops. */
  private async sweep(): Promise<void> {
    if (this.stopped) return;
    const { store, leasing, log } = this.deps;
    try {
      // Adoption first: a renewal slowed by the locks of this replica's own sagas must not delay it.
      const adopted = await this.adopt("expired");
      // Their owner stopped renewing (it died, hung, or lost the database) or gave them back.
      if (adopted > 0) log.warn({ sagas: adopted, at: "lease expiry" }, "resuming sagas left in flight");
    } catch (err) {
      log.warn({ err }, "saga adoption failed; retrying on the next sweep");
    }
    // Whatever adoption did: skipped with it, a failing claim lost this replica every lease it held.
    try {
      await store.renewLeases(leasing.owner, [...this.loops.keys()], leasing.ms);
    } catch (err) {
      log.warn({ err }, "lease renewal failed; retrying on the next sweep");
    }
  }

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
    const started = new StepStarts(this.ctx.clock).next(o, d.step);
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
  drive(orderId: string, fence: number, fresh?: Fresh): void {
    if (this.stopped) return;
    const running = this.loops.get(orderId);
    if (running) {
      // Our own lease ran out (a stall) and we claimed it again: the old loop's view may be stale; start afresh.
      running.loop.stop();
      void running.done.then(() => this.drive(orderId, fence));
      return;
    }
    const loop = new SagaLoop(this.ctx, orderId, { owner: this.deps.leasing.owner, fence }, fresh);
    // A change made anywhere (a cancel on another replica) wakes the saga from its wait to retry, or
    // ends the next one. Not the loop's own writes, each of which appends a step: a wake heard from
    // them cut every backoff to nothing (a down payment service was called without pause).
    const unwatch = this.deps.store.onChange(orderId, (_order, step) => {
      if (!step) loop.wake();
    });
    const done = loop.done
      .catch((err: unknown) =>
        // Its lease is no longer renewed: the saga is adopted again (by any replica) once it runs out.
        this.deps.log.error({ err, orderId }, "saga loop crashed; it is adopted again when its lease runs out"),
      )
      .finally(() => {
        unwatch();
        this.loops.delete(orderId);
      });
    this.loops.set(orderId, { loop, done });
  }

  /** Wakes the saga of `orderId` if this replica drives it and it is waiting (a cancel was requested). */
  wake(orderId: string): void {
    this.loops.get(orderId)?.loop.wake();
  }

  /**
   * Stops all loops (in-flight calls are cancelled) and gives their leases back to the other replicas
   * — after the sweeps that are running have ended, or a claim or renewal one commits after the
   * release would hold sagas nobody drives until their lease ran out.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweeper);
    await Promise.all(this.sweeps);
    for (const l of this.loops.values()) l.loop.stop();
    await Promise.all([...this.loops.values()].map((l) => l.done));
    await this.deps.store.releaseLeases(this.deps.leasing.owner).catch((err: unknown) => {
      this.deps.log.warn({ err }, "could not give the saga leases back; they are adopted when they run out");
    });
  }
}
