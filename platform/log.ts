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

/** The asynchronous destinations of this process's loggers, for {@link flushLogs}. */
const destinations = new Set<{ flushSync(): void; destroy(): void }>();

/**
 * Writes out every log line still buffered, synchronously: for a process
 * about to exit or kill itself (a fatal error, fault injection). On a normal
 * exit pino does it. A destination that cannot be written is dropped: log
 * nothing more after this.
 */
export function flushLogs(): void {
  for (const d of destinations) {
    try {
      d.flushSync();
    } catch {
      // Its reader is gone (EPIPE): nothing more can be said, and the exit that follows must not wait.
      // Dropped with what it holds: pino's own flush at exit met the same EPIPE and threw it, a stack
      // trace on stderr after the process's last words.
      d.destroy();
    }
  }
}

/**
 * Lines are written in chunks of at least this many bytes, and whatever is
 * buffered at least every {@link LOG_FLUSH_MS}: one write() per access line
 * was 5-7% of the gateway's busy time at saturation (each an fs request to
 * libuv's thread pool, a wake-up and a completion), ~10 lines a write now.
 */
const LOG_CHUNK_BYTES = 4096;
const LOG_FLUSH_MS = 100;

/**
 * Creates the process logger. JSON goes to stdout asynchronously (an access
 * line per request would otherwise be a blocking write() on the event loop's
 * thread), in chunks, flushed by pino at exit; `pretty` renders one readable
 * line per entry, synchronously.
 */
export async function createLogger(opts: LoggerOptions): Promise<Logger> {
  const base = { service: opts.service };
  // Every line logged inside a span carries its trace and span ids.
  const mixin = logIds;
  if (opts.format === "pretty") {
    // As make run prints a process's lines (readable-log.ts): one line per entry, an error's stack on
    // it and escaped — pino-pretty's own printed it over many lines, raw, and a message raw.
    const { readableLines } = await import("./readable-log.js");
    const readable = await readableLines(process.stdout.isTTY === true);
    const out = pino.destination({ dest: 1, sync: true });
    return pino(
      { level: opts.level, base, mixin },
      { write: (line: string) => out.write(`${readable(line.trimEnd())}\n`) },
    );
  }
  const dest = pino.destination({ dest: 1, sync: false, minLength: LOG_CHUNK_BYTES });
  destinations.add(dest);
  // Not sonic-boom's own periodicFlush: that writes even an empty buffer, a write() and a wake-up
  // every tick in every idle process. `_len` (what is not yet written) is sonic-boom's own; were it
  // ever gone, every tick flushes.
  setInterval(() => {
    const unwritten = (dest as unknown as { _len?: unknown })._len;
    if (typeof unwritten !== "number" || unwritten > 0) dest.flush();
  }, LOG_FLUSH_MS).unref();
  return pino({ level: opts.level, base, mixin, timestamp: pino.stdTimeFunctions.isoTime }, dest);
}

/** A logger that drops everything; for tests that do not inspect logs. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
