/**
 * Request validation helpers for RPC edges. Each throws
 * InvalidArgumentError naming the field (as written in the .proto), so the
 * client gets INVALID_ARGUMENT with a google.rpc.BadRequest field violation.
 */
import { type DescMessage, ScalarType } from "@bufbuild/protobuf";
import { InvalidArgumentError } from "./errors.js";
import { replaceHidden } from "./hidden.js";
import { SUBJECT } from "./identity-rule.js";

export { clipText } from "./clip.js";

const ID = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/;

/** A required identifier: 1..`max` characters of [A-Za-z0-9._:-], not starting with punctuation. */
export function requireId(value: string, field: string, max = 128): string {
  if (value === "") throw new InvalidArgumentError(field, "must not be empty");
  if (value.length > max) throw new InvalidArgumentError(field, `must be at most ${max} characters`);
  if (!ID.test(value)) {
    throw new InvalidArgumentError(
      field,
      "must start with a letter or digit and contain only letters, digits and . _ : -",
    );
  }
  return value;
}

/**
 * A customer id: a caller's subject, by the one rule the gateway and services read identity with
 * (identity.ts), which allows what {@link requireId} does not (`alice@example.com`) — checked by
 * the id rule, such a customer could place orders and never pay for one.
 */
export function requireSubject(value: string, field: string): string {
  if (value === "") throw new InvalidArgumentError(field, "must not be empty");
  if (!SUBJECT.test(value)) {
    throw new InvalidArgumentError(field, "must be at most 128 of letters, digits and . _ : @ -");
  }
  return value;
}

/** An ISO 4217 currency code, as every service writes one. */
export const CURRENCY_CODE = /^[A-Z]{3}$/;

/** The most of a text (a reason) a read model keeps from an event: the rest is cut ({@link clipText}). */
export const MAX_EVENT_TEXT = 2_000;

/**
 * `text` with each control character a space: for a text built from one stored before
 * {@link requireText} refused them (or by a peer's error message), sent where they are refused.
 */
export function withoutControls(text: string): string {
  return replaceHidden(text, () => " ");
}

/**
 * A free text a caller gives (a cancel's or a refund's reason): at most `max` UTF-16 units, and no
 * control or hidden character (hidden.ts) — it is stored, shown back, carried in events and printed by `make events` and
 * the logs' pretty form, where an escape sequence would drive the reader's terminal, a line break
 * would forge a line and a direction override would show the text as another.
 */
export function requireText(value: string, field: string, max: number): string {
  if (value.length > max) throw new InvalidArgumentError(field, `must be at most ${max} characters`);
  if (withoutControls(value) !== value) {
    throw new InvalidArgumentError(
      field,
      "must not contain control or invisible characters (line breaks, tabs, escapes, direction controls, zero-width spaces, format characters, joiners or variation selectors out of place, more than 8 combining marks in a row)",
    );
  }
  return value;
}

/** An integer quantity in [min, max]. */
export function requireQuantity(value: number, field: string, min = 1, max = 1_000_000): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(field, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

/**
 * The first string in `msg` (a message of `schema`) that holds U+0000, as a path of its fields'
 * .proto names (`items[2].product_id`), or undefined. PostgreSQL's text holds no NUL, so such a
 * string is refused before any handler sees it (grpc.ts): stored, it failed as a server error. Runs
 * on every request, so it builds no path until it finds one, and skips messages that hold no string.
 */
export function stringWithNul(schema: DescMessage, msg: object): string | undefined {
  const values = msg as Record<string, unknown>;
  for (const f of schema.fields) {
    let v = values[f.localName];
    if (f.oneof) {
      const chosen = values[f.oneof.localName] as { case?: string; value?: unknown } | undefined;
      v = chosen?.case === f.localName ? chosen.value : undefined;
    }
    if (v === undefined || v === null) continue;
    const sub = f.fieldKind === "scalar" || f.fieldKind === "enum" ? undefined : f.message;
    const inner = sub && holdsStrings(sub) ? sub : undefined;
    if (f.fieldKind === "list") {
      const list = v as unknown[];
      for (let i = 0; i < list.length; i++) {
        const hit = nulIn(list[i], inner);
        if (hit !== undefined) return `${f.name}[${i}]${hit}`;
      }
    } else if (f.fieldKind === "map") {
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
        if (k.includes("\0")) return f.name;
        const hit = nulIn(x, inner);
        if (hit !== undefined) return `${f.name}[${JSON.stringify(k)}]${hit}`;
      }
    } else {
      const hit = nulIn(v, inner);
      if (hit !== undefined) return `${f.name}${hit}`;
    }
  }
  return undefined;
}

/** "" when `v` is a string holding a NUL, `.<path>` when it is a message of `schema` holding one, else undefined. */
function nulIn(v: unknown, schema: DescMessage | undefined): string | undefined {
  if (typeof v === "string") return v.includes("\0") ? "" : undefined;
  if (schema === undefined || typeof v !== "object" || v === null) return undefined;
  const hit = stringWithNul(schema, v);
  return hit === undefined ? undefined : `.${hit}`;
}

/** Whether a message of `schema` can hold a string (itself, or a message it holds). */
const stringy = new WeakMap<DescMessage, boolean>();
function holdsStrings(schema: DescMessage): boolean {
  const known = stringy.get(schema);
  if (known !== undefined) return known;
  stringy.set(schema, true); // a recursive message: assume so while it is being looked at
  const holds = schema.fields.some((f) =>
    f.fieldKind === "scalar"
      ? f.scalar === ScalarType.STRING
      : f.fieldKind === "list"
        ? f.listKind === "scalar"
          ? f.scalar === ScalarType.STRING
          : f.listKind === "message" && holdsStrings(f.message)
        : f.fieldKind === "map"
          ? f.mapKey === ScalarType.STRING ||
            (f.mapKind === "scalar"
              ? f.scalar === ScalarType.STRING
              : f.mapKind === "message" && holdsStrings(f.message))
          : f.fieldKind === "message" && holdsStrings(f.message),
  );
  stringy.set(schema, holds);
  return holds;
}
