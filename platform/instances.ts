/**
 * Bounds on what one service's registry entries can cost whoever follows them: any process holding
 * that service's NATS user may write its keys (bus-access.ts), so the number of instances followed is
 * capped, and a change is logged by what it added and removed, not by the whole list each time.
 */
import type { Logger } from "./log.js";

/** The most instances of one service a process follows; entries past it are ignored (the first kept). */
export const MAX_INSTANCES = 64;
/** The most registry keys of one service a process follows: its instances, and keys deleted in the last TTL. */
export const MAX_KEYS = 4 * MAX_INSTANCES;

/** How many addresses a log line names of those added or removed. */
const NAMED = 8;

/** A change of a set of addresses, for a log line: how many now, and (some of) which came and went. */
export function addressChange(before: ReadonlySet<string>, after: ReadonlySet<string>) {
  const added = [...after].filter((a) => !before.has(a));
  const removed = [...before].filter((a) => !after.has(a));
  return {
    instances: after.size,
    added: added.slice(0, NAMED),
    removed: removed.slice(0, NAMED),
    ...(added.length + removed.length > 2 * NAMED ? { unnamed: added.length + removed.length - 2 * NAMED } : {}),
  };
}

/** A warning logged at most once per `everyMs` (of `clock`), with how many were left unsaid since the last. */
export function throttledWarn(log: Logger, msg: string, everyMs = 10_000, clock: () => number = Date.now) {
  let last = Number.NEGATIVE_INFINITY;
  let unsaid = 0;
  return (fields: Record<string, unknown>) => {
    const now = clock();
    // A last time ahead of the clock is long ago: after a step back of the wall clock, every
    // warning was held back for the step.
    if (now - last < everyMs && now >= last) {
      unsaid++;
      return;
    }
    log.warn({ ...fields, ...(unsaid > 0 ? { unsaid } : {}) }, msg);
    last = now;
    unsaid = 0;
  };
}
