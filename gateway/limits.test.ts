/** Token buckets with an injected clock: refill, Retry-After, per-key isolation, bounded memory. */
import { describe, expect, it } from "vitest";
import { addressKey, RateLimiter } from "./limits.js";

function clock() {
  let now = 0;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

describe("RateLimiter", () => {
  it("lets a burst through, then refuses with how long to wait, then refills at the rate", () => {
    const c = clock();
    const limiter = new RateLimiter(2, 3, 100, c.now);
    expect([1, 2, 3].map(() => limiter.take("a").ok)).toEqual([true, true, true]);
    expect(limiter.take("a")).toEqual({ ok: false, retryAfterSec: 1 });
    c.advance(499);
    expect(limiter.take("a").ok).toBe(false);
    c.advance(2);
    expect(limiter.take("a").ok).toBe(true);
    c.advance(10_000); // refill never exceeds the burst
    expect([1, 2, 3, 4].map(() => limiter.take("a").ok)).toEqual([true, true, true, false]);
  });

  it("says how many whole seconds until a token, at least one", () => {
    const c = clock();
    const slow = new RateLimiter(0.25, 1, 100, c.now);
    expect(slow.take("k").ok).toBe(true);
    expect(slow.take("k")).toEqual({ ok: false, retryAfterSec: 4 });
  });

  it("keeps keys apart", () => {
    const c = clock();
    const limiter = new RateLimiter(1, 1, 100, c.now);
    expect(limiter.take("a").ok).toBe(true);
    expect(limiter.take("a").ok).toBe(false);
    expect(limiter.take("b").ok).toBe(true);
  });

  it("forgets the least recently used key first when full; a forgotten key starts full again", () => {
    const c = clock();
    const limiter = new RateLimiter(1, 1, 2, c.now);
    expect(limiter.take("a").ok).toBe(true);
    expect(limiter.take("b").ok).toBe(true);
    expect(limiter.take("a").ok).toBe(false); // "a" is now the most recently used
    expect(limiter.take("c").ok).toBe(true); // evicts "b", the least recently used
    expect(limiter.take("a").ok).toBe(false); // "a" was kept, still empty
    expect(limiter.take("b").ok).toBe(true); // "b" was forgotten: full again (evicts "c")
    expect(limiter.take("c").ok).toBe(true);
  });
});

describe("addressKey", () => {
  it("counts an IPv6 client by its /64 and an IPv4 one by its address, however written", () => {
    expect(addressKey("203.0.113.7")).toBe("203.0.113.7");
    expect(addressKey("::ffff:203.0.113.7")).toBe("203.0.113.7");
    expect(addressKey("2001:db8:1:2::1")).toBe("2001:db8:1:2::/64");
    expect(addressKey("2001:0db8:0001:0002:ffff:0:0:9")).toBe("2001:db8:1:2::/64");
    expect(addressKey("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(addressKey("::1")).toBe("0:0:0:0::/64");
    expect(addressKey("fe80::1%eth0")).toBe("fe80:0:0:0::/64");
    expect(addressKey("2001:db8:1:2:3:4:1.2.3.4")).toBe("2001:db8:1:2::/64");
    expect(addressKey("64:ff9b::1.2.3.4")).toBe("64:ff9b:0:0::/64");
    expect(addressKey("not an address")).toBe("not an address");
    expect(addressKey("")).toBe("");
  });
});
