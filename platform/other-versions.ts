/**
 * Events another version of a consumer selected. A consumer's replicas share one durable, whose
 * filter subject is the one the last replica to start declared (pull.ts); during a rolling upgrade
 * that is another version's now and then. A replica of the older version is then sent what the
 * newer one declared and it does not (a type the newer one handles, the events of another saga
 * mode), and acknowledged as nothing it handles, an event was lost to the replicas that do handle
 * it: one in two, with a replica of each (test/hostile-skew.test.ts). So an event this replica's own
 * filter would not have selected is given back, for a replica whose filter did, a bounded number
 * of times: when none takes it (a rollback, before the filter is set back), it is settled as any
 * event this version has no handler for.
 */
import type { JsMsg } from "@nats-io/jetstream";
import { selects } from "./catalogue.js";
import type { Logger } from "./log.js";

/** Deliveries of an event another version's filter selected before it is taken as no replica's (~10 s). */
const GIVE_BACK_TIMES = 50;
/** How long an event given back waits before it is delivered again, in ms. */
const GIVE_BACK_MS = 200;

/** The events of one consumer (whose own filter is `filter`) that another version of it selected. */
export class OtherVersions {
  private warned = false;

  constructor(
    private readonly filter: string | undefined,
    private readonly log: Logger,
  ) {}

  /** True if `m` was given back (nak) for a replica of another version; false if it is this one's to settle. */
  givenBack(m: Pick<JsMsg, "subject" | "info" | "nak">): boolean {
    if (selects(this.filter, m.subject) || m.info.deliveryCount >= GIVE_BACK_TIMES) return false;
    if (!this.warned) {
      this.warned = true;
      this.log.warn(
        { filter: this.filter, subject: m.subject },
        "sent an event another version of this consumer selected (a rolling upgrade); giving it back for that version",
      );
    }
    m.nak(GIVE_BACK_MS);
    return true;
  }
}
