/**
 * One order's orchestrated saga, driven to its end: decide (domain.ts), act (saga-step.ts),
 * repeat — going on at once after a step that committed, waiting out a backoff after a transient
 * failure (woken early by a change such as a cancel), and stopping when the saga is done, when
 * the loop is stopped, or when another replica took its lease.
 */
import { SpanStatusCode } from "@opentelemetry/api";
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
  /** Settles when the loop has ended. */
  readonly done: Promise<void>;
  /** Cancels the loop's call in flight (on stop). Its own, so no signal is shared by every saga. */
  private readonly abort = new AbortController();
  private readonly starts: StepStarts;
  /** A wake that came while no wait ran (during a call, or its write): the next wait is none. */
  private woken = false;
  /** Ends the wait running now, if one is. */
  private endWait: (() => void) | undefined;

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

  /**
   * Ends a backoff wait early (the order changed: a cancel), or the next one when none runs now —
   * a wake during a participant call was lost, and a cancel waited out the whole backoff.
   */
  wake(): void {
    this.woken = true;
    this.endWait?.();
  }

  /** Stops the loop: its call in flight is cancelled, its wait (now or next) ends. */
  stop(): void {
    this.abort.abort();
    this.wake();
  }

  /** Drives the saga until it is done; `fresh`: the order as just placed, so nothing needs reading. */
  private async run(fresh: Fresh | undefined): Promise<void> {
    const { store, log } = this.ctx.deps;
    const { orderId, lease, starts } = this;
    const signal = this.abort.signal;
    if (!fresh) {
      const steps = await store.steps(orderId);
      // The shared clock's lead over this loop's, both read together: with this one read before the
      // log, the lead took in the log's read (a slow database at a failover, every adopted saga
      // reading at once), and the step's budget ran short by it.
      const shared = await store.sharedNow();
      starts.load(steps, shared - this.ctx.clock());
    }
    if (fresh?.started) starts.record(fresh.started);
    // The order as the last commit left it: read again only after a wait (a cancel may have come).
    let o: OrderRecord | undefined = fresh?.order;
    let started: Started | undefined = fresh?.started;
    while (!signal.aborted) {
      if (!o) {
        this.woken = false; // the read below sees what any wake so far was about
        o = await store.get(orderId);
      }
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
        log.warn(
          { orderId, fence: lease.fence },
          "saga lease taken over since this run began (by another replica, or by this one after a pause); stopping here",
        );
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
      async (span) => {
        const acted = await fn();
        // A call that failed, to be retried or given up, is the span's failure though the saga goes on:
        // with the circuit open the span had no child to say why the saga waited.
        if (acted.failed) span.setStatus({ code: SpanStatusCode.ERROR, message: acted.failed });
        return acted;
      },
    );
  }

  private sleep(ms: number): Promise<void> {
    if (this.woken) return Promise.resolve();
    return new Promise((resolve) => {
      const end = () => {
        clearTimeout(t);
        this.endWait = undefined;
        resolve();
      };
      const t = setTimeout(end, ms);
      this.endWait = end;
    });
  }
}
