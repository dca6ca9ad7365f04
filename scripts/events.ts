/**
 * `make events`: prints every event on the bus as it happens (with
 * `--from-start`, first everything the streams still hold), decoded from
 * protobuf into one readable line each, until Ctrl-C. `make dlq` (`--dlq`)
 * lists the dead letters the DLQ stream holds, with their reasons and DLQ
 * sequences, and exits; `--follow` keeps watching for new ones;
 * `--redrive <seq>[,<seq>...]` or `--redrive all` publishes those letters
 * again on their subjects (scripts/redrive.ts); `--dismiss` marks them
 * settled without sending anything (letters that can never be redriven, or
 * whose event was dealt with by hand). NATS_URL overrides the
 * server (default nats://127.0.0.1:4222); it connects as the bus's
 * administrator of `make run` (scripts/nats.ts), or as NATS_USER with
 * NATS_PASSWORD. Exits 1 when NATS does not answer within 10 s
 * (EVENTS_CONNECT_TIMEOUT_MS), or refuses
 * the user, or when a redrive skipped a letter, 2 on an unknown argument or
 * a letter the DLQ does not hold.
 *
 *   make events                     # live tail of ORDER, INVENTORY, PAYMENT (and DLQ)
 *   make events ARGS=--from-start   # what the streams hold, then live
 *   make dlq                        # dead letters and why, then exit
 *   make dlq ARGS=--follow          # ... and every one after, until Ctrl-C
 *   make dlq ARGS="--redrive 3,5"   # letters 3 and 5 back on their subjects
 *   make dlq ARGS="--redrive all"   # every letter back on its subject
 *   make dlq ARGS="--dismiss 7"     # letter 7 settled, its event not sent again
 */
import { join } from "node:path";
import { fromBinary, toJson } from "@bufbuild/protobuf";
import { DeliverPolicy, type JsMsg } from "@nats-io/jetstream";
import { EVENTS } from "../contracts/events.js";
import { type Bus, busAuthOf, connectBus, EVENT_RETENTION_MS, STREAM_MAX_BYTES } from "../platform/bus.js";
import { BUS_ADMIN } from "../platform/bus-access.js";
import { DLQ_STREAM } from "../platform/catalogue.js";
import { configOrExit, int, parseEnv } from "../platform/config.js";
import { markOf } from "../platform/dead-letters-waiting.js";
import { silentLogger } from "../platform/log.js";
import { ROOT } from "./layout.js";
import { localBusEnv } from "./nats.js";
import { printable, quietWhenOutputCloses } from "./printable.js";
import {
  dismiss,
  failure,
  markLine,
  parseSelection,
  redrive,
  redrivenSeqs,
  type Selection,
  unknownLetters,
} from "./redrive.js";

quietWhenOutputCloses();
/** As the user types it: make passes ARGS on (the Makefile's events and dlq). */
const USAGE =
  'usage: make events [ARGS=--from-start] | make dlq [ARGS=--follow] | make dlq ARGS="--redrive|--dismiss <seq>[,<seq>...]|all"';
const usage = (why: string): never => {
  process.stderr.write(`${why}\n${USAGE}\n`);
  process.exit(2);
};
const args = process.argv.slice(2);
/** What to do with letters: send them back (--redrive), or settle them without (--dismiss). */
let settling: { how: "--redrive" | "--dismiss"; which: Selection } | undefined;
for (let i = 0; i < args.length; i++) {
  const a = args[i] ?? "";
  if (a === "--redrive" || a === "--dismiss") {
    const which = args[++i];
    if (which === undefined) usage(`${a} needs the DLQ sequences of the letters (make dlq shows them), or all`);
    if (settling) usage(settling.how === a ? `${a} given twice` : "--redrive and --dismiss go one at a time");
    settling = {
      how: a,
      which:
        parseSelection(which ?? "") ?? usage(`${a} ${printable(which ?? "")}: not all, nor DLQ sequences like 3,5`),
    };
  } else if (!["--dlq", "--from-start", "--follow"].includes(a)) {
    usage(`unknown argument ${printable(a)}`);
  }
}
if (settling && (!args.includes("--dlq") || args.includes("--follow") || args.includes("--from-start"))) {
  usage(`${settling.how} goes with --dlq alone`);
}
const dlqOnly = args.includes("--dlq");
// The event tail always follows; the dead-letter list ends unless asked to follow.
const follow = !dlqOnly || args.includes("--follow");
const fromStart = dlqOnly || args.includes("--from-start");
// Empty is unset, as for the other commands' variables (NATS_URL= was "Invalid URL").
const url = process.env.NATS_URL || "nats://127.0.0.1:4222";
const { NATS_USER = "", NATS_PASSWORD = "" } = process.env.NATS_USER
  ? process.env
  : localBusEnv(process.env.DATA_DIR || join(ROOT, ".data"), BUS_ADMIN);
const streams = dlqOnly ? [DLQ_STREAM.name] : EVENTS.streams.map((s) => s.name);
const tty = process.stdout.isTTY;
const dim = (s: string) => (tty ? `\x1b[90m${s}\x1b[0m` : s);
const red = (s: string) => (tty ? `\x1b[31m${s}\x1b[0m` : s);

/** connectBus waits for NATS forever (right for a service); a command run by hand should say why it waits. */
const { EVENTS_CONNECT_TIMEOUT_MS: CONNECT_TIMEOUT_MS } = configOrExit(() =>
  parseEnv({ EVENTS_CONNECT_TIMEOUT_MS: int(10_000, { min: 100, max: 600_000 }) }, process.env),
);
const timer = setTimeout(() => {
  process.stderr.write(
    `cannot reach NATS at ${url} within ${CONNECT_TIMEOUT_MS / 1000} s: is \`make run\` running? ` +
      "(on other ports: NATS_URL=nats://127.0.0.1:<NATS_PORT>)\n",
  );
  process.exit(1);
}, CONNECT_TIMEOUT_MS);
const bus = await connectBus(url, "shopmesh-events-tail", silentLogger(), {
  streams: EVENTS.streams,
  ...busAuthOf({ NATS_USER, NATS_PASSWORD }),
}).catch((err: Error) => {
  process.stderr.write(`NATS at ${url} refused the connection as ${NATS_USER || "nobody"}: ${err.message}\n`);
  process.exit(1);
});
clearTimeout(timer);

if (settling) {
  const { how, which } = settling;
  const done = how === "--redrive" ? "redriven" : "dismissed";
  try {
    const unknown = await unknownLetters(bus, which);
    if (unknown.length > 0) {
      // Well formed, so no usage: what the DLQ holds is what is wrong (make dlq lists it).
      await bus.close();
      process.stderr.write(`${unknown.join("\n")}\nnothing ${done}: make dlq lists the letters it holds\n`);
      process.exit(2);
    }
    const say = (line: string) => console.log(line);
    if (how === "--dismiss") {
      console.log(`${await dismiss(bus, which, say)} dismissed`);
      await bus.close();
      process.exit(0);
    }
    const { redriven, skipped } = await redrive(bus, EVENTS, which, NATS_USER, say);
    console.log(`${redriven} redriven, ${skipped} skipped`);
    await bus.close();
    process.exit(skipped > 0 ? 1 : 0);
  } catch (err) {
    process.stderr.write(`${how.slice(2)} stopped: ${failure(err, NATS_USER)}\n`);
    process.exit(1);
  }
}
/** The DLQ letters redriven already (scripts/redrive.ts): left out of the listing. */
const redriven = dlqOnly ? await redrivenSeqs(bus) : new Set<number>();

function describe(type: string, data: Uint8Array): string {
  const schema = EVENTS.kind(type)?.schema;
  if (!schema) return `<${data.length} bytes of unknown type>`;
  try {
    const json = toJson(schema, fromBinary(schema, data)) as Record<string, unknown>;
    const { meta, ...rest } = json as { meta?: { orderId?: string } };
    return `${(meta?.orderId ?? "").padEnd(31)} ${JSON.stringify(rest)}`;
  } catch {
    return `<${data.length} undecodable bytes>`;
  }
}

/** What a dead letter left out of the message (dead-letter.ts), if anything. */
const cut = (h: JsMsg["headers"]) =>
  [h?.get("x-dlq-truncated"), h?.get("x-dlq-headers") && `headers ${h.get("x-dlq-headers")}`]
    .filter(Boolean)
    .map((x) => `; ${x}`)
    .join("");

/** A line to print: a DLQ letter's begins with its sequence, padded to `width` digits so its columns line up. */
interface Line {
  readonly text: (width: number) => string;
  /** The letter's DLQ sequence, for a letter. */
  readonly seq?: number;
  /** Whether it is a line of the listing (a letter, an event), not a redrive's mark. */
  readonly listed: boolean;
}

/** The line `m` of `stream` prints, if any (none for a DLQ letter redriven already, nor for its mark). */
function lineOf(stream: string, m: JsMsg): Line | undefined {
  const dlq = stream === DLQ_STREAM.name;
  const marked = dlq ? markOf(m.subject) : undefined;
  if (marked !== undefined) {
    // A letter redriven since the listing began (as it follows): said, as its letter was shown.
    return redriven.has(marked) ? undefined : { text: () => dim(markLine(m)), listed: false };
  }
  if (dlq && redriven.has(m.seq)) return undefined;
  const seq = dlq ? m.seq : undefined;
  const numbered = (width: number, rest: string) =>
    dlq ? `${red(`DLQ ${String(m.seq).padEnd(width)}`)} ${rest}` : rest;
  const subject = printable(m.subject).padEnd(38);
  let h: JsMsg["headers"];
  try {
    h = m.headers;
  } catch {
    // A header block nats.js cannot read (stored as a client other than nats.js sent it).
    const rest = `${dim("?".padEnd(12))} ${subject} <${m.data.length} bytes with unreadable headers>`;
    return { text: (width) => numbered(width, rest), seq, listed: true };
  }
  const type = h?.get("ce-type") ?? "?";
  // An event with no ce-time (forged, or by hand) keeps the column: blank, not the subject moved left.
  const time = printable((h?.get("ce-time") ?? "").slice(11, 23)).padEnd(12);
  const line = `${dim(time)} ${subject} ${printable(describe(type, m.data))}`;
  if (!dlq) return { text: () => line, listed: true };
  const [reason, consumer, deliveries] = ["x-dlq-reason", "x-dlq-consumer", "x-dlq-deliveries"].map((k) =>
    printable(h?.get(k) ?? ""),
  );
  // A letter no consumer wrote (forged, or by hand) may lack any of them: said so, not left blank.
  const about = [`consumer ${consumer || "?"}`, ...(deliveries ? [`${deliveries} deliveries`] : [])].join(", ");
  const why = `\n    ${red("reason:")} ${reason || "?"} ${dim(`(${about}${printable(cut(h))})`)}`;
  return { text: (width) => `${numbered(width, line)}${why}`, seq, listed: true };
}

/**
 * Opens the tail of `stream` (from `fromStart`, or only what comes next): what it held when opened and
 * its messages, or undefined when it holds nothing to list.
 */
async function open(b: Bus, stream: string) {
  const { messages: held, last_seq: last } = (await b.jsm.streams.info(stream)).state;
  if (!follow && held === 0) return undefined;
  // What comes next is asked for as from the sequence after the last one held, not as DeliverPolicy.New:
  // the ordered consumer, remade after NATS restarted, starts after the last message it saw, and having
  // seen none, from the stream's start (it showed old events as new, and missed the new ones).
  const consumer = await b.js.consumers.get(
    stream,
    fromStart
      ? { deliver_policy: DeliverPolicy.All }
      : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: last + 1 },
  );
  return { stream, held, last, messages: await consumer.consume() };
}

/** Prints a tail's messages: those held when it opened, and with `follow`, what comes after. */
async function show(tail: NonNullable<Awaited<ReturnType<typeof open>>>): Promise<number> {
  const { stream, held, last, messages } = tail;
  let read = 0;
  let shown = 0;
  // What the stream held is printed once read, its sequences padded to the widest of them (DLQ 9 and
  // DLQ 10 began their columns one apart); what comes after, to the widest so far.
  let width = 0;
  const holding: Line[] = [];
  let readingHeld = held > 0;
  const say = (line: Line) => console.log(line.text(width));
  for await (const m of messages) {
    const line = lineOf(stream, m);
    read++;
    // A listing ends with what the stream held when it began — not at "nothing pending": nats-server
    // 2.9 counts deleted messages as pending, and a listing after a deletion never ended.
    const heldAll = read >= held || m.seq >= last;
    if (line) {
      if (line.listed) shown++;
      if (line.seq !== undefined) width = Math.max(width, String(line.seq).length);
      if (readingHeld) holding.push(line);
      else say(line);
    }
    if (readingHeld && heldAll) {
      readingHeld = false;
      holding.splice(0).forEach(say);
    }
    if (!follow && heldAll) break;
  }
  holding.splice(0).forEach(say);
  await messages.close();
  return shown;
}

// Every tail open before the first line: the header says they are (NATS restarting between the two
// was a request timed out, a stack trace, after the header had promised the tail).
const tails = (await Promise.all(streams.map((s) => open(bus, s)))).filter((t) => t !== undefined);
if (follow) {
  console.log(dim(`${fromStart ? "all" : "new"} events on ${streams.join(", ")} at ${url} (Ctrl-C to stop)`));
  await Promise.all(tails.map(show));
} else {
  const n = (await Promise.all(tails.map(show))).reduce((a, b) => a + b, 0);
  console.log(dim(n === 0 ? `no dead letters on ${streams.join(", ")} at ${url}` : `${n} dead letter(s)`));
  // The DLQ is bounded like every stream (7 days, STREAM_MAX_BYTES): its oldest letters go, read or not,
  // and the marks of those redriven after them. A letter whose mark is still held was redriven, not
  // lost (all were counted as lost); one whose mark went too cannot be told from one never redriven.
  const first = (await bus.jsm.streams.info(DLQ_STREAM.name)).state.first_seq;
  const gone = Math.max(0, first - 1) - [...redriven].filter((seq) => seq < first).length;
  if (gone > 0) {
    console.log(
      dim(
        `${gone} older dead letter(s) or redrive mark(s) no longer held: the DLQ keeps ${EVENT_RETENTION_MS / 86_400_000} days and ${STREAM_MAX_BYTES / 2 ** 20} MB`,
      ),
    );
  }
  await bus.close();
}
