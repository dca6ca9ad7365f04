/** The dead-letter stream's side of a consumer: where an event it gives up on goes, with why. */
import type { JsMsg } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import type { Bus } from "./bus.js";

/** Moves `m` to `dlq.<durable>` with why, then terminates it. */
export async function deadLetter(bus: Bus, durable: string, m: JsMsg, reason: string): Promise<void> {
  const h = natsHeaders();
  for (const [k, v] of m.headers ?? []) if (k !== "Nats-Msg-Id") for (const x of v) h.append(k, x);
  h.set("x-dlq-reason", reason.slice(0, 1000));
  h.set("x-dlq-consumer", durable);
  h.set("x-dlq-subject", m.subject);
  h.set("x-dlq-stream-seq", String(m.seq));
  h.set("x-dlq-deliveries", String(m.info.deliveryCount));
  await bus.js.publish(`dlq.${durable}`, m.data, { headers: h, msgID: `${durable}:${m.seq}` });
  // No reason argument: nats-server 2.9 ignores term() with a reason and keeps the message pending.
  m.term();
}
