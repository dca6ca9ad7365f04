/**
 * What a nats-server version, as its INFO gives it, is known to get wrong. Until 2.9.12
 * (nats-server 836848ca6, "Fix Consumer not getting messages after filter update") an update to a
 * consumer's filter left two things as they were when the consumer was made: whether the filter has a
 * wildcard (a literal one turned into a wildcard matched nothing) and the subject the stream wakes the
 * consumer on for a new event (the events only the new filter selects waited for a pull's heartbeat).
 * Debian's nats-server, what `make nats` installs, is 2.9.10.
 */

/**
 * Whether nats-server `version` (e.g. "2.9.10", "2.10.0-beta.1"; "" when unknown, taken as old)
 * applies a consumer's filter update only in part (see the module comment).
 */
export function filterUpdateStale(version: string): boolean {
  const [major = 0, minor = 0, patch = 0] = version.split(".").map((t) => Number.parseInt(t, 10) || 0);
  return major !== 2 ? major < 2 : minor !== 9 ? minor < 9 : patch < 12;
}
