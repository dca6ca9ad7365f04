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
 * How many of `letters` letters wait, when the DLQ holds sequences `firstSeq` to `lastSeq` and the
 * consumer's marks mark the letters `marked` (their DLQ sequences: markOf()). A mark outlives its letter
 * (published later, the DLQ drops it later): one of a letter the DLQ no longer holds (below `firstSeq`)
 * settles none of `letters`, nor does one of a letter stored after they were counted (past `lastSeq`:
 * the marks may be read later). Each letter is settled once, however many marks it has (two redrives at
 * once mark it twice, on one subject).
 */
export function waitingOf(letters: number, marked: Iterable<number>, firstSeq: number, lastSeq = Infinity): number {
  let settled = 0;
  for (const seq of new Set(marked)) if (seq >= firstSeq && seq <= lastSeq) settled++;
  return Math.max(0, letters - settled);
}

/** How long a read of a consumer's marks is used while the DLQ holds nothing new, ms. */
export const MARKS_KEPT_MS = 5 * 60_000;

/**
 * A reading of the dead letters of `durable` that wait to be redriven, for each scrape: the number, or
 * undefined when NATS does not say within a second (scrape-read.ts). The count of its letters is one
 * subject's (cheap); its marks are the subjects of every one still held, one entry each — some 4 MB for
 * 100,000 letters redriven this week, over a second to read. So they are read again only once the DLQ
 * holds a message it did not when they were last read (a mark is a message: none can be new without
 * one), and a read of them not done within the scrape's second goes on, for the next scrape. Marks the
 * DLQ dropped since stay in what was read, and settle nothing: their letters went first; what is kept
 * of a read is the sequences of the letters still held then it marks (not 4 MB of subjects, for as long
 * as the process runs). A DLQ made again (its store lost) is another: its sequences start at 1 again,
 * and the marks read of the first mark none. And a read is kept {@link MARKS_KEPT_MS} at most (`now`, ms):
 * past 100,000 marks nats.js reads them page after page, and a mark the DLQ drops between two pages
 * shifts the rest of the list: the next page begins a mark late, and that mark is missed.
 */
export function lettersWaiting(
  bus: Bus,
  durable: string,
  { now = Date.now }: { now?: () => number } = {},
): () => Promise<number | undefined> {
  const letters = `dlq.${durable}`;
  let read: { dlq: string; upTo: number; at: number; marked: number[] } | undefined;
  let reading: Promise<void> | undefined;
  /** The marks as held now, a read at a time; `dlq` and `upTo`, the DLQ's creation and last sequence before it began. */
  const readMarks = (dlq: string, upTo: number) => {
    reading ??= bus.jsm.streams
      .info(DLQ_STREAM.name, { subjects_filter: `${REDRIVE_MARKS}.${durable}.*` })
      .then((info) => {
        const marked = Object.keys(info.state.subjects ?? {}).map(markOf);
        read = {
          dlq,
          upTo,
          at: now(),
          marked: marked.filter((seq): seq is number => seq !== undefined && seq >= info.state.first_seq),
        };
      })
      .finally(() => {
        reading = undefined;
      });
    return reading;
  };
  return () =>
    readWithin(
      (async () => {
        const { state, created } = await bus.jsm.streams.info(DLQ_STREAM.name, { subjects_filter: letters });
        while (read?.dlq !== created || read.upTo < state.last_seq || now() - read.at >= MARKS_KEPT_MS)
          await readMarks(created, state.last_seq);
        // The letters counted are those held at that answer: the marks of any of them settle it.
        return waitingOf(state.subjects?.[letters] ?? 0, read.marked, state.first_seq, state.last_seq);
      })(),
    );
}

/** The dead letters of `durable` that wait to be redriven, read once: see {@link lettersWaiting}. */
export async function deadLettersWaiting(bus: Bus, durable: string): Promise<number | undefined> {
  return lettersWaiting(bus, durable)();
}
