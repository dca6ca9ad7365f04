/**
 * The order store's change feed: who hears of a committed change, and when. Changes are
 * announced after commit — to this process, and on PostgreSQL to every replica (NOTIFY on
 * {@link CHANGED}), so a WatchOrder on any replica follows a saga driven by another.
 */
import { EventEmitter } from "node:events";
import { type Db, type Listening, newId, sql, type Tx } from "../../platform/index.js";
import type { OrderRecord } from "./domain.js";
import type { StoredStep } from "./schema.js";

/** The PostgreSQL channel on which every committed order change is announced (payload: "<origin> <order id>"). */
const CHANGED = "shopmesh_order_changed";

/** Committed order changes, as events: placed, terminal, and every change of one order. */
export class OrderChanges {
  private readonly events = new EventEmitter();
  private listening: Listening | undefined;
  /** This store's name in NOTIFY payloads: it hears its own changes at commit, not through the database. */
  private readonly origin = newId("store");

  constructor() {
    this.events.setMaxListeners(0);
  }

  /** On PostgreSQL, hears the changes other replicas make; `read` reads an order again. */
  async listen(db: Db, read: (id: string) => Promise<OrderRecord | undefined>): Promise<void> {
    this.listening = await db.listen?.(CHANGED, (payload) => void this.heard(payload, read));
  }

  /**
   * Another replica changed an order (or, "*", the connection was lost and
   * some changes may have been missed): re-reads the orders someone here
   * watches, and tells their watchers. Orders nobody here watches cost nothing.
   */
  private async heard(payload: string, read: (id: string) => Promise<OrderRecord | undefined>): Promise<void> {
    const [origin, id = ""] = payload.split(" ");
    if (origin === this.origin) return;
    const watched = (o: string) => this.events.listenerCount(`change:${o}`) > 0;
    // What the change appended to the step log is not known here (undefined): watchers read it.
    const all = () =>
      this.events.eventNames().flatMap((e) => (String(e).startsWith("change:") ? [String(e).slice(7)] : []));
    const ids = payload === "*" ? all() : [id];
    try {
      for (const o of ids.filter(watched)) {
        const order = await read(o);
        if (order) this.events.emit(`change:${o}`, order);
      }
    } catch {
      // The database is away; watchers hear of the change on the next one (or "*" after reconnecting).
    }
  }

  /** Subscribes to newly placed orders (after commit, by this replica); returns the unsubscribe function. */
  onPlaced(listener: (order: OrderRecord) => void): () => void {
    this.events.on("placed", listener);
    return () => this.events.off("placed", listener);
  }

  /** Subscribes to orders becoming CONFIRMED or CANCELLED (after commit, by this replica), once each. */
  onTerminal(listener: (order: OrderRecord) => void): () => void {
    this.events.on("terminal", listener);
    return () => this.events.off("terminal", listener);
  }

  /**
   * Subscribes to committed changes of order `id`, by any replica; returns the unsubscribe
   * function. With each change comes the step-log entry it appended: `null` when it appended
   * none, undefined when that is not known here (a change made by another replica).
   */
  onChange(id: string, listener: (order: OrderRecord, step?: StoredStep | null) => void): () => void {
    this.events.on(`change:${id}`, listener);
    return () => this.events.off(`change:${id}`, listener);
  }

  /** Announces `order` (and the step it appended) after `tx` commits: here at once, and to the other replicas through NOTIFY. */
  async changed(tx: Tx, order: OrderRecord, step: StoredStep | null): Promise<void> {
    if (this.listening) await tx.run(sql`SELECT pg_notify(${CHANGED}, ${`${this.origin} ${order.id}`})`);
    tx.afterCommit(() => this.events.emit(`change:${order.id}`, order, step));
  }

  /** Announces a newly placed order once `tx` commits. */
  placed(tx: Tx, order: OrderRecord): void {
    tx.afterCommit(() => this.events.emit("placed", order));
  }

  /** Announces an order that became CONFIRMED or CANCELLED once `tx` commits. */
  terminal(tx: Tx, order: OrderRecord): void {
    tx.afterCommit(() => this.events.emit("terminal", order));
  }

  /** Stops hearing other replicas. */
  async close(): Promise<void> {
    await this.listening?.close();
  }
}
