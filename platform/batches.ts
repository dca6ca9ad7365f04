/**
 * Settling what arrives together, together: the queue between a consumer's
 * messages and the transaction that applies them (consumer.ts). Items wait
 * while the batch before them is settled and then go as one batch: a busy
 * consumer's cost per item falls as its backlog grows, an idle one settles
 * each item as soon as it arrives — or, with a linger, with those that
 * arrive within it. A full batch never waits for the linger to end.
 */

/** Options of {@link settleInBatches}. */
export interface BatchOptions<T> {
  /** The most items settled at once; holding this many ends a linger. */
  readonly maxBatch: number;
  /** How long an item that arrives while nothing is being settled waits for others (0: to the end of the event loop's turn). */
  readonly lingerMs?: number;
  /** Settles one batch; it settles each of its items itself, whatever happens. */
  readonly settle: (batch: T[]) => Promise<void>;
  /** A batch's settle threw (a bug's safety net). */
  readonly onError: (err: unknown) => void;
  /** Items taken but not settled when the source ended or stop() was called. */
  readonly onLeft: (items: T[]) => void;
}

/**
 * A running {@link settleInBatches}: `stop()` settles no more batches, and the caller ends the source
 * (what it yields until then is left, too); `done` once the source ended.
 */
export interface Batches {
  stop(): void;
  readonly done: Promise<void>;
}

/** Takes items from `source` and settles them in batches (see the module comment). */
export function settleInBatches<T>(source: AsyncIterable<T>, o: BatchOptions<T>): Batches {
  const queue: T[] = [];
  let stopped = false;
  let working: Promise<void> | undefined;
  /** Ends the linger now (a full batch, a stop). */
  let cutLinger = () => {};
  const linger = () =>
    new Promise<void>((r) => {
      if (!o.lingerMs) {
        // Everything that arrived with the first item (one read from the socket) joins its batch.
        setImmediate(r);
        return;
      }
      const timer = setTimeout(r, o.lingerMs);
      cutLinger = () => {
        clearTimeout(timer);
        r();
      };
    });
  const work = async () => {
    try {
      await linger();
      cutLinger = () => {};
      while (queue.length > 0 && !stopped) await o.settle(queue.splice(0, o.maxBatch));
    } catch (err) {
      o.onError(err);
    } finally {
      working = undefined;
    }
  };
  const done = (async () => {
    try {
      // Once stopped, what the source still yields is only collected: the caller ends it (the NATS
      // client's buffer comes out first), and all of it is left to onLeft, none dropped unseen.
      for await (const item of source) {
        queue.push(item);
        if (stopped) continue;
        working ??= work();
        if (queue.length >= o.maxBatch) {
          cutLinger();
          await working;
        }
      }
    } finally {
      // A source that failed too: what it delivered is settled, or left, before `done` says so.
      await working;
      o.onLeft(queue.splice(0));
    }
  })();
  return {
    stop() {
      stopped = true;
      cutLinger();
    },
    done,
  };
}
