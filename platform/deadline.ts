/** Deadlines, merged the one way (the earliest of what the caller set wins), and a call run under one. */

/**
 * The earliest of an absolute `deadline` (ms since the epoch) and
 * `now + timeoutMs`; undefined when neither is set.
 */
export function earliestDeadline(
  deadline: number | undefined,
  timeoutMs: number | undefined,
  now: number = Date.now(),
): number | undefined {
  const relative = timeoutMs === undefined ? undefined : now + timeoutMs;
  if (deadline === undefined) return relative;
  return relative === undefined ? deadline : Math.min(deadline, relative);
}

/** The longest delay setTimeout takes (2^31-1 ms, ~24.8 days); a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2_147_483_647;

/**
 * `grpc-timeout` for `ms` from now: at most 8 digits (the gRPC spec; grpc-js's server reads the first 8
 * of a longer value), and never over {@link MAX_TIMER_MS} (grpc-js's server overflows a longer one).
 */
export function grpcTimeout(ms: number): string {
  const m = Math.max(1, Math.ceil(ms));
  if (m < 100_000_000) return `${m}m`;
  return `${Math.min(Math.ceil(m / 1000), Math.floor(MAX_TIMER_MS / 1000))}S`;
}

/**
 * Runs `fn` with a signal that aborts at `deadline` or with `outer`; at the deadline the call fails
 * with `expired()` even if it is still queued in a bulkhead or sleeping between retries.
 */
export function withDeadline<T>(
  deadline: number | undefined,
  outer: AbortSignal | undefined,
  expired: () => Error,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  // A signal of its own for a call without one: cockatiel derives every call's signal from the one it is
  // given, and without one from a single shared signal that would collect a listener per call in flight.
  if (deadline === undefined) return fn(outer ?? new AbortController().signal);
  const ac = new AbortController();
  const unfollow = outer ? follow(outer, ac) : undefined;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    // Further off than a timer can wait (Node runs it after 1 ms instead): as good as none, as grpc-js does.
    if (deadline - Date.now() > MAX_TIMER_MS) return;
    timer = setTimeout(() => {
      ac.abort();
      reject(expired());
    }, deadline - Date.now());
  });
  return Promise.race([fn(ac.signal), late]).finally(() => {
    clearTimeout(timer);
    unfollow?.();
  });
}

/**
 * The controllers following each caller's signal, with one listener on it however many calls share it
 * (a fan-out of 50 on one signal would pass Node's warning at 10). Not AbortSignal.any(): on Node 20 a
 * signal it makes, and all its listeners reach — the whole call — outlive the young generation until a
 * full collection (nodejs/node#54614, #55328).
 */
const followers = new WeakMap<AbortSignal, Set<AbortController>>();

/** Aborts `ac` when `outer` aborts, with its reason; the function returned stops that. */
function follow(outer: AbortSignal, ac: AbortController): () => void {
  if (outer.aborted) {
    ac.abort(outer.reason);
    return () => {};
  }
  let group = followers.get(outer);
  if (!group) {
    group = new Set();
    followers.set(outer, group);
    outer.addEventListener("abort", abortFollowers, { once: true });
  }
  const mine = group;
  mine.add(ac);
  return () => {
    mine.delete(ac);
    if (mine.size > 0 || followers.get(outer) !== mine) return;
    followers.delete(outer);
    outer.removeEventListener("abort", abortFollowers);
  };
}

function abortFollowers(this: AbortSignal): void {
  const group = followers.get(this);
  followers.delete(this);
  for (const ac of group ?? []) ac.abort(this.reason);
}
