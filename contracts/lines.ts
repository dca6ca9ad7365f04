/**
 * Order lines, as the order and inventory services both read them: what a
 * valid list of lines is. Field names in errors follow the proto
 * (`items[2].quantity`).
 */
import { InvalidArgumentError } from "../platform/errors.js";
import { requireId, requireQuantity } from "../platform/validate.js";

/** A requested line: a product and a number of units. */
export interface Line {
  readonly productId: string;
  readonly quantity: number;
}

/** Most lines one order (and so one reservation) may hold. */
export const MAX_LINES = 50;
/** Most units of one product per line. */
export const MAX_LINE_QUANTITY = 10_000;

/**
 * Validates order lines: 1..MAX_LINES lines, valid unique product ids,
 * quantities 1..MAX_LINE_QUANTITY. Returns plain copies of the lines.
 */
export function validateLines(items: readonly Line[], field = "items"): Line[] {
  if (items.length === 0) throw new InvalidArgumentError(field, "must contain at least one item");
  if (items.length > MAX_LINES) throw new InvalidArgumentError(field, `must contain at most ${MAX_LINES} items`);
  const seen = new Set<string>();
  return items.map((it, i) => {
    requireId(it.productId, `${field}[${i}].product_id`);
    requireQuantity(it.quantity, `${field}[${i}].quantity`, 1, MAX_LINE_QUANTITY);
    if (seen.has(it.productId)) {
      throw new InvalidArgumentError(`${field}[${i}].product_id`, `duplicates product ${it.productId}`);
    }
    seen.add(it.productId);
    return { productId: it.productId, quantity: it.quantity };
  });
}
