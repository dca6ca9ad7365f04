/**
 * Structured logging: pino JSON lines, one logger per process with the
 * service name bound, children per call or component.
 */
import { type Logger, pino } from "pino";
import { logIds } from "./propagation.js";

export type { Logger } from "pino";

/** Options for {@link createLogger}. */
export interface LoggerOptions {
  /** Service name, bound to every line as `service`. */
  readonly service: string;
  /** pino level name, e.g. "info". */
  readonly level: string;
  /** `pretty` renders for people (needs the pino-pretty dev dependency); `json` otherwise. */
  readonly format: "json" | "pretty";
}

/**
 * Creates the process logger. JSON goes to stdout synchronously enough for
 * crash lines to survive; `pretty` renders one readable line per entry.
 */
export async function createLogger(opts: LoggerOptions): Promise<Logger> {
  const base = { service: opts.service };
  // Every line logged inside a span carries its trace and span ids.
  const mixin = logIds;
  if (opts.format === "pretty") {
    const { default: pretty } = await import("pino-pretty");
    return pino(
      { level: opts.level, base, mixin },
      pretty({
        sync: true,
        singleLine: true,
        colorize: process.stdout.isTTY,
        ignore: "pid,hostname,service",
        translateTime: "HH:MM:ss.l",
      }),
    );
  }
  // Written asynchronously (an access line per request would otherwise be a blocking write() on the
  // event loop's thread), and flushed synchronously when the process exits, so no line is lost on a stop.
  const dest = pino.destination({ dest: 1, sync: false });
  process.once("exit", () => dest.flushSync());
  return pino({ level: opts.level, base, mixin, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}

/** A logger that drops everything; for tests that do not inspect logs. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
