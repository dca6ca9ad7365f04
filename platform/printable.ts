/**
 * What a command prints. Text that others wrote (an event, a span, a log line), made harmless to a terminal:
 * its control characters escaped — they could drive the terminal (clear it, retitle it) or start a
 * forged line — and every other hidden character as well (bidirectional controls, zero-width ones,
 * variation selectors past the one an emoji takes, a run of combining marks: `replaceHidden`, what
 * the services refuse in a text): they could show it as another text, or carry one unseen. The
 * joiners of emoji sequences stay.
 */
import { oneLine, replaceHidden } from "./hidden.js";

export const printable = (text: string): string =>
  replaceHidden(oneLine(text), (c) => `\\u{${(c.codePointAt(0) ?? 0).toString(16)}}`);

/**
 * `say` for a command whose work must end whole whether anyone reads it or not (a backup, a restore, a
 * rebuild): each line on stdout while it has a reader; once that is gone (`make backup | head -1`),
 * nothing, and the work goes on to its end and its exit code. Unhandled, the next line met EPIPE: an
 * uncaught error, a stack trace and exit 1 part-way, what the command started (its NATS) left running.
 */
export function sayWhileRead(): (line: string) => void {
  let read = true;
  process.stdout.on("error", () => {
    read = false;
  });
  return (line) => {
    if (read) process.stdout.write(`${line}\n`);
  };
}
