/**
 * Events another version of a consumer selected. A consumer's replicas share one durable, whose
 * filter subject is the one the last replica to start declared (pull.ts); during a rolling upgrade
 * that is another version's now and then. A replica of the older version is then sent what the
 * newer one declared and it does not (a type the newer one handles, the events of another saga
 * mode), and acknowledged as nothing it handles, an event was lost to the replicas that do handle
 * it: one in two, with a replica of each (test/hostile-skew.test.ts). So an event this replica's own
 * filter would not have selected is given back, for a replica whose filter did, a bounded number
 * of times; then, or at once when this process left the durable wider than it declares (pull.ts, on
 * a server that cannot take its filter), it is acknowledged unhandled, as a type it has no handler
 * for: the filter is what keeps a consumer of one saga mode to that mode's events.
 */
import type { JsMsg } from "@nats-io/jetstream";
import { selects } from "./catalogue.js";
import type { Logger } from "./log.js";

/** Deliveries of an event another version's filter selected before it is taken as no replica's (~10 s). */
const GIVE_BACK_TIMES = 50;
/** How long an event given back waits before it is delivered again, in ms. */
const GIVE_BACK_MS = 200;

/** Whether an event is this consumer's to settle: yes, no (acknowledge it unhandled), or given back here. */
export type Mine = "yes" | "no" | "given back";

/** The events of one consumer, which declares the filter `declared`, that another version of it selected. */
export class OtherVersions {
  /** The filter this process gave the durable (pull.ts), when not the one it declares; undefined: none. */
  widened: { readonly filter: string | undefined } | undefined;
  private warned = false;

  constructor(
    private readonly declared: string | undefined,
    private readonly log: Logger,
  ) {}

  /** Whether `m` is this consumer's; "given back" when it was handed back (nak) for another version's replicas. */
  mine(m: Pick<JsMsg, "subject" | "info" | "nak">): Mine {
    if (selects(this.declared, m.subject)) return "yes";
    if (this.widened || m.info.deliveryCount >= GIVE_BACK_TIMES) return "no";
    if (!this.warned) {
      this.warned = true;
      this.log.warn(
        { filter: this.declared, subject: m.subject },
        "sent an event another version of this consumer selected (a rolling upgrade); giving it back for that version",
      );
    }
    m.nak(GIVE_BACK_MS);
    return "given back";
  }
}
