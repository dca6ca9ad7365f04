/**
 * The transactional outbox: events are written into the service's own
 * database in the same transaction as the state change they record, and a
 * relay publishes them to JetStream afterwards — promptly after each commit,
 * and by a periodic sweep after a crash or an outage. Nothing committed is
 * lost: a row stays until JetStream has acknowledged it.
 *
 * On the wire (CloudEvents NATS binding, binary mode): the payload is the
 * protobuf encoding; headers carry `ce-specversion`, `ce-id`, `ce-type` (the
 * protobuf type name), `ce-source`, `ce-time`, `content-type`,
 * `traceparent`, and `Nats-Msg-Id` = event id, so JetStream drops a
 * republished duplicate within the stream's duplicate window.
 */
import { create, type DescMessage, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { SpanKind } from "@opentelemetry/api";
import { backoffMs } from "./backoff.js";
import type { Bus } from "./bus.js";
import type { EventCatalogue } from "./catalogue.js";
import type { Db } from "./db.js";
import { newId } from "./ids.js";
import type { Logger } from "./log.js";
import { contextOf, currentTraceparent, injectContext, inSpan } from "./propagation.js";
import type { Telemetry } from "./telemetry.js";

/** SQL of the outbox table; append it to a service's migrations. */
export const OUTBOX_MIGRATION = `CREATE TABLE outbox (
  seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order
  event_id    TEXT NOT NULL UNIQUE,
  type        TEXT NOT NULL,
  subject     TEXT NOT NULL,
  payload     BLOB NOT NULL,
  order_id    TEXT NOT NULL,
  traceparent TEXT NOT NULL DEFAULT '',
  created_at  INTEGER NOT NULL,
  sent_at     INTEGER
) STRICT;
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;`;

/** Rows the relay reads per query. */
const RELAY_BATCH = 256;
/** Sent rows are purged after this long, ms. */
const KEEP_SENT_MS = 60 * 60 * 1000;

type EventInit<D extends DescMessage> = Omit<MessageInitShape<D>, "meta" | "$typeName">;

/**
 * Writes events into the outbox table of a service's database. Call
 * {@link Outbox.add} inside the same transaction as the state change the
 * event records: both commit or neither does.
 */
export class Outbox {
  private readonly insert;
  /** Called after `add` once the current synchronous transaction has ended. */
  onAdded: () => void = () => {};

  constructor(
    db: Db,
    private readonly source: string,
    private readonly catalogue: EventCatalogue,
    private readonly clock: () => number = Date.now,
  ) {
    this.insert = db.prepare(
      `INSERT INTO outbox (event_id, type, subject, payload, order_id, traceparent, created_at)
       VALUES (@eventId, @type, @subject, @payload, @orderId, @traceparent, @now)`,
    );
  }

  /** Adds an event of `schema` about `orderId`; fills its `meta`. Returns the event id. */
  add<D extends DescMessage>(
    schema: D,
    orderId: string,
    init: EventInit<D>,
    traceparent: string = currentTraceparent(),
  ): string {
    const kind = this.catalogue.kind(schema.typeName);
    if (!kind) throw new Error(`${schema.typeName} is not an event of the catalogue`);
    const now = this.clock();
    const eventId = newId("evt", now);
    const meta = { eventId, source: this.source, occurredAt: timestampFromMs(now), orderId, traceparent };
    const msg = create(schema, { ...init, meta } as unknown as MessageInitShape<D>);
    this.insert.run({
      eventId,
      type: kind.typeName,
      subject: kind.subject,
      payload: toBinary(schema, msg),
      orderId,
      traceparent,
      now,
    });
    // A microtask runs after the synchronous transaction that called us has committed.
    queueMicrotask(() => this.onAdded());
    return eventId;
  }
}

interface OutboxRow {
  seq: number;
  event_id: string;
  type: string;
  subject: string;
  payload: Buffer;
  traceparent: string;
  created_at: number;
}

/** Options of {@link OutboxRelay}. */
export interface RelayOptions {
  readonly db: Db;
  readonly outbox: Outbox;
  readonly bus: Bus;
  readonly source: string;
  readonly log: Logger;
  /** Safety-net sweep interval (the happy path publishes right after commit), ms. */
  readonly sweepMs?: number;
  /** Chaos hook: SIGKILL this process right before the first publish. */
  readonly crashBeforePublish?: boolean;
  /** Publish spans and outbox metrics. */
  readonly telemetry?: Telemetry;
}

/**
 * Publishes committed outbox rows to JetStream in commit order, promptly
 * after each commit and by periodic sweep, then marks them sent. Publishing
 * is sequential, so events of one aggregate keep their order. A failure
 * (NATS down) is retried with capped backoff.
 */
export class OutboxRelay {
  private readonly unsent;
  private readonly markSent;
  private readonly purge;
  private readonly countUnsent;
  private running = false;
  private again = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private idle: Promise<void> = Promise.resolve();

  constructor(private readonly opts: RelayOptions) {
    const { db } = opts;
    this.unsent = db.prepare<[number], OutboxRow>("SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?");
    this.markSent = db.prepare<[number, number]>("UPDATE outbox SET sent_at = ? WHERE seq = ?");
    this.purge = db.prepare<[number]>("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?");
    this.countUnsent = db.prepare<[], { n: number; oldest: number | null }>(
      "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE sent_at IS NULL",
    );
    opts.outbox.onAdded = () => this.kick();
    opts.telemetry?.metrics.trackBacklog(() => this.backlog());
  }

  /** Publishes what is pending now and starts the sweep timer. */
  start(): void {
    this.kick();
    this.schedule(this.opts.sweepMs ?? 1_000);
  }

  /** Events committed but not yet published, and the age of the oldest in ms. */
  backlog(now = Date.now()): { count: number; oldestAgeMs: number } {
    const r = this.countUnsent.get() ?? { n: 0, oldest: null };
    return { count: r.n, oldestAgeMs: r.oldest === null ? 0 : now - r.oldest };
  }

  /** Publishes now (or again right after the publish in progress). */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    this.idle = this.drain().finally(() => {
      this.running = false;
    });
  }

  /** Stops publishing; rows left unsent are published by the next start. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.idle;
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.kick();
      this.purge.run(Date.now() - KEEP_SENT_MS);
      this.schedule(this.opts.sweepMs ?? 1_000);
    }, ms);
    this.timer.unref();
  }

  private async drain(): Promise<void> {
    const { log } = this.opts;
    try {
      do {
        this.again = false;
        const rows = this.unsent.all(RELAY_BATCH);
        for (const row of rows) {
          if (this.stopped) return;
          await this.publish(row);
          this.markSent.run(Date.now(), row.seq);
        }
        if (rows.length === RELAY_BATCH) this.again = true;
      } while (this.again && !this.stopped);
      if (this.failures > 0) log.info({ afterFailures: this.failures }, "outbox relay publishing again");
      this.failures = 0;
    } catch (err) {
      this.failures++;
      const delay = backoffMs(this.failures + 1, 100, 5_000);
      if (this.failures === 1 || this.failures % 10 === 0) {
        log.warn(
          { err: (err as Error).message, failures: this.failures, retryInMs: delay },
          "outbox publish failed; will retry",
        );
      }
      this.schedule(delay);
    }
  }

  /** Publishes one row with its CloudEvents headers, in a span continuing the trace that wrote it. */
  private async publish(row: OutboxRow): Promise<void> {
    const { bus, log, source } = this.opts;
    if (this.opts.crashBeforePublish) {
      log.warn({ eventId: row.event_id }, "fault injection: crashing before publish");
      process.kill(process.pid, "SIGKILL");
    }
    const h = natsHeaders();
    h.set("ce-specversion", "1.0");
    h.set("ce-id", row.event_id);
    h.set("ce-type", row.type);
    h.set("ce-source", source);
    h.set("ce-time", new Date(row.created_at).toISOString());
    h.set("content-type", "application/protobuf");
    const send = () => bus.js.publish(row.subject, row.payload, { msgID: row.event_id, headers: h, timeout: 2_000 });
    const tel = this.opts.telemetry;
    if (!tel) {
      if (row.traceparent) h.set("traceparent", row.traceparent);
      await send();
      return;
    }
    // A child of the request that wrote the event: consumers continue the same trace.
    await inSpan(
      tel.tracer,
      `publish ${row.type}`,
      {
        kind: SpanKind.PRODUCER,
        parent: contextOf(row.traceparent),
        attributes: { "messaging.destination.name": row.subject },
      },
      async () => {
        injectContext(h);
        await send();
      },
    );
    tel.metrics.eventsPublished.inc({ type: row.type });
    tel.metrics.relayLag.observe((Date.now() - row.created_at) / 1000);
  }
}
