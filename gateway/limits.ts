/**
 * Token-bucket rate limiting, per key (a principal, or a client IP before
 * authentication). Each key's bucket holds up to `burst` tokens and refills
 * at `ratePerSec`; a request takes one. The map is bounded: the least
 * recently used keys are dropped first (a dropped key starts full again,
 * which only ever errs on the side of letting a request through).
 */
import { isIPv6 } from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";
import { onAnswerEnd } from "./answer-end.js";
import type { Req, Res } from "./endpoint.js";

/**
 * The client a per-address limit counts `ip` as: an IPv4 address (also written IPv4-mapped, `::ffff:a.b.c.d`)
 * as itself, an IPv6 address as its /64 — one host has a whole /64 to pick addresses from (privacy
 * addresses rotate within it), so each address its own bucket would hold nobody back.
 */
export function addressKey(ip: string): string {
  const bare = ip.split("%", 1)[0] ?? ""; // a zone (fe80::1%eth0) names an interface, not a client
  if (!isIPv6(bare)) return ip;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  if (mapped?.[1]) return mapped[1];
  const [head = "", tail] = bare.split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  // An IPv4 tail (::a.b.c.d) stands for two groups; "::" for the zeros between.
  const width = right.reduce((n, g) => n + (g.includes(".") ? 2 : 1), 0);
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - width).fill("0"), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => Number.parseInt(g, 16).toString(16))
    .join(":")}::/64`;
}

/** Outcome of {@link RateLimiter.take}. */
export type Take = { readonly ok: true } | { readonly ok: false; readonly retryAfterSec: number };

/** A set of token buckets. */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly ratePerSec: number,
    private readonly burst: number,
    private readonly maxKeys = 100_000,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Takes a token from `key`'s bucket, or says how long until one is available. */
  take(key: string): Take {
    const t = this.now();
    let b = this.buckets.get(key);
    if (b) {
      this.buckets.delete(key); // re-insert below: Map order is our LRU order
      b.tokens = Math.min(this.burst, b.tokens + ((t - b.at) / 1000) * this.ratePerSec);
      b.at = t;
    } else {
      b = { tokens: this.burst, at: t };
      if (this.buckets.size >= this.maxKeys) this.buckets.delete(this.buckets.keys().next().value as string);
    }
    this.buckets.set(key, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return { ok: true };
    }
    return { ok: false, retryAfterSec: Math.max(1, Math.ceil((1 - b.tokens) / this.ratePerSec)) };
  }
}

/**
 * Calls in progress, per key and in all: a client that holds calls open
 * (never reads its answers, watches without end) is refused new ones once
 * it holds `perKey`, and everyone once `total` are open, so held calls
 * cannot add up to the gateway's memory.
 */
export class ConcurrencyLimiter {
  private readonly open = new Map<string, number>();
  private all = 0;

  constructor(
    private readonly perKey: number,
    private readonly total: number,
  ) {}

  /** Takes a slot for `key`; the function that gives it back (once), or why none was free. */
  take(key: string): { readonly release: () => void } | { readonly refused: "key" | "total" } {
    const n = this.open.get(key) ?? 0;
    if (n >= this.perKey) return { refused: "key" };
    if (this.all >= this.total) return { refused: "total" };
    this.open.set(key, n + 1);
    this.all++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.all--;
        const left = (this.open.get(key) ?? 1) - 1;
        if (left > 0) this.open.set(key, left);
        else this.open.delete(key);
      },
    };
  }
}

/**
 * The per-principal limits of an authenticated call: its rate, then — for a stream (WatchOrder) —
 * a slot among the principal's streams in progress, given back when its answer is over: one account
 * holding watches from many addresses took most of the gateway's calls and memory. Why it is
 * refused, or undefined.
 */
export function admitPrincipal(
  limits: { readonly perPrincipal: RateLimiter; readonly streamsPerPrincipal?: ConcurrencyLimiter },
  subject: string,
  stream: boolean,
  req: Req,
  res: Res,
): ConnectError | undefined {
  const byPrincipal = limits.perPrincipal.take(`sub:${subject}`);
  if (!byPrincipal.ok) return rateLimited("principal", byPrincipal.retryAfterSec);
  if (!stream || !limits.streamsPerPrincipal) return undefined;
  const slot = limits.streamsPerPrincipal.take(subject);
  if ("refused" in slot) {
    return new ConnectError(
      "too many streams in progress (principal); end one or retry later",
      Code.ResourceExhausted,
      {
        "retry-after": "1",
      },
    );
  }
  onAnswerEnd(req, res, slot.release);
  return undefined;
}

/** The refusal of a request over a rate limit (`what`: whose), with when to retry. */
function rateLimited(what: string, retryAfterSec: number): ConnectError {
  return new ConnectError(`rate limit exceeded (${what}); retry after ${retryAfterSec}s`, Code.ResourceExhausted, {
    "retry-after": String(retryAfterSec),
  });
}

/**
 * The per-address limits every request but a probe passes first, RPC or plain endpoint: a slot for a
 * call in progress (given back when its answer is over: answer-end.ts), then — when `rated` — the
 * rate. Why it is refused, or undefined.
 */
export function admitAddress(
  limits: { readonly inFlight: ConcurrencyLimiter; readonly perIp: RateLimiter },
  ip: string,
  req: Req,
  res: Res,
  rated = true,
): ConnectError | undefined {
  const client = addressKey(ip);
  const slot = limits.inFlight.take(client);
  if ("refused" in slot) {
    const who = slot.refused === "key" ? "client address" : "gateway";
    return new ConnectError(`too many calls in progress (${who}); retry later`, Code.ResourceExhausted, {
      "retry-after": "1",
    });
  }
  onAnswerEnd(req, res, slot.release);
  if (!rated) return undefined;
  const byIp = limits.perIp.take(`ip:${client}`);
  return byIp.ok ? undefined : rateLimited("client address", byIp.retryAfterSec);
}
