/** Token checks and the verified-token cache, with an injected clock (no network, no gateway). */
import { createHmac } from "node:crypto";
import { SignJWT } from "jose";
import { describe, expect, it } from "vitest";
import { AuthError, createAuthenticator, identityFromClaims } from "./auth.js";

const SECRET = "unit-test-secret";
const config = {
  JWT_SECRET: SECRET,
  JWT_PUBLIC_KEY: "",
  JWT_PUBLIC_KEY_ALG: "RS256" as const,
  JWT_JWKS_URL: "",
  JWT_ISSUER: "iss",
  JWT_AUDIENCE: "aud",
  JWT_MAX_LIFETIME_S: 3_600,
  JWT_CLOCK_SKEW_S: 30,
};
const T0 = 1_800_000_000; // seconds

function token(claims: Record<string, unknown>, iat = T0, exp = T0 + 600) {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256" })
    .setSubject("alice")
    .setIssuer("iss")
    .setAudience("aud")
    .setIssuedAt(iat)
    .setExpirationTime(exp)
    .sign(new TextEncoder().encode(SECRET));
}

describe("identityFromClaims", () => {
  it("reads sub and exact role names; customer when roles are absent", () => {
    expect(identityFromClaims({ sub: "a", iat: 1, exp: 2 }, 60)).toEqual({ subject: "a", roles: ["customer"] });
    expect(identityFromClaims({ sub: "a", iat: 1, exp: 2, roles: ["admin", "customer"] }, 60)).toEqual({
      subject: "a",
      roles: ["admin", "customer"],
    });
  });

  it("refuses what two layers could read differently, and lifetimes over the cap", () => {
    const bad = [
      { sub: "a", iat: 1, exp: 2, roles: ["customer,admin"] },
      { sub: "a", iat: 1, exp: 2, roles: [" admin"] },
      { sub: "a", iat: 1, exp: 2, roles: "admin" },
      { sub: "a", iat: 1, exp: 2, roles: [] },
      { sub: "a", iat: 1, exp: 2, roles: [1] },
      { sub: "a b", iat: 1, exp: 2 },
      { iat: 1, exp: 2 },
      { sub: "a", exp: 2 },
      { sub: "a", iat: 1 },
      { sub: "a", iat: 1, exp: 62 },
      { sub: "a", iat: 20, exp: 10 }, // expires before it was issued: no lifetime to read
    ];
    for (const claims of bad) expect(() => identityFromClaims(claims, 60), JSON.stringify(claims)).toThrow(AuthError);
  });
});

describe("createAuthenticator", () => {
  it("accepts a good token and serves it from the cache, but never past its exp and the skew, when it says it expires", async () => {
    let now = T0 * 1000;
    const authenticate = await createAuthenticator(config, () => now);
    const t = await token({ roles: ["customer"] });
    // The instant the token stops being accepted, which ends a stream it opened (forward.ts).
    const alice = { subject: "alice", roles: ["customer"], expiresAt: (T0 + 600 + 30) * 1000 };
    await expect(authenticate(`Bearer ${t}`)).resolves.toEqual(alice);
    now += 30_000; // a cache hit
    await expect(authenticate(`Bearer ${t}`)).resolves.toEqual(alice);
    now = (T0 + 600 + 29) * 1000; // past exp, within the skew
    await expect(authenticate(`Bearer ${t}`)).resolves.toEqual(alice);
    now = (T0 + 600 + 31) * 1000; // past exp and the skew
    await expect(authenticate(`Bearer ${t}`)).rejects.toThrow(AuthError);
  });

  it("refuses tokens issued in the future beyond the skew, but tolerates the skew", async () => {
    const authenticate = await createAuthenticator(config, () => T0 * 1000);
    await expect(authenticate(`Bearer ${await token({}, T0 + 20, T0 + 600)}`)).resolves.toMatchObject({
      subject: "alice",
    });
    await expect(authenticate(`Bearer ${await token({}, T0 + 120, T0 + 700)}`)).rejects.toThrow(AuthError);
    // Issued 20 s ahead and expiring 10 s ahead, both within the skew: a token that ends before it begins.
    await expect(authenticate(`Bearer ${await token({}, T0 + 20, T0 + 10)}`)).rejects.toThrow(
      "token expires (exp) before it was issued (iat)",
    );
  });

  it("refuses a missing, malformed or non-bearer header", async () => {
    const authenticate = await createAuthenticator(config, () => T0 * 1000);
    for (const h of [null, "", "Bearer", "Bearer a b", "Basic x"]) {
      await expect(authenticate(h)).rejects.toThrow(AuthError);
    }
  });

  it("refuses a token whose header or claims name a member twice, whichever copy is the caller's", async () => {
    const authenticate = await createAuthenticator(config, () => T0 * 1000);
    const part = (json: string) => Buffer.from(json).toString("base64url");
    const signed = (header: string, claims: string) => {
      const input = `${part(header)}.${part(claims)}`;
      return `Bearer ${input}.${createHmac("sha256", SECRET).update(input).digest("base64url")}`;
    };
    const std = `"iss":"iss","aud":"aud","iat":${T0},"exp":${T0 + 600}`;
    const hs = '{"alg":"HS256"}';
    // Each copy alone is a good token; the same bytes with both are nobody's.
    await expect(authenticate(signed(hs, `{"sub":"alice",${std}}`))).resolves.toMatchObject({ subject: "alice" });
    for (const [header, claims] of [
      [hs, `{"sub":"mallory",${std},"sub":"alice"}`],
      [hs, `{"sub":"alice",${std},"s\\u0075b":"mallory"}`],
      [hs, `{"sub":"alice",${std},"sub":"alice"}`],
      [hs, `{"sub":"bob",${std},"roles":["customer"],"roles":["admin"]}`],
      ['{"alg":"HS256","alg":"HS256"}', `{"sub":"alice",${std}}`],
    ]) {
      await expect(authenticate(signed(header as string, claims as string)), claims).rejects.toThrow(AuthError);
    }
  });
});
