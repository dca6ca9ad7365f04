import { headers as natsHeaders } from "@nats-io/transport-node";
import { SpanKind } from "@opentelemetry/api";
import { sql } from "kysely";
import { backoffMs } from "./backoff.js";
import type { Bus } from "./bus.js";
import { isDatabaseUnavailable } from "./db-errors.js";
import { newId } from "./ids.js";
import { flushLogs, type Logger } from "./log.js";
import type { Outbox } from "./outbox.js";
import { contextOf, detached, injectContext, inSpan } from "./propagation.js";
import { sharedNow } from "./shared-clock.js";
import type { Db, Query } from "./sql.js";
import { isStoreFull } from "./store-full.js";
import { lagSeconds, type Telemetry } from "./telemetry.js";

/** Rows the relay reads per query. */
const RELAY_BATCH = 256;
/** Sent rows are purged after this long, ms. */
const KEEP_SENT_MS = 60 * 60 * 1000;

interface OutboxRow {
  seq: number;
  event_id: string;
  order_id: string;
  type: string;
  subject: string;
  payload: Buffer;
  traceparent: string;
  created_at: number;
}

/** Most rows in one wave. */
const WAVE = 64;

/**
 * The rows published together: consecutive rows of distinct orders, at most {@link WAVE} of them.
 * They go out in one write and their acknowledgements come back together, instead of one round
 * trip to JetStream per row; an order's next event waits for the wave before it, so however a
 * publish fails (a timeout, a reconnect that loses one message but not the next), the events of
 * one order are never stored out of order.
 */
function waveFrom(rows: readonly OutboxRow[], start: number): OutboxRow[] {
  const orders = new Set<string>();
  const wave: OutboxRow[] = [];
  for (let i = start; i < rows.length && wave.length < WAVE; i++) {
    const row = rows[i] as OutboxRow;
    if (orders.has(row.order_id)) break;
    orders.add(row.order_id);
    wave.push(row);
  }
  return wave;
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
  /**
   * How long a claim on rows holds before another relay may take them, ms:
   * longer than publishing a batch takes, and the most a crashed relay's
   * rows wait for another (default 5 s).
   */
  readonly claimMs?: number;
  /**
   * Takes back every claim at start: only when no other process can hold one (the order service on
   * SQLite, which adopts every saga there too; replicas of the others may share a SQLite file).
   */
  readonly adoptClaims?: boolean;
  /** Chaos hook: SIGKILL this process right before the first publish. */
  readonly crashBeforePublish?: boolean;
  /** Publish spans and outbox metrics. */
  readonly telemetry?: Telemetry;
}

/**
 * Publishes committed outbox rows to JetStream, promptly after each commit
 * and by periodic sweep, then marks them sent. Each batch is claimed first
 * (the relays of other replicas skip claimed rows) and published in commit
 * order, so events of one aggregate keep their order within a relay. A
 * failure (NATS down) is retried with capped backoff; the claim expires and
 * the rows are taken again.
 */
export class OutboxRelay {
  private readonly id = newId("relay");
  private readonly claimMs: number;
  private running = false;
  private again = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  /** The retry after a failure, while its backoff runs: a commit's kick waits for it. */
  private retry: NodeJS.Timeout | undefined;
  /** The housekeeping under way, if any. */
  private housekeeping: Promise<void> | undefined;
  private idle: Promise<void> = Promise.resolve();
  private lastBacklog = { count: 0, oldestAgeMs: 0 };

  constructor(private readonly opts: RelayOptions) {
    this.claimMs = opts.claimMs ?? 5_000;
    opts.outbox.onAdded = () => this.kick();
    opts.telemetry?.metrics.trackBacklog(() => this.lastBacklog);
  }

  /**
   * Publishes what is pending now and starts the sweep timer; with `adoptClaims`, first takes back
   * the claims a crashed process left, so their rows go out at start, not a claim's length later.
   */
  start(): void {
    const adopting = this.opts.adoptClaims
      ? this.relaxed(sql`UPDATE outbox SET claimed_until = NULL WHERE sent_at IS NULL AND claimed_until IS NOT NULL`)
      : Promise.resolve();
    this.idle = adopting
      .catch(() => {}) // the database is away: those claims just run out
      .then(() => {
        this.kick();
        this.schedule(this.opts.sweepMs ?? 1_000);
      });
  }

  /** Events committed but not yet published, and the age of the oldest in ms. */
  async backlog(now = Date.now()): Promise<{ count: number; oldestAgeMs: number }> {
    const r = await this.opts.db.one(
      sql<{
        n: number;
        oldest: number | null;
      }>`SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE sent_at IS NULL`,
    );
    this.lastBacklog = { count: r?.n ?? 0, oldestAgeMs: r?.oldest == null ? 0 : now - r.oldest };
    return this.lastBacklog;
  }

  /** Publishes now (or again right after the publish in progress). */
  kick(): void {
    if (this.stopped || this.retry) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    // Kicked after a request's commit, but relaying is the relay's work: each event's publish span
    // continues the trace stored with that event, and nothing else joins the request's.
    this.idle = detached(() => this.drain()).finally(() => {
      this.running = false;
    });
  }

  /** Stops publishing and lets go of its claims: rows left unsent are published by another replica's relay (or the next start). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.retry);
    await this.idle;
    await this.release();
  }

  /** Gives up this relay's claims on unsent rows, so any relay takes them at once. */
  private release(): Promise<unknown> {
    return this.relaxed(
      sql`UPDATE outbox SET claimed_until = NULL WHERE claimed_by = ${this.id} AND sent_at IS NULL`,
    ).catch(() => {});
  }

  /**
   * Runs a write of the relay's own bookkeeping (claims, sent marks, purges) without waiting for its
   * flush to disk: none of them promises anything to anyone. Lost in a power failure, a claim just
   * expires and a sent mark just means the event is published again, which JetStream's duplicate
   * window and the consumers' inboxes drop. Waiting for the flush put one more disk round in front
   * of every event's publish, and another after it.
   */
  private relaxed(q: Query<unknown>): Promise<number> {
    return this.opts.db.transaction((tx) => tx.run(q), { durable: false });
  }

  private schedule(ms: number): void {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.kick();
      // One at a time: with the database away each waited, and they piled up to run at once.
      this.housekeeping ??= this.keepHouse().finally(() => {
        this.housekeeping = undefined;
      });
      this.schedule(this.opts.sweepMs ?? 1_000);
    }, ms);
    this.timer.unref();
  }

  /** Purges long-sent rows and samples the backlog for the metrics. */
  private async keepHouse(): Promise<void> {
    try {
      await this.relaxed(sql`DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ${Date.now() - KEEP_SENT_MS}`);
      await this.backlog();
    } catch {
      // The database is away (a restart): the next sweep tries again.
    }
  }

  /**
   * Claims up to a batch of unsent, unclaimed rows for this relay; in commit order. A row whose order
   * has an earlier row unsent and outside the batch (another relay's, or a crashed one's until its
   * claim runs out) is left for later: published now, it would overtake that one. Such rows are
   * passed over before the batch is cut (else a held batch's orders filled it, and other orders'
   * rows waited behind them), and checked again after (a row another relay is claiming this moment,
   * skipped locked, is no claim yet).
   */
  private async claim(): Promise<OutboxRow[]> {
    const { db } = this.opts;
    // Claims are compared across replicas: in the database's clock (shared-clock.ts).
    const now = sharedNow(db.engine, Date.now());
    // Concurrent relays pass over each other's rows. The claim itself is not flushed (see relaxed).
    // The batch's size is written into the statement: bound as a parameter, SQLite's plan for it cost
    // 3–5 times as much (0.09 ms against 0.03 for one row; 0.77 against 0.16 before db.ts's
    // temp_store).
    const rows = await db.transaction(
      (tx) =>
        tx.all(sql<OutboxRow>`WITH batch AS (
          SELECT seq, order_id FROM outbox o
          WHERE sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < ${now})
            AND NOT EXISTS (SELECT 1 FROM outbox e WHERE e.order_id = o.order_id AND e.seq < o.seq
                            AND e.sent_at IS NULL AND e.claimed_until >= ${now})
          ORDER BY seq LIMIT ${sql.lit(RELAY_BATCH)} ${tx.skipLocked})
        UPDATE outbox SET claimed_by = ${this.id}, claimed_until = ${now} + ${this.claimMs}
        WHERE seq IN (SELECT b.seq FROM batch b WHERE NOT EXISTS (
          SELECT 1 FROM outbox e WHERE e.order_id = b.order_id AND e.seq < b.seq AND e.sent_at IS NULL
            AND e.seq NOT IN (SELECT seq FROM batch)))
        RETURNING seq, event_id, order_id, type, subject, payload, traceparent, created_at`),
      { durable: false },
    );
    // A row can be claimed between its commit and that commit's flush (another transaction's, or
    // another process's, still under way): published then, it would announce a change a power loss
    // can undo. Rows up to the last this process saw flushed are on disk (the log is sequential).
    if (rows.some((r) => r.seq > this.opts.outbox.durableSeq)) await db.durable();
    return rows.sort((a, b) => a.seq - b.seq);
  }

  private async drain(): Promise<void> {
    const { log } = this.opts;
    try {
      do {
        this.again = false;
        let claimedAt = Date.now();
        const rows = await this.claim();
        const batch = rows.map((r) => r.seq);
        // In order, a wave at a time; marked sent together, once per batch — also when a publish fails
        // or the relay stops midway. A crash before the mark republishes rows NATS already has: their
        // Nats-Msg-Id (and the consumers' inbox) makes that a no-op, as for one row before.
        const sent: number[] = [];
        try {
          for (let next = 0; next < rows.length; ) {
            if (this.stopped) return;
            // A batch outliving its claim (NATS slow to acknowledge) was taken by the other replicas'
            // relays, each of whose was taken in turn: nobody's mark held, and every row went out again and
            // again. The batch's rows only, those published but not yet marked too (a row let go of earlier
            // keeps this relay's name, and was held for good); a row another relay took meanwhile is its,
            // and so is the rest of the batch: this one stops.
            if (Date.now() - claimedAt > this.claimMs / 2) {
              claimedAt = Date.now();
              const at = sharedNow(this.opts.db.engine, claimedAt);
              const kept = await this.relaxed(sql`UPDATE outbox SET claimed_until = ${at} + ${this.claimMs}
                WHERE seq IN (${sql.join(batch)}) AND claimed_by = ${this.id} AND sent_at IS NULL`);
              if (kept < batch.length) break;
            }
            const wave = waveFrom(rows, next);
            next += wave.length;
            const results = await Promise.allSettled(wave.map((row) => this.publish(row)));
            for (const [i, r] of results.entries()) if (r.status === "fulfilled") sent.push((wave[i] as OutboxRow).seq);
            const failed = results.find((r) => r.status === "rejected");
            if (failed) throw failed.reason;
          }
        } finally {
          if (sent.length > 0) {
            await this.relaxed(
              // Whoever holds their claim now: JetStream has them, and a mark only for its own rows left a
              // batch another relay took meanwhile unmarked (and that relay's, if taken too: none drained).
              sql`UPDATE outbox SET sent_at = ${Date.now()} WHERE seq IN (${sql.join(sent)}) AND sent_at IS NULL`,
            );
          }
        }
        if (rows.length === RELAY_BATCH) this.again = true;
      } while (this.again && !this.stopped);
      if (this.failures > 0) log.info({ afterFailures: this.failures }, "outbox relay publishing again");
      this.failures = 0;
    } catch (err) {
      this.failures++;
      const delay = backoffMs(this.failures + 1, 100, 5_000);
      if (this.failures === 1 || this.failures % 10 === 0) {
        // Which side failed: a database down said "publish failed", and an operator looked at NATS.
        log.warn(
          { err: (err as Error).message, failures: this.failures, retryInMs: delay },
          isDatabaseUnavailable(err)
            ? "outbox relay cannot reach its database; will retry"
            : isStoreFull(err)
              ? "outbox publish refused: the JetStream store is full (max_file_store); events wait in the outbox until it has room"
              : "outbox publish failed; will retry",
        );
      }
      // Let the claim go, so this relay (or another) takes the rows again at once when NATS is back.
      await this.release();
      // Publishing waits, not the sweep: put off by each commit's kick, it no longer sampled the backlog's age.
      this.retry = setTimeout(() => {
        this.retry = undefined;
        this.kick();
      }, delay).unref();
    }
  }
  /** Publishes one row with its CloudEvents headers, in a span continuing the trace that wrote it. */
  private async publish(row: OutboxRow): Promise<void> {
    const { bus, log, source } = this.opts;
    if (this.opts.crashBeforePublish) {
      log.warn({ eventId: row.event_id }, "fault injection: crashing before publish");
      flushLogs(); // the line above must be out before the kill
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
    tel.metrics.relayLag.observe(lagSeconds(row.created_at) ?? 0);
  }
}
