/**
 * A JSON log line as one readable line for a person (pino-pretty), with what others may have written
 * made harmless to a terminal: `make run`'s output (scripts/log-lines.ts) and a process's own
 * `LOG_FORMAT=pretty` (log.ts). pino-pretty, a development dependency, is loaded only then (the image has none).
 */

import { replaceHidden } from "./hidden.js";
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
export async function readableLines(colorize: boolean): Promise<(line: string) => string> {
  const { prettyFactory } = await import("pino-pretty");
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
      // An array or object there is printed by String(), raw too: its JSON, escaped.
      else if (v !== null && typeof v === "object") safe[key] = printable(JSON.stringify(v));
    }
    return pretty(safe).trimEnd();
  };
}
