/**
 * When each event a consumer handed back may run again (consumer.ts). JetStream sends an event again
 * once its acknowledgement is overdue — it waited in the consumer past the ack wait, behind a slow
 * batch — while the first copy is still queued there. That copy's failure hands back the event (the
 * server knows it by its sequence, not its copy), but the new copy was already on its way and ran at
 * once: its backoff skipped, and one more failure counted towards the dead letter in no time. A copy
 * that comes before its event's time is handed back for the rest of it.
 */

import type { JsMsg } from "@nats-io/jetstream";

/** The times, per stream sequence, before which an event handed back by this process may not run again. */
export class RetryTimes {
  private readonly at = new Map<number, number>();

  /** `max`: the most events remembered (those settled by another replica are never asked about again). */
  constructor(
    private readonly clock: () => number = Date.now,
    private readonly max = 10_000,
  ) {}

  /** Hands `m` back (nak) for `delayMs`, and remembers until when. */
  handBack(m: Pick<JsMsg, "seq" | "nak">, delayMs: number): void {
    this.at.delete(m.seq);
    if (this.at.size >= this.max) this.at.delete(this.at.keys().next().value as number);
    this.at.set(m.seq, this.clock() + delayMs);
    m.nak(delayMs);
  }

  /** Whether `m` came before its event's time: if so, it is handed back for the rest (else its time is forgotten). */
  held(m: Pick<JsMsg, "seq" | "nak">): boolean {
    const at = this.at.get(m.seq);
    if (at === undefined) return false;
    const left = at - this.clock();
    if (left > 0) m.nak(left);
    else this.at.delete(m.seq);
    return left > 0;
  }
}

/**
 * `batch` with one copy of each event — its last, the one the server now knows the event by — where its
 * first came: both run failed the event twice with no backoff between, and the last alone in its own
 * place ran the event after those that came after it (an order's payment before the order).
 */
export function latestCopies<M extends Pick<JsMsg, "seq">>(batch: readonly M[]): M[] {
  const last = new Map<number, M>();
  for (const m of batch) last.set(m.seq, m);
  if (last.size === batch.length) return batch as M[];
  // A key set again keeps its place: each sequence where its first copy came, with its last copy.
  return [...last.values()];
}
