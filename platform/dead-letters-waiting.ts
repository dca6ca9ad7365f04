/**
 * The dead letters of a consumer that wait to be redriven, counted from the DLQ's per-subject counts: a
 * letter is a message on `dlq.<durable>`, and `make dlq --redrive` (scripts/redrive.ts) settles one by a
 * mark on `dlq.redriven.<durable>.<seq>` — the DLQ denies deletes, so the letter itself stays. Both are
 * read with JetStream's stream info and a subject filter (what a service's NATS user may ask, bus-access.ts),
 * never by reading the letters: the count of the consumer's letters, and the subjects of its marks.
 *
 * Marks of an earlier redrive, `dlq.redriven.<seq>`, name no consumer: a service cannot tell whose letter
 * they mark (it may not read the letters, which carry the events), and does not count them. `make dlq
 * --redrive all` gives each letter so marked a mark of its consumer's (scripts/redrive.ts).
 */
import type { Bus } from "./bus.js";
import { DLQ_STREAM } from "./catalogue.js";
import { readWithin } from "./scrape-read.js";

/** The subjects of the redrive marks begin so: three tokens or more, which no service may publish on (bus-access.ts). */
export const REDRIVE_MARKS = "dlq.redriven";

/** The subject of the mark that says DLQ letter `seq`, of `durable`, was redriven. */
export const markSubject = (durable: string, seq: number): string => `${REDRIVE_MARKS}.${durable}.${seq}`;

/**
 * The DLQ sequence of the letter a redrive mark on `subject` marks — `dlq.redriven.<durable>.<seq>`, or
 * an earlier redrive's `dlq.redriven.<seq>` — and undefined when `subject` is no mark's (a letter's).
 */
export function markOf(subject: string): number | undefined {
  if (!subject.startsWith(`${REDRIVE_MARKS}.`)) return undefined;
  const tokens = subject.split(".");
  if (tokens.length !== 3 && tokens.length !== 4) return undefined;
  const seq = Number(tokens.at(-1));
  return Number.isSafeInteger(seq) && seq > 0 ? seq : undefined;
}

/**
 * How many of `letters` letters wait, when the DLQ's first sequence is `firstSeq` and the consumer's
 * marks are on `marks` (subjects). A mark outlives its letter (published later, the DLQ drops it later):
 * one of a letter the DLQ no longer holds (below `firstSeq`) settles none of `letters`. Each letter is
 * settled once, however many marks it has (two redrives at once mark it twice, on one subject).
 */
export function waitingOf(letters: number, marks: Iterable<string>, firstSeq: number): number {
  const settled = new Set<number>();
  for (const subject of marks) {
    const seq = markOf(subject);
    if (seq !== undefined && seq >= firstSeq) settled.add(seq);
  }
  return Math.max(0, letters - settled.size);
}

/**
 * The dead letters of `durable` that wait to be redriven, or undefined when NATS does not say within a
 * second (scrape-read.ts). Two stream infos: one subject's count, and the subjects of the consumer's
 * marks still held (one entry each: the size of the answer grows with the letters redriven this week,
 * never with the events, nor with another consumer's letters).
 */
export async function deadLettersWaiting(bus: Bus, durable: string): Promise<number | undefined> {
  const letters = `dlq.${durable}`;
  const read = await readWithin(
    Promise.all([
      bus.jsm.streams.info(DLQ_STREAM.name, { subjects_filter: letters }),
      bus.jsm.streams.info(DLQ_STREAM.name, { subjects_filter: `${REDRIVE_MARKS}.${durable}.*` }),
    ]),
  );
  if (!read) return undefined;
  const [held, marked] = read;
  // The letters counted are those held at the first answer: the marks of any of them settle it.
  return waitingOf(held.state.subjects?.[letters] ?? 0, Object.keys(marked.state.subjects ?? {}), held.state.first_seq);
}
