/**
 * A service's consumer of one stream: a durable pull consumer (explicit ack) whose events are
 * applied through the inbox (inbox.ts), several that arrived together in one transaction. A failing
 * event is retried with backoff (retry-times.ts) and, after its handler failed `maxDeliver` times,
 * moved to the dead-letter stream with the reason; an event that can never be handled
 * (undecodable, unknown, unusable, or refused by its handler as invalid) goes there at once. What
 * counts is the handler's failures, not JetStream's deliveries: the deliveries an outage took (a
 * database away, the service down by fault injection) are not the event's fault — counted as
 * failures, a restart after a long outage dead-lettered the backlog's first event to fail once for
 * a reason that passes (an event ahead of the one it needs). The failures are counted in the
 * service's database (`inbox_failures`), so a restarted process and every replica carry one count
 * on. Either way the consumer keeps going.
 */
import type { JsMsg } from "@nats-io/jetstream";
import { SpanKind } from "@opentelemetry/api";
import { backoffMs } from "./backoff.js";
import { settleInBatches } from "./batches.js";
import type { Bus } from "./bus.js";
import { consumerFilter, type EventCatalogue } from "./catalogue.js";
import type { FaultInjector } from "./chaos.js";
import type { ConsumerSpec } from "./consumer-spec.js";
import { isDatabaseUnavailable } from "./db-errors.js";
import { deadLetter } from "./dead-letter.js";
import { InvalidArgumentError } from "./errors.js";
import {
  decodeEvent,
  type EventContext,
  type EventHandler,
  eventFields,
  Inbox,
  purgeRegularly,
  UnprocessableEventError,
} from "./inbox.js";
import { flushLogs, type Logger } from "./log.js";
import { OtherVersions } from "./other-versions.js";
import { detached, extractContext, inSpan } from "./propagation.js";
import { pullForever } from "./pull.js";
import { latestCopies, RetryTimes } from "./retry-times.js";
import { type Db, isRerunnable, type Tx } from "./sql.js";
import { lagSeconds, type Telemetry } from "./telemetry.js";

/** The most events settled in one transaction (batches.ts); a consumer holding this many stops lingering. */
const MAX_BATCH = 64;

/** Options of {@link startConsumer}. */
export interface ConsumerOptions extends ConsumerSpec {
  readonly bus: Bus;
  readonly db: Db;
  readonly log: Logger;
  readonly catalogue: EventCatalogue;
  /** Failures of an event's handler before it goes to the dead-letter stream (default 10, ~20 s of backoff). */
  readonly maxDeliver?: number;
  /** Chaos hook: SIGKILL the process after committing an event, before acking it. */
  readonly crashAfterCommit?: boolean;
  /** Fault injection (latency, down, error rate) applied before each event. */
  readonly faults?: FaultInjector;
  /** Consumer spans and metrics. */
  readonly telemetry?: Telemetry;
  /** Called after each event is handled (or skipped as a duplicate). */
  readonly onHandled?: (type: string, duplicate: boolean) => void;
}

/** A running consumer. */
export interface RunningConsumer {
  stop(): Promise<void>;
}

/** A message's headers as a trace-context carrier. */
const headerCarrier = (m: JsMsg) => ({ get: (k: string) => m.headers?.get(k), set: () => {} });

/**
 * Consumes `stream` with a durable pull consumer (explicit ack), one event at a time in the order this
 * process receives them. Every replica of a service pulls from the same durable consumer, so JetStream
 * gives each event to one of them; see the module comment for what happens to each.
 */
export async function startConsumer(opts: ConsumerOptions): Promise<RunningConsumer> {
  const { bus, durable } = opts;
  const clog = opts.log.child({ consumer: durable });
  await new Inbox(opts.db, durable).checkFailuresTable();
  const filter = consumerFilter(opts.catalogue, opts);
  const otherVersions = new OtherVersions(filter, clog);
  const settle = eventHandler(opts, clog, otherVersions);
  const pull = await pullForever({
    bus,
    stream: opts.stream,
    durable,
    filter,
    widened: (to) => (otherVersions.widened = { filter: to }),
    log: clog,
    handle: (messages) =>
      settleInBatches(messages, {
        maxBatch: MAX_BATCH,
        ...(opts.lingerMs ? { lingerMs: opts.lingerMs } : {}),
        // Each event's span continues the trace in its headers; nothing else here is a request's.
        settle: (batch) => detached(() => settle(batch)),
        // settle() settles every event itself; this is a bug's safety net (its events are redelivered).
        onError: (err) => clog.error({ err }, "consumer batch failed"),
        // Stopped with events not yet settled: give them back at once rather than after the ack wait.
        onLeft: (left) => {
          for (const m of left) m.nak();
        },
      }),
  });
  clog.info({ stream: opts.stream }, "consuming");
  const stopPurging = purgeRegularly(new Inbox(opts.db, durable), clog);
  return {
    stop: async () => {
      await Promise.all([stopPurging(), pull.stop()]);
    },
  };
}

type Settle = (batch: readonly JsMsg[]) => Promise<void>;
/** An event ready to be applied: decoded, its handler found, its filter passed. */
interface Ready {
  readonly m: JsMsg;
  readonly fn: EventHandler;
  readonly event: unknown;
  readonly ctx: EventContext;
}

/**
 * The function that settles a batch of delivered messages, in their order (or by lockKey): each
 * is applied once and acknowledged, retried later, or dead-lettered. The events to apply are applied
 * in one transaction, each in a savepoint of its own, so one event's failure never holds back the
 * others nor costs them their exactly-once.
 */
function eventHandler(opts: ConsumerOptions, clog: Logger, otherVersions: OtherVersions): Settle {
  const { durable, lockKey } = opts;
  const maxDeliver = opts.maxDeliver ?? 10;
  const handlers = new Map(opts.handlers);
  const inbox = new Inbox(opts.db, durable);
  const retries = new RetryTimes();
  const tel = opts.telemetry;
  const metrics = tel?.metrics;
  /** The unknown types already logged (see prepare). */
  const newer = new Set<string>();
  const toDlq = async (m: JsMsg, reason: string, ctx?: EventContext, named?: Record<string, string>) => {
    await deadLetter(opts.bus, durable, m, reason);
    if (ctx) {
      await inbox
        .forgetFailures(ctx.eventId)
        .catch((e: unknown) => clog.warn({ err: (e as Error).message, ...eventFields(ctx) }, "failures not forgotten"));
    }
    clog.warn({ subject: m.subject, seq: m.seq, reason, ...(ctx ? eventFields(ctx) : named) }, "event dead-lettered");
    metrics?.deadLetters.inc({ consumer: durable });
  };

  /** Runs the handler exactly once (inbox) in `tx`, in a span continuing the producer's trace; true for a duplicate. */
  const applyIn = async (tx: Tx, { m, fn, event, ctx }: Ready): Promise<boolean> => {
    let duplicate = false;
    const run = async () => {
      // A redelivered event may have failed before (here or in another process): handled, it is forgotten.
      if (ctx.deliveryCount > 1) await inbox.forgetFailures(ctx.eventId, tx);
      duplicate = !(await inbox.onceIn(tx, ctx.eventId, ctx.type, (tx) => fn(event as never, ctx, tx)));
      clog.debug({ type: ctx.type, eventId: ctx.eventId, duplicate }, "event handled");
    };
    if (!tel) {
      await run();
      return duplicate;
    }
    // Events the handler writes to its own outbox carry the same trace on.
    const { orderId } = ctx;
    await inSpan(
      tel.tracer,
      `process ${ctx.type}`,
      {
        kind: SpanKind.CONSUMER,
        parent: extractContext(headerCarrier(m)),
        attributes: { "messaging.consumer.group.name": durable, ...(orderId ? { "order.id": orderId } : {}) },
      },
      run,
    );
    const lag = lagSeconds(Date.parse(m.headers?.get("ce-time") ?? ""));
    if (lag !== undefined) tel.metrics.eventLag.observe({ consumer: durable }, lag);
    return duplicate;
  };
  /** A handler failed: dead-letter it when it can never succeed or has failed `maxDeliver` times, else retry later. */
  const failed = async (m: JsMsg, ctx: EventContext, err: unknown) => {
    metrics?.eventsHandled.inc({ consumer: durable, type: ctx.type, outcome: "failed" });
    if (isDatabaseUnavailable(err)) {
      // The database is away (a restart, a failover): not the event's fault, so it never counts toward the DLQ.
      retries.handBack(m, backoffMs(ctx.deliveryCount, 200, 5_000));
      return;
    }
    const message = (err as Error).message;
    // Refused as invalid, it would be refused the same way on every delivery.
    if (err instanceof UnprocessableEventError || err instanceof InvalidArgumentError) {
      await toDlq(m, `unprocessable: ${message}`, ctx);
      return;
    }
    // Not counted (the database went away since): retried without a count, which errs towards retrying.
    const times = await inbox.failed(ctx.eventId, message).catch((e: unknown) => {
      clog.warn({ err: (e as Error).message, eventId: ctx.eventId }, "handler failure not counted");
      return 0;
    });
    if (times >= maxDeliver) {
      await toDlq(m, `handler failed ${times} times: ${message}`, ctx);
    } else {
      const delay = backoffMs(times || ctx.deliveryCount, 100, 5_000);
      // A failure or two is often an event ahead of the one it needs; half-way to the dead letter, it is news.
      clog[times * 2 >= maxDeliver ? "warn" : "info"](
        { ...eventFields(ctx), delivery: ctx.deliveryCount, failures: times, retryInMs: delay, err: message },
        "handler failed; will retry",
      );
      retries.handBack(m, delay);
    }
  };

  /** What to do with `m` before any transaction: the event to apply, or nothing (it was settled here). */
  const prepare = async (m: JsMsg): Promise<Ready | undefined> => {
    if (retries.held(m)) return undefined;
    const decoded = decodeEvent(m, opts.catalogue);
    if ("unusable" in decoded) {
      await toDlq(m, decoded.unusable, undefined, decoded.named);
      return undefined;
    }
    const mine = otherVersions.mine(m);
    if (mine === "given back") return undefined;
    if ("newer" in decoded) {
      m.ack(); // a type of a newer publisher: no handler here can want it
      metrics?.eventsHandled.inc({ consumer: durable, type: "unknown", outcome: "ignored" });
      if (newer.size < 100 && !newer.has(decoded.newer)) {
        newer.add(decoded.newer);
        clog.warn({ type: decoded.newer }, "ignoring events of a type this version does not know (a newer publisher)");
      }
      return undefined;
    }
    const { event, ctx } = decoded;
    const fn = handlers.get(ctx.type);
    const ignore = () => {
      m.ack(); // this service does not care about this type, or this event
      metrics?.eventsHandled.inc({ consumer: durable, type: ctx.type, outcome: "ignored" });
      return undefined;
    };
    if (!fn || mine === "no") return ignore();
    if (ctx.deliveryCount > 1) metrics?.redeliveries.inc({ consumer: durable });
    if (opts.faults && (await opts.faults.beforeEvent()) === "skip") {
      // An injected outage is not the event's fault: no failure of its handler.
      m.nak(500);
      return undefined;
    }
    try {
      if (fn.only && !(await fn.only(event as never))) return ignore();
    } catch (err) {
      await failed(m, ctx, err);
      return undefined;
    }
    return { m, fn, event, ctx };
  };

  /** Acknowledges events whose transaction committed (`duplicate`: it had been applied before). */
  const acknowledge = (applied: readonly { r: Ready; duplicate: boolean }[]) => {
    if (opts.crashAfterCommit && applied.some((a) => !a.duplicate)) {
      clog.warn({ eventId: applied[0]?.r.ctx.eventId }, "fault injection: crashing after commit, before ack");
      flushLogs(); // the line above must be out before the kill
      process.kill(process.pid, "SIGKILL");
    }
    for (const { r, duplicate } of applied) {
      r.m.ack();
      metrics?.eventsHandled.inc({ consumer: durable, type: r.ctx.type, outcome: duplicate ? "duplicate" : "handled" });
      opts.onHandled?.(r.ctx.type, duplicate);
    }
  };

  /**
   * Applies `ready` in one transaction, each event in a savepoint (when more than one) so a failing
   * handler undoes only its own writes; acknowledges the applied, settles the failed. If it fails
   * whole, every event fails — but after a PostgreSQL conflict each event gets a transaction of its
   * own (run again whole, the batch would likely meet the one it deadlocked with again).
   */
  const applyAll = async (ready: readonly Ready[]) => {
    type Result = { r: Ready; duplicate: boolean } | { r: Ready; err: unknown };
    const inSavepoints = async (tx: Tx): Promise<Result[]> => {
      const out: Result[] = [];
      const { lockFirst } = opts;
      // Only an aid against deadlocks: if it fails (a bug, a bad row), the events go on without it.
      if (lockFirst) {
        const events = ready.map((r) => r.event);
        await tx
          .savepoint(() => lockFirst(tx, events))
          .catch((err: unknown) => {
            if (isRerunnable(err)) throw err;
            clog.warn({ err: (err as Error).message }, "locking the batch's rows first failed; applying it anyway");
          });
      }
      for (const r of ready) {
        try {
          out.push({ r, duplicate: await tx.savepoint(() => applyIn(tx, r)) });
        } catch (err) {
          if (isRerunnable(err)) throw err; // the transaction is lost
          out.push({ r, err });
        }
      }
      return out;
    };
    const [only] = ready;
    let results: Result[];
    try {
      results = await opts.db.transaction(
        // One event needs no savepoint: its failure rolls back nothing but its own writes.
        async (tx) =>
          only && ready.length === 1 ? [{ r: only, duplicate: await applyIn(tx, only) }] : inSavepoints(tx),
        { rerunOnConflict: ready.length === 1 },
      );
    } catch (err) {
      if (ready.length > 1 && isRerunnable(err)) {
        clog.info(
          { events: ready.length, err: (err as Error).message },
          "batch conflicted; applying its events one by one",
        );
        for (const r of ready) await applyAll([r]);
        return;
      }
      results = ready.map((r) => ({ r, err }));
    }
    acknowledge(results.flatMap((x) => ("duplicate" in x ? [x] : [])));
    for (const x of results) if ("err" in x) await guarded(x.r.m, () => failed(x.r.m, x.r.ctx, x.err));
  };

  /** Runs `f` for `m`; if it throws (the DLQ publish failed: NATS away, its store full), redelivers `m`, later each time. */
  const guarded = async (m: JsMsg, f: () => Promise<void>) => {
    try {
      await f();
    } catch (err) {
      const retryInMs = backoffMs(m.info.deliveryCount, 1_000, 30_000);
      clog.warn({ err: (err as Error).message, seq: m.seq, retryInMs }, "event not settled; it will be redelivered");
      m.nak(retryInMs);
    }
  };

  return async (batch) => {
    const ready: Ready[] = [];
    for (const m of latestCopies(batch)) {
      await guarded(m, async () => {
        const r = await prepare(m);
        if (r) ready.push(r);
      });
    }
    // Array.prototype.sort is stable: one key's events keep their order.
    if (lockKey)
      ready.sort((a, b) => (lockKey(a.event) < lockKey(b.event) ? -1 : lockKey(a.event) > lockKey(b.event) ? 1 : 0));
    if (ready.length > 0) await applyAll(ready);
  };
}
