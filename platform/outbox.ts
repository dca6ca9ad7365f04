/**
 * The transactional outbox: events are written into the service's own
 * database in the same transaction as the state change they record, and a
 * relay (relay.ts) publishes them to JetStream afterwards — promptly after
 * each commit, and by a periodic sweep after a crash or an outage. Nothing
 * committed is lost: a row stays until JetStream has acknowledged it.
 *
 * On the wire (CloudEvents NATS binding, binary mode): the payload is the
 * protobuf encoding; headers carry `ce-specversion`, `ce-id`, `ce-type` (the
 * protobuf type name), `ce-source`, `ce-time`, `content-type`,
 * `traceparent`, and `Nats-Msg-Id` = event id, so JetStream drops a
 * republished duplicate within the stream's duplicate window.
 */
import { create, type DescMessage, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { sql } from "kysely";
import type { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { type EventCatalogue, eventSubject } from "./catalogue.js";
import { newId } from "./ids.js";
import { currentTraceparent } from "./propagation.js";
import type { Db, Tx } from "./sql.js";

/** The outbox table; append it to a service's migrations, then {@link OUTBOX_CLAIMS_MIGRATION} and {@link OUTBOX_INDEXES_MIGRATION}. */
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

/**
 * Claims on outbox rows: a relay claims rows (`claimed_by` until
 * `claimed_until`) before it publishes them, so the relays of several
 * replicas never publish one row twice; the claim of a relay that died
 * expires and another relay takes the row.
 */
export const OUTBOX_CLAIMS_MIGRATION =
  "ALTER TABLE outbox ADD COLUMN claimed_by TEXT; ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;";

/**
 * The relay's two lookups that would otherwise read the whole table, sent rows included (kept an
 * hour): an order's earlier unsent row (so no event overtakes one another relay holds), and the
 * sent rows to purge, every second.
 */
export const OUTBOX_INDEXES_MIGRATION = `CREATE INDEX outbox_order_unsent ON outbox (order_id, seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;`;

/**
 * Throws, naming the migration, when the database has no outbox with the relay's claim columns:
 * without them the service started and served, and its relay failed every publish with a warning.
 */
export async function checkOutboxTable(db: Db, service: string): Promise<void> {
  try {
    await db.one(sql`SELECT seq, claimed_by, claimed_until FROM outbox WHERE 1 = 0`);
  } catch (err) {
    throw new Error(
      `${service}: its database has no outbox table with claim columns (add OUTBOX_MIGRATION, then OUTBOX_CLAIMS_MIGRATION, to the service's migrations): ${(err as Error).message}`,
    );
  }
}

type EventInit<D extends DescMessage> = Omit<MessageInitShape<D>, "meta" | "$typeName">;

/**
 * Writes events into the outbox table of a service's database. Call
 * {@link Outbox.add} with the transaction of the state change the event
 * records: both commit or neither does.
 */
export class Outbox {
  /** Called once a transaction that added events has committed. */
  onAdded: () => void = () => {};
  /** The highest seq this process has seen committed and on disk (a relay flushes before publishing one above it). */
  durableSeq = 0;

  constructor(
    private readonly source: string,
    private readonly catalogue: EventCatalogue,
    private readonly clock: () => number = Date.now,
  ) {}

  /**
   * Adds an event of `schema` about the order `about` names, driven in its saga mode, in `tx` (a
   * durable one); fills its `meta`. Returns the event id. An event no saga waits for says
   * `SagaMode.UNSPECIFIED` (its subject ends in `none`, and no consumer of one mode is sent it), and
   * one about no order `NO_ORDER` (catalogue.ts). The relay publishes one order's events in the order they were
   * added, and those about no order likewise among themselves.
   */
  async add<D extends DescMessage>(
    tx: Tx,
    schema: D,
    about: { readonly orderId: string; readonly sagaMode: SagaMode },
    init: EventInit<D>,
    traceparent: string = currentTraceparent(),
  ): Promise<string> {
    const kind = this.catalogue.kind(schema.typeName);
    if (!kind) throw new Error(`${schema.typeName} is not an event of the catalogue`);
    const { orderId, sagaMode } = about;
    const subject = eventSubject(kind, sagaMode);
    const now = this.clock();
    const eventId = newId("evt", now);
    const meta = { eventId, source: this.source, occurredAt: timestampFromMs(now), orderId, traceparent, sagaMode };
    const payload = Buffer.from(toBinary(schema, create(schema, { ...init, meta } as unknown as MessageInitShape<D>)));
    const row = await tx.one(sql<{ seq: number }>`INSERT INTO outbox
        (event_id, type, subject, payload, order_id, traceparent, created_at)
      VALUES (${eventId}, ${kind.typeName}, ${subject}, ${payload}, ${orderId}, ${traceparent}, ${now})
      RETURNING seq`);
    const seq = row?.seq ?? 0;
    tx.afterCommit(() => {
      this.durableSeq = Math.max(this.durableSeq, seq);
      this.onAdded();
    });
    return eventId;
  }
}
