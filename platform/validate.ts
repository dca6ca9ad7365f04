/**
 * Request validation helpers for RPC edges. Each throws
 * InvalidArgumentError naming the field (as written in the .proto), so the
 * client gets INVALID_ARGUMENT with a google.rpc.BadRequest field violation.
 */
import { createHash, randomBytes } from "node:crypto";
import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { InvalidArgumentError } from "./errors.js";

const ID = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/;

/** A required identifier: 1..`max` characters of [A-Za-z0-9._:-], not starting with punctuation. */
export function requireId(value: string, field: string, max = 128): string {
  if (value === "") throw new InvalidArgumentError(field, "must not be empty");
  if (value.length > max) throw new InvalidArgumentError(field, `must be at most ${max} characters`);
  if (!ID.test(value)) throw new InvalidArgumentError(field, "may contain only letters, digits and . _ : -");
  return value;
}

/** A required idempotency key: 1..128 printable ASCII characters. */
export function requireIdempotencyKey(value: string, field = "idempotency_key"): string {
  if (value === "") throw new InvalidArgumentError(field, "must not be empty");
  if (value.length > 128) throw new InvalidArgumentError(field, "must be at most 128 characters");
  if (!/^[\x21-\x7e]+$/.test(value)) throw new InvalidArgumentError(field, "must be printable ASCII without spaces");
  return value;
}

/** An integer quantity in [min, max]. */
export function requireQuantity(value: number, field: string, min = 1, max = 1_000_000): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(field, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

/** A stable fingerprint of a request, to tell a retry from a different request reusing a key. */
export function requestFingerprint<D extends DescMessage>(schema: D, msg: MessageShape<D>): string {
  return createHash("sha256").update(toBinary(schema, msg)).digest("base64url");
}

/** A new id: `prefix_` + time (base36, sorts by creation) + 64 random bits. */
export function newId(prefix: string, now: number = Date.now()): string {
  return `${prefix}_${now.toString(36).padStart(9, "0")}${randomBytes(8).toString("hex")}`;
}

/** A requested line: a product and a number of units. */
export interface Line {
  readonly productId: string;
  readonly quantity: number;
}

/**
 * Validates order lines: 1..`maxLines` lines, valid unique product ids,
 * quantities 1..`maxQuantity`. Violations name the field as in the proto,
 * e.g. `items[2].quantity`. Returns plain copies of the lines.
 */
export function validateLines(
  items: readonly Line[],
  {
    field = "items",
    maxLines = 50,
    maxQuantity = 10_000,
  }: { field?: string; maxLines?: number; maxQuantity?: number } = {},
): Line[] {
  if (items.length === 0) throw new InvalidArgumentError(field, "must contain at least one item");
  if (items.length > maxLines) throw new InvalidArgumentError(field, `must contain at most ${maxLines} items`);
  const seen = new Set<string>();
  return items.map((it, i) => {
    requireId(it.productId, `${field}[${i}].product_id`);
    requireQuantity(it.quantity, `${field}[${i}].quantity`, 1, maxQuantity);
    if (seen.has(it.productId)) {
      throw new InvalidArgumentError(`${field}[${i}].product_id`, `duplicates product ${it.productId}`);
    }
    seen.add(it.productId);
    return { productId: it.productId, quantity: it.quantity };
  });
}
