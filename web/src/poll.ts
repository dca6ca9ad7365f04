/**
 * Timing for live views: waits that end early when the view goes away, and
 * polling that never overlaps itself (a slow answer delays the next call
 * rather than piling calls up).
 */

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Runs `fn` now and then `ms` after each run ends, until `signal` aborts.
 * `fn` handles its own errors; one that escapes is reported and polling goes on.
 */
export function poll(ms: number, signal: AbortSignal, fn: () => Promise<void>): void {
  const loop = async () => {
    while (!signal.aborted) {
      try {
        await fn();
      } catch (err) {
        console.error(err);
      }
      await sleep(ms, signal);
    }
  };
  void loop();
}
