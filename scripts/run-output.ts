/**
 * What `make run` prints: each process's lines, prefixed with its name (coloured on a terminal) and made
 * readable, or with LOG_FORMAT=json as JSON lines; the runner's own messages the same way; and what it does
 * when its reader is slow, paused or gone.
 */
import { configOrExit, int, parseEnv } from "../platform/config.js";
import { jsonLine, readableLines } from "./log-lines.js";

const COLORS = [36, 33, 35, 32, 34, 31, 96, 93];

export interface RunOutput {
  /** The prefix of a process's lines: its name, padded to the longest, coloured on a terminal. */
  prefix(name: string, colour: number): string;
  /** A line a process printed (on its stdout or its stderr), as the runner prints it. */
  relay(name: string, prefix: string, line: string, fromStderr: boolean): void;
  /**
   * The runner's own message about `proc` ("run" for the whole system): a prefixed line, or with
   * LOG_FORMAT=json an object with `fields`.
   */
  say(proc: string, label: string | undefined, msg: string, fields?: Record<string, unknown>, level?: number): void;
  /** A blank line before the stop's messages (none in JSON lines). */
  blankLine(): void;
  /** Exits once stdout has taken what is left (its last lines), or after 2 s of a reader that takes nothing. */
  exitOnceWritten(code: number): void;
}

/**
 * The output of a runner of the processes `names`. `onReaderGone` is called once if stdout loses its
 * reader (`make run | head`, a terminal closed): the next write failed with EPIPE (EIO on a terminal), an
 * uncaught error, a stack trace, and every process SIGKILLed on the way out; nothing is printed after it.
 */
export async function runOutput(
  names: readonly string[],
  jsonLines: boolean,
  onReaderGone: (err: NodeJS.ErrnoException) => void,
): Promise<RunOutput> {
  const tty = process.stdout.isTTY;
  // A terminal's writes made non-blocking, as a pipe's are. Node writes to a terminal in blocking calls, so
  // a paused one (Ctrl-S, a pty nobody reads) held the runner in its next line: it restarted nothing and did
  // not stop on Ctrl-C or SIGTERM until the terminal went on. Unwritten lines now wait in the stream, bounded
  // by RUN_UNREAD_BYTES. Safe for the shell: libuv reopens a terminal for its own use, so the flag is this
  // process's alone (Node has no public call for it; a terminal libuv could not reopen keeps blocking).
  if (tty)
    (process.stdout as unknown as { _handle?: { setBlocking?(on: boolean): void } })._handle?.setBlocking?.(false);
  const width = Math.max(...names.map((n) => n.length)) + 2;
  /** A line as one readable line (pino-pretty, as LOG_FORMAT=pretty would print it, escaped: log-lines.ts). */
  const readable = jsonLines ? (line: string) => line : await readableLines(tty);
  // How much output not yet taken by its reader the runner keeps (`make run | less` scrolled no further, a
  // stalled pipe, a paused terminal). It kept all of it, ~35 MB a minute at 300 calls/s, without end; lines
  // beyond it are now dropped, and counted in one line once the reader has caught up.
  const { RUN_UNREAD_BYTES: unreadBytes } = configOrExit(() =>
    parseEnv({ RUN_UNREAD_BYTES: int(8 * 1024 * 1024, { min: 4_096, max: 1024 ** 3 }) }, process.env),
  );
  let outputGone = false;
  let dropped = 0;

  const print = (text: string): void => {
    if (outputGone) return;
    if (process.stdout.writableLength > unreadBytes) {
      if (dropped++ === 0) process.stdout.once("drain", saidDropped);
      return;
    }
    process.stdout.write(text);
  };
  const say: RunOutput["say"] = (proc, label, msg, fields = {}, level = 30) => {
    if (jsonLines) print(`${JSON.stringify({ level, time: new Date().toISOString(), proc, msg, ...fields })}\n`);
    else print(label ? `${label} ${msg}\n` : `${msg}\n`);
  };
  function saidDropped(): void {
    const n = dropped;
    dropped = 0;
    say("run", undefined, `${n} lines dropped: make run's output was not read`, { dropped: n }, 40);
  }
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (outputGone) return;
    outputGone = true;
    onReaderGone(err);
  });
  // stderr gone as well (a terminal closed): what is left to say cannot be said, and must not throw.
  process.stderr.on("error", () => {});

  return {
    prefix(name, colour) {
      const label = `${name.padEnd(width)} |`;
      return tty ? `\x1b[${COLORS[colour % COLORS.length]}m${label}\x1b[0m` : label;
    },
    relay(name, prefix, line, fromStderr) {
      print(jsonLines ? `${jsonLine(name, line, fromStderr)}\n` : `${prefix} ${readable(line)}\n`);
    },
    say,
    blankLine() {
      if (!jsonLines) print("\n");
    },
    exitOnceWritten(code) {
      if (outputGone || process.stdout.writableLength === 0) process.exit(code);
      process.stdout.once("drain", () => process.exit(code));
      setTimeout(() => process.exit(code), 2_000);
    },
  };
}
