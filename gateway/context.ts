/** What the gateway learns about a request before any handler runs, as Connect context values. */
import { createContextKey } from "@connectrpc/connect";
import type { Identity } from "../platform/identity-rule.js";

/** Per-request facts from the connection and headers. */
export interface ClientInfo {
  /** The client's address: the socket's peer, or the last X-Forwarded-For hop behind a trusted proxy. */
  readonly ip: string;
  /** The request id, accepted from the client when well-formed, generated otherwise. */
  readonly requestId: string;
}

/** Context value: the client behind this request. */
export const kClient = createContextKey<ClientInfo>({ ip: "", requestId: "" }, { description: "client" });
/** A verified caller, and when its token stops being accepted: a stream it opened ends then (forward.ts). */
export interface Caller extends Identity {
  /** The token's `exp` plus the clock skew tolerated (`JWT_CLOCK_SKEW_S`), ms since the epoch. */
  readonly expiresAt: number;
  /**
   * With `JWT_JWKS_URL` only: whether the issuer's key set, as last fetched, still holds the key that
   * verified the token — false once a fetched set lacks it (a failed fetch changes nothing). Cheap;
   * also refreshes the set beside the caller when due by age (gateway/jwks.ts).
   */
  readonly keyHeld?: () => boolean;
}

/** Context value: the verified caller (unset for the token-free reflection service). */
export const kIdentity = createContextKey<Caller | undefined>(undefined, { description: "identity" });

/** A uri-host (an IP literal, or an IPv4 address or name: unreserved, sub-delims) and an optional port. */
const AUTHORITY = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=]+)(?::\d{0,5})?$/;

/**
 * Why a request does not name one host (`Host`, or HTTP/2's `:authority`), or undefined. RFC 9112
 * §3.2: a server answers 400 to more than one Host line, or one that is not a host[:port] (userinfo,
 * spaces); RFC 9113 §8.3.1: an HTTP/2 Host must name what `:authority` does. Node keeps the first of
 * two and parses `user@host` as a URL: a proxy or cache in front may read the other one.
 */
export function hostProblem(
  req: {
    readonly headers: { readonly host?: string | undefined };
    readonly rawHeaders: readonly string[];
    readonly authority?: string;
  },
  loopbackOnly = false,
): string | undefined {
  const host = req.headers.host;
  let lines = 0;
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i] as string;
    if (name.length === 4 && name.toLowerCase() === "host") lines++;
  }
  if (lines > 1) return "the request has more than one Host header";
  const authority = req.authority || host;
  if (!authority) return "the request has no Host header";
  if (req.authority && host !== undefined && host !== req.authority) return "the Host header differs from :authority";
  if (!AUTHORITY.test(authority)) return "the Host header is not a valid host[:port]";
  try {
    new URL(`http://${authority}`); // what connect-es builds from it
  } catch {
    return "the Host header is not a valid host[:port]";
  }
  if (loopbackOnly && !LOOPBACK_HOST.test(authority)) {
    return `the gateway runs with the public development key and answers only requests to localhost, 127.0.0.1 or [::1], not ${authority.slice(0, 100)}`;
  }
  return undefined;
}

/** A loopback name, with or without a port: what a browser may call a gateway listening on loopback. */
const LOOPBACK_HOST = /^(?:localhost|[a-z0-9-]+\.localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(?::\d{0,5})?$/i;
