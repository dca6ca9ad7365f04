/**
 * Events for tests, published the way services publish them: through an
 * {@link Outbox} and an {@link OutboxRelay} on a scratch in-memory SQLite database, so
 * payloads, CloudEvents headers and `Nats-Msg-Id` are exactly what a
 * consumer meets in production. Plus helpers to redeliver an event and to
 * wait for a consumer to settle.
 */
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import type { Bus } from "../platform/bus.js";
import { migrations, openDatabase } from "../platform/db.js";
import { silentLogger } from "../platform/log.js";
import { OUTBOX_CLAIMS_MIGRATION, OUTBOX_INDEXES_MIGRATION, OUTBOX_MIGRATION, Outbox } from "../platform/outbox.js";
import { OutboxRelay } from "../platform/relay.js";
import type { Tx } from "../platform/sql.js";
import type { Telemetry } from "../platform/telemetry.js";

/** One event to publish; make it with {@link event}. */
export interface PendingEvent {
  readonly type: string;
  /** Adds the event to `outbox` in `tx` (with the outbox clock at `at`), returning its id. */
  add(tx: Tx, outbox: Outbox, setClock: (at: number) => void): Promise<string>;
}

/**
 * An event of `schema` about `orderId`. `at` (epoch ms) becomes its
 * `meta.occurred_at` (and `ce-time`); now when omitted. Its saga mode is the
 * `sagaMode` of `init` where the type has one and it is set, else choreography
 * (what the consumers tests drive by events take part in).
 */
export function event<D extends DescMessage>(
  schema: D,
  orderId: string,
  init: Omit<MessageInitShape<D>, "meta" | "$typeName">,
  at?: number,
): PendingEvent {
  return {
    type: schema.typeName,
    add(tx, outbox, setClock) {
      setClock(at ?? Date.now());
      const sagaMode = (init as { sagaMode?: SagaMode }).sagaMode || SagaMode.CHOREOGRAPHY;
      return outbox.add(tx, schema, { orderId, sagaMode }, init as never);
    },
  };
}

/**
 * Publishes `events` in order through an outbox relay (reporting to `telemetry` when given) and
 * resolves, with their event ids, once JetStream has acknowledged every one.
 */
export async function publishEvents(
  bus: Bus,
  events: readonly PendingEvent[],
  source = "test",
  telemetry?: Telemetry,
): Promise<string[]> {
  const db = await openDatabase(
    { engine: "sqlite", path: ":memory:" },
    migrations([OUTBOX_MIGRATION, OUTBOX_CLAIMS_MIGRATION, OUTBOX_INDEXES_MIGRATION]),
  );
  let now = Date.now();
  const outbox = new Outbox(source, EVENTS, () => now);
  const relay = new OutboxRelay({
    db,
    outbox,
    bus,
    source,
    log: silentLogger(),
    sweepMs: 50,
    ...(telemetry && { telemetry }),
  });
  try {
    const ids = await db.transaction(async (tx) => {
      const out: string[] = [];
      for (const e of events) {
        out.push(
          await e.add(tx, outbox, (at) => {
            now = at;
          }),
        );
      }
      return out;
    });
    relay.start();
    const left = await until(
      async () => (await relay.backlog()).count,
      (n) => n === 0,
      10_000,
    );
    if (left !== 0) throw new Error(`outbox still holds ${left} events`);
    return ids;
  } finally {
    await relay.stop();
    await db.close();
  }
}

/**
 * Publishes the stored event `eventId` of `stream` again, same payload and
 * `ce-id` but another `Nats-Msg-Id`, so JetStream's duplicate window cannot
 * drop it and consumers see a true duplicate delivery. Returns its sequence.
 */
export async function republish(bus: Bus, stream: string, eventId: string): Promise<number> {
  const { state } = await bus.jsm.streams.info(stream);
  for (let seq = state.last_seq; seq >= state.first_seq && seq > 0; seq--) {
    const m = await bus.jsm.streams.getMessage(stream, { seq }).catch(() => null);
    if (!m || m.header?.get("ce-id") !== eventId) continue;
    const h = natsHeaders();
    for (const [k, v] of m.header ?? []) if (k !== "Nats-Msg-Id") for (const x of v) h.append(k, x);
    const ack = await bus.js.publish(m.subject, m.data, { headers: h, msgID: `${eventId}:again:${Date.now()}` });
    return ack.seq;
  }
  throw new Error(`event ${eventId} is not in stream ${stream}`);
}

/**
 * Resolves once the durable consumer `durable` of `stream` has nothing left
 * to deliver and nothing delivered but unacknowledged.
 */
export async function consumerSettled(bus: Bus, stream: string, durable: string, ms = 10_000): Promise<void> {
  const info = await until(
    () => bus.jsm.consumers.info(stream, durable),
    (i) => i.num_pending === 0 && i.num_ack_pending === 0,
    ms,
  );
  if (info.num_pending !== 0 || info.num_ack_pending !== 0) {
    throw new Error(
      `consumer ${durable} did not settle: ${info.num_pending} pending, ${info.num_ack_pending} awaiting ack`,
    );
  }
}

/** Polls `f` every 25 ms until `ok` accepts its value or `ms` pass; returns the last value. */
export async function until<T>(f: () => T | Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 25));
  }
}
