/**
 * Idempotent consumers, the rule: each event a service consumes is applied
 * exactly once — its handler's writes and an inbox row commit in one
 * transaction, so a redelivered or republished event finds its inbox row and
 * changes nothing. Here: the inbox, the handler model (`on`), and how a
 * stored message becomes an event; consumer.ts runs handlers on a stream.
 */
import { type DescMessage, fromBinary, type MessageShape } from "@bufbuild/protobuf";
import type { JsMsg } from "@nats-io/jetstream";
import { sql } from "kysely";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { EVENT_RETENTION_MS } from "./bus.js";
import { type EventCatalogue, eventSubject, isNewerEvent } from "./catalogue.js";
import type { Logger } from "./log.js";
import type { Db, Tx } from "./sql.js";
import { stringWithNul } from "./validate.js";

/** The inbox table; append it to a consumer service's migrations. */
export const INBOX_MIGRATION = `CREATE TABLE inbox (
  consumer   TEXT NOT NULL,
  event_id   TEXT NOT NULL,
  type       TEXT NOT NULL,
  handled_at INTEGER NOT NULL,
  PRIMARY KEY (consumer, event_id)
) STRICT;`;

/**
 * How often each event's handler has failed, per consumer: counted in the service's database, so a
 * restart or another replica carries the count on (consumer.ts dead-letters at its limit). Append it
 * to a consumer service's migrations after {@link INBOX_MIGRATION}.
 */
export const INBOX_FAILURES_MIGRATION = `CREATE TABLE inbox_failures (
  consumer   TEXT NOT NULL,
  event_id   TEXT NOT NULL,
  failures   INTEGER NOT NULL,
  last_error TEXT NOT NULL,
  failed_at  INTEGER NOT NULL,
  PRIMARY KEY (consumer, event_id)
) STRICT;`;

/**
 * The index the inbox's purge reads by ({@link Inbox.purge}); append it to a consumer service's
 * migrations.
 */
export const INBOX_PURGE_MIGRATION = "CREATE INDEX inbox_handled ON inbox (consumer, handled_at);";

/**
 * How long an inbox row is kept, ms: a day past twice the streams' retention, so no delivery of its
 * event — not even to a consumer made again, which replays its stream from the start — comes after
 * the row is gone. Twice: a dead letter's event up to the retention old may be redriven (`make dlq
 * --redrive`, scripts/redrive.ts), and its copy is held a retention more; kept a day past one
 * retention, a consumer made again after the purge applied the copy a second time. Kept for ever,
 * the inbox grew by a row per event and consumer without end.
 */
export const INBOX_KEEP_MS = 2 * EVENT_RETENTION_MS + 24 * 60 * 60 * 1000;

/** Rows one purge statement deletes: a large first purge never holds the database for long. */
const PURGE_CHUNK = 5_000;

/** The most of a handler's error message {@link Inbox.failed} keeps. */
const MAX_ERROR_CHARS = 500;

/**
 * The one "apply an event exactly once" routine: runs `effect` and records
 * the event in the inbox in one transaction, unless the inbox of `consumer`
 * already holds it. Live consumers and replays (a read model's rebuild)
 * both apply events through it; replicas of a service share the inbox, so
 * the unique key is the last guard if two of them ever got the same event.
 */
export class Inbox {
  constructor(
    private readonly db: Db,
    readonly consumer: string,
    private readonly clock: () => number = Date.now,
  ) {}

  /** Applies `effect` for event `eventId` unless already applied; false (nothing changed) for a duplicate. */
  once(eventId: string, type: string, effect: (tx: Tx) => Promise<void>): Promise<boolean> {
    return this.db.transaction((tx) => this.onceIn(tx, eventId, type, effect));
  }

  /** {@link once} inside the caller's transaction `tx` (several events committed together). */
  async onceIn(tx: Tx, eventId: string, type: string, effect: (tx: Tx) => Promise<void>): Promise<boolean> {
    const record = sql`INSERT INTO inbox (consumer, event_id, type, handled_at)
      VALUES (${this.consumer}, ${eventId}, ${type}, ${this.clock()})`;
    if (tx.engine === "sqlite") {
      // One writer holds the whole database, so the row goes in first: one statement checks and
      // records, and a handler that throws takes it back with its own writes.
      if ((await tx.run(sql`${record} ON CONFLICT DO NOTHING`)) === 0) return false;
      await effect(tx);
      return true;
    }
    // PostgreSQL: the key is taken last. Taken first, a replica given the same event as another's
    // batch would hold it while waiting for a row that batch holds, the batch then waiting for the
    // key: a deadlock, found only after a second. Last, the loser of that race fails on the key,
    // runs again and finds the row.
    const seen = await tx.one(
      sql`SELECT 1 AS one FROM inbox WHERE consumer = ${this.consumer} AND event_id = ${eventId}`,
    );
    if (seen) return false;
    await effect(tx);
    await tx.run(record);
    return true;
  }

  /**
   * Deletes this consumer's rows older than {@link INBOX_KEEP_MS}, a chunk a transaction (how many),
   * and its failure counts as old.
   * Not flushed: rows a power failure brings back are purged the next time. Ends between two chunks
   * once `stopping()` says so (the process is stopping: the rest go the next time).
   */
  async purge(stopping: () => boolean = () => false): Promise<number> {
    const before = this.clock() - INBOX_KEEP_MS;
    let purged = 0;
    while (!stopping()) {
      const n = await this.db.transaction(
        (tx) =>
          tx.run(sql`DELETE FROM inbox WHERE consumer = ${this.consumer} AND event_id IN (
            SELECT event_id FROM inbox WHERE consumer = ${this.consumer} AND handled_at < ${before}
            LIMIT ${PURGE_CHUNK})`),
        { durable: false },
      );
      purged += n;
      if (n < PURGE_CHUNK) break;
    }
    if (stopping()) return purged;
    // A count left by a delivery after another replica had settled the event is never cleared by it.
    await this.db.transaction(
      (tx) => tx.run(sql`DELETE FROM inbox_failures WHERE consumer = ${this.consumer} AND failed_at < ${before}`),
      { durable: false },
    );
    return purged;
  }

  /** Throws, naming the migration, when the database has no table to count failures in. */
  async checkFailuresTable(): Promise<void> {
    try {
      await this.db.one(sql`SELECT 1 AS one FROM inbox_failures WHERE 1 = 0`);
    } catch (err) {
      throw new Error(
        `consumer ${this.consumer}: its database has no inbox_failures table (add INBOX_FAILURES_MIGRATION to the service's migrations): ${(err as Error).message}`,
      );
    }
  }

  /**
   * Counts a failure of the handler of `eventId` and returns how many there have been, in every
   * process; 0, counting nothing, when the event has been handled meanwhile (a delivery past the ack
   * wait failing after another replica, or a redelivery, handled it: its count would stay until a
   * purge). Not flushed: a count lost with a power failure costs one more retry.
   */
  failed(eventId: string, error: string): Promise<number> {
    return this.db.transaction(
      async (tx) => {
        const row = await tx.one<{ failures: number }>(sql`INSERT INTO inbox_failures AS f
            (consumer, event_id, failures, last_error, failed_at)
          SELECT ${this.consumer}, ${eventId}, 1, ${error.slice(0, MAX_ERROR_CHARS)}, ${this.clock()}
          WHERE NOT EXISTS (SELECT 1 FROM inbox WHERE consumer = ${this.consumer} AND event_id = ${eventId})
          ON CONFLICT (consumer, event_id) DO UPDATE SET failures = f.failures + 1,
            last_error = excluded.last_error, failed_at = excluded.failed_at
          RETURNING failures`);
        return Number(row?.failures ?? 0);
      },
      { durable: false },
    );
  }

  /** Forgets the failures of `eventId` (in `tx`, or on their own): it was handled or dead-lettered. */
  forgetFailures(eventId: string, tx?: Tx): Promise<number> {
    return (tx ?? this.db).run(
      sql`DELETE FROM inbox_failures WHERE consumer = ${this.consumer} AND event_id = ${eventId}`,
    );
  }
}

/** How often a consumer purges its inbox of rows past {@link INBOX_KEEP_MS}, ms. */
const PURGE_EVERY_MS = 60 * 60 * 1000;

/**
 * Purges `inbox` now and hourly (each replica does: a second purge finds nothing), saying what it
 * purged; returns what stops it, which resolves once a purge under way has ended (after its chunk:
 * the database is closed next, and a statement on a closed one fails).
 */
export function purgeRegularly(inbox: Inbox, log: Logger): () => Promise<void> {
  let stopping = false;
  let running: Promise<unknown> = Promise.resolve();
  const purge = () => {
    running = inbox
      .purge(() => stopping)
      .then(
        (n) => n > 0 && log.info({ purged: n }, "inbox rows past the streams' retention purged"),
        (err: unknown) => log.warn({ err: (err as Error).message }, "inbox purge failed; retrying in an hour"),
      );
  };
  purge();
  const timer = setInterval(purge, PURGE_EVERY_MS).unref();
  return async () => {
    stopping = true;
    clearInterval(timer);
    await running;
  };
}

/**
 * Thrown by a handler for an event that can never be handled (it lacks data
 * the handler needs): the event goes to the DLQ at once instead of being
 * retried.
 */
export class UnprocessableEventError extends Error {
  override name = "UnprocessableEventError";
}

/** What a handler learns about the event beyond its payload. */
export interface EventContext {
  readonly eventId: string;
  /** The protobuf type name. */
  readonly type: string;
  readonly subject: string;
  /** 1 on first delivery. */
  readonly deliveryCount: number;
  readonly traceparent: string;
  /** The order it is about ("" when none). */
  readonly orderId: string;
}

/** What a log line about event `ctx` names: the event, its type, its order and its trace (found by `jq` on the trace id). */
export function eventFields(ctx: EventContext): Record<string, string> {
  const traceId = ctx.traceparent.split("-")[1] ?? "";
  return {
    type: ctx.type,
    eventId: ctx.eventId,
    ...(ctx.orderId && { orderId: ctx.orderId }),
    ...(traceId && { trace_id: traceId }),
  };
}

/**
 * A handler: runs inside the consumer's transaction `tx` together with the
 * inbox insert, so it only touches that database (and its outbox) through
 * `tx`. Throwing rolls everything back and the event is redelivered.
 */
export type EventHandler = ((event: never, ctx: EventContext, tx: Tx) => Promise<void>) & {
  /** Whether the event concerns this consumer at all; false: acknowledged as ignored, no transaction. */
  readonly only?: (event: never) => boolean | Promise<boolean>;
};

/**
 * Typed handler helper: `on(OrderPlacedSchema, async (e, ctx, tx) => ...)`. With `only`, events it
 * rejects (e.g. another saga mode's) are acknowledged without a transaction or an inbox row: a
 * redelivery is rejected the same way, so exactly-once does not need one. `only` decides from the
 * event and what never changes (an order's saga mode): it runs before the handlers of the events
 * that arrived with it.
 */
export function on<D extends DescMessage>(
  schema: D,
  fn: (event: MessageShape<D>, ctx: EventContext, tx: Tx) => Promise<void>,
  only?: (event: MessageShape<D>) => boolean | Promise<boolean>,
): [string, EventHandler] {
  // A handler of its own: `fn` is often shared by several types (one `notify` for every event), and
  // `only` set on it would filter all of them, on every stream.
  const handler = (event: MessageShape<D>, ctx: EventContext, tx: Tx) => fn(event, ctx, tx);
  return [schema.typeName, Object.assign(handler, { only }) as EventHandler];
}

/** A stored message as an event of `catalogue` with its context, or why it can never be handled. */
export function decodeEvent(
  m: JsMsg,
  catalogue: EventCatalogue,
): { event: unknown; ctx: EventContext } | { unusable: string; named?: Record<string, string> } | { newer: string } {
  let headers: JsMsg["headers"];
  try {
    headers = m.headers;
  } catch (err) {
    // Stored as sent, e.g. a header name with a space: nats.js throws on reading it, every delivery.
    return { unusable: `unreadable headers: ${(err as Error).message}` };
  }
  const type = headers?.get("ce-type") ?? "";
  const eventId = headers?.get("ce-id") ?? "";
  const kind = catalogue.kind(type);
  const idOk = eventId !== "" && eventId.length <= 128;
  // A type this version does not know, as its publisher's newer version would send it: not for this
  // consumer, like any type it has no handler for (a tolerant reader; docs/events.md, "Adding an event type").
  if (!kind && idOk && isNewerEvent(catalogue, type, m.info.stream, m.subject)) return { newer: type };
  // Ids are `evt_…`, well under 128: a longer one is a forgery, and would be stored and listed back.
  if (!kind || !idOk) {
    return {
      unusable: `not a shopmesh event: missing, unknown or over-long ce-type/ce-id (ce-type=${JSON.stringify(type.slice(0, 200))})`,
    };
  }
  // Which event a letter of it was, for the log line (a known type, an id of at most 128 characters).
  const named = { type, eventId };
  // Only a type's publisher may publish on its subject (bus-access.ts), but a stream also keeps what a
  // consumer delivers into its subjects: a message whose subject is another's could be anyone's. And
  // the server's answers, sent to any reply subject a client names, carry what it stored: a copy of a
  // stored message comes with its Nats-Stream and Nats-Sequence, which no publisher can send.
  const elsewhere = () => ({
    named,
    unusable: `${type} is published on ${kind.subject}.<mode> (${kind.stream}), not ${JSON.stringify(m.subject.slice(0, 200))} (${m.info.stream})`,
  });
  const legacy = m.subject === kind.subject; // published before subjects ended in the saga mode
  if (!(legacy || m.subject.startsWith(`${kind.subject}.`)) || m.info.stream !== kind.stream) return elsewhere();
  if (headers?.has("Nats-Stream") || headers?.has("Nats-Sequence")) {
    return {
      named,
      unusable: `a copy of a stored message (Nats-Stream ${JSON.stringify(headers.get("Nats-Stream"))}), not an event as published`,
    };
  }
  let event: unknown;
  try {
    event = fromBinary(kind.schema, m.data);
  } catch (err) {
    return { named, unusable: `undecodable ${type} payload: ${(err as Error).message}` };
  }
  // The inbox deduplicates on ce-id: one that is not the event's own would let its copy apply twice.
  const own = (event as { meta?: { eventId?: string } }).meta?.eventId ?? "";
  if (own !== eventId) {
    return {
      named,
      unusable: `ce-id ${JSON.stringify(eventId)} is not the event's meta.event_id ${JSON.stringify(own)}`,
    };
  }
  // Requests holding a NUL are refused at the edge (grpc.ts); an event holding one (only a service's
  // own credentials can publish it) would fail every delivery on PostgreSQL, whose text has no NUL.
  const nul = stringWithNul(kind.schema, event as object);
  if (nul !== undefined)
    return {
      named,
      unusable: `${type} holds a NUL character (U+0000) in ${nul}, which PostgreSQL's text cannot store`,
    };
  // The subject's last token is the saga mode the event says (consumers are filtered on it), `none` when
  // it says none. An event published before the token existed says none and has no token: what history
  // and notification still take from the stream's seven days, and a read model's rebuild replays
  // (docs/events.md, "Upgrading").
  const mode = (event as { meta?: { sagaMode?: SagaMode } }).meta?.sagaMode ?? SagaMode.UNSPECIFIED;
  const known = mode === SagaMode.ORCHESTRATION || mode === SagaMode.CHOREOGRAPHY || mode === SagaMode.UNSPECIFIED;
  if (legacy ? mode !== SagaMode.UNSPECIFIED : !known || m.subject !== eventSubject(kind, mode)) return elsewhere();
  const ctx: EventContext = {
    eventId,
    type,
    subject: m.subject,
    deliveryCount: m.info.deliveryCount,
    traceparent: headers?.get("traceparent") ?? "",
    orderId: (event as { meta?: { orderId?: string } }).meta?.orderId ?? "",
  };
  return { event, ctx };
}
