/**
 * What `make run` prints of each line a child process prints: one readable
 * line (pino-pretty) by default; with `LOG_FORMAT=json` one JSON object
 * naming the process, so the runner's stdout is JSON lines only.
 */
export { readableLines } from "../platform/readable-log.js";

/** pino's levels for a line that is not JSON: NATS's [WRN]/[ERR]/[FTL], PostgreSQL's WARNING/ERROR/FATAL. */
function levelOf(line: string, fromStderr: boolean): number {
  if (/\[FTL\]|\bFATAL\b|\bPANIC\b/.test(line)) return 60;
  if (/\[ERR\]|\bERROR\b/.test(line)) return 50;
  if (/\[WRN\]|\bWARNING\b/.test(line)) return 40;
  if (/\[INF\]|\bLOG\b/.test(line)) return 30;
  return fromStderr ? 50 : 30;
}

/**
 * A line of process `proc` as one JSON object naming it: a JSON object line
 * with `proc` added in front (the rest as the process wrote it); anything
 * else, and an object that names a `proc` itself, wrapped as `msg`.
 */
export function jsonLine(proc: string, line: string, fromStderr: boolean): string {
  const name = JSON.stringify(proc);
  if (line.startsWith("{") && line.endsWith("}")) {
    try {
      const v: unknown = JSON.parse(line);
      // One that names a `proc` of its own is wrapped: jq reads the last of two keys, so `{"proc":"gateway"}`
      // printed by payment passed for the gateway's line.
      if (v !== null && typeof v === "object" && !Array.isArray(v) && !Object.hasOwn(v, "proc")) {
        return Object.keys(v).length === 0 ? `{"proc":${name}}` : `{"proc":${name},${line.slice(1)}`;
      }
    } catch {
      // not JSON after all: wrapped below
    }
  }
  // nats-server's "[pid] date time [TAG] " prefix says nothing that `level` and `time` do not.
  const msg = line.replace(/^\[\d+\] \S+ \S+ \[[A-Z]{3}\] /, "");
  return JSON.stringify({ level: levelOf(line, fromStderr), time: new Date().toISOString(), proc, msg });
}
