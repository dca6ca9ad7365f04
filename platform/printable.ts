/**
 * What a command prints. Text that others wrote (an event, a span, a log line), made harmless to a terminal:
 * its control characters escaped — they could drive the terminal (clear it, retitle it) or start a
 * forged line — and every other hidden character as well (bidirectional controls, zero-width ones,
 * variation selectors past the one an emoji takes, a run of combining marks: `replaceHidden`, what
 * the services refuse in a text): they could show it as another text, or carry one unseen. The
 * joiners of emoji sequences stay.
 */
import { oneLine } from "./dead-letter.js";
import { replaceHidden } from "./validate.js";

export const printable = (text: string): string =>
  replaceHidden(oneLine(text), (c) => `\\u{${(c.codePointAt(0) ?? 0).toString(16)}}`);
