/**
 * Authentication at the edge: a JWT bearer token verified with jose
 * (signature, `exp`/`nbf`, `iss`, `aud`), turned into the identity the
 * gateway passes downstream. Keys: a JWKS URL, or a PEM public key
 * (RS256/ES256), or an HS256 secret — in that order of precedence. Only the
 * algorithms of the configured key are accepted, so `alg: none` and
 * algorithm-confusion tokens fail.
 */
import { createRemoteJWKSet, importSPKI, type JWTPayload, jwtVerify, SignJWT } from "jose";
import type { Identity } from "../platform/index.js";

/** Why a token was refused, for the log (the client always gets a generic 401). */
export class AuthError extends Error {
  override name = "AuthError";
}

/** Verifies a bearer token and returns the caller's identity. */
export type Authenticator = (authorization: string | null) => Promise<Identity>;

/** Key material and claims to check. */
export interface AuthConfig {
  readonly JWT_SECRET: string;
  readonly JWT_PUBLIC_KEY: string;
  readonly JWT_PUBLIC_KEY_ALG: "RS256" | "ES256";
  readonly JWT_JWKS_URL: string;
  readonly JWT_ISSUER: string;
  readonly JWT_AUDIENCE: string;
}

/** Builds the verifier once (keys imported up front, JWKS cached by jose). */
export async function createAuthenticator(c: AuthConfig): Promise<Authenticator> {
  const options = { issuer: c.JWT_ISSUER, audience: c.JWT_AUDIENCE, clockTolerance: 5 };
  let verify: (token: string) => Promise<JWTPayload>;
  if (c.JWT_JWKS_URL) {
    const jwks = createRemoteJWKSet(new URL(c.JWT_JWKS_URL));
    verify = async (t) => (await jwtVerify(t, jwks, { ...options, algorithms: ["RS256", "ES256"] })).payload;
  } else if (c.JWT_PUBLIC_KEY) {
    const alg = c.JWT_PUBLIC_KEY_ALG;
    const key = await importSPKI(c.JWT_PUBLIC_KEY.replaceAll("\\n", "\n"), alg);
    verify = async (t) => (await jwtVerify(t, key, { ...options, algorithms: [alg] })).payload;
  } else {
    const key = new TextEncoder().encode(c.JWT_SECRET);
    verify = async (t) => (await jwtVerify(t, key, { ...options, algorithms: ["HS256"] })).payload;
  }
  // Verified tokens, until they expire (at most a minute): the hot path skips the signature check.
  const verified = new Map<string, { identity: Identity; until: number }>();
  return async (authorization) => {
    const m = /^Bearer ([A-Za-z0-9_\-.]+)$/.exec(authorization ?? "");
    if (!m?.[1]) throw new AuthError(authorization ? "malformed Authorization header" : "missing bearer token");
    const hit = verified.get(m[1]);
    if (hit && hit.until > Date.now()) return hit.identity;
    let claims: JWTPayload;
    try {
      claims = await verify(m[1]);
    } catch (err) {
      throw new AuthError((err as Error).message);
    }
    if (typeof claims.sub !== "string" || claims.sub === "" || !/^[A-Za-z0-9._:@-]{1,128}$/.test(claims.sub)) {
      throw new AuthError("token has no usable sub claim");
    }
    const roles = Array.isArray(claims.roles) ? claims.roles.filter((r): r is string => typeof r === "string") : [];
    const identity: Identity = { subject: claims.sub, roles: roles.length > 0 ? roles : ["customer"] };
    if (verified.size >= 10_000) verified.clear(); // bounded; a miss only costs one verification
    const expiresAt = typeof claims.exp === "number" ? claims.exp * 1000 : Date.now();
    verified.set(m[1], { identity, until: Math.min(expiresAt, Date.now() + 60_000) });
    return identity;
  };
}

/** Signs a development token (HS256) for `subject` with `roles`, valid for `ttlSeconds`. */
export function signDevToken(
  c: Pick<AuthConfig, "JWT_SECRET" | "JWT_ISSUER" | "JWT_AUDIENCE">,
  subject: string,
  roles: readonly string[],
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
