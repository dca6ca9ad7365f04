/** A service's event machinery in one piece: the bus, its outbox relay and its consumers. */

import { sql } from "kysely";
import { type Bus, type BusAuth, connectBus } from "./bus.js";
import { durableOf } from "./bus-access.js";
import { type EventCatalogue, ownKinds } from "./catalogue.js";
import type { FaultInjector } from "./chaos.js";
import { type RunningConsumer, startConsumer } from "./consumer.js";
import type { ConsumerSpec } from "./consumer-spec.js";
import { lettersWaiting } from "./dead-letters-waiting.js";
import { watchDropped } from "./dropped-unread.js";
import type { Logger } from "./log.js";
import { checkOutboxTable, type Outbox } from "./outbox.js";
import { OutboxRelay } from "./relay.js";
import { readWithin } from "./scrape-read.js";
import type { Db } from "./sql.js";
import type { Telemetry } from "./telemetry.js";

/** Options of {@link startEventing}. */
export interface EventingOptions {
  /** NATS URL(s), comma separated; "off" runs without a bus (events wait in the outbox). */
  readonly url: string;
  /** Replicas of the streams created (1 locally, 3 on a cluster). */
  readonly replicas?: number;
  /** The service's NATS user (none: anonymous). */
  readonly auth?: BusAuth;
  /** Service name: the events' `source` and the NATS connection name. */
  readonly service: string;
  /** The events on the bus: which streams to create, how to decode what arrives. */
  readonly catalogue: EventCatalogue;
  readonly db: Db;
  readonly log: Logger;
  /** The service's outbox, if it publishes. */
  readonly outbox?: Outbox;
  /** The service's consumers, if it consumes. */
  readonly consumers?: readonly ConsumerSpec[];
  /** No other process writes `db`: the relay adopts every outbox claim at start (see RelayOptions). */
  readonly soleWriter?: boolean;
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

/** Connects a service to the bus: creates the catalogue's streams, starts its outbox relay and its consumers. */
export async function startEventing(opts: EventingOptions): Promise<Eventing> {
  if (opts.outbox) await checkOutboxTable(opts.db, opts.service);
  await checkHandedOver(opts);
  checkConsumers(opts.service, opts.catalogue, opts.consumers ?? []);
  if (opts.url === "off") {
    opts.log.warn("NATS_URL=off: running without the event bus; events wait in the outbox");
    return { bus: undefined, relay: undefined, stop: async () => {} };
  }
  const bus = await connectBus(opts.url, opts.service, opts.log, {
    streams: opts.catalogue.streams,
    replicas: opts.replicas ?? 1,
    ...(opts.auth ? { auth: opts.auth } : {}),
  });
  const telemetry = opts.telemetry ? { telemetry: opts.telemetry } : {};
  const relay = opts.outbox
    ? new OutboxRelay({
        db: opts.db,
        outbox: opts.outbox,
        bus,
        source: opts.service,
        log: opts.log,
        crashBeforePublish: opts.crashBeforePublish ?? false,
        adoptClaims: opts.soleWriter ?? false,
        ...telemetry,
      })
    : undefined;
  if (relay) opts.telemetry?.metrics.trackPublished(ownKinds(opts.catalogue, opts.service).map((k) => k.typeName));
  relay?.start();
  const consumers: RunningConsumer[] = [];
  for (const c of opts.consumers ?? []) {
    // Counted from 0, not from the first letter: increase() sees that one too (ShopmeshDeadLetters).
    opts.telemetry?.metrics.trackConsumer(
      c.durable,
      c.handlers.map(([type]) => type),
    );
    const dropped = watchDropped({
      bus,
      stream: c.stream,
      durable: c.durable,
      log: opts.log,
      count: (n) => opts.telemetry?.metrics.eventsDroppedUnread.inc({ consumer: c.durable }, n),
    });
    // Before it pulls: the first pull moves the durable past what the stream dropped, out of sight.
    await dropped();
    consumers.push(
      await startConsumer({
        ...c,
        bus,
        db: opts.db,
        log: opts.log,
        catalogue: opts.catalogue,
        crashAfterCommit: opts.crashAfterCommit ?? false,
        ...(opts.faults ? { faults: opts.faults } : {}),
        ...telemetry,
      }),
    );
    opts.telemetry?.metrics.trackPending(c.durable, () => pendingOf(bus, c.stream, c.durable));
    opts.telemetry?.metrics.trackDropped(c.durable, dropped);
    opts.telemetry?.metrics.trackLettersWaiting(c.durable, lettersWaiting(bus, c.durable));
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

/**
 * What `durable` has yet to acknowledge (JetStream's num_pending + num_ack_pending), or undefined when
 * NATS does not say within a second (scrape-read.ts).
 */
async function pendingOf(bus: Bus, stream: string, durable: string): Promise<number | undefined> {
  const info = await readWithin(bus.jsm.consumers.info(stream, durable));
  return info && info.num_pending + info.num_ack_pending;
}

/**
 * Refuses, before anything starts, a consumer the bus would never feed as declared: one named otherwise
 * than `<service>-<stream>` (the bus lets a service's user consume, acknowledge and dead-letter only as
 * that, bus-access.ts), and a handler of a type that is not its stream's — put on another stream's
 * consumer, or of a type missing from the catalogue, it was never called, and nothing said so.
 */
function checkConsumers(service: string, catalogue: EventCatalogue, consumers: readonly ConsumerSpec[]): void {
  for (const c of consumers) {
    if (c.durable !== durableOf(service, c.stream)) {
      throw new Error(
        `${service}'s consumer on ${c.stream} is named ${durableOf(service, c.stream)}, not ${c.durable}`,
      );
    }
    for (const [type] of c.handlers) {
      const stream = catalogue.kind(type)?.stream;
      if (stream === undefined) {
        throw new Error(`${c.durable} handles ${type}, which is no event of the catalogue (contracts/events.ts)`);
      }
      if (stream !== c.stream)
        throw new Error(`${c.durable} handles ${type}, an event of ${stream}, not of ${c.stream}`);
    }
  }
}

/**
 * Refuses a service whose database has an outbox or an inbox that it does not hand over (its outbox, its
 * consumers): left out of its startHost, it served, and its events stayed in the outbox, or none was
 * consumed, and nothing said so.
 */
async function checkHandedOver(opts: EventingOptions): Promise<void> {
  if (!opts.outbox && (await hasTable(opts.db, "outbox"))) {
    throw new Error(
      `${opts.service}: its database has an outbox, and nothing would publish it: hand startHost the store's outbox (outbox: store.outbox)`,
    );
  }
  if (!opts.consumers?.length && (await hasTable(opts.db, "inbox"))) {
    throw new Error(
      `${opts.service}: its database has an inbox, and no consumer would fill it: hand startHost the service's consumers`,
    );
  }
}

/**
 * Whether `db` (its schema, on PostgreSQL) has table `name`, read from the catalogue: a statement on a
 * missing table, though caught, is an ERROR line in PostgreSQL's log (notification's and history's, at
 * every start). A database that cannot answer now is not refused for it: its store opened a moment ago.
 */
function hasTable(db: Db, name: string): Promise<boolean> {
  const query =
    db.engine === "postgres"
      ? sql`SELECT 1 AS present FROM pg_tables WHERE schemaname = current_schema() AND tablename = ${name}`
      : sql`SELECT 1 AS present FROM sqlite_master WHERE type = 'table' AND name = ${name}`;
  return db.one(query).then(
    (row) => row !== undefined,
    () => false,
  );
}
