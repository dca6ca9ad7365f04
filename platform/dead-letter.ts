/** The dead-letter stream's side of a consumer: where an event it gives up on goes, with why. */
import type { JsMsg } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import type { Bus } from "./bus.js";

/** How much of a payload a dead letter keeps when the whole would not fit NATS's max_payload. */
export const DLQ_KEPT_BYTES = 64 * 1024;

/**
 * Moves `m` to `dlq.<durable>` with why, then terminates it. Whatever the message is, its dead letter
 * can be published — else it would be redelivered for ever, holding one of the consumer's
 * unacknowledged slots: the server's control headers (`Nats-Expected-Stream`, …) are not copied (they
 * would be checked again, against the DLQ); a header block nats.js cannot read is left out; a payload
 * too large to carry with the dead letter's headers is cut to {@link DLQ_KEPT_BYTES}, and of its
 * headers only `ce-type` and `ce-id` are kept (their first values, cut to 256 characters), which `x-dlq-truncated` says (the whole message stays
 * in its stream, at `x-dlq-stream-seq`).
 */
export async function deadLetter(bus: Bus, durable: string, m: JsMsg, reason: string): Promise<void> {
  const copied = (whole: boolean) => {
    const h = natsHeaders();
    try {
      for (const [k, v] of m.headers ?? []) {
        if (whole ? /^nats-/i.test(k) : !/^ce-(type|id)$/i.test(k)) continue;
        if (whole) for (const x of v) h.append(k, x);
        else h.set(k, (v[0] ?? "").slice(0, 256));
      }
    } catch {
      h.set("x-dlq-headers", "unreadable; not copied");
    }
    h.set("x-dlq-reason", reason.slice(0, 1000));
    h.set("x-dlq-consumer", durable);
    h.set("x-dlq-subject", m.subject);
    h.set("x-dlq-stream-seq", String(m.seq));
    h.set("x-dlq-deliveries", String(m.info.deliveryCount));
    return h;
  };
  const msgID = `${durable}:${m.seq}`;
  try {
    await bus.js.publish(`dlq.${durable}`, m.data, { headers: copied(true), msgID });
  } catch (err) {
    if (!/max_payload/i.test((err as Error).message)) throw err;
    // Too large with the dead letter's headers: its event type and id, and the payload's start.
    const h = copied(false);
    h.set("x-dlq-truncated", `${m.data.byteLength} bytes, ${DLQ_KEPT_BYTES} kept; other headers left out`);
    await bus.js.publish(`dlq.${durable}`, m.data.subarray(0, DLQ_KEPT_BYTES), { headers: h, msgID });
  }
  // No reason argument: nats-server 2.9 ignores term() with a reason and keeps the message pending.
  m.term();
}
