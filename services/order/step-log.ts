/**
 * What an orchestrator's loop remembers of its saga's step log: how many attempts each call step
 * has made so far (its latest STARTED entry's number) and when its first was written — the next
 * attempt's number, and the moment the step's retry budget runs from. Read from the stored log
 * once when a loop starts, then kept in memory: only the lease holder's loop writes them.
 */
import type { CallStep, OrderRecord, Progress } from "./domain.js";
import { PARTICIPANT } from "./participants.js";
import type { StoredStep } from "./schema.js";

/** A call step started (its STARTED entry committed) and not yet sent. */
export interface Started {
  readonly step: CallStep;
  readonly attempt: number;
  /** When the step first started (its budget runs from there), epoch ms. */
  readonly since: number;
  /** What the step had done before this attempt: an attempt that is never sent changes nothing. */
  readonly before: Progress | undefined;
}

/** The STARTED entries of one saga's call steps, per step (attempts so far, and when the first was written). */
export class StepStarts {
  private readonly seen = new Map<CallStep, { count: number; since: number }>();

  constructor(private readonly clock: () => number) {}

  /**
   * Reads the STARTED entries of call steps in `steps` (a stored step log, oldest first): each
   * step's attempts so far are its latest start's number, not a count — a long log keeps only its
   * first and latest entries (schema.ts), and each step's first start, which its budget runs from.
   * `aheadMs`: how far the clock the log is dated in (platform/shared-clock.ts) is ahead of this
   * loop's; a start written by another replica's clock and read as this one's ran the budget short
   * by their difference, and an adopted saga was compensated within a passing outage.
   */
  load(steps: readonly StoredStep[], aheadMs = 0): void {
    for (const s of steps) {
      const step = s.name as CallStep;
      if (s.status !== "STARTED" || !(step in PARTICIPANT)) continue;
      const seen = this.seen.get(step);
      this.seen.set(step, { count: Math.max(seen?.count ?? 0, s.attempt), since: seen?.since ?? s.at - aheadMs });
    }
  }

  /** The start of `step`'s next attempt for `o` (none seen: the first, from now). */
  next(o: OrderRecord, step: CallStep): Started {
    const seen = this.seen.get(step);
    return {
      step,
      attempt: (seen?.count ?? 0) + 1,
      since: seen?.since ?? this.clock(),
      before: step === "reserve_stock" ? o.stock : step === "charge_payment" ? o.payment : undefined,
    };
  }

  /** Notes a committed STARTED entry. */
  record(s: Started): void {
    this.seen.set(s.step, { count: s.attempt, since: s.since });
  }
}
