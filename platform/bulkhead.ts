/**
 * The resilient client's bulkhead (resilience.ts): at most `limit` calls at once and `queue` waiting for a
 * slot, in order; the rest refused at once. Not cockatiel's: a call whose caller gave up while it waited
 * (its deadline, a cancel) kept its place in cockatiel's queue until its turn (3.2 and 4.0 alike), so live
 * calls behind it were shed as "bulkhead full" for callers long gone, and 3.2, at that turn, took no next
 * call, which then waited for a slot no call was using. Here such a call leaves the queue when its signal
 * aborts. The errors are cockatiel's, which policy.ts maps (RESOURCE_EXHAUSTED, CANCELLED).
 */
import { BulkheadRejectedError, TaskCancelledError } from "cockatiel";

export class Bulkhead {
  private active = 0;
  /** Each waiting call's wake-up, oldest first (a Set keeps the order things were added in). */
  private readonly waiting = new Set<() => void>();

  /** `onReject` is told of each call refused because the slots and the queue are full. */
  constructor(
    readonly limit: number,
    readonly queue: number,
    private readonly onReject: () => void = () => {},
  ) {}

  /** Calls running now. */
  get inFlight(): number {
    return this.active;
  }

  /** Calls waiting for a slot now. */
  get queued(): number {
    return this.waiting.size;
  }

  /**
   * Runs `fn` in a slot, waiting for one in the queue when none is free; rejects with
   * BulkheadRejectedError when the queue is full too, and with TaskCancelledError when `signal` aborts
   * before the call got a slot (already aborted: at once, taking nothing).
   */
  async execute<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) throw new TaskCancelledError();
    if (this.active < this.limit) this.active++;
    else if (this.waiting.size < this.queue) await this.turn(signal);
    else {
      this.onReject();
      throw new BulkheadRejectedError(this.limit, this.queue);
    }
    try {
      return await fn();
    } finally {
      this.active--;
      this.next();
    }
  }

  /** Resolves once a finishing call handed this one its slot (already counted in `active`). */
  private turn(signal: AbortSignal | undefined): Promise<void> {
    return new Promise((resolve, reject) => {
      const wake = () => {
        signal?.removeEventListener("abort", leave);
        resolve();
      };
      const leave = () => {
        this.waiting.delete(wake);
        reject(new TaskCancelledError());
      };
      this.waiting.add(wake);
      signal?.addEventListener("abort", leave, { once: true });
    });
  }

  /** Hands the slot just freed to the oldest waiting call, taken on its behalf: no newcomer slips in before it. */
  private next(): void {
    const [first] = this.waiting;
    if (!first) return;
    this.waiting.delete(first);
    this.active++;
    first();
  }
}
