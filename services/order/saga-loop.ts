/**
 * One order's orchestrated saga, driven to its end: decide (domain.ts), act (saga-step.ts),
 * repeat — going on at once after a step that committed, waiting out a backoff after a transient
 * failure (woken early by a change such as a cancel), and stopping when the saga is done, when
 * the loop is stopped, or when another replica took its lease.
 */
import { contextOf, inSpan } from "../../platform/index.js";
import { decide, type OrderRecord } from "./domain.js";
import type { Lease } from "./leases.js";
import { type Acted, act, FENCED, type SagaContext } from "./saga-step.js";
import { type Started, StepStarts } from "./step-log.js";

/** The order as this replica just placed it (its step log holds at most the start of `started`). */
export interface Fresh {
  readonly order: OrderRecord;
  readonly started?: Started;
}

/** One order's running saga loop. */
export class SagaLoop {
  /** Ends a backoff wait early. */
  wake: () => void = () => {};
  /** Settles when the loop has ended. */
  readonly done: Promise<void>;
  /** Cancels the loop's call in flight (on stop). Its own, so no signal is shared by every saga. */
  private readonly abort = new AbortController();
  private readonly starts: StepStarts;

  constructor(
    private readonly ctx: SagaContext,
    readonly orderId: string,
    /** The lease this loop drives the saga under. */
    readonly lease: Lease,
    fresh: Fresh | undefined,
  ) {
    this.starts = new StepStarts(ctx.clock);
    this.done = this.run(fresh);
  }

  /** Stops the loop: its call in flight is cancelled, a wait ends. */
  stop(): void {
    this.abort.abort();
    this.wake();
  }

  /** Drives the saga until it is done; `fresh`: the order as just placed, so nothing needs reading. */
  private async run(fresh: Fresh | undefined): Promise<void> {
    const { store, log } = this.ctx.deps;
    const { orderId, lease, starts } = this;
    const signal = this.abort.signal;
    if (!fresh) starts.load(await store.steps(orderId));
    if (fresh?.started) starts.record(fresh.started);
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
      const next = await this.span(name, current, () => act(this.ctx, { lease, starts, signal }, current, d, ready));
      if (next.wait === FENCED) {
        log.warn({ orderId, fence: lease.fence }, "saga lease lost to another replica; stopping here");
        return;
      }
      o = next.order;
      started = next.started;
      if (next.wait > 0) {
        o = undefined;
        started = undefined;
        await this.sleep(next.wait);
      }
    }
  }

  /** Runs one saga action in a span that continues the order's trace (when tracing is on). */
  private span(name: string, o: OrderRecord, fn: () => Promise<Acted>): Promise<Acted> {
    const tel = this.ctx.deps.telemetry;
    if (!tel) return fn();
    return inSpan(
      tel.tracer,
      `saga ${name}`,
      { parent: contextOf(o.traceparent), attributes: { "order.id": o.id, "saga.step": name } },
      fn,
    );
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }
}
