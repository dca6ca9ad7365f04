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
import type { EventCatalogue } from "./catalogue.js";
import { newId } from "./ids.js";
import { currentTraceparent } from "./propagation.js";
import type { Tx } from "./sql.js";

/** The outbox table; append it to a service's migrations, then {@link OUTBOX_CLAIMS_MIGRATION}. */
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

type EventInit<D extends DescMessage> = Omit<MessageInitShape<D>, "meta" | "$typeName">;

/** An outbox row as a relay publishes it. */
export interface OutboxRow {
  seq: number;
  event_id: string;
  order_id: string;
  type: string;
  subject: string;
  payload: Buffer;
  traceparent: string;
  created_at: number;
}

/**
 * The relay of this process (relay.ts), when one is running: the rows added through the outbox are
 * claimed for it in their insert, and handed to it once their transaction has committed, so it
 * publishes them without reading them back or claiming them in a transaction of its own.
 */
export interface LocalRelay {
  readonly id: string;
  /** How long the claim taken at insert holds, ms. */
  readonly claimMs: number;
  /** `row`, claimed for this relay, has committed (called in commit order). */
  committed(row: OutboxRow): void;
}

/**
 * Writes events into the outbox table of a service's database. Call
 * {@link Outbox.add} with the transaction of the state change the event
 * records: both commit or neither does.
 */
export class Outbox {
  /** Set by the relay of this process while it runs. */
  relay: LocalRelay | undefined;

  constructor(
    private readonly source: string,
    private readonly catalogue: EventCatalogue,
    private readonly clock: () => number = Date.now,
  ) {}

  /** Adds an event of `schema` about `orderId` in `tx`; fills its `meta`. Returns the event id. */
  async add<D extends DescMessage>(
    tx: Tx,
    schema: D,
    orderId: string,
    init: EventInit<D>,
    traceparent: string = currentTraceparent(),
  ): Promise<string> {
    const kind = this.catalogue.kind(schema.typeName);
    if (!kind) throw new Error(`${schema.typeName} is not an event of the catalogue`);
    const now = this.clock();
    const eventId = newId("evt", now);
    const meta = { eventId, source: this.source, occurredAt: timestampFromMs(now), orderId, traceparent };
    const payload = Buffer.from(toBinary(schema, create(schema, { ...init, meta } as unknown as MessageInitShape<D>)));
    const relay = this.relay;
    if (!relay) {
      await tx.run(sql`INSERT INTO outbox (event_id, type, subject, payload, order_id, traceparent, created_at)
        VALUES (${eventId}, ${kind.typeName}, ${kind.subject}, ${payload}, ${orderId}, ${traceparent}, ${now})`);
      return eventId;
    }
    // Claimed by the local relay from the start (and by the clock the relay's claims use): if this
    // process dies before publishing it, the claim expires and any relay takes the row.
    const claimedUntil = Date.now() + relay.claimMs;
    const inserted = await tx.one(sql<{ seq: number }>`INSERT INTO outbox
        (event_id, type, subject, payload, order_id, traceparent, created_at, claimed_by, claimed_until)
      VALUES (${eventId}, ${kind.typeName}, ${kind.subject}, ${payload}, ${orderId}, ${traceparent}, ${now},
        ${relay.id}, ${claimedUntil})
      RETURNING seq`);
    const row: OutboxRow = {
      seq: Number(inserted?.seq),
      event_id: eventId,
      order_id: orderId,
      type: kind.typeName,
      subject: kind.subject,
      payload,
      traceparent,
      created_at: now,
    };
    tx.afterCommit(() => relay.committed(row));
    return eventId;
  }
}
