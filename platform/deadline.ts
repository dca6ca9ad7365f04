/** Deadlines, merged the one way: the earliest of what the caller set wins. */

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
