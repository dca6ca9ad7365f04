/**
 * Idempotency keys, the one way: a mutating RPC that callers may retry takes
 * a key; the store keeps the key with a fingerprint of the request and its
 * first result. A repeat with the same fingerprint gets that result again; a
 * different request under the same key is refused (ALREADY_EXISTS); and a key
 * can be voided before it is ever used (a compensation that ran first), after
 * which every request with it is refused as voided.
 */
import { createHash } from "node:crypto";
import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { InvalidArgumentError } from "./errors.js";

/** Longest idempotency key accepted. */
export const MAX_IDEMPOTENCY_KEY = 128;

/** The fingerprint stored for a voided key: no request's fingerprint can equal it. */
export const VOIDED = "voided";

/** A required idempotency key: 1..128 printable ASCII characters. */
export function requireIdempotencyKey(value: string, field = "idempotency_key"): string {
  if (value === "") throw new InvalidArgumentError(field, "must not be empty");
  if (value.length > MAX_IDEMPOTENCY_KEY) {
    throw new InvalidArgumentError(field, `must be at most ${MAX_IDEMPOTENCY_KEY} characters`);
  }
  if (!/^[\x21-\x7e]+$/.test(value)) throw new InvalidArgumentError(field, "must be printable ASCII without spaces");
  return value;
}

/**
 * Whether requests of `schema` are fingerprinted under an idempotency key (they have an
 * `idempotency_key` field). Such a request keeps, decoded, the fields its service does not know
 * (platform/grpc.ts skips them in any other): its fingerprint must tell two requests apart by them
 * too, and match the one a newer replica that knows them takes of the same request in an upgrade.
 */
export function keepsUnknownFields(schema: DescMessage): boolean {
  return schema.fields.some((f) => f.name === "idempotency_key");
}

/**
 * A stable fingerprint of a request, to tell a retry from a different request reusing a key: of its
 * binary encoding, the fields its service does not know included ({@link keepsUnknownFields}).
 */
export function requestFingerprint<D extends DescMessage>(schema: D, msg: MessageShape<D>): string {
  return createHash("sha256").update(toBinary(schema, msg)).digest("base64url");
}

/** What a request under a key amounts to, given the fingerprint stored with the key (if any). */
export type KeyUse = "new" | "replay" | "key-reused" | "voided";

/**
 * Decides a request under an idempotency key: `new` when the key is unused,
 * `replay` when `fingerprint` equals the stored one, `voided` when the key was
 * voided, `key-reused` otherwise.
 */
export function keyUse(stored: string | null | undefined, fingerprint: string): KeyUse {
  if (stored === undefined) return "new";
  if (stored === VOIDED || stored === null) return "voided";
  return stored === fingerprint ? "replay" : "key-reused";
}
