/**
 * The issuer's keys (a JWKS URL), as a key lookup for jose's jwtVerify that an issuer's outage does not
 * turn into one: the last key set fetched keeps verifying while a refresh fails (for up to a day), a
 * refresh due by age runs beside the request instead of in front of it, and a failing endpoint is asked
 * again only after a backoff — not once per request that brings a token (jose's remote set fetched on
 * every one while the endpoint failed, and dropped the keys it had when a refresh at 10 minutes failed).
 * A stream asks whether the key that verified its token is still in the set (withdrawn: its stream ends).
 */
import {
  calculateJwkThumbprint,
  createLocalJWKSet,
  errors,
  exportJWK,
  importJWK,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
  type ResolvedKey,
} from "jose";
import { backoffMs } from "../platform/backoff.js";

/** A key set older than this is refreshed (beside the request, or the stream's check, that finds it so). */
const REFRESH_AFTER_MS = 10 * 60_000;
/** The most often a token naming an unknown key (a rotation) makes the set be fetched again. */
const UNKNOWN_KEY_COOLDOWN_MS = 30_000;
/** How long the last key set keeps verifying while every refresh fails. */
const STALE_FOR_MS = 24 * 60 * 60_000;
/** How long one fetch may take, and the largest answer read. */
const FETCH_TIMEOUT_MS = 5_000;
const MAX_JWKS_BYTES = 1_048_576;

/** The issuer's key set as the gateway holds it. */
export interface IssuerKeys {
  /** The key lookup for jose's `jwtVerify`. */
  readonly getKey: JWTVerifyGetKey;
  /**
   * A check for `key`, one `getKey` gave: whether the set last fetched still holds it (its RFC 7638
   * thumbprint), false once a fetched set lacks it. A fetch that fails changes nothing. Each call costs
   * a set lookup, and starts the set's refresh when due by age, beside the caller: so a stream that is
   * the only traffic still learns of a withdrawal, within the age (10 minutes) and the fetch.
   */
  readonly holder: (key: ResolvedKey["key"]) => Promise<() => boolean>;
}

/**
 * The RFC 7638 thumbprints of a set's keys, as of the keys jose imports from them for RS256 and ES256
 * (one it cannot read has none: it verifies nothing), exported as {@link IssuerKeys.holder} exports
 * the key that verified a token. Not as sent: an RSA integer with leading zero bytes (RFC 7518 §6.3.1
 * forbids them) and an EC coordinate without its leading zero byte (§6.2.1.2 requires it) import all
 * the same, and export otherwise — every stream of such a key ended as it opened.
 */
async function thumbprints(set: JSONWebKeySet): Promise<Set<string>> {
  const prints = await Promise.all(
    set.keys.map(async (k) => {
      try {
        const alg = k.kty === "RSA" ? "RS256" : k.kty === "EC" ? "ES256" : undefined;
        return alg ? await calculateJwkThumbprint(await exportJWK(await importJWK({ ...k, ext: true }, alg))) : "";
      } catch {
        return "";
      }
    }),
  );
  return new Set(prints.filter((p) => p !== ""));
}

/** A key lookup for `url`'s key set, and the check streams make of it; `clock` is the gateway's. */
export function resilientJwks(url: URL, clock: () => number = Date.now): IssuerKeys {
  let local: JWTVerifyGetKey | undefined;
  let held = new Set<string>();
  const printOf = new WeakMap<ResolvedKey["key"], string>();
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
      const set = JSON.parse(text) as JSONWebKeySet;
      const next = createLocalJWKSet(set);
      held = await thumbprints(set);
      local = next;
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
  /** Refreshes a set due by age beside the caller: the keys held go on verifying meanwhile. */
  const refreshIfDue = () => {
    if (past(fetchedAt, REFRESH_AFTER_MS) && mayFetch(0)) refresh().catch(() => {});
  };

  const getKey: JWTVerifyGetKey = async (header, token) => {
    if (local && clock() - fetchedAt > STALE_FOR_MS) local = undefined;
    if (!local) {
      if (!inflight && !mayFetch(0))
        throw new errors.JWKSInvalid("the issuer's key set is unavailable; retrying later");
      await refresh();
    } else refreshIfDue();
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
  const holder = async (key: ResolvedKey["key"]) => {
    let print = printOf.get(key);
    if (print === undefined) {
      print = await calculateJwkThumbprint(await exportJWK(key));
      printOf.set(key, print); // jose gives one key object per key of a set fetched: exported once
    }
    const p = print;
    return () => {
      refreshIfDue();
      return held.has(p);
    };
  };
  return { getKey, holder };
}
