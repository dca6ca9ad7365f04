/**
 * The event bus on NATS JetStream: one stream per bounded context plus a
 * dead-letter stream, a transactional outbox with a prompt relay, and
 * idempotent consumers (inbox) that dead-letter what they cannot handle.
 *
 * Events are the protobuf messages of `proto/shopmesh/<context>/v1/events.proto`.
 * On the wire (CloudEvents NATS binding, binary mode): the payload is the
 * protobuf encoding; headers carry `ce-specversion`, `ce-id`, `ce-type` (the
 * protobuf type name), `ce-source`, `ce-time`, `content-type`,
 * `traceparent`, and `Nats-Msg-Id` = event id so JetStream drops a
 * republished duplicate within the stream's duplicate window. Consumers
 * deduplicate again by event id in their own database (the inbox), forever.
 */
import {
  create,
  createRegistry,
  type DescMessage,
  fromBinary,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import { connect, type NatsConnection, headers as natsHeaders } from "@nats-io/transport-node";
import { SpanKind } from "@opentelemetry/api";
import {
  StockRejectedSchema,
  StockReleasedSchema,
  StockReservedSchema,
} from "../gen/shopmesh/inventory/v1/events_pb.js";
import { OrderCancelledSchema, OrderConfirmedSchema, OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import {
  PaymentFailedSchema,
  PaymentRefundedSchema,
  PaymentSucceededSchema,
} from "../gen/shopmesh/payment/v1/events_pb.js";
import type { FaultInjector } from "./chaos.js";
import type { Db } from "./db.js";
import type { Logger } from "./log.js";
import { contextOf, currentTraceparent, extractContext, injectContext, inSpan, type Telemetry } from "./telemetry.js";
import { newId } from "./validate.js";

/** Event types and their subjects (`<context>.<aggregate>.<what happened>`). */
export const EVENT_SUBJECTS = {
  "shopmesh.order.v1.OrderPlaced": "order.order.placed",
  "shopmesh.order.v1.OrderConfirmed": "order.order.confirmed",
  "shopmesh.order.v1.OrderCancelled": "order.order.cancelled",
  "shopmesh.inventory.v1.StockReserved": "inventory.stock.reserved",
  "shopmesh.inventory.v1.StockRejected": "inventory.stock.rejected",
  "shopmesh.inventory.v1.StockReleased": "inventory.stock.released",
  "shopmesh.payment.v1.PaymentSucceeded": "payment.payment.succeeded",
  "shopmesh.payment.v1.PaymentFailed": "payment.payment.failed",
  "shopmesh.payment.v1.PaymentRefunded": "payment.payment.refunded",
} as const;

/** Every event schema, for decoding by type name. */
export const EVENT_REGISTRY = createRegistry(
  OrderPlacedSchema,
  OrderConfirmedSchema,
  OrderCancelledSchema,
  StockReservedSchema,
  StockRejectedSchema,
  StockReleasedSchema,
  PaymentSucceededSchema,
  PaymentFailedSchema,
  PaymentRefundedSchema,
);

/** A protobuf event type name known to the bus. */
export type EventType = keyof typeof EVENT_SUBJECTS;

/** Streams, one per bounded context, and the dead-letter stream. */
export const STREAMS = [
  { name: "ORDER", subjects: ["order.>"] },
  { name: "INVENTORY", subjects: ["inventory.>"] },
  { name: "PAYMENT", subjects: ["payment.>"] },
  { name: "DLQ", subjects: ["dlq.>"] },
] as const;

/** A stream name. */
export type StreamName = (typeof STREAMS)[number]["name"];

const DAY_NS = 24 * 60 * 60 * 1e9;
/**
 * Stream settings: file storage (survives a server restart), limits
 * retention (events stay for replay, e.g. to rebuild a read model) for 7
 * days, and a 2-minute duplicate window — longer than any outbox retry
 * burst; the consumers' inboxes dedupe beyond it.
 */
const STREAM_DEFAULTS = {
  storage: StorageType.File,
  retention: RetentionPolicy.Limits,
  max_age: 7 * DAY_NS,
  duplicate_window: 2 * 60 * 1e9,
  num_replicas: 1,
};

/** A NATS connection with JetStream handles. */
export interface Bus {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  close(): Promise<void>;
}

/**
 * Connects to NATS (reconnecting forever, logging state changes) and creates
 * or updates every stream. `replicas` is 1 locally, 3 on a cluster.
 */
export async function connectBus(url: string, name: string, log: Logger, replicas = 1): Promise<Bus> {
  const nc = await connect({
    servers: url.split(","),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
  });
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect") log.warn({ nats: s.type }, `NATS ${s.type}`);
    }
  })();
  const jsm = await jetstreamManager(nc);
  for (const s of STREAMS) {
    const config = { ...STREAM_DEFAULTS, num_replicas: replicas, name: s.name, subjects: [...s.subjects] };
    const existing = await jsm.streams.info(s.name).catch(() => undefined);
    if (!existing) {
      await jsm.streams.add(config);
    } else {
      // Never lower replication: a tool or an older pod started with the default must not shrink R3 to R1.
      await jsm.streams.update(s.name, { ...config, num_replicas: Math.max(replicas, existing.config.num_replicas) });
    }
  }
  log.info({ url, streams: STREAMS.map((s) => s.name) }, "connected to NATS JetStream");
  return { nc, js: jetstream(nc), jsm, close: () => nc.drain() };
}

// ---------------------------------------------------------------------------
// Outbox

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
    const type = schema.typeName as EventType;
    const subject = EVENT_SUBJECTS[type];
    if (!subject) throw new Error(`${type} is not a registered event type`);
    const now = this.clock();
    const eventId = newId("evt", now);
    const meta = { eventId, source: this.source, occurredAt: timestampFromMs(now), orderId, traceparent };
    const msg = create(schema, { ...init, meta } as unknown as MessageInitShape<D>);
    this.insert.run({ eventId, type, subject, payload: toBinary(schema, msg), orderId, traceparent, now });
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
 * after each commit and by periodic sweep (after a crash or an outage), then
 * marks them sent. Publishing is sequential, so events of one aggregate keep
 * their order. A failure (NATS down) is retried with capped backoff; nothing
 * is lost because the rows stay until acknowledged by JetStream.
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
      this.purge.run(Date.now() - 60 * 60 * 1000);
      this.schedule(this.opts.sweepMs ?? 1_000);
    }, ms);
    this.timer.unref();
  }

  private async drain(): Promise<void> {
    const { bus, log, source } = this.opts;
    try {
      do {
        this.again = false;
        const rows = this.unsent.all(256);
        for (const row of rows) {
          if (this.stopped) return;
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
          const publish = () =>
            bus.js.publish(row.subject, row.payload, { msgID: row.event_id, headers: h, timeout: 2_000 });
          const tel = this.opts.telemetry;
          if (tel) {
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
                await publish();
              },
            );
            tel.metrics.eventsPublished.inc({ type: row.type });
            tel.metrics.relayLag.observe((Date.now() - row.created_at) / 1000);
          } else {
            if (row.traceparent) h.set("traceparent", row.traceparent);
            await publish();
          }
          this.markSent.run(Date.now(), row.seq);
        }
        if (rows.length === 256) this.again = true;
      } while (this.again && !this.stopped);
      if (this.failures > 0) log.info({ afterFailures: this.failures }, "outbox relay publishing again");
      this.failures = 0;
    } catch (err) {
      this.failures++;
      const delay = Math.min(5_000, 100 * 2 ** Math.min(this.failures, 6));
      if (this.failures === 1 || this.failures % 10 === 0) {
        log.warn(
          { err: (err as Error).message, failures: this.failures, retryInMs: delay },
          "outbox publish failed; will retry",
        );
      }
      this.schedule(delay);
    }
  }
}

// ---------------------------------------------------------------------------
// Consumers with an inbox

/** SQL of the inbox table; append it to a consumer service's migrations. */
export const INBOX_MIGRATION = `CREATE TABLE inbox (
  consumer   TEXT NOT NULL,
  event_id   TEXT NOT NULL,
  type       TEXT NOT NULL,
  handled_at INTEGER NOT NULL,
  PRIMARY KEY (consumer, event_id)
) STRICT;`;

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
  readonly type: EventType;
  readonly subject: string;
  /** 1 on first delivery. */
  readonly deliveryCount: number;
  readonly traceparent: string;
}

/**
 * Handlers by event type. A handler runs inside the consumer's SQLite
 * transaction together with the inbox insert, so it must be synchronous and
 * only touch that database (and its outbox). Throwing rolls everything back
 * and the event is redelivered later.
 */
export type EventHandlers = Partial<Record<EventType, (event: never, ctx: EventContext) => void>>;

/** Typed handler helper: `on(OrderPlacedSchema, (e) => ...)`. */
export function on<D extends DescMessage>(
  schema: D,
  fn: (event: import("@bufbuild/protobuf").MessageShape<D>, ctx: EventContext) => void,
): [EventType, (event: never, ctx: EventContext) => void] {
  return [schema.typeName as EventType, fn as (event: never, ctx: EventContext) => void];
}

/** A message's headers as a trace-context carrier. */
function headerCarrier(m: JsMsg) {
  return { get: (k: string) => m.headers?.get(k), set: () => {} };
}

/** Options of {@link startConsumer}. */
export interface ConsumerOptions {
  readonly bus: Bus;
  readonly db: Db;
  readonly log: Logger;
  readonly stream: StreamName;
  /** Durable consumer name, unique per service and stream, e.g. "notification-order". */
  readonly durable: string;
  readonly handlers: ReadonlyArray<[EventType, (event: never, ctx: EventContext) => void]>;
  /** Deliveries before a failing event goes to the dead-letter stream (default 10). */
  readonly maxDeliver?: number;
  /** Chaos hook: SIGKILL the process after committing an event, before acking it. */
  readonly crashAfterCommit?: boolean;
  /** Fault injection (latency, down, error rate) applied before each event. */
  readonly faults?: FaultInjector;
  /** Consumer spans and metrics. */
  readonly telemetry?: Telemetry;
  /** Called after each event is handled (or skipped as a duplicate). */
  readonly onHandled?: (type: EventType, duplicate: boolean) => void;
  /** Called when an event is dead-lettered. */
  readonly onDeadLetter?: (reason: string) => void;
}

/** A running consumer. */
export interface RunningConsumer {
  stop(): Promise<void>;
}

/**
 * Consumes `stream` with a durable pull consumer (explicit ack), one event
 * at a time in stream order. Each event's handler and its inbox row commit
 * in one transaction, so a redelivered or republished event has exactly one
 * effect. A failing event is retried with backoff (nak with delay) and,
 * after `maxDeliver` deliveries, moved to the DLQ stream with the reason; an
 * undecodable one goes there at once. Either way the consumer keeps going.
 */
export async function startConsumer(opts: ConsumerOptions): Promise<RunningConsumer> {
  const { bus, db, log, durable } = opts;
  // ~20 s of backoff in all: long enough for a cross-stream dependency to arrive, short enough to surface poison.
  const maxDeliver = opts.maxDeliver ?? 10;
  const handlers = new Map(opts.handlers);
  const seen = db.prepare<[string, string], { one: number }>(
    "SELECT 1 AS one FROM inbox WHERE consumer = ? AND event_id = ?",
  );
  const remember = db.prepare<[string, string, string, number]>(
    "INSERT INTO inbox (consumer, event_id, type, handled_at) VALUES (?, ?, ?, ?)",
  );
  const clog = log.child({ consumer: durable });
  const metrics = opts.telemetry?.metrics;
  /** Deliveries per stream sequence that fault injection skipped. */
  const skipped = new Map<number, number>();

  const config = {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: 30 * 1e9,
    max_deliver: -1, // we count deliveries ourselves and dead-letter, so the server never drops silently
  };
  try {
    await bus.jsm.consumers.info(opts.stream, durable);
  } catch {
    await bus.jsm.consumers.add(opts.stream, config);
  }
  const consumer = await bus.js.consumers.get(opts.stream, durable);

  const deadLetter = async (m: JsMsg, reason: string) => {
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
    clog.warn({ subject: m.subject, seq: m.seq, reason }, "event dead-lettered");
    opts.onDeadLetter?.(reason);
    metrics?.deadLetters.inc({ consumer: durable });
  };

  const handle = async (m: JsMsg) => {
    const type = m.headers?.get("ce-type") as EventType | undefined;
    const eventId = m.headers?.get("ce-id") ?? "";
    if (!type || !eventId || !EVENT_SUBJECTS[type]) {
      await deadLetter(
        m,
        `not a shopmesh event: missing or unknown ce-type/ce-id (ce-type=${JSON.stringify(type ?? "")})`,
      );
      return;
    }
    const fn = handlers.get(type);
    if (!fn) {
      m.ack(); // this service does not care about this type
      metrics?.eventsHandled.inc({ consumer: durable, type, outcome: "ignored" });
      return;
    }
    if (m.info.deliveryCount > 1) metrics?.redeliveries.inc({ consumer: durable });
    if (opts.faults && (await opts.faults.beforeEvent()) === "skip") {
      // An injected outage is not the event's fault: it never counts toward the DLQ.
      skipped.set(m.seq, (skipped.get(m.seq) ?? 0) + 1);
      m.nak(500);
      return;
    }
    const schema = EVENT_REGISTRY.getMessage(type);
    let event: unknown;
    try {
      event = fromBinary(schema as DescMessage, m.data);
    } catch (err) {
      await deadLetter(m, `undecodable ${type} payload: ${(err as Error).message}`);
      return;
    }
    const ctx: EventContext = {
      eventId,
      type,
      subject: m.subject,
      deliveryCount: m.info.deliveryCount,
      traceparent: m.headers?.get("traceparent") ?? "",
    };
    let duplicate = false;
    const apply = () =>
      db
        .transaction(() => {
          if (seen.get(durable, eventId)) {
            duplicate = true;
            return;
          }
          fn(event as never, ctx);
          remember.run(durable, eventId, type, Date.now());
        })
        .immediate();
    try {
      const tel = opts.telemetry;
      if (tel) {
        // The handler runs inside a span continuing the producer's trace, so the
        // events it writes to its own outbox carry the same trace on.
        await inSpan(
          tel.tracer,
          `process ${type}`,
          {
            kind: SpanKind.CONSUMER,
            parent: extractContext(headerCarrier(m)),
            attributes: { "messaging.consumer.group.name": durable },
          },
          async (span) => {
            const orderId = (event as { meta?: { orderId?: string } }).meta?.orderId;
            if (orderId) span.setAttribute("order.id", orderId);
            apply();
            clog.debug({ type, eventId, duplicate }, "event handled");
          },
        );
        const at = Date.parse(m.headers?.get("ce-time") ?? "");
        if (Number.isFinite(at)) tel.metrics.eventLag.observe({ consumer: durable }, (Date.now() - at) / 1000);
      } else {
        apply();
      }
    } catch (err) {
      metrics?.eventsHandled.inc({ consumer: durable, type, outcome: "failed" });
      if (err instanceof UnprocessableEventError) {
        skipped.delete(m.seq);
        await deadLetter(m, `unprocessable: ${err.message}`);
      } else if (m.info.deliveryCount - (skipped.get(m.seq) ?? 0) >= maxDeliver) {
        skipped.delete(m.seq);
        await deadLetter(m, `handler failed ${m.info.deliveryCount} times: ${(err as Error).message}`);
      } else {
        const delay = Math.min(5_000, 100 * 2 ** (m.info.deliveryCount - 1));
        clog.info(
          { type, eventId, delivery: m.info.deliveryCount, retryInMs: delay, err: (err as Error).message },
          "handler failed; will retry",
        );
        m.nak(delay);
      }
      return;
    }
    if (opts.crashAfterCommit && !duplicate) {
      clog.warn({ eventId }, "fault injection: crashing after commit, before ack");
      process.kill(process.pid, "SIGKILL");
    }
    m.ack();
    skipped.delete(m.seq);
    metrics?.eventsHandled.inc({ consumer: durable, type, outcome: duplicate ? "duplicate" : "handled" });
    opts.onHandled?.(type, duplicate);
  };

  let stopped = false;
  const messages = await consumer.consume({ max_messages: 64 });
  const loop = (async () => {
    for await (const m of messages) {
      try {
        await handle(m);
      } catch (err) {
        // e.g. the DLQ publish failed because NATS is down: leave the event for redelivery.
        clog.warn({ err: (err as Error).message, seq: m.seq }, "event not settled; it will be redelivered");
        m.nak(1_000);
      }
      if (stopped) break;
    }
  })();
  clog.info({ stream: opts.stream }, "consuming");
  return {
    async stop() {
      stopped = true;
      await messages.close();
      await loop;
    },
  };
}

// ---------------------------------------------------------------------------
// Wiring

/** Options of {@link startEventing}. */
export interface EventingOptions {
  /** NATS URL(s), comma separated; "off" runs without a bus (events wait in the outbox). */
  readonly url: string;
  /** Replicas of the streams created (1 locally, 3 on a cluster). */
  readonly replicas?: number;
  /** Service name: the events' `source` and the NATS connection name. */
  readonly service: string;
  readonly db: Db;
  readonly log: Logger;
  /** The service's outbox, if it publishes. */
  readonly outbox?: Outbox;
  /** The service's consumers, if it consumes. */
  readonly consumers?: ReadonlyArray<Pick<ConsumerOptions, "stream" | "durable" | "handlers">>;
  /** Chaos hooks (see faultEnv). */
  readonly crashBeforePublish?: boolean;
  readonly crashAfterCommit?: boolean;
  /** The service's fault injector, applied to its event handling too. */
  readonly faults?: FaultInjector;
  /** Spans and metrics of publishing and consuming. */
  readonly telemetry?: Telemetry;
}

/** A service's running event machinery. */
export interface Eventing {
  readonly bus: Bus | undefined;
  readonly relay: OutboxRelay | undefined;
  /** Stops consumers, then the relay, then drains the connection. */
  stop(): Promise<void>;
}

/** Connects a service to the bus: starts its outbox relay and its consumers. */
export async function startEventing(opts: EventingOptions): Promise<Eventing> {
  if (opts.url === "off") {
    opts.log.warn("NATS_URL=off: running without the event bus; events wait in the outbox");
    return { bus: undefined, relay: undefined, stop: async () => {} };
  }
  const bus = await connectBus(opts.url, opts.service, opts.log, opts.replicas ?? 1);
  const relay = opts.outbox
    ? new OutboxRelay({
        db: opts.db,
        outbox: opts.outbox,
        bus,
        source: opts.service,
        log: opts.log,
        crashBeforePublish: opts.crashBeforePublish ?? false,
        ...(opts.telemetry ? { telemetry: opts.telemetry } : {}),
      })
    : undefined;
  relay?.start();
  const consumers: RunningConsumer[] = [];
  for (const c of opts.consumers ?? []) {
    consumers.push(
      await startConsumer({
        ...c,
        bus,
        db: opts.db,
        log: opts.log,
        crashAfterCommit: opts.crashAfterCommit ?? false,
        ...(opts.faults ? { faults: opts.faults } : {}),
        ...(opts.telemetry ? { telemetry: opts.telemetry } : {}),
      }),
    );
  }
  return {
    bus,
    relay,
    async stop() {
      for (const c of consumers) await c.stop();
      await relay?.stop();
      await bus.close();
    },
  };
}
