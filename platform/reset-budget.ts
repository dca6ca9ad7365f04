/**
 * Resets (RST_STREAM) one HTTP/2 connection may send: Node's HTTP/2 server (nghttp2's rapid-reset
 * defence) closes a connection whose peer resets more than 1,000 streams beyond 33 a second, failing
 * every call in flight on it — other callers' calls, when a gateway carries many clients' cancels
 * over one. Node 22.10+ lets our servers allow more (platform/server.ts); Node 20's cannot, nor can
 * another team's server. So a client keeps the server's count for each connection, 100 short of its
 * limit, and moves new calls to another connection once half of that is spent: unary calls in
 * h2-bytes.ts, server streams (watches) in stream-channels.ts.
 */

/** The resets a connection is allowed at once (nghttp2's default burst, 1,000, less a margin). */
export const RESET_BURST = 900;
/** nghttp2's default refill of that allowance, a second. */
const RESET_RATE_PER_S = 33;

/** One HTTP/2 connection's calls open and the resets it has left, as its server counts them. */
export class Connection {
  calls = 0;
  /** Taking no new calls: closed after its last. */
  retired = false;
  #left = RESET_BURST;
  #at = performance.now();

  /** A bucket of {@link RESET_BURST}, refilled at {@link RESET_RATE_PER_S}. */
  resetsLeft(): number {
    const now = performance.now();
    this.#left = Math.min(RESET_BURST, this.#left + ((now - this.#at) / 1_000) * RESET_RATE_PER_S);
    this.#at = now;
    return this.#left;
  }

  /** Takes one reset, if one is left. */
  takeReset(): boolean {
    if (this.resetsLeft() < 1) return false;
    this.#left -= 1;
    return true;
  }

  /** Whether new calls should go elsewhere: half its allowance is spent. */
  spent(): boolean {
    return this.resetsLeft() < RESET_BURST / 2;
  }
}
