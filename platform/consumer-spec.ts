/** The declaration side of a consumer: what a service states about each stream it consumes (platform/consumer.ts runs it). */
import type { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import type { EventHandler } from "./inbox.js";
import type { Tx } from "./sql.js";

/** What a service declares about one of its consumers. */
export interface ConsumerSpec {
  readonly stream: string;
  /** Durable consumer name: `<service>-<stream in lower case>` (bus-access.ts durableOf), e.g. "notification-order". */
  readonly durable: string;
  readonly handlers: ReadonlyArray<[string, EventHandler]>;
  /**
   * For a consumer that takes part in one saga mode only: the events of orders in that mode are all
   * the server sends it (the last token of their subject, its filter subject). A consumer that
   * handles one type is sent only that type's events anyway.
   */
  readonly sagaMode?: SagaMode;
  /**
   * How long an event that arrives while the consumer is idle waits for others to be settled with it,
   * in one transaction (default 0: at the end of the event loop's turn). For consumers off every
   * request's path (a read model, notifications): at a few events a second each event otherwise pays
   * a transaction, a flush and a wake-up of its own, on the cores the requests need.
   */
  readonly lingerMs?: number;
  /**
   * For handlers whose events of different keys are independent and lock only their key's rows:
   * the key. A batch is applied sorted by it (stably), so batches applied at once (two replicas, two
   * streams) lock rows in one order and never deadlock (PostgreSQL: a second's wait, then a rerun).
   */
  readonly lockKey?: (event: unknown) => string;
  /**
   * For handlers whose events of different keys share rows (orders sharing products): locks, in
   * one order, every row the batch's `events` will change, before the first is applied — what a
   * lockKey cannot do. Runs in each transaction of more than one event (one event locks its own).
   * A row it could not foresee (written by another transaction meanwhile) may still deadlock once:
   * the batch is then applied event by event, as any batch that deadlocks.
   */
  readonly lockFirst?: (tx: Tx, events: readonly unknown[]) => Promise<void>;
}
