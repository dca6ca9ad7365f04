/**
 * The one backoff of the runtime and the services (cockatiel has its own for
 * the resilient clients): exponential from `baseMs`, doubling per attempt,
 * capped at `maxMs`.
 */

/**
 * How long to wait before attempt `attempt + 1`, after `attempt` failures
 * (1 = the first). Without `random` the wait is exact; with `random` (0..1)
 * it is "equal jitter": half of it fixed, half random, so that many waiting
 * at once do not all come back at the same moment.
 */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random?: number): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return random === undefined ? ceiling : Math.round(ceiling / 2 + (ceiling / 2) * random);
}
