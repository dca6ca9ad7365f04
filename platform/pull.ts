/**
 * A service's durable pull consumer on one stream, pulled for as long as it
 * is wanted: made if it is not there (explicit acks, from the stream's
 * start), and pulled again — made again if need be, on a new inbox, with
 * backoff — whenever the pull ends by itself. It ends with an error when its
 * durable or stream is gone, or when the server answers a pull with a status
 * it does not expect, which anyone able to name the pull's inbox as a reply
 * subject can make it send (a 400 for a malformed pull of their own): the
 * process exited on the unhandled rejection, or, with the durable deleted,
 * waited silently for ever. What to do with the messages is consumer.ts's.
 */
import { AckPolicy, type ConsumerConfig, type ConsumerMessages, DeliverPolicy } from "@nats-io/jetstream";
import { backoffMs } from "./backoff.js";
import type { Bus } from "./bus.js";
import type { Logger } from "./log.js";
import { filterUpdateStale } from "./nats-version.js";

/**
 * How long a delivered event may stay unacknowledged before JetStream gives
 * it to another puller (a replica that died holding it): handlers are one
 * short transaction, so 10 s is generous and bounds the delay a crash adds.
 */
const ACK_WAIT_NS = 10 * 1e9;
/**
 * Events one consumer pulls ahead. The client asks for more each time a quarter of them has
 * arrived, so this sets how often a pull request goes to the server (at 16, one per 4 events);
 * a consumer keeping up holds only what has arrived, and one with a backlog up to about three
 * times this many unacknowledged, with the batch it settles and the one queued behind it
 * (batches.ts): what a crash strands for the ack wait, what a replica takes before the others.
 * `abort_on_missing_resource` ends the pull when its durable (or stream) is gone, instead of
 * nats.js waiting for someone to make it again.
 */
const CONSUME = { max_messages: 64, abort_on_missing_resource: true } as const;
/**
 * The pull's idle heartbeat on a nats-server before 2.9.12, ms. Such a server wakes a consumer for a new
 * event only on the filter it was made with (nats-version.ts): after its filter changed (refilter
 * below; one type's subject set to none by an upgrade), an event only the new one selects waited for
 * the pull's next heartbeat, 15 s by default (test/hostile-skew.test.ts). A heartbeat wakes the
 * consumer too, and no replica can tell whether its durable's filter changed since the server started,
 * so there every pull's heartbeat is this.
 */
const HEARTBEAT_STALE_FILTER_MS = 1_000;
/** A pull that ran this long before it failed starts its restarts' backoff afresh, ms. */
const RESTART_RESET_MS = 10_000;

/** One run of a pull's messages, as the caller handles them: `done` once they ended (or failed). */
export interface PullRun {
  readonly done: Promise<void>;
  /** Handle no more; the pull is closed after. */
  stop(): void;
}

/** A running pull; `stop()` resolves once its last run is done. */
export interface Pull {
  stop(): Promise<void>;
}

/**
 * Pulls `durable` on `stream` — only the events on `filter` when given (a subject of the stream) —
 * handing each run of messages to `handle`, until stopped.
 */
export async function pullForever(o: {
  readonly bus: Bus;
  readonly stream: string;
  readonly durable: string;
  readonly filter?: string | undefined;
  /** Told when this process leaves the durable wider than `filter`: with no filter (pull.ts's refilter). */
  readonly widened?: (to: undefined) => void;
  readonly log: Logger;
  readonly handle: (messages: ConsumerMessages) => PullRun;
}): Promise<Pull> {
  const { bus, stream, durable, filter, log } = o;
  // The filter is this code's at the process's start only: a pull started again (after a reconnect,
  // say) leaves it to the replica that set it last, maybe another version's (other-versions.ts).
  const start = async (first: boolean) => {
    const info = await bus.jsm.consumers.info(stream, durable).catch(() => undefined);
    if (!info) {
      await bus.jsm.consumers.add(stream, {
        durable_name: durable,
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: ACK_WAIT_NS,
        max_deliver: -1, // we count deliveries ourselves and dead-letter, so the server never drops silently
        ...(filter === undefined ? {} : { filter_subject: filter }),
      });
    } else if (first && (info.config.filter_subject ?? "") !== (filter ?? "")) {
      if (await refilter(bus, stream, info.config, filter, log)) o.widened?.(undefined);
    }
    const options = filterUpdateStale(bus.nc.info?.version ?? "")
      ? { ...CONSUME, idle_heartbeat: HEARTBEAT_STALE_FILTER_MS }
      : CONSUME;
    return (await bus.js.consumers.get(stream, durable)).consume(options);
  };
  let stopped = false;
  let current: { messages: ConsumerMessages; run: PullRun } | undefined;
  let wake = () => {};
  /** Waits `ms`, or until stopped. */
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  const loop = async (first: ConsumerMessages) => {
    let messages = first;
    for (let attempt = 1; ; ) {
      const began = Date.now();
      try {
        current = { messages, run: o.handle(messages) };
        await current.run.done;
        if (stopped) return;
        log.warn("consumer's pull ended by itself; consuming again");
      } catch (err) {
        if (stopped) return;
        log.warn({ err: (err as Error).message, attempt }, "consumer's pull failed; consuming again");
      }
      attempt = Date.now() - began > RESTART_RESET_MS ? 1 : attempt + 1;
      await pause(backoffMs(attempt, 100, 5_000));
      for (;;) {
        if (stopped) return;
        try {
          messages = await start(false);
          // Stopped while the pull was starting: stop() closed only the run before this one.
          if (stopped) {
            // Nobody reads it: hand back at once what it already took, rather than after the ack wait.
            const closing = messages.close();
            for await (const m of messages) m.nak();
            await closing;
            return;
          }
          break;
        } catch (err) {
          log.warn({ err: (err as Error).message, attempt }, "consumer's pull could not start; trying again");
          await pause(backoffMs(++attempt, 100, 5_000));
        }
      }
    }
  };
  const running = loop(await start(true));
  return {
    async stop() {
      stopped = true;
      wake();
      current?.run.stop();
      await current?.messages.close();
      await running;
    },
  };
}

/** Whether a filter subject has a wildcard token. */
const hasWildcard = (filter: string) => filter.split(".").some((t) => t === "*" || t === ">");

/**
 * Gives an existing durable (`config`) the filter this code declares (made before it declared one, or
 * another); resolves true when it leaves it none instead (below). nats-server before 2.9.12 (Debian's
 * 2.9.10, what `make nats` installs; nats-version.ts) takes an update to a wildcard filter from a
 * literal one, or from none, as a filter matching nothing: the durable skipped every event after it,
 * silently (test/hostile-skew.test.ts). There it gets no filter instead, which such a server applies;
 * the consumer keeps to its own (other-versions.ts).
 * If the server refuses, the consumer goes on with the durable's filter, logged: where that one is
 * narrower, the events only this code's selects are skipped (docs/events.md).
 */
async function refilter(
  bus: Bus,
  stream: string,
  config: ConsumerConfig,
  filter: string | undefined,
  log: Logger,
): Promise<boolean> {
  const was = config.filter_subject || undefined;
  const broken = filter !== undefined && hasWildcard(filter) && !hasWildcard(was ?? "");
  const to = broken && filterUpdateStale(bus.nc.info?.version ?? "") ? undefined : filter;
  const { durable_name: durable = "" } = config;
  // Set to none by an earlier start (this version's or another's): nothing to change, only to say.
  if (to === was) return to !== filter;
  try {
    if (to === undefined) {
      // nats.js names a filter in the request's subject, and an empty one makes a subject no server answers.
      const answer = await bus.nc.request(
        `$JS.API.CONSUMER.DURABLE.CREATE.${stream}.${durable}`,
        JSON.stringify({ stream_name: stream, config: { ...config, filter_subject: "" }, action: "update" }),
        // As long as the JetStream manager's own requests wait: at nats.js's 1 s a slow server applied
        // the update after this gave up, and the consumer took itself for narrower than its durable.
        { timeout: 5_000 },
      );
      const err = (answer.json() as { error?: { description?: string } }).error;
      if (err) throw new Error(err.description ?? "refused");
    } else {
      await bus.jsm.consumers.update(stream, durable, { filter_subject: to });
    }
    log.info({ filter: to ?? "(none)", declared: filter ?? "(none)" }, "consumer's filter subject changed");
    return to !== filter;
  } catch (err) {
    log.warn(
      { filter: to ?? "(none)", err: (err as Error).message },
      "consumer's filter subject could not be changed; it goes on receiving the events it ignores",
    );
    return false;
  }
}
