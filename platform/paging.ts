/**
 * Paging for every List RPC: page sizes and opaque page tokens.
 *
 * A token is a cursor (a few named strings and integers) as base64url JSON,
 * followed by a short checksum over the List RPC's name and the cursor, so
 * that a made-up or altered token, or one of another List RPC, is an
 * INVALID_ARGUMENT naming `page_token` instead of silently an empty or odd
 * page. The checksum is not a secret and not a security boundary: a cursor
 * only says where to continue within what the caller may see anyway.
 */
import { createHash } from "node:crypto";
import { InvalidArgumentError } from "./errors.js";

/** Default and maximum page sizes of every List RPC. */
export const PAGE_SIZE = { default: 20, max: 100 } as const;

/** `page_size`: 0 means the default; otherwise 1..max, and anything else is refused, not capped. */
export function pageSize(value: number, field = "page_size", max: number = PAGE_SIZE.max): number {
  if (value === 0) return Math.min(PAGE_SIZE.default, max);
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new InvalidArgumentError(field, `must be between 1 and ${max} (or 0 for the default), got ${value}`);
  }
  return value;
}

/** The shape of a cursor: each key's type. */
export type CursorShape = Readonly<Record<string, "string" | "integer">>;
/** A cursor of shape `S`. */
export type Cursor<S extends CursorShape> = { [K in keyof S]: S[K] extends "integer" ? number : string };

/** Longest string a cursor may hold (ids and keys are shorter). */
const MAX_CURSOR_STRING = 256;

function checksum(list: string, json: string): string {
  const hash = createHash("sha256").update("shopmesh.page-token.v2\0").update(list).update("\0").update(json);
  return hash.digest("base64url").slice(0, 12);
}

/** An opaque page token of List RPC `list` for `cursor`. */
export function encodePageToken(list: string, cursor: Readonly<Record<string, string | number>>): string {
  const json = JSON.stringify(cursor);
  return `${Buffer.from(json).toString("base64url")}.${checksum(list, json)}`;
}

/**
 * Decodes a token made by {@link encodePageToken} for `list` into a cursor of
 * `shape`; undefined for "" (the first page); INVALID_ARGUMENT naming `field`
 * for anything else that is not exactly such a token.
 */
export function decodePageToken<S extends CursorShape>(
  list: string,
  token: string,
  shape: S,
  field = "page_token",
): Cursor<S> | undefined {
  if (token === "") return undefined;
  const bad = () => new InvalidArgumentError(field, "is not a token returned by this API");
  const [body, sum, ...rest] = token.split(".");
  if (body === undefined || sum === undefined || rest.length > 0) throw bad();
  const json = Buffer.from(body, "base64url").toString("utf8");
  // Node's decoder skips what base64url has not (`!`, `=`, a space): only the encoding the token was made with is it.
  if (Buffer.from(json).toString("base64url") !== body || checksum(list, json) !== sum) throw bad();
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    throw bad();
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad();
  const o = v as Record<string, unknown>;
  if (Object.keys(o).length !== Object.keys(shape).length) throw bad();
  for (const [k, type] of Object.entries(shape)) {
    const x = o[k];
    // No U+0000 in a string: PostgreSQL's text holds none, and refused there it was a server error.
    const ok =
      type === "integer"
        ? Number.isSafeInteger(x)
        : typeof x === "string" && x.length <= MAX_CURSOR_STRING && !x.includes("\0");
    if (!ok) throw bad();
  }
  return o as Cursor<S>;
}

/** The pages of one List RPC (`list`, e.g. `shopmesh.order.v1.OrderService/ListOrders`), whose cursors have `shape`. */
export class Pages<S extends CursorShape> {
  constructor(
    readonly list: string,
    private readonly shape: S,
  ) {}

  /** Where the page of `token` starts: undefined for "" (the first page); INVALID_ARGUMENT naming `page_token` for anything but this List's token. */
  cursor(token: string): Cursor<S> | undefined {
    return decodePageToken(this.list, token, this.shape);
  }

  /**
   * Splits rows fetched with `limit + 1` (one more than the page holds, to
   * learn whether another page follows) into the page and the token of the
   * next one — "" on the last page. `cursorOf` names the last row's position.
   */
  of<T>(rows: readonly T[], limit: number, cursorOf: (last: T) => Cursor<S>): { page: T[]; nextPageToken: string } {
    const page = rows.slice(0, limit);
    const last = page.at(-1);
    const nextPageToken = rows.length > limit && last !== undefined ? encodePageToken(this.list, cursorOf(last)) : "";
    return { page, nextPageToken };
  }
}
