/**
 * Events a stream dropped before a consumer read them. Every stream is bounded (bus.ts: 7 days or
 * STREAM_MAX_BYTES, discard old): a consumer down or slow long enough loses the oldest events it was
 * never given, and nats-server moves it past them without a word. This says so — a counter and an ERROR
 * line — at the consumer's start, before it pulls, and at each metrics scrape. Detection, not prevention.
 *
 * How far a consumer has read, from its JetStream info, as nats-server 2.9 keeps it (dropped-unread.test.ts
 * shows each case on a real server) — `ack_floor.stream_seq` mostly, and why not always:
 * - a durable made after a drop starts at the stream's first event with ack_floor 0 and delivered
 *   first - 1, and its floor stays 0 until its first delivery is acknowledged: by its ack floor it had
 *   lost everything before it existed (a new consumer whose first handling failed, or that crashed
 *   before it, counted a week of events). Having acknowledged none, it has read up to its delivered:
 *   what it holds is still in the stream (a drop ends a held delivery, moving the floor past it), and
 *   nothing before its first was ever its. (nats-server 2.11 reports such a durable's floor as first - 1.)
 * - a filtered consumer acknowledges its own subjects' events only; a pull that finds none moves its
 *   delivered past the others, never its ack floor. The choreography consumers in an orchestration-only
 *   shop, or notification-payment (refunds only), would by their ack floors have "lost" a week of others'
 *   events at every scrape — and did while holding an event of their own (a handler failing, the
 *   database away, or just at that moment): the floor is still their last own event's. Filtered, it has
 *   read up to its delivered, holding or not: what it holds is still in the stream.
 * - but a pull request of a stopped process, still waiting (up to its 30 s expiry) when the stream has
 *   already dropped past the consumer, moves delivered past the gap too, with nothing delivered: for an
 *   unfiltered consumer the ack floor is what counts — unless, holding nothing, its delivered is an
 *   event still in the stream, which such a pull would have been given: it passed over others' events
 *   under a filter an upgrade has since widened (pull.ts's refilter), its floor still its last own's.
 * - a delivery held unacknowledged when the stream drops its message is ended by the server as if
 *   acknowledged (the ack floor moves past it; a MSG_TERMINATED advisory no service may read): no
 *   number shows those — at most what the consumer had pulled ahead — and they are not counted.
 * So the count is exact for an unfiltered consumer's events never delivered; for a filtered one that was
 * down it is an upper bound (the dropped range held other subjects' events too, and nothing says how many).
 */
import type { Bus } from "./bus.js";
import type { Logger } from "./log.js";
import { readWithin } from "./scrape-read.js";

/** Stream sequences `from`..`to` (inclusive), `count` of them. */
export interface SeqRange {
  readonly from: number;
  readonly to: number;
  readonly count: number;
}

/** What {@link readUpTo} needs of a consumer's info (JetStream's ConsumerInfo has it). */
export interface ConsumerPosition {
  readonly delivered: { readonly consumer_seq: number; readonly stream_seq: number };
  readonly ack_floor: { readonly consumer_seq: number; readonly stream_seq: number };
  readonly num_ack_pending: number;
  readonly config: { readonly filter_subject?: string };
}

/**
 * The last stream sequence a consumer is done with, its stream's first being `firstSeq` (see the
 * module comment for why this one).
 */
export function readUpTo(c: ConsumerPosition, firstSeq: number): number {
  const { delivered, ack_floor: floor } = c;
  const holdsNothing = c.num_ack_pending === 0 && delivered.consumer_seq === floor.consumer_seq;
  const passedOver =
    floor.consumer_seq === 0 || Boolean(c.config.filter_subject) || (holdsNothing && delivered.stream_seq >= firstSeq);
  return passedOver ? Math.max(floor.stream_seq, delivered.stream_seq) : floor.stream_seq;
}

/**
 * The sequences a stream whose first is now `firstSeq` dropped before a consumer that has read up to
 * `readTo` was done with them, but for those up to `countedTo` (counted, or seen read, before);
 * undefined for none. An empty stream's first is 0.
 */
export function droppedUnread(firstSeq: number, readTo: number, countedTo: number): SeqRange | undefined {
  const from = Math.max(readTo, countedTo) + 1;
  const to = firstSeq - 1;
  return to >= from ? { from, to, count: to - from + 1 } : undefined;
}

/** Options of {@link watchDropped}. */
export interface DroppedWatchOptions {
  readonly bus: Bus;
  readonly stream: string;
  readonly durable: string;
  readonly log: Logger;
  /** Told each newly found gap's size (the counter's increase). */
  readonly count: (dropped: number) => void;
}

/**
 * A check of `durable` on `stream` for events the stream dropped before it read them: each gap is
 * counted and logged once in this process (the highest sequence counted or seen read is remembered,
 * per creation of the stream). It never fails and waits for NATS at most a second; a durable not there
 * yet (made next, from the stream's first event) has nothing to lose.
 */
export function watchDropped(o: DroppedWatchOptions): () => Promise<void> {
  const { bus, stream, durable } = o;
  // Nothing up to `to` is counted (again): counted, or seen read — a later reading may be lower for no
  // loss (a filter an upgrade widened leaves the ack floor at the durable's last own event, below the
  // others' it had passed over, until it acknowledges its next). `of` is the stream's creation time:
  // one deleted and made again under its name numbers its events from 1 again.
  let settled = { to: 0, of: "" };
  return async () => {
    const read = await readWithin(Promise.all([bus.jsm.streams.info(stream), bus.jsm.consumers.info(stream, durable)]));
    if (!read) return;
    const [{ state, created }, consumer] = read;
    if (created !== settled.of) settled = { to: 0, of: created };
    const readTo = readUpTo(consumer, state.first_seq);
    const gap = droppedUnread(state.first_seq, readTo, settled.to);
    settled = { to: Math.max(settled.to, readTo, gap?.to ?? 0), of: created };
    if (!gap) return;
    o.count(gap.count);
    const filter = consumer.config.filter_subject || undefined;
    o.log.error(
      {
        consumer: durable,
        stream,
        dropped: gap.count,
        fromSeq: gap.from,
        toSeq: gap.to,
        ...(filter ? { filter } : {}),
      },
      `${gap.count} events of ${stream} are gone unread: the stream's size or age bound dropped them before ${durable} read them${filter ? ` (of every subject: fewer may have been ${filter}'s)` : ""}`,
    );
  };
}
