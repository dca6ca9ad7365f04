/**
 * Authentication at the edge: a JWT bearer token verified with jose
 * (signature, `exp`/`nbf`/`iat`, `iss`, `aud`), turned into the identity the
 * gateway passes downstream. Keys: a JWKS URL, or a PEM public key
 * (RS256/ES256), or an HS256 secret — in that order of precedence. Only the
 * algorithms of the configured key are accepted, so `alg: none` and
 * algorithm-confusion tokens fail.
 *
 * Beyond the signature, a token must say when it was issued and when it
 * expires, live at most `JWT_MAX_LIFETIME_S`, not be issued in the future
 * (beyond `JWT_CLOCK_SKEW_S`), and name only known roles: a role string the
 * gateway would read one way and a service another is refused outright. So is
 * a token whose header or claims name a member twice (jwt-members.ts).
 */
import { importSPKI, type JWTPayload, jwtVerify, SignJWT } from "jose";
import { StartRefused } from "../platform/config.js";
import type { Role } from "../platform/identity-rule.js";
import { AuthError, identityFromClaims } from "./claims.js";
import type { Caller } from "./context.js";
import { resilientJwks } from "./jwks.js";
import { repeatedInToken } from "./jwt-members.js";

export { AuthError, identityFromClaims } from "./claims.js";

/**
 * A request's one Authorization header (`rawHeaders`: names and values, alternating, as Node gives
 * them), or null. More than one is refused: Node keeps the first, a proxy in front of the gateway may
 * read the last, and a credential two layers read differently identifies nobody.
 */
export function authorizationOf(rawHeaders: readonly string[]): string | null {
  let found: string | null = null;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (name.length !== 13 || name.toLowerCase() !== "authorization") continue;
    if (found !== null) throw new AuthError("more than one Authorization header");
    found = rawHeaders[i + 1] ?? "";
  }
  return found;
}

/** Verifies a bearer token and returns the caller's identity, and until when the token is accepted. */
export type Authenticator = (authorization: string | null) => Promise<Caller>;

/** Key material and claims to check. */
export interface AuthConfig {
  readonly JWT_SECRET: string;
  readonly JWT_PUBLIC_KEY: string;
  readonly JWT_PUBLIC_KEY_ALG: "RS256" | "ES256";
  readonly JWT_JWKS_URL: string;
  readonly JWT_ISSUER: string;
  readonly JWT_AUDIENCE: string;
  /** Longest accepted lifetime (`exp - iat`), seconds. */
  readonly JWT_MAX_LIFETIME_S: number;
  /** Clock difference tolerated on `iat`, `nbf` and `exp`, seconds. */
  readonly JWT_CLOCK_SKEW_S: number;
}

/** Most verified tokens remembered at once; a miss only costs one signature check. */
const CACHE_LIMIT = 10_000;
/** Longest a verified token is remembered, ms (it is never kept past its `exp`). */
const CACHE_TTL_MS = 60_000;

/** Builds the verifier once (keys imported up front, a JWKS fetched when first needed: jwks.ts). */
export async function createAuthenticator(c: AuthConfig, clock: () => number = Date.now): Promise<Authenticator> {
  const options = {
    issuer: c.JWT_ISSUER,
    audience: c.JWT_AUDIENCE,
    clockTolerance: c.JWT_CLOCK_SKEW_S,
    requiredClaims: ["exp", "iat"],
    // Also makes jose refuse an `iat` in the future (beyond the tolerance).
    maxTokenAge: c.JWT_MAX_LIFETIME_S,
  };
  const opts = () => ({ ...options, currentDate: new Date(clock()) });
  let verify: (token: string) => Promise<{ payload: JWTPayload; keyHeld?: () => boolean }>;
  if (c.JWT_JWKS_URL) {
    const jwks = resilientJwks(new URL(c.JWT_JWKS_URL), clock);
    verify = async (t) => {
      const { payload, key } = await jwtVerify(t, jwks.getKey, { ...opts(), algorithms: ["RS256", "ES256"] });
      return { payload, keyHeld: await jwks.holder(key) };
    };
  } else if (c.JWT_PUBLIC_KEY) {
    const alg = c.JWT_PUBLIC_KEY_ALG;
    const key = await importSPKI(c.JWT_PUBLIC_KEY.replaceAll("\\n", "\n"), alg).catch((err: unknown) => {
      // Not a key this build can read, now or after a restart: a line and exit 78, not a stack trace.
      throw new StartRefused(
        `JWT_PUBLIC_KEY is not a PEM public key (-----BEGIN PUBLIC KEY-----) for ${alg} (JWT_PUBLIC_KEY_ALG): ` +
          (err instanceof Error ? err.message : String(err)),
      );
    });
    verify = (t) => jwtVerify(t, key, { ...opts(), algorithms: [alg] });
  } else {
    const key = new TextEncoder().encode(c.JWT_SECRET);
    verify = (t) => jwtVerify(t, key, { ...opts(), algorithms: ["HS256"] });
  }
  // Verified tokens, until they expire (at most a minute): the hot path skips the signature check. A
  // clock that went back since (an NTP step, a VM restored) re-verifies: the minute is the clock's; so
  // does a token whose key the issuer's set no longer holds (refused then, as its streams end).
  const verified = new Map<string, { identity: Caller; at: number; until: number }>();
  return async (authorization) => {
    const m = /^Bearer ([A-Za-z0-9_\-.]+)$/.exec(authorization ?? "");
    if (!m?.[1]) throw new AuthError(authorization ? "malformed Authorization header" : "missing bearer token");
    const now = clock();
    const hit = verified.get(m[1]);
    if (hit && hit.at <= now && now < hit.until && hit.identity.keyHeld?.() !== false) return hit.identity;
    let claims: JWTPayload;
    let keyHeld: (() => boolean) | undefined;
    try {
      ({ payload: claims, keyHeld } = await verify(m[1]));
    } catch (err) {
      throw new AuthError((err as Error).message);
    }
    const twice = repeatedInToken(m[1]);
    if (twice !== undefined) throw new AuthError(`token names ${JSON.stringify(twice.slice(0, 64))} twice`);
    const exp = claims.exp as number;
    const identity: Caller = {
      ...identityFromClaims(claims, c.JWT_MAX_LIFETIME_S),
      expiresAt: (exp + c.JWT_CLOCK_SKEW_S) * 1000,
      ...(keyHeld ? { keyHeld } : {}),
    };
    if (verified.size >= CACHE_LIMIT) verified.clear();
    verified.set(m[1], { identity, at: now, until: Math.min(exp * 1000, now + CACHE_TTL_MS) });
    return identity;
  };
}

/** Signs a development token (HS256) for `subject` with `roles`, valid for `ttlSeconds`. */
export function signDevToken(
  c: Pick<AuthConfig, "JWT_SECRET" | "JWT_ISSUER" | "JWT_AUDIENCE">,
  subject: string,
  roles: readonly Role[],
  ttlSeconds = 3600,
): Promise<string> {
  return new SignJWT({ roles: [...roles] })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(subject)
    .setIssuer(c.JWT_ISSUER)
    .setAudience(c.JWT_AUDIENCE)
    .setIssuedAt()
    .setExpirationTime(`${ttlSeconds}s`)
    .sign(new TextEncoder().encode(c.JWT_SECRET));
}
