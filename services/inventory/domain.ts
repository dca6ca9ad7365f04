/**
 * Inventory rules, free of I/O: what a valid reservation request is, and
 * whether current stock can satisfy it (all lines or none).
 */
import { type Line, validateLines } from "../../contracts/lines.js";
import { FailedPreconditionError, NotFoundError, requireId, requireIdempotencyKey } from "../../platform/index.js";

/**
 * Most units one product may hold, available and reserved together: stock
 * travels as int32 in the contract, so it must stay well inside 2^31 − 1.
 */
export const MAX_STOCK = 1_000_000_000;

/** A product as stored. */
export interface ProductRecord {
  readonly id: string;
  readonly name: string;
  readonly priceMinor: number;
  readonly currency: string;
  readonly available: number;
  readonly reserved: number;
}

/** A product to load into the catalogue. */
export type NewProduct = Omit<ProductRecord, "reserved">;

/** A product that cannot cover its line. */
export interface Shortage {
  readonly productId: string;
  readonly requested: number;
  readonly available: number;
}

/** The people-readable reason of a stock rejection (the same in errors and events). */
export function shortageReason(shortages: readonly Shortage[]): string {
  return `insufficient stock: ${shortages.map((s) => `${s.productId} (requested ${s.requested}, available ${s.available})`).join(", ")}`;
}

/** FAILED_PRECONDITION: some lines exceed available stock. Lists every short product. */
export class OutOfStockError extends FailedPreconditionError {
  override name = "OutOfStockError";
  constructor(readonly shortages: readonly Shortage[]) {
    super(
      shortageReason(shortages),
      shortages.map((s) => ({
        type: "STOCK",
        subject: `products/${s.productId}`,
        description: `requested ${s.requested}, available ${s.available}`,
      })),
    );
  }
}

/** FAILED_PRECONDITION: a restock would raise a product above {@link MAX_STOCK}. */
export class OverCapacityError extends FailedPreconditionError {
  override name = "OverCapacityError";
  constructor(product: ProductRecord, quantity: number) {
    super(
      `restocking ${quantity} units would raise ${product.id} above ${MAX_STOCK} units (it holds ${product.available + product.reserved})`,
      [{ type: "STOCK", subject: `products/${product.id}`, description: `at most ${MAX_STOCK} units per product` }],
    );
  }
}

/** Validates a reservation request; returns its lines. Field names follow the proto. */
export function validateReservation(req: { idempotencyKey: string; orderId: string; items: readonly Line[] }): Line[] {
  requireIdempotencyKey(req.idempotencyKey);
  requireId(req.orderId, "order_id");
  return validateLines(req.items);
}

/** The outcome of planning a reservation against current stock. */
export type Plan =
  | {
      readonly kind: "reserve";
      readonly lines: readonly Line[];
      readonly totalMinor: number;
      readonly currency: string;
    }
  | { readonly kind: "short"; readonly shortages: readonly Shortage[] };

/**
 * Decides whether `stock` covers every line. Unknown products are
 * NOT_FOUND; products in different currencies cannot share one total.
 */
export function planReservation(lines: readonly Line[], stock: ReadonlyMap<string, ProductRecord>): Plan {
  const shortages: Shortage[] = [];
  let totalMinor = 0;
  let currency: string | undefined;
  for (const line of lines) {
    const p = stock.get(line.productId);
    if (!p) throw new NotFoundError("product", line.productId);
    currency ??= p.currency;
    if (p.currency !== currency) {
      throw new FailedPreconditionError(
        `products in different currencies (${currency}, ${p.currency}) cannot be reserved together`,
      );
    }
    if (p.available < line.quantity)
      shortages.push({ productId: p.id, requested: line.quantity, available: p.available });
    totalMinor += p.priceMinor * line.quantity;
  }
  if (shortages.length > 0) return { kind: "short", shortages };
  if (currency === undefined) throw new Error("a reservation plan needs at least one line");
  return { kind: "reserve", lines, totalMinor, currency };
}
