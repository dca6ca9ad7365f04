/**
 * A read of NATS at scrape time: its answer within a second, or nothing. A scrape never waits on a NATS
 * outage (a frozen server answers nothing, and nats.js's own request timeout is 5 s); the outbox's gauges
 * tell that one.
 */

/** How long a scrape waits for NATS to answer, ms. */
export const SCRAPE_READ_MS = 1_000;

/** `read`'s answer, or undefined when it fails or has not answered within `ms` (default {@link SCRAPE_READ_MS}). */
export async function readWithin<T>(read: Promise<T>, ms = SCRAPE_READ_MS): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  return Promise.race([read, late])
    .catch(() => undefined)
    .finally(() => clearTimeout(timer));
}
