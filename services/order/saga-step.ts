/**
 * One step of an orchestrated saga: carrying out what domain.ts decided for the order — a
 * participant call, or a transition that needs none — and committing what came of it together
 * with what follows without a call and the start of the next call (one commit, one flush, where
 * each would otherwise wait for its own).
 */
import { backoffMs } from "../../platform/index.js";
import { cancelledRefundPending, type Guard, givenUp, transitionOf } from "./compensation.js";
import { type Decision, decide, type OrderRecord, onRetrying, onStarted, type Transition } from "./domain.js";
import type { Lease } from "./leases.js";
import type { Participants } from "./participants.js";
import type { SagaDeps } from "./saga.js";
import type { Started, StepStarts } from "./step-log.js";

/** What a saga's loop and steps work with: the orchestrator's dependencies, resolved. */
export interface SagaContext {
  readonly deps: SagaDeps;
  readonly clock: () => number;
  readonly random: () => number;
  readonly participants: Participants;
}

/** What a step of one order's saga runs under: its lease, its step starts, and its cancellation. */
export interface StepScope {
  readonly lease: Lease;
  readonly starts: StepStarts;
  readonly signal: AbortSignal;
}

/** What {@link act} returns when the lease was lost: the loop stops. */
export const FENCED = -1;

/** What one saga action left behind. */
export interface Acted {
  /** How long to wait before the next decision, ms (0: go on at once), or FENCED. */
  readonly wait: number;
  /** The order as the action's commit left it; undefined: read it again. */
  readonly order?: OrderRecord;
  /** The next call, started in that same commit. */
  readonly started?: Started;
  /** Why the action's call failed (to be retried, or given up): its span's error. */
  readonly failed?: string;
}

/**
 * Commits `t` (under `guard`) and, in the same transaction, what the saga decides next as long as
 * it needs no call — a confirmation, a turn to compensation, the cancel — and then the start of
 * the next call, so that call goes out right after this one commit instead of after two or three
 * (each waits for its flush to disk). The guarantees are those of separate commits: a STARTED
 * entry is durable before its call is sent, every change is guarded and fenced as it would be on
 * its own, and a cancel that committed first is seen (the transaction holds the order's lock).
 */
function settle(ctx: SagaContext, scope: StepScope, o: OrderRecord, t: Transition, guard?: Guard): Promise<Acted> {
  const { store } = ctx.deps;
  const { lease, starts } = scope;
  return store.db.transaction(async (tx): Promise<Acted> => {
    let r = await store.apply(o.id, t, guard ? { guard, lease, tx } : { lease, tx });
    for (;;) {
      if (r.kind === "fenced") return { wait: FENCED };
      if (r.kind === "skipped") return { wait: 0 };
      const order = r.order;
      const d = decide(order);
      if (d.kind === "done") return { wait: 0, order };
      if (d.kind === "call") {
        const started = starts.next(order, d.step);
        const s = await store.apply(order.id, onStarted(order, d.step, started.attempt), { lease, tx });
        if (s.kind !== "applied") return { wait: s.kind === "fenced" ? FENCED : 0 };
        tx.afterCommit(() => starts.record(started));
        return { wait: 0, order: s.order, started };
      }
      const [next, g] = transitionOf(order, d);
      r = await store.apply(order.id, next, { guard: g, lease, tx });
    }
  });
}

/** Performs decision `d` for `o` (its call already started when `ready`); see {@link Acted}. */
export async function act(
  ctx: SagaContext,
  scope: StepScope,
  o: OrderRecord,
  d: Exclude<Decision, { kind: "done" }>,
  ready: Started | undefined,
): Promise<Acted> {
  const { store } = ctx.deps;
  const { lease, starts, signal } = scope;
  const apply = async (t: Transition, guard?: Guard) => {
    const r = await store.apply(o.id, t, guard ? { guard, lease } : { lease });
    return r.kind === "fenced" ? FENCED : 0;
  };
  if (d.kind !== "call") {
    const [t, guard] = transitionOf(o, d);
    return settle(ctx, scope, o, t, guard);
  }
  let s = ready;
  if (!s) {
    s = starts.next(o, d.step);
    if ((await apply(onStarted(o, d.step, s.attempt))) === FENCED) return { wait: FENCED };
    starts.record(s);
  }
  const { attempt, since, before } = s;
  const outcome = await ctx.participants.call(d.step, o, attempt, signal);
  if (signal.aborted) return { wait: 0 }; // stopping: the step's outcome is unknown and is re-driven by the next owner
  if (!("retry" in outcome)) return settle(ctx, scope, o, outcome);
  const neverSent = outcome.notSent && before !== undefined ? { before } : undefined;
  // The time this process stood still since the step began (frozen, stalled) is not the participant's.
  const stalled = ctx.deps.stalledSince?.(since) ?? 0;
  const budget = { since: since + stalled, now: ctx.clock(), budgetMs: ctx.deps.timing.stepBudgetMs };
  const failed = givenUp(d.step, outcome.retry, budget, attempt, neverSent?.before === "none");
  if (failed) return { ...(await settle(ctx, scope, o, failed)), failed: outcome.retry };
  if ((await apply(onRetrying(d.step, outcome.retry, attempt, neverSent))) === FENCED) return { wait: FENCED };
  if (outcome.refused) {
    // Retrying will not help unless someone changes something: say so each time (refund_pending shows it too).
    ctx.deps.log.warn(
      { orderId: o.id, step: d.step, attempt, refusal: outcome.retry },
      "payment refused the refund; the order stays cancelled with its refund pending, and it is retried",
    );
  }
  const pending = cancelledRefundPending(d.step, o, outcome.retry);
  if (pending && (await apply(...pending)) === FENCED) return { wait: FENCED };
  const { retryBaseMs, retryMaxMs } = ctx.deps.timing;
  return { wait: backoffMs(attempt, retryBaseMs, retryMaxMs, ctx.random()), failed: outcome.retry };
}
