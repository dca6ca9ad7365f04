/**
 * Who a caller may be, as a rule with no I/O: a subject of {@link SUBJECT} characters and roles that
 * are exactly names from {@link ROLES}. The gateway reads a token's claims by it, services the identity
 * metadata (identity.ts), and the web shop a pasted token (web/src/session.ts): so it imports nothing,
 * Node's or anyone's, that a browser bundle could not hold.
 */

/** Every role shopmesh knows. A token naming any other is refused at the gateway. */
export const ROLES = ["customer", "admin"] as const;

/** A known role. */
export type Role = (typeof ROLES)[number];

/** A subject (JWT `sub`, customer id): 1-128 of [A-Za-z0-9._:@-]. */
export const SUBJECT = /^[A-Za-z0-9._:@-]{1,128}$/;

/** A verified caller. */
export interface Identity {
  /** Stable subject id (the JWT `sub`), used as the customer id. */
  readonly subject: string;
  /** Roles, e.g. ["customer"] or ["admin"]. */
  readonly roles: readonly Role[];
}

/** True when `value` is the exact name of a known role. */
export function isRole(value: unknown): value is Role {
  return typeof value === "string" && (ROLES as readonly string[]).includes(value);
}

/** The identity for `subject` with `roles`, or undefined when either breaks the rule above. */
export function parseIdentity(subject: unknown, roles: readonly unknown[]): Identity | undefined {
  if (typeof subject !== "string" || !SUBJECT.test(subject)) return undefined;
  if (!roles.every(isRole)) return undefined;
  return { subject, roles: [...new Set(roles)] };
}
