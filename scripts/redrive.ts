/**
 * `make dlq ARGS="--redrive <seq>[,<seq>...]"` (or `--redrive all`): sends dead letters back to their
 * subjects. Every consumer dedupes by event id in its inbox (platform/inbox.ts), so a letter's message
 * published again on its subject reaches every consumer of it: those that had handled it find it in
 * their inbox and ignore it, and the one that dead-lettered it takes it afresh (its failures were
 * forgotten at the dead letter).
 *
 * The DLQ denies deletes (platform/bus.ts: a publish's acknowledgement sent to `…MSG.DELETE.DLQ` deleted
 * a letter, and nats-server never lets a stream lose `deny_delete`), so a redriven letter is not deleted
 * but marked: a message on `dlq.redriven.<durable>.<seq>` in the DLQ itself, which outlives its letter
 * (published later, it is dropped later), which `make dlq` reads to leave the letter out, and by which the
 * consumer's process counts its letters still waiting (platform/dead-letters-waiting.ts).
 *
 * What is published is the letter's message as its stream holds it, not what the letter says (see
 * plan()), less the server's `Nats-*` headers, under the message id copyId() makes.
 */
import { createHmac } from "node:crypto";
import { JetStreamApiError, type JsMsg, type StoredMsg } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { type Bus, EVENT_RETENTION_MS } from "../platform/bus.js";
import { BUS_ADMIN } from "../platform/bus-access.js";
import { DLQ_STREAM, type EventCatalogue, selects } from "../platform/catalogue.js";
import { markOf, markSubject, REDRIVE_MARKS } from "../platform/dead-letters-waiting.js";
import { printable } from "./printable.js";

/** The subjects of the letters, `dlq.<durable>`: two tokens, no mark's (three or four: REDRIVE_MARKS). */
const LETTERS = "dlq.*";

/** Which letters to redrive: every one the DLQ holds and not redriven yet, or these sequences. */
export type Selection = "all" | readonly number[];

/** `text` as a {@link Selection} (`all`, or DLQ sequences separated by commas), or undefined when it is none. */
export function parseSelection(text: string): Selection | undefined {
  if (text === "all") return "all";
  if (!/^[1-9][0-9]{0,15}(,[1-9][0-9]{0,15})*$/.test(text)) return undefined;
  const seqs = text.split(",").map(Number);
  return seqs.every(Number.isSafeInteger) ? [...new Set(seqs)] : undefined;
}

/**
 * Whether `subject` is a redrive mark's: `dlq.redriven.<durable>.<seq>`, or an earlier redrive's
 * `dlq.redriven.<seq>`. Three tokens or more: a letter's subject is `dlq.<durable>`, two, and a service's
 * user may publish only its own (bus-access.ts), whose import into the services' account is `dlq.*` — no
 * service can mark a letter redriven, and hide it.
 */
const isMark = (subject: string) => subject.startsWith(`${REDRIVE_MARKS}.`);

/** The consumer whose letter is on `subject`, `dlq.<durable>`. */
const durableOfLetter = (subject: string) => subject.split(".")[1] ?? "";

/** The DLQ's redrive marks: the sequences of the letters marked, and which of them only an earlier redrive's mark names. */
async function marks(bus: Bus) {
  const info = await bus.jsm.streams.info(DLQ_STREAM.name, { subjects_filter: `${REDRIVE_MARKS}.>` });
  const marked = new Set<number>();
  const named = new Set<number>();
  for (const subject of Object.keys(info.state.subjects ?? {})) {
    const seq = markOf(subject);
    if (seq === undefined) continue;
    marked.add(seq);
    if (subject.split(".").length === 4) named.add(seq);
  }
  const unnamed = [...marked].filter((seq) => !named.has(seq)).sort((a, b) => a - b);
  return { marked, unnamed, first: info.state.first_seq, last: info.state.last_seq };
}

/** The DLQ sequences of the letters already redriven (marked so). */
export async function redrivenSeqs(bus: Bus): Promise<Set<number>> {
  return (await marks(bus)).marked;
}

/**
 * Gives each letter the DLQ holds that an earlier redrive marked on `dlq.redriven.<seq>` (which names no
 * consumer) a mark of its consumer's, with what the first said: its consumer counted it as waiting
 * (platform/dead-letters-waiting.ts), as a service may not read a letter to learn whose it is. Once: the
 * letters so marked are then named. Returns how many it marked.
 */
async function nameMarks(bus: Bus): Promise<number> {
  const { unnamed, first, last } = await marks(bus);
  let n = 0;
  // A mark of a sequence past the DLQ's last marks no letter it holds.
  for (const seq of unnamed.filter((s) => s >= first && s <= last)) {
    const letter = await held(bus, DLQ_STREAM.name, seq);
    if (!letter || isMark(letter.subject)) continue;
    const earlier = await bus.jsm.streams
      .getMessage(DLQ_STREAM.name, { last_by_subj: `${REDRIVE_MARKS}.${seq}` })
      .catch(() => null);
    const h = natsHeaders();
    const to = earlier?.header.get("x-dlq-redriven-to");
    if (to) h.set("x-dlq-redriven-to", to);
    await bus.js.publish(markSubject(durableOfLetter(letter.subject), seq), new Uint8Array(0), { headers: h });
    n++;
  }
  return n;
}

/**
 * The message id of the copy redriving DLQ letter `seq` publishes (of `original` in `stream`), or
 * republishes when `stream` holds message `taken` under the first: `redrive:<seq>:<MAC>`, the MAC (22
 * base64url characters, 132 bits) of all of them under `key`, the bus's (Bus.letterKey: derived from its
 * NATS user's password). The same in every redrive as that user, so a repeat within the stream's
 * duplicate window (a redrive killed before its mark, run again) is dropped; and no service's user can
 * work it out: under `redrive:<seq>`, order's user (which may publish on order.>) stored a message
 * first, and the letter was skipped at every run.
 */
export function copyId(key: Buffer, seq: number, stream: string, original: number, taken?: number): string {
  const over = `redrive ${DLQ_STREAM.name} ${seq} of ${stream} ${original}${taken ? ` past ${taken}` : ""}`;
  return `redrive:${seq}:${createHmac("sha256", key).update(over).digest("base64url").slice(0, 22)}`;
}

type Headers = ReturnType<typeof natsHeaders>;
/** A letter's way back: its original message and where it goes; or why it has none. */
type Plan =
  | { subject: string; stream: string; original: number; data: Uint8Array; headers: Headers; from: string }
  | { skip: string };

/**
 * What redriving `letter` would publish: its message as its stream holds it (at `x-dlq-stream-seq` in
 * the stream whose subjects match `x-dlq-subject`), never the letter's own payload and headers. A
 * service's user may write any letter on its own `dlq.<durable>` (bus-access.ts), and the redrive
 * publishes as the bus's administrator, on any context's subjects: from the letter, a compromised
 * service could have had another context's event published (an OrderCancelled only order may say).
 * What a stream holds, its own context published. A truncated letter's whole is there too.
 */
async function plan(bus: Bus, catalogue: EventCatalogue, letter: StoredMsg): Promise<Plan> {
  let h: StoredMsg["header"];
  try {
    h = letter.header;
  } catch {
    return { skip: "its headers cannot be read" };
  }
  const subject = h.get("x-dlq-subject");
  if (!subject) return { skip: "it has no x-dlq-subject" };
  const stream = catalogue.streams.find((s) => s !== DLQ_STREAM && s.subjects.some((f) => selects(f, subject)));
  if (!stream) return { skip: `its subject ${printable(subject)} is on no event stream` };
  const seq = Number(h.get("x-dlq-stream-seq") || Number.NaN);
  if (!Number.isSafeInteger(seq) || seq < 1) return { skip: "it has no x-dlq-stream-seq" };
  const where = `${stream.name} ${seq}`;
  const original = await held(bus, stream.name, seq);
  // Gone past the stream's bound (7 days, or sooner past 200 MB: bus.ts).
  if (!original) return { skip: `its original (${where}) is no longer held` };
  let oh: StoredMsg["header"];
  try {
    oh = original.header;
  } catch {
    return { skip: `its original's headers (${where}) cannot be read` };
  }
  if (original.subject !== subject || oh.get("ce-id") !== h.get("ce-id")) {
    return { skip: `${where} holds another message than its original` };
  }
  // An inbox keeps an event's id a day past twice the streams' retention (inbox.ts INBOX_KEEP_MS): the
  // copy of an event older than one retention would be held (a retention more) past what a consumer
  // that handled the event remembers of it, and a consumer made again would apply it again.
  const at = Date.parse(oh.get("ce-time") || "") || original.time.getTime();
  if (Date.now() - at > EVENT_RETENTION_MS) {
    const days = EVENT_RETENTION_MS / 86_400_000;
    return {
      skip: `its event is from ${new Date(at).toISOString()}, over ${days} days ago: the inboxes may have forgotten it`,
    };
  }
  const headers = natsHeaders();
  // Not the server's: a Nats-Msg-Id would have the copy dropped as the original's duplicate, a
  // Nats-Expected-* checked again.
  for (const [k, vs] of oh) {
    if (/^(x-dlq-|nats-)/i.test(k)) continue;
    for (const v of vs) headers.append(k, v);
  }
  if (!headers.get("ce-id") || !headers.get("ce-type")) return { skip: "it has no ce-id or ce-type to be applied by" };
  const cut = h.has("x-dlq-truncated") ? " (the letter was cut)" : "";
  return { subject, stream: stream.name, original: seq, data: original.data, headers, from: ` from ${where}${cut}` };
}

/** The letters of `which`, in DLQ order, but those redriven already. */
async function* selected(bus: Bus, which: Selection, redriven: Set<number>): AsyncGenerator<StoredMsg> {
  if (which === "all") {
    yield* allLetters(bus, redriven);
    return;
  }
  for (const seq of [...which].sort((a, b) => a - b)) {
    if (redriven.has(seq)) continue;
    const m = await held(bus, DLQ_STREAM.name, seq);
    if (m && !isMark(m.subject)) yield m;
  }
}

/**
 * Every letter the DLQ holds up to its last message now, but those redriven already: each asked for as
 * the next message on `dlq.*` (a letter's two tokens; a mark has three), not every sequence in turn —
 * a request a mark, --redrive all of 3 letters among 120,000 marks took 29 s.
 */
async function* allLetters(bus: Bus, redriven: Set<number>): AsyncGenerator<StoredMsg> {
  const { first_seq: first, last_seq: last } = (await bus.jsm.streams.info(DLQ_STREAM.name)).state;
  // A stream that never held a message says 0..0, and asked for message 0 nats-server answers
  // "bad request": --redrive all on a DLQ never used stopped there, exit 1.
  for (let seq = Math.max(first, 1); seq <= last; ) {
    // nats-server (2.9 on) takes next_by_subj in this request; nats.js's type lists only seq.
    const next = { seq, next_by_subj: LETTERS } as { seq: number };
    const m = await bus.jsm.streams.getMessage(DLQ_STREAM.name, next);
    if (!m || m.seq > last) return;
    seq = m.seq + 1;
    if (!redriven.has(m.seq)) yield m;
  }
}

/** Whether message `seq` of `stream` is a copy of what `p` publishes (its subject, event id and payload). */
async function isCopy(
  bus: Bus,
  stream: string,
  seq: number,
  p: { subject: string; headers: Headers; data: Uint8Array },
) {
  const m = await held(bus, stream, seq);
  try {
    return (
      m?.subject === p.subject &&
      m.header.get("ce-id") === p.headers.get("ce-id") &&
      Buffer.from(m.data).equals(Buffer.from(p.data))
    );
  } catch {
    return false;
  }
}

/**
 * Publishes the copy `p` of DLQ letter `seq` under copyId(); its acknowledgement. A repeat within the
 * duplicate window (2 min) is dropped by the server, its ack saying duplicate: a copy an earlier redrive
 * sent (killed before its mark) — or what a service stored under the id first, having read it from such
 * a copy (a message's Nats-Msg-Id shows it) once the window was over. Then the copy is sent under an id
 * of that message too, which the service could not know before it stored that message; without it, a
 * letter whose redrive was once killed could be kept from every later one.
 */
async function sendCopy(bus: Bus, seq: number, p: Extract<Plan, { subject: string }>) {
  // A bus without a key is none connectBus makes: as an anonymous one's, a key known to all.
  const key = bus.letterKey ?? Buffer.alloc(0);
  const send = (taken?: number) =>
    bus.js.publish(p.subject, p.data, {
      headers: p.headers,
      msgID: copyId(key, seq, p.stream, p.original, taken),
      expect: { streamName: p.stream },
    });
  const to = await send();
  return to.duplicate && !(await isCopy(bus, to.stream, to.seq, p)) ? send(to.seq) : to;
}

/** Whether `letter` has a mark of its consumer's now (the last message on its mark's subject). */
async function markedSince(bus: Bus, letter: StoredMsg): Promise<boolean> {
  const subject = markSubject(durableOfLetter(letter.subject), letter.seq);
  const mark = await bus.jsm.streams.getMessage(DLQ_STREAM.name, { last_by_subj: subject }).catch((err: unknown) => {
    if (err instanceof JetStreamApiError && err.status === 404) return null;
    throw err;
  });
  return mark !== null;
}

/** Message `seq` of `stream`, or null when the stream does not hold it; throws when NATS does not answer so. */
async function held(bus: Bus, stream: string, seq: number): Promise<StoredMsg | null> {
  return bus.jsm.streams.getMessage(stream, { seq }).catch((err: unknown) => {
    if (err instanceof JetStreamApiError && err.status === 404) return null;
    throw err;
  });
}

/**
 * Why the letters `which` names cannot all be redriven or dismissed (one a line), or nothing: a
 * sequence that is no letter the DLQ holds, or a letter redriven or dismissed already. Checked before
 * anything is published.
 */
export async function unknownLetters(bus: Bus, which: Selection): Promise<string[]> {
  if (which === "all") return [];
  const redriven = await redrivenSeqs(bus);
  const { first_seq: first, last_seq: last } = (await bus.jsm.streams.info(DLQ_STREAM.name)).state;
  const out: string[] = [];
  for (const seq of which) {
    if (redriven.has(seq)) {
      out.push(`DLQ ${seq} was redriven or dismissed already`);
      continue;
    }
    const m = await held(bus, DLQ_STREAM.name, seq);
    const holds = last >= Math.max(first, 1) ? `${first}..${last}` : "none";
    if (!m || isMark(m.subject)) out.push(`no dead letter ${seq} in DLQ (it holds ${holds})`);
  }
  return out;
}

/** What a request's failure says to an operator: a refused user by name. */
export function failure(err: unknown, user: string): string {
  const message = (err as Error).message;
  return /permissions? violation/i.test(message)
    ? `NATS user ${user || "(none)"} may not do this (${message}): run make dlq as the bus's administrator, ${BUS_ADMIN}`
    : message;
}

/**
 * Redrives the letters `which` names, in DLQ order, saying one line of each to `say`: republishes each
 * letter's message (from its stream: plan()) on its subject with msgID copyId(), and once
 * JetStream has acknowledged it, marks the letter redriven. A letter that cannot be (plan()) or whose
 * publish fails is left as it was. `user` names the NATS user in a refusal. Returns the counts.
 */
export async function redrive(
  bus: Bus,
  catalogue: EventCatalogue,
  which: Selection,
  user: string,
  say: (line: string) => void,
): Promise<{ redriven: number; skipped: number }> {
  let redriven = 0;
  let skipped = 0;
  const skip = (seq: number, why: string) => {
    say(`DLQ ${seq} skipped: ${why}; left in the DLQ`);
    skipped++;
  };
  // The copy sent for each original (stream and sequence), and for which letter: one copy reaches every
  // consumer of its subject, so a letter of the same event (two consumers lettered it, or a service
  // wrote letters of one event by the thousand) is marked with it. A copy each was published: a
  // service's letters, which it may write on its own dlq.<durable>, made the redrive fill another
  // context's stream with copies, up to its size bound, past which its oldest events go.
  const sent = new Map<string, { to: { stream: string; seq: number; duplicate: boolean }; by: number }>();
  const named = which === "all" ? await nameMarks(bus) : 0;
  if (named > 0) say(`${named} letter(s) redriven earlier marked again, for their consumer's dead_letters_waiting`);
  for await (const letter of selected(bus, which, await redrivenSeqs(bus))) {
    const seq = letter.seq;
    // The marks were read once, at the start: a --dismiss run beside this one (an event dealt with by
    // hand) settled the letter since, and its event would have been sent all the same.
    if (await markedSince(bus, letter)) {
      say(`DLQ ${seq} settled since this redrive began: not sent`);
      continue;
    }
    const p = await plan(bus, catalogue, letter);
    if ("skip" in p) {
      skip(seq, p.skip);
      continue;
    }
    const earlier = sent.get(`${p.stream} ${p.original}`);
    let to: { stream: string; seq: number; duplicate: boolean };
    if (earlier) to = earlier.to;
    else
      try {
        to = await sendCopy(bus, seq, p);
      } catch (err) {
        skip(seq, `not republished: ${failure(err, user)}`);
        continue;
      }
    // Marked as redriven, the letter would be hidden and its event never sent back.
    if (!earlier && to.duplicate && !(await isCopy(bus, to.stream, to.seq, p))) {
      skip(
        seq,
        `not republished: ${to.stream} dropped it as a repeat of ${to.stream} ${to.seq}, which is another message`,
      );
      continue;
    }
    // Marked only now: a crash before leaves the letter, and a second redrive is harmless (the inboxes).
    const mark = natsHeaders();
    mark.set("x-dlq-redriven-to", `${to.stream} ${to.seq}`);
    try {
      // No message id: ids are the DLQ's, not a subject's, and a letter a service wrote under the one a
      // mark would have (redriven:<seq>) had the mark dropped as its duplicate, the letter left unmarked.
      // A letter marked twice (two redrives at once) is as marked once.
      await bus.js.publish(markSubject(durableOfLetter(letter.subject), seq), new Uint8Array(0), { headers: mark });
    } catch (err) {
      skip(seq, `republished (${to.stream} ${to.seq}) but not marked so: ${failure(err, user)}`);
      continue;
    }
    if (!earlier) sent.set(`${p.stream} ${p.original}`, { to, by: seq });
    const id = printable(p.headers.get("ce-id"));
    const dup = earlier ? `, the copy sent for DLQ ${earlier.by}` : to.duplicate ? ", a repeat the stream dropped" : "";
    say(`DLQ ${seq} redriven to ${printable(p.subject)} (${id})${p.from}: ${to.stream} ${to.seq}${dup}`);
    redriven++;
  }
  return { redriven, skipped };
}

/**
 * Settles the letters `which` names without sending anything back: each is marked as a redrive marks it,
 * the mark saying `x-dlq-dismissed`, so `make dlq` leaves it out and its consumer counts it waiting no
 * more (ShopmeshDeadLetters resolves). For a letter that can never be redriven (its original no longer
 * held, a letter no event stream's message is behind) and one whose event was dealt with by hand.
 * Says one line a letter to `say`; returns how many it dismissed.
 */
export async function dismiss(bus: Bus, which: Selection, say: (line: string) => void): Promise<number> {
  const named = which === "all" ? await nameMarks(bus) : 0;
  if (named > 0) say(`${named} letter(s) redriven earlier marked again, for their consumer's dead_letters_waiting`);
  let dismissed = 0;
  for await (const letter of selected(bus, which, await redrivenSeqs(bus))) {
    // A redrive run beside this one may have sent it since the marks were read: not to be said unsent.
    if (await markedSince(bus, letter)) {
      say(`DLQ ${letter.seq} settled since this dismissal began: not marked dismissed`);
      continue;
    }
    const mark = natsHeaders();
    mark.set("x-dlq-dismissed", new Date().toISOString());
    await bus.js.publish(markSubject(durableOfLetter(letter.subject), letter.seq), new Uint8Array(0), {
      headers: mark,
    });
    say(`DLQ ${letter.seq} dismissed: its event is not sent again`);
    dismissed++;
  }
  return dismissed;
}

/** The line `make dlq --follow` prints for a redrive's (or a dismissal's) mark as it comes. */
export function markLine(m: JsMsg): string {
  let to = "";
  let dismissed = false;
  try {
    to = m.headers?.get("x-dlq-redriven-to") ?? "";
    dismissed = !!m.headers?.get("x-dlq-dismissed");
  } catch {}
  if (dismissed) return `DLQ ${markOf(m.subject)} dismissed`;
  return `DLQ ${markOf(m.subject)} redriven${to ? ` to ${printable(to)}` : ""}`;
}
