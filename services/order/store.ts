/**
 * Order persistence, on SQLite or PostgreSQL: orders with their saga state, and the step log,
 * with the outbox their events are committed into. This is the store's face; what it does lives
 * in files named for it: store-reads.ts (reads), store-writes.ts (placing, saga transitions,
 * cancel requests), leases.ts (which replica drives which saga), changes.ts (who hears of a
 * committed change), schema.ts (tables and rows).
 */
import { EVENTS } from "../../contracts/events.js";
import {
  type Db,
  type DbLocation,
  type Logger,
  Outbox,
  openDatabase,
  sharedNow,
  sql,
  type Tx,
} from "../../platform/index.js";
import { OrderChanges } from "./changes.js";
import type { Guard } from "./compensation.js";
import type { OrderRecord, SagaMode, Transition } from "./domain.js";
import { claimSagas, type Lease, releaseLeases, renewLeases } from "./leases.js";
import { MIGRATIONS, type StoredStep } from "./schema.js";
import { activeIds, ordersOfCustomer, readOrder, readSteps, stalledChoreography } from "./store-reads.js";
import {
  type ApplyResult,
  applyTransition,
  type Begin,
  type CancelResult,
  type NewOrder,
  type PlaceResult,
  placeOrder,
  requestCancel,
  type Writer,
} from "./store-writes.js";

/** Orders and saga step logs, with the outbox their events are committed into. */
export class OrderStore {
  /** Events committed together with the changes they record. */
  readonly outbox: Outbox;
  private readonly changes = new OrderChanges();
  private readonly writer: Writer;

  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
    log: Logger | undefined,
  ) {
    this.outbox = new Outbox("order", EVENTS, clock);
    this.writer = { db, outbox: this.outbox, clock, changes: this.changes, ...(log ? { log } : {}) };
  }

  /**
   * Opens (and migrates) the store at `location`; on PostgreSQL, hears changes made by other replicas.
   * `log`: where it says what it does on its own (a long step log trimmed).
   */
  static async open(location: DbLocation, clock: () => number = Date.now, log?: Logger): Promise<OrderStore> {
    const store = new OrderStore(await openDatabase(location, MIGRATIONS, log), clock, log);
    await store.changes.listen(store.db, (id) => store.get(id));
    return store;
  }

  /** Subscribes to newly placed orders (after commit, by this replica); returns the unsubscribe function. */
  onPlaced(listener: (order: OrderRecord) => void): () => void {
    return this.changes.onPlaced(listener);
  }

  /** Subscribes to orders becoming CONFIRMED or CANCELLED (after commit, by this replica), once each. */
  onTerminal(listener: (order: OrderRecord) => void): () => void {
    return this.changes.onTerminal(listener);
  }

  /** Subscribes to committed changes of order `id`, by any replica (see {@link OrderChanges.onChange}). */
  onChange(id: string, listener: (order: OrderRecord, step?: StoredStep | null) => void): () => void {
    return this.changes.onChange(id, listener);
  }

  /** One order, or undefined; in `tx` when given. */
  get(id: string, tx?: Tx): Promise<OrderRecord | undefined> {
    return readOrder(tx ?? this.db, id);
  }

  /** The order's step log, oldest first. */
  steps(id: string): Promise<StoredStep[]> {
    return readSteps(this.db, id);
  }

  /** Places an order, idempotently per customer and key (see {@link placeOrder}). */
  place(p: NewOrder, lease?: { owner: string; ms: number }, begin?: Begin): Promise<PlaceResult> {
    return placeOrder(this.writer, p, lease, begin);
  }

  /** Applies a saga transition atomically, guarded and fenced (see {@link applyTransition}). */
  apply(id: string, t: Transition, opts: { guard?: Guard; lease?: Lease; tx?: Tx } = {}): Promise<ApplyResult> {
    return applyTransition(this.writer, id, t, opts);
  }

  /** Records the customer's wish to cancel, if the order still allows it; in `tx` when given. */
  requestCancel(id: string, reason: string, tx?: Tx): Promise<CancelResult> {
    return requestCancel(this.writer, id, reason, tx);
  }

  /** A page of a customer's orders, newest first, after the cursor (exclusive). */
  listByCustomer(
    customerId: string,
    after: { createdAt: number; id: string } | undefined,
    limit: number,
  ): Promise<OrderRecord[]> {
    return ordersOfCustomer(this.db, customerId, after, limit);
  }

  /**
   * Now in the clock the orders' `updated_at` and step log are written in, which replicas compare
   * (platform/shared-clock.ts): the database's on PostgreSQL, this store's on SQLite.
   */
  async sharedNow(): Promise<number> {
    const local = this.clock();
    if (this.db.engine === "sqlite") return local;
    const r = await this.db.one(sql<{ now: number }>`SELECT ${sharedNow(this.db.engine, local)} AS now`);
    return Number(r?.now);
  }

  /** Choreographed orders still PENDING whose last change is older than `before` (epoch ms), oldest first. */
  stalledChoreography(before: number): Promise<string[]> {
    return stalledChoreography(this.db, before);
  }

  /** Ids of orders whose saga (in `mode`, or any) has not finished, oldest first. */
  activeIds(mode?: SagaMode): Promise<string[]> {
    return activeIds(this.db, mode);
  }

  /** Claims the leases of unfinished orchestrated sagas no live replica holds, or all (see {@link claimSagas}). */
  claimSagas(owner: string, ms: number, scope: "expired" | "all"): Promise<{ id: string; fence: number }[]> {
    return claimSagas(this.db, this.clock(), owner, ms, scope);
  }

  /** Extends by `ms` from now the leases `owner` still holds on the sagas `ids`; how many it extended. */
  renewLeases(owner: string, ids: readonly string[], ms: number): Promise<number> {
    return renewLeases(this.db, owner, ids, this.clock(), ms);
  }

  /** Gives back every lease `owner` holds (a graceful stop), so other replicas adopt those sagas at once. */
  releaseLeases(owner: string): Promise<number> {
    return releaseLeases(this.db, owner);
  }

  /** Closes the database (and the change listener). */
  async close(): Promise<void> {
    await this.changes.close();
    await this.db.close();
  }
}
