/**
 * The issuer's keys (a JWKS URL), as a key lookup for jose's jwtVerify that an issuer's outage does not
 * turn into one: the last key set fetched keeps verifying while a refresh fails (for up to a day), a
 * refresh due by age runs beside the request instead of in front of it, and a failing endpoint is asked
 * again only after a backoff — not once per request that brings a token (jose's remote set fetched on
 * every one while the endpoint failed, and dropped the keys it had when a refresh at 10 minutes failed).
 */
import { createLocalJWKSet, errors, type JSONWebKeySet, type JWTVerifyGetKey } from "jose";
import { backoffMs } from "../platform/index.js";

/** A key set older than this is refreshed (beside the request that finds it so). */
const REFRESH_AFTER_MS = 10 * 60_000;
/** The most often a token naming an unknown key (a rotation) makes the set be fetched again. */
const UNKNOWN_KEY_COOLDOWN_MS = 30_000;
/** How long the last key set keeps verifying while every refresh fails. */
const STALE_FOR_MS = 24 * 60 * 60_000;
/** How long one fetch may take, and the largest answer read. */
const FETCH_TIMEOUT_MS = 5_000;
const MAX_JWKS_BYTES = 1_048_576;

/** A key lookup for `url`'s key set; `clock` is the gateway's. */
export function resilientJwks(url: URL, clock: () => number = Date.now): JWTVerifyGetKey {
  let local: JWTVerifyGetKey | undefined;
  let fetchedAt = Number.NEGATIVE_INFINITY;
  let triedAt = Number.NEGATIVE_INFINITY;
  let failures = 0;
  let inflight: Promise<void> | undefined;

  const fetchSet = async (): Promise<void> => {
    triedAt = clock();
    try {
      const res = await fetch(url, { redirect: "error", signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      if (Number(res.headers.get("content-length") ?? 0) > MAX_JWKS_BYTES) throw new Error("the key set is too large");
      const text = await res.text();
      if (text.length > MAX_JWKS_BYTES) throw new Error("the key set is too large");
      local = createLocalJWKSet(JSON.parse(text) as JSONWebKeySet);
      fetchedAt = clock();
      failures = 0;
    } catch (err) {
      failures++;
      throw new errors.JWKSInvalid(`the issuer's key set could not be fetched: ${(err as Error).message}`);
    }
  };
  /** One fetch at a time; resolves (or rejects) with the one in flight. */
  const refresh = () => {
    inflight ??= fetchSet().finally(() => {
      inflight = undefined;
    });
    return inflight;
  };
  /**
   * Whether `since` is `ms` or more ago. A time ahead of the clock counts as long ago: after a step back
   * of the wall clock, the backoff, the cooldown and the set's age would otherwise hold for the step.
   */
  const past = (since: number, ms: number) => {
    const age = clock() - since;
    return age < 0 || age >= ms;
  };
  /** Whether a failing endpoint may be asked again yet, and an answering one about an unknown key. */
  const mayFetch = (cooldownMs: number) =>
    past(triedAt, failures > 0 ? backoffMs(failures, 1_000, 5 * 60_000) : cooldownMs);

  return async (header, token) => {
    if (local && clock() - fetchedAt > STALE_FOR_MS) local = undefined;
    if (!local) {
      if (!inflight && !mayFetch(0))
        throw new errors.JWKSInvalid("the issuer's key set is unavailable; retrying later");
      await refresh();
    } else if (past(fetchedAt, REFRESH_AFTER_MS) && mayFetch(0)) {
      refresh().catch(() => {}); // the keys held go on verifying meanwhile
    }
    try {
      return await (local as JWTVerifyGetKey)(header, token);
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey)) throw err;
      // A key the issuer added since: the fetch under way (another token's) may bring it, or a new one.
      if (inflight) await inflight.catch(() => {});
      else if (mayFetch(UNKNOWN_KEY_COOLDOWN_MS)) await refresh();
      else throw err;
      return (local as JWTVerifyGetKey)(header, token);
    }
  };
}
