/**
 * An issuer's key set (JWKS) served over real HTTP on an ephemeral loopback port, whose answers (and
 * their delay) a test decides: keys added (a rotation) and withdrawn (a compromise, an old key dropped),
 * an endpoint that fails; it counts the gateway's fetches.
 */
import http from "node:http";
import type net from "node:net";
import { exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";
import { until } from "./events.js";

/** A JWKS endpoint serving RS256 key `k1`, until the test says otherwise. */
export async function startJwks() {
  const keys: JWK[] = [];
  type SigningKey = Awaited<ReturnType<typeof generateKeyPair>>["privateKey"];
  const signers = new Map<string, SigningKey>();
  const algs = new Map<string, "RS256" | "ES256">();
  /**
   * The issuer adds a key (a rotation): served from the next fetch on; `zeroPadded`, its modulus with a
   * leading zero byte (RFC 7518 forbids it; issuers send it). ES256 with `leadingZero`: a key one of
   * whose coordinates starts with a zero byte, sent in full (RFC 7518 §6.2.1.2 requires it), or
   * `stripped` of it (as some issuers' big-integer encoders send it; the key imports all the same).
   */
  const addKey = async (
    kid: string,
    { zeroPadded = false, alg = "RS256" as "RS256" | "ES256", leadingZero = false, stripped = false } = {},
  ) => {
    let pair = await generateKeyPair(alg, { extractable: true });
    let jwk = await exportJWK(pair.publicKey);
    const bytes = (s = "") => Buffer.from(s, "base64url");
    while (alg === "ES256" && leadingZero && bytes(jwk.x)[0] !== 0 && bytes(jwk.y)[0] !== 0) {
      pair = await generateKeyPair(alg, { extractable: true });
      jwk = await exportJWK(pair.publicKey);
    }
    const strip = (s = "") =>
      bytes(s)
        .subarray(bytes(s).findIndex((b) => b !== 0))
        .toString("base64url");
    if (stripped) jwk = { ...jwk, x: strip(jwk.x), y: strip(jwk.y) };
    if (zeroPadded) jwk.n = Buffer.concat([Buffer.from([0]), bytes(jwk.n)]).toString("base64url");
    keys.push({ ...jwk, kid, alg, use: "sig" });
    signers.set(kid, pair.privateKey);
    algs.set(kid, alg);
  };
  /** The issuer drops a key from its set (it can still sign with it, as a thief could): from the next fetch on. */
  const withdraw = (kid: string) => {
    const at = keys.findIndex((k) => k.kid === kid);
    if (at >= 0) keys.splice(at, 1);
  };
  await addKey("k1");
  /** `failing`: every fetch is answered `failStatus`; `raw`: answered 200 with this body instead of the set. */
  const state = { fetches: 0, failing: false, failStatus: 503, delayMs: 0, raw: undefined as string | undefined };
  const server = http.createServer((_req, res) => {
    state.fetches++;
    setTimeout(() => {
      if (state.failing) res.writeHead(state.failStatus).end();
      else if (state.raw !== undefined) res.writeHead(200, { "content-type": "application/json" }).end(state.raw);
      else res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys }));
    }, state.delayMs);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/.well-known/jwks.json`;
  /**
   * A customer's token for `sub` naming `kid`, signed with that key (k1's if the issuer has none),
   * issued `atMs` (now) and valid for an hour.
   */
  const sign = (sub: string, kid = "k1", atMs = performance.timeOrigin + performance.now()) => {
    const now = Math.floor(atMs / 1000);
    return new SignJWT({ roles: ["customer"] })
      .setProtectedHeader({ alg: algs.get(kid) ?? "RS256", kid })
      .setSubject(sub)
      .setIssuer("shopmesh-dev")
      .setAudience("shopmesh")
      .setIssuedAt(now)
      .setExpirationTime(now + 3600)
      .sign(signers.get(kid) ?? (signers.get("k1") as SigningKey));
  };
  return {
    url,
    state,
    sign,
    addKey,
    withdraw,
    /** How many fetches came after the `before`th, once one has (or after 5 s: none). */
    fetchesSince: async (before: number) =>
      (await until(
        () => state.fetches,
        (n) => n > before,
        5_000,
      )) - before,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(r));
    },
  };
}

/** What {@link startJwks} gives a test. */
export type JwksServer = Awaited<ReturnType<typeof startJwks>>;
