/**
 * A hostile round against the gateway's authentication edges and per-address limits (2026-12-04).
 * Each `describe` is one finding, reproduced the way the client did it; every test fails on the code it
 * was written against. No service runs: an upstream is a closed port, so an admitted call is answered
 * 503 and a refused token 401 — all that is told apart here.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { silentLogger } from "../platform/log.js";
import { type JwksServer, startJwks } from "../test/jwks.js";
import { h1Raw } from "../test/raw.js";
import { type GatewayApp, startGateway } from "./app.js";
import { createAuthenticator } from "./auth.js";
import { loadConfig } from "./config.js";

const CLOSED_UPSTREAM = "127.0.0.1:1";
const GET_PRODUCT = "/shopmesh.inventory.v1.InventoryService/GetProduct";

/** The gateway's token verifier for the key set at `url`, on `clock`. */
const jwksVerifier = (url: string, clock: () => number) =>
  createAuthenticator(
    {
      JWT_SECRET: "",
      JWT_PUBLIC_KEY: "",
      JWT_PUBLIC_KEY_ALG: "RS256",
      JWT_JWKS_URL: url,
      JWT_ISSUER: "shopmesh-dev",
      JWT_AUDIENCE: "shopmesh",
      JWT_MAX_LIFETIME_S: 86_400,
      JWT_CLOCK_SKEW_S: 30,
    },
    clock,
  );

/** The status of a Connect call made with `token`. */
async function callWith(port: number, token: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}${GET_PRODUCT}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: '{"productId":"coffee-beans"}',
  });
  await res.arrayBuffer();
  return res.status;
}

describe("a JWKS endpoint that fails", () => {
  let jwks: JwksServer;
  let gw: GatewayApp;
  beforeAll(async () => {
    jwks = await startJwks();
    gw = await startGateway(
      loadConfig({
        HTTP_HOST: "127.0.0.1",
        HTTP_PORT: "0",
        JWT_JWKS_URL: jwks.url,
        INVENTORY_TARGET: CLOSED_UPSTREAM,
        UPSTREAM_RETRY_MAX_ATTEMPTS: "1",
      }),
      silentLogger(),
    );
  });
  afterAll(async () => {
    await gw?.stop();
    await jwks?.close();
  });
  afterEach(() => {
    jwks.state.failing = false;
  });

  it("is not fetched again for every request that brings a token while it fails (no token needs to be valid)", async () => {
    jwks.state.failing = true;
    const before = jwks.state.fetches;
    // Any client: a token-shaped string with an RS256 header is enough to make the gateway look up its key.
    for (let i = 0; i < 40; i++) expect(await callWith(gw.port, await jwks.sign(`anyone-${i}`, `kid-${i}`))).toBe(401);
    const fetches = jwks.state.fetches - before;
    // Before: 40 requests, 40 fetches — each anonymous request one more request to the struggling issuer,
    // at whatever rate clients send (a slow JWKS: each request also waited the 5 s of jose's timeout).
    expect(fetches, `${fetches} JWKS fetches for 40 requests`).toBeLessThanOrEqual(3);
  });

  it("keeps verifying with the keys it has when a refresh fails (a JWKS outage at the cache's age)", async () => {
    // The gateway's verifier on a clock of the test's: the key set ages without waiting for it.
    let now = Date.now();
    const auth = await jwksVerifier(jwks.url, () => now);
    const verified = async (sub: string) => (await auth(`Bearer ${await jwks.sign(sub)}`)).subject;
    expect(await verified("alice")).toBe("alice");
    // Control: 11 minutes on (the set is due for a refresh at 10), the JWKS answering: a new token is verified
    // at once, and the set fetched again beside it.
    now += 11 * 60_000;
    const fetched = jwks.state.fetches;
    expect(await verified("carol")).toBe("carol");
    expect(await jwks.fetchesSince(fetched)).toBe(1);
    // Another 11 minutes on, the JWKS failing: a new token (none is in the cache of verified tokens),
    // signed with the key the gateway holds. Before: refused — during any JWKS outage or blip at the
    // 10-minute mark, every new token of every user was refused until the issuer answered again.
    now += 11 * 60_000;
    jwks.state.failing = true;
    expect(await verified("bob")).toBe("bob");
    // Not for ever: a day after the last key set it fetched, an issuer still failing verifies nothing.
    now += 25 * 60 * 60_000;
    await expect(verified("dave")).rejects.toThrow(/key set/);
  });
});

describe("a JWKS endpoint's key set on the gateway's clock (a review of the above)", () => {
  let jwks: JwksServer;
  let now = Date.now();
  let auth: Awaited<ReturnType<typeof createAuthenticator>>;
  beforeAll(async () => {
    jwks = await startJwks();
  });
  afterAll(() => jwks?.close());
  beforeEach(async () => {
    now = Date.now();
    jwks.state.failing = false;
    auth = await jwksVerifier(jwks.url, () => now);
  });
  const verified = async (sub: string, kid = "k1") => (await auth(`Bearer ${await jwks.sign(sub, kid, now)}`)).subject;

  it("verifies a token with a key the issuer just added that arrives while that key's fetch is under way", async () => {
    expect(await verified("alice")).toBe("alice");
    now += 60_000; // past the cooldown between fetches for an unknown key
    await jwks.addKey("k2");
    jwks.state.delayMs = 200; // an ordinary fetch's latency
    try {
      // Two clients with new tokens at once: the first's lookup fetches the set, the second's comes during it.
      // Before: the second was refused (401) — the fetch had started, so its cooldown was running.
      const subjects = await Promise.allSettled([verified("bob", "k2"), verified("carol", "k2")]);
      expect(subjects).toEqual([
        { status: "fulfilled", value: "bob" },
        { status: "fulfilled", value: "carol" },
      ]);
    } finally {
      jwks.state.delayMs = 0;
    }
  });

  it("asks a failing issuer again after its backoff, however the wall clock was stepped back meanwhile", async () => {
    jwks.state.failing = true;
    await expect(verified("alice")).rejects.toThrow(/key set/);
    now -= 60 * 60_000; // an NTP step back of an hour
    jwks.state.failing = false;
    now += 10_000; // ten seconds on: the backoff after one failure is a second
    const fetched = jwks.state.fetches;
    // Before: "unavailable; retrying later" for the hour of the step — every new token refused.
    expect(await verified("bob")).toBe("bob");
    expect(jwks.state.fetches).toBe(fetched + 1);
  });

  it("refreshes a key set fetched before the wall clock was stepped back once it is due, not a step later", async () => {
    expect(await verified("alice")).toBe("alice");
    now -= 60 * 60_000;
    now += 11 * 60_000; // due by the time it has been held, and the issuer has rotated
    await jwks.addKey("k3");
    const fetched = jwks.state.fetches;
    expect(await verified("bob")).toBe("bob");
    expect(await jwks.fetchesSince(fetched)).toBe(1);
  });
});

describe("a request target in absolute form, with the public development key", () => {
  let gw: GatewayApp;
  beforeAll(async () => {
    gw = await startGateway(
      loadConfig({ HTTP_HOST: "127.0.0.1", HTTP_PORT: "0", INVENTORY_TARGET: CLOSED_UPSTREAM }),
      silentLogger(),
    );
  });
  afterAll(() => gw?.stop());

  const signIn = (target: string, host: string) => {
    const body = '{"user":"operator"}';
    return h1Raw(
      gw.port,
      `POST ${target} HTTP/1.1\r\nHost: ${host}\r\ncontent-type: application/json\r\n` +
        `content-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
      2_000,
    );
  };

  it("is a request for the target's host (RFC 9112 §3.2.2): a sign-in for attacker.example is refused", async () => {
    // Control: the same request naming attacker.example in Host is refused (400).
    expect((await signIn("/dev/token", "attacker.example")).status).toBe(400);
    // The server must ignore Host and use the target's authority; the gateway read Host, and handed an
    // operator token to a request addressed to another name.
    for (const target of [
      "http://attacker.example/dev/token",
      "http://attacker.example:8080/dev/token",
      "http://user@attacker.example/dev/token",
    ]) {
      const { status, raw } = await signIn(target, "localhost");
      expect({ target, status, token: raw.includes('"token"') }).toEqual({ target, status: 400, token: false });
    }
  });
});

describe("per-address limits and IPv6 clients behind a trusted proxy", () => {
  let gw: GatewayApp;
  beforeAll(async () => {
    gw = await startGateway(
      loadConfig({
        HTTP_HOST: "127.0.0.1",
        HTTP_PORT: "0",
        INVENTORY_TARGET: CLOSED_UPSTREAM,
        TRUST_PROXY: "true",
        RATE_LIMIT_IP_RPS: "1",
        RATE_LIMIT_IP_BURST: "5",
      }),
      silentLogger(),
    );
  });
  afterAll(() => gw?.stop());

  it("count one client's /64 as one client: 30 requests from one IPv6 network meet the rate limit", async () => {
    const statuses: number[] = [];
    for (let i = 1; i <= 30; i++) {
      // What the proxy appended: one IPv6 client, each request from another address of its own /64 (as
      // privacy addresses, or any host with a routed /64, have them for free).
      const res = await fetch(`${gw.url}/openapi.json`, {
        headers: { "x-forwarded-for": `2001:db8:1:2::${i.toString(16)}` },
      });
      await res.arrayBuffer();
      statuses.push(res.status);
    }
    const limited = statuses.filter((s) => s === 429).length;
    // Before: none — every address its own bucket (and its own 256 calls in progress): the per-address
    // limits hold nobody with an IPv6 network back.
    expect(limited, `429 for ${limited} of 30`).toBeGreaterThanOrEqual(20);
  });
});

describe("an HS256 secret too short to be secret", () => {
  it("is refused at start beyond loopback: a one-character JWT_SECRET is brute-forced from any token", async () => {
    // RFC 7518 §3.2: an HS256 key must be at least 256 bits. Anyone holding one token (any customer's)
    // can search for a short secret offline, then sign `roles: ["admin"]` for any subject.
    const config = { HTTP_HOST: "0.0.0.0", HTTP_PORT: "0", JWT_SECRET: "x" };
    // Before: accepted, and the gateway listened on every interface with it (the development key alone
    // was held to loopback).
    expect(() => loadConfig(config)).toThrow(/JWT_SECRET/);
  });
});
