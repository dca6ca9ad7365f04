/** The dead-letter stream's side of a consumer: where an event it gives up on goes, with why. */
import { createHmac, randomBytes } from "node:crypto";
import { JetStreamApiError, type JsMsg } from "@nats-io/jetstream";
import { InvalidArgumentError, headers as natsHeaders } from "@nats-io/transport-node";
import type { Bus } from "./bus.js";
import { oneLine } from "./hidden.js";
import { isStoreFull } from "./store-full.js";

/**
 * The key of a dead letter's message id when its bus has none. The DLQ drops a second letter for one
 * message (a retry) by its id, and an id anyone could work out — every letter shows its own — could be
 * stored first, by a server answer sent to the DLQ at someone's request (bus-access.ts), to have the
 * real letter dropped as a duplicate. So the id is a MAC of the consumer and sequence under a secret
 * key: one seen says nothing of the next. The bus's key (`Bus.letterKey`) is its NATS user's, so a
 * process killed between a letter and its message's termination, restarted, or another replica given
 * the message, letters it again under the same id, dropped within the DLQ's duplicate window (2 min);
 * a key of each process lettered it twice.
 */
const LETTER_KEY = randomBytes(32);

/** The message id of the dead letter of `durable`'s message at stream sequence `seq`, under `key`. */
export function letterId(durable: string, seq: number, key: Buffer = LETTER_KEY): string {
  const mac = createHmac("sha256", key).update(`${durable}:${seq}`).digest("base64url").slice(0, 22);
  return `${durable}:${seq}:${mac}`;
}

/** How much of a payload a dead letter keeps when the whole would not fit NATS's max_payload. */
export const DLQ_KEPT_BYTES = 64 * 1024;

/**
 * Moves `m` to `dlq.<durable>` with why, then terminates it. Whatever the message is, its dead letter
 * can be published — else it would be redelivered for ever, holding one of the consumer's
 * unacknowledged slots. The first try copies it whole, but for the server's control headers
 * (`Nats-Expected-Stream`, … would be checked again, against the DLQ). If that copy is refused (too
 * large a payload or header block, a header nats.js cannot read), the dead letter keeps only its own
 * `x-dlq-*` headers, the first `ce-type` and `ce-id` (cut to 256 characters) and the payload's first
 * {@link DLQ_KEPT_BYTES}, and says so in `x-dlq-truncated`; the whole message stays in its stream at
 * `x-dlq-stream-seq`. Throws when NATS is away or its store full (a failure that is no refusal of the
 * message, or the cut copy's): the message is then redelivered.
 */
export async function deadLetter(bus: Bus, durable: string, m: JsMsg, reason: string): Promise<void> {
  const msgID = letterId(durable, m.seq, bus.letterKey);
  try {
    await bus.js.publish(`dlq.${durable}`, m.data, { headers: letter(m, durable, reason, true), msgID });
  } catch (err) {
    // Refused: by the client (over max_payload) or by the server (a header block over 64 KiB). Any
    // other failure (a timeout, a reconnect) is NATS away: the message is redelivered and lettered
    // whole then — cut here, its letter lost its trace and source for a moment's outage. So is a store
    // full: the cut copy, taken once it had room, said the message was cut to fit, which it was not.
    if (isStoreFull(err) || !(err instanceof InvalidArgumentError || err instanceof JetStreamApiError)) throw err;
    const h = letter(m, durable, reason, false);
    h.set("x-dlq-truncated", `${m.data.byteLength} bytes, at most ${DLQ_KEPT_BYTES} kept; other headers left out`);
    await bus.js.publish(`dlq.${durable}`, m.data.subarray(0, DLQ_KEPT_BYTES), { headers: h, msgID });
  }
  // No reason argument: nats-server 2.9 ignores term() with a reason and keeps the message pending.
  m.term();
}

/** A dead letter's headers: `m`'s (`whole`) or only its first ce-type and ce-id, and why, where and how often. */
function letter(m: JsMsg, durable: string, reason: string, whole: boolean) {
  const h = natsHeaders();
  try {
    for (const [k, v] of m.headers ?? []) {
      if (whole ? /^nats-/i.test(k) : !/^ce-(type|id)$/i.test(k)) continue;
      if (whole) for (const x of v) h.append(k, x);
      else h.set(k, oneLine(v[0] ?? "").slice(0, 256));
    }
  } catch {
    h.set("x-dlq-headers", "unreadable; not copied");
  }
  // The reason may quote the message (nats.js names a bad header with its raw bytes): one line.
  h.set("x-dlq-reason", oneLine(reason).slice(0, 1000));
  h.set("x-dlq-consumer", durable);
  h.set("x-dlq-subject", m.subject);
  h.set("x-dlq-stream-seq", String(m.seq));
  h.set("x-dlq-deliveries", String(m.info.deliveryCount));
  return h;
}
