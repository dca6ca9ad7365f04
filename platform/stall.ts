/**
 * How long this process stood still: frozen (SIGSTOP, a paused VM, a container throttled to zero) or
 * stalled (a GC spiral, a blocked event loop). A timer meant to fire every `periodMs` that fires
 * `minStallMs` or more late measures a stall; a budget of waiting on others (a saga step's) leaves
 * those out, or a freeze of this process, with every peer answering, ran the budget out and gave
 * up on the peers. Shorter delays (a busy moment) count for nothing: a budget under load stays the
 * wall clock's. A query measures too, so a stall is counted even before the timer got to run after it.
 * The time before the clock began counts as standing still: the process was not running (stopped,
 * crashed, upgraded), and what came for it meanwhile waits unread — a budget of a saga begun before a
 * restart starts again at it, instead of running out at the first sweep.
 */
export class StallClock {
  /** The stalls seen, oldest first: when each ended and how long it lasted, ms. */
  private readonly stalls: { end: number; ms: number }[] = [];
  private last: number;
  private readonly began: number;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly periodMs = 250,
    private readonly minStallMs = 1_000,
    private readonly now: () => number = Date.now,
  ) {
    this.last = now();
    this.began = this.last;
    this.timer = setInterval(() => this.measure(), periodMs);
    this.timer.unref();
  }

  /**
   * Now (epoch ms), for a time later given to {@link stalledSince}: a stall just ended is counted
   * first, so it falls before this time. Read from the clock, one ended before the timer got to run
   * — the work queued behind it runs first — was dated after it, and taken for one this time saw.
   */
  time(): number {
    this.measure();
    return this.last;
  }

  /** Time this process stood still after `since` (epoch ms), up to now: not yet running included. */
  stalledSince(since: number): number {
    this.measure();
    let ms = Math.max(0, this.began - since);
    for (const s of this.stalls) ms += Math.max(0, Math.min(s.ms, s.end - since));
    return ms;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private measure(): void {
    const t = this.now();
    const late = t - this.last - this.periodMs;
    this.last = t;
    if (late < this.minStallMs) return;
    this.stalls.push({ end: t, ms: late });
    // Budgets are minutes at most: the stalls of the last hundred are plenty.
    if (this.stalls.length > 100) this.stalls.shift();
  }
}

let shared: StallClock | undefined;

/** This process's stall clock, started on first use (the resilient clients share it). */
export function processStalls(): StallClock {
  shared ??= new StallClock();
  return shared;
}
