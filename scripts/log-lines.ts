/**
 * What `make run` prints of each line a child process prints: one readable
 * line (pino-pretty) by default; with `LOG_FORMAT=json` one JSON object
 * naming the process, so the runner's stdout is JSON lines only.
 */
import { prettyFactory } from "pino-pretty";
import { replaceHidden } from "../platform/validate.js";
import { printable } from "./printable.js";

/** `text` with the hidden characters JSON leaves as they are (DEL, C1, direction and invisible ones) escaped. */
const unhidden = (text: string): string =>
  replaceHidden(text, (c) => {
    const n = c.codePointAt(0) ?? 0;
    return n < 0x20 ? c : `\\u{${n.toString(16)}}`;
  });

/** Every string in `v` (keys too) through `f`. */
function everyString(v: unknown, f: (s: string) => string): unknown {
  if (typeof v === "string") return f(v);
  if (Array.isArray(v)) return v.map((x) => everyString(x, f));
  if (v !== null && typeof v === "object")
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [f(k), everyString(x, f)]));
  return v;
}

/** The fields pino-pretty prints as they are, not as JSON. */
const PRINTED_RAW = ["msg", "time", "name", "caller"];

/**
 * The readable form of a process's lines: a JSON object as one pino-pretty line, anything else as it is;
 * either way one line, with what others may have written made harmless to a terminal. pino-pretty
 * prints `msg` (and `time`, `name`, `caller`) raw, and an `err` over many lines with its stack raw (a message's line break started a
 * line without the process's name, a forged one, and its escape sequences drove the terminal); the
 * other fields as JSON, which leaves DEL, C1 controls (a CSI among them) and direction overrides raw.
 */
export function readableLines(colorize: boolean): (line: string) => string {
  const pretty = prettyFactory({
    singleLine: true,
    colorize,
    ignore: "pid,hostname,service",
    translateTime: "HH:MM:ss.l",
    // An error is a field like any other: its stack on this line, escaped, not the lines after it.
    errorLikeObjectKeys: [],
  });
  return (line) => {
    let entry: unknown;
    try {
      entry = line.startsWith("{") ? JSON.parse(line) : undefined;
    } catch {}
    // A tab drives nothing (PostgreSQL indents a statement with them): kept.
    if (entry === null || typeof entry !== "object" || Array.isArray(entry))
      return line.split("\t").map(printable).join("\t");
    const safe = everyString(entry, unhidden) as Record<string, unknown>;
    for (const key of PRINTED_RAW) {
      const v = (entry as Record<string, unknown>)[key];
      if (typeof v === "string") safe[key] = printable(v);
    }
    return pretty(safe).trimEnd();
  };
}

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
