/**
 * What a token's claims must be for the gateway to take them, beyond its signature: the rule the
 * gateway refuses a verified token by (auth.ts), and the web shop a pasted one before it shows it
 * signed in (web/src/session.ts). So it imports nothing a browser bundle could not hold.
 */
import { type Identity, parseIdentity, ROLES, SUBJECT } from "../platform/identity-rule.js";

/** Why a token was refused, for the log (the client always gets a generic 401). */
export class AuthError extends Error {
  override name = "AuthError";
}

/** The claims {@link identityFromClaims} reads, as a JWT's JSON may hold them: anything, or nothing. */
export interface Claims {
  readonly sub?: unknown;
  readonly roles?: unknown;
  readonly exp?: unknown;
  readonly iat?: unknown;
}

/**
 * The identity a token's claims name: `sub` as the subject, `roles` (absent: customer) each an exact
 * known role. Refuses, with an {@link AuthError} saying which, a token without `exp` and `iat` (numbers),
 * one that expires before it was issued, a lifetime above `maxLifetimeS`, and anything it would have to
 * guess about. Expiry against the clock is the caller's (jose's at the gateway).
 */
export function identityFromClaims(claims: Claims, maxLifetimeS: number): Identity {
  const { exp, iat } = claims;
  if (typeof exp !== "number" || typeof iat !== "number") throw new AuthError("token needs exp and iat");
  if (exp < iat) throw new AuthError("token expires (exp) before it was issued (iat)");
  if (exp - iat > maxLifetimeS) throw new AuthError(`token lifetime ${exp - iat} s exceeds ${maxLifetimeS} s`);
  const raw = claims.roles === undefined ? ["customer"] : claims.roles;
  if (!Array.isArray(raw) || raw.length === 0) throw new AuthError("roles must be a non-empty array of role names");
  const identity = parseIdentity(claims.sub, raw);
  if (identity) return identity;
  throw new AuthError(
    typeof claims.sub === "string" && SUBJECT.test(claims.sub)
      ? `token names an unknown role (known: ${ROLES.join(", ")})`
      : "token has no usable sub claim (1 to 128 of letters, digits and . _ : @ -)",
  );
}
