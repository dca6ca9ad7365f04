/**
 * Inventory persistence, on SQLite or PostgreSQL. Every mutation is one
 * serialised transaction (see platform/sql.ts), so it is atomic against
 * other calls, other processes and other replicas; CHECK constraints keep
 * stock non-negative even if a bug slipped past the domain rules.
 */
import { EVENTS } from "../../contracts/events.js";
import type { Line } from "../../contracts/lines.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  StockRejectedSchema,
  StockReleasedSchema,
  StockReservedSchema,
} from "../../gen/shopmesh/inventory/v1/events_pb.js";
import {
  type Db,
  type DbLocation,
  keyUse,
  type Logger,
  newId,
  Outbox,
  openDatabase,
  sql,
  type Tx,
  VOIDED,
} from "../../platform/index.js";
import {
  MAX_STOCK,
  type NewProduct,
  type Plan,
  type ProductRecord,
  planReservation,
  type Shortage,
  shortageReason,
} from "./domain.js";
import {
  byProduct,
  heldProductIds,
  insertReservation,
  lockedProducts,
  productIn,
  reservationByKey,
  unlockedProducts,
} from "./rows.js";
import {
  held,
  MIGRATIONS,
  type ProductRow,
  type ReservationRecord,
  type ReservationRow,
  toProduct,
  toReservation,
} from "./schema.js";

/**
 * A reservation's stock was taken between its unlocked read and its UPDATE: a serialization failure
 * (SQLSTATE 40001), which {@link Db.transaction} runs the transaction again on.
 */
class StockMoved extends Error {
  override name = "StockMoved";
  readonly code = "40001";
  constructor(productId: string) {
    super(`stock of ${productId} moved during its reservation`);
  }
}

/** Result of {@link InventoryStore.release}. */
export type ReleaseResult =
  | { readonly kind: "released" | "unchanged"; readonly reservation: ReservationRecord }
  | { readonly kind: "not-found" };

/** Result of {@link InventoryStore.cancelByKey}. */
export type CancelResult = { readonly kind: "released" | "voided" | "nothing" };

/** Result of {@link InventoryStore.reserve}. `replayed` is true for a repeat of an earlier key. */
export type ReserveResult =
  | { readonly kind: "reserved"; readonly reservation: ReservationRecord; readonly replayed: boolean }
  | { readonly kind: "rejected"; readonly shortages: readonly Shortage[]; readonly replayed: boolean }
  | { readonly kind: "key-reused" };

/** Result of {@link InventoryStore.restock}. */
export type RestockResult =
  | { readonly kind: "restocked"; readonly product: ProductRecord }
  | { readonly kind: "over-capacity"; readonly product: ProductRecord }
  | { readonly kind: "not-found" }
  | { readonly kind: "key-reused" };

/** Inventory tables, with the outbox their events are committed into. */
export class InventoryStore {
  /** Events committed together with the changes they record. */
  readonly outbox: Outbox;

  private constructor(
    /** The service's database (also used by its event consumers). */
    readonly db: Db,
    private readonly clock: () => number,
  ) {
    this.outbox = new Outbox("inventory", EVENTS, clock);
  }

  /** Opens (and migrates) the store at `location`. */
  static async open(location: DbLocation, clock: () => number = Date.now, log?: Logger): Promise<InventoryStore> {
    return new InventoryStore(await openDatabase(location, MIGRATIONS, log), clock);
  }

  /**
   * Loads `products` if the catalogue is empty; returns how many were inserted. Replicas starting
   * together on one PostgreSQL database may both find it empty: a product another has inserted is
   * left to it (its key's unique violation ran the transaction again, with an ERROR in the server's log).
   */
  seedIfEmpty(products: readonly NewProduct[]): Promise<number> {
    return this.db.transaction(async (tx) => {
      const count = await tx.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM products`);
      if ((count?.n ?? 0) > 0) return 0;
      const now = this.clock();
      let inserted = 0;
      for (const p of products) {
        inserted +=
          await tx.run(sql`INSERT INTO products (id, name, price_minor, currency, available, reserved, updated_at)
          VALUES (${p.id}, ${p.name}, ${p.priceMinor}, ${p.currency}, ${p.available}, 0, ${now})
          ON CONFLICT (id) DO NOTHING`);
      }
      return inserted;
    });
  }

  /** One product, or undefined. */
  product(id: string): Promise<ProductRecord | undefined> {
    return productIn(this.db, id);
  }

  /** Up to `limit` products with id greater than `after`, by id. */
  async products(after: string, limit: number): Promise<ProductRecord[]> {
    const rows = await this.db.all(
      sql<ProductRow>`SELECT * FROM products WHERE id > ${after} ORDER BY id LIMIT ${limit}`,
    );
    return rows.map(toProduct);
  }

  /**
   * Locks (PostgreSQL; on SQLite the transaction holds the whole database) every product that
   * reserving `productIds` or cancelling the reservations made with `keys` would change: a consumer's
   * batch of several orders, which share products, locks them all first, so it never holds one
   * order's products while it waits for another's.
   */
  async lockForBatch(tx: Tx, productIds: readonly string[], keys: readonly string[]): Promise<void> {
    if (tx.engine !== "postgres") return;
    await lockedProducts(tx, [...productIds, ...(await heldProductIds(tx, keys))]);
  }

  /**
   * Undoes whatever a reservation key did or would do (choreography
   * compensation): releases its reservation, or, when none was made yet,
   * voids the key so a late reservation with it is rejected. Runs in `tx`
   * when given (the consumer's).
   */
  cancelByKey(key: string, orderId: string, tx?: Tx): Promise<CancelResult> {
    return this.db.within(tx, async (tx) => {
      const prior = await reservationByKey(tx, key);
      if (!prior) {
        const now = this.clock();
        await insertReservation(tx, {
          id: newId("res", now),
          key,
          fingerprint: VOIDED,
          orderId,
          status: "REJECTED",
          items: "[]",
          totalMinor: 0,
          currency: "",
          shortages: "[]",
          now,
        });
        return { kind: "voided" };
      }
      if (prior.status !== "RESERVED") return { kind: "nothing" };
      await this.release(prior.id, SagaMode.CHOREOGRAPHY, tx);
      return { kind: "released" };
    });
  }

  /**
   * Reserves all `lines` or none, idempotently by `key`: a repeat with the
   * same fingerprint returns the first outcome (reserved or rejected), a
   * different fingerprint is `key-reused`. Throws what the domain throws
   * (unknown product, mixed currencies) without writing anything.
   */
  reserve(
    key: string,
    fingerprint: string,
    orderId: string,
    lines: readonly Line[],
    sagaMode: SagaMode = SagaMode.ORCHESTRATION,
    tx?: Tx,
  ): Promise<ReserveResult> {
    // A popular product's row is what reservations wait for (PostgreSQL), so a call locks it last: the
    // plan is made from stock as last committed, the reservation and its event written, and then each
    // product's UPDATE (by id, the one lock order) takes its row, checking the stock is still there,
    // right before the commit. If it moved meanwhile, the transaction runs again, locking first.
    // A shortage is always decided on locked rows, as a release under way may be about to end it.
    // In a caller's transaction (a consumer's) the rows are locked first: a batch holds them already,
    // and a rerun of the caller's transaction would call this afresh, unlocked again.
    let lockFirst = tx !== undefined;
    return this.db.within(tx, async (tx): Promise<ReserveResult> => {
      const prior = await reservationByKey(tx, key);
      switch (keyUse(prior?.fingerprint, fingerprint)) {
        case "voided":
          return { kind: "rejected", shortages: [], replayed: true };
        case "key-reused":
          return { kind: "key-reused" };
        case "replay": {
          const row = prior as ReservationRow;
          if (held(row)) return { kind: "reserved", reservation: toReservation(row), replayed: true };
          return { kind: "rejected", shortages: JSON.parse(row.shortages ?? "[]") as Shortage[], replayed: true };
        }
        case "new":
          break;
      }
      const ids = lines.map((l) => l.productId);
      let plan: Plan = planReservation(lines, await (lockFirst ? lockedProducts(tx, ids) : unlockedProducts(tx, ids)));
      if (plan.kind === "short" && !lockFirst) plan = planReservation(lines, await lockedProducts(tx, ids));
      const now = this.clock();
      const id = newId("res", now);
      const base = { id, key, fingerprint, orderId, items: JSON.stringify(lines), now };
      if (plan.kind === "short") {
        await insertReservation(tx, {
          ...base,
          status: "REJECTED",
          totalMinor: 0,
          currency: "",
          shortages: JSON.stringify(plan.shortages),
        });
        await this.outbox.add(
          tx,
          StockRejectedSchema,
          { orderId, sagaMode },
          {
            reason: shortageReason(plan.shortages),
            shortages: plan.shortages.map((x) => ({ ...x })),
          },
        );
        return { kind: "rejected", shortages: plan.shortages, replayed: false };
      }
      const reservation = {
        ...base,
        status: "RESERVED" as const,
        totalMinor: plan.totalMinor,
        currency: plan.currency,
      };
      await insertReservation(tx, { ...reservation, shortages: null });
      await this.outbox.add(
        tx,
        StockReservedSchema,
        { orderId, sagaMode },
        {
          reservationId: id,
          items: plan.lines.map((l) => ({ ...l })),
          total: { currencyCode: plan.currency, amountMinor: BigInt(plan.totalMinor) },
          sagaMode,
        },
      );
      for (const l of byProduct(plan.lines)) {
        const changes = await tx.run(sql`UPDATE products
          SET available = available - ${l.quantity}, reserved = reserved + ${l.quantity}, updated_at = ${now}
          WHERE id = ${l.productId} AND available >= ${l.quantity}`);
        if (changes === 1) continue;
        // Unreachable while the rows are locked; kept so a future change cannot silently oversell.
        if (lockFirst) throw new Error(`stock of ${l.productId} changed inside a reservation transaction`);
        lockFirst = true;
        throw new StockMoved(l.productId);
      }
      return {
        kind: "reserved",
        reservation: {
          id,
          orderId,
          status: "RESERVED",
          items: lines,
          totalMinor: plan.totalMinor,
          currency: plan.currency,
          createdAt: now,
        },
        replayed: false,
      };
    });
  }

  /**
   * Returns a reservation's units to stock. Releasing a RELEASED reservation
   * changes nothing (`unchanged`).
   */
  release(id: string, sagaMode: SagaMode, tx?: Tx): Promise<ReleaseResult> {
    return this.db.within(tx, async (tx): Promise<ReleaseResult> => {
      const row = await tx.one(
        sql<ReservationRow>`SELECT * FROM reservations WHERE id = ${id} AND status != 'REJECTED' ${tx.forUpdate}`,
      );
      if (!row || !held(row)) return { kind: "not-found" };
      if (row.status !== "RESERVED") return { kind: "unchanged", reservation: toReservation(row) };
      const r = toReservation(row);
      const now = this.clock();
      await tx.run(sql`UPDATE reservations SET status = 'RELEASED', updated_at = ${now} WHERE id = ${id}`);
      await this.outbox.add(
        tx,
        StockReleasedSchema,
        { orderId: r.orderId, sagaMode },
        {
          reservationId: id,
          items: r.items.map((l) => ({ ...l })),
        },
      );
      // The products last, by id (see reserve).
      for (const l of byProduct(r.items)) {
        await tx.run(sql`UPDATE products
          SET available = available + ${l.quantity}, reserved = reserved - ${l.quantity}, updated_at = ${now}
          WHERE id = ${l.productId}`);
      }
      return { kind: "released", reservation: { ...r, status: "RELEASED" } };
    });
  }

  /**
   * Adds `quantity` units to a product, idempotently by `key`: a repeat with
   * the same fingerprint returns the first answer (the stock that restock left; the product's name
   * and price as they are now), another fingerprint is
   * `key-reused`. Never raises a product above MAX_STOCK (`over-capacity`,
   * nothing written).
   */
  restock(key: string, fingerprint: string, productId: string, quantity: number): Promise<RestockResult> {
    return this.db.transaction(async (tx): Promise<RestockResult> => {
      // The product locked before the key is read: a restock under the same key that holds it has
      // committed by then, and its key is read (READ COMMITTED). Read after, the key was not there yet,
      // the product was full with that restock's units, and a caller of a restock that had been made
      // was answered it would overflow (test: 20 callers near the cap, on PostgreSQL).
      const product = (await lockedProducts(tx, [productId])).get(productId);
      const prior = await tx.one(
        sql<{
          fingerprint: string;
          product_id: string;
          available_after: number | null;
          reserved_after: number | null;
        }>`SELECT fingerprint, product_id, available_after, reserved_after FROM restocks WHERE idempotency_key = ${key}`,
      );
      switch (keyUse(prior?.fingerprint, fingerprint)) {
        case "replay": {
          // The first answer's stock (a restock made before migration 7 kept none: the stock now).
          const p = (await productIn(tx, prior?.product_id ?? "")) as ProductRecord;
          const { available_after: available, reserved_after: reserved } = prior ?? {};
          return {
            kind: "restocked",
            product: available == null || reserved == null ? p : { ...p, available, reserved },
          };
        }
        case "key-reused":
        case "voided":
          return { kind: "key-reused" };
        case "new":
          break;
      }
      if (!product) return { kind: "not-found" };
      const now = this.clock();
      const added = await tx.run(sql`UPDATE products SET available = available + ${quantity}, updated_at = ${now}
        WHERE id = ${productId} AND available + reserved + ${quantity} <= ${MAX_STOCK}`);
      if (added !== 1) return { kind: "over-capacity", product };
      const after = (await productIn(tx, productId)) as ProductRecord;
      await tx.run(sql`INSERT INTO restocks
          (idempotency_key, fingerprint, product_id, quantity, created_at, available_after, reserved_after)
        VALUES (${key}, ${fingerprint}, ${productId}, ${quantity}, ${now}, ${after.available}, ${after.reserved})`);
      return { kind: "restocked", product: after };
    });
  }

  /** Closes the database. */
  close(): Promise<void> {
    return this.db.close();
  }
}
