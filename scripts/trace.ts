/**
 * `make trace ORDER=<order id>` (or `TRACE=<trace id>`): prints the trace of
 * one order as a waterfall from the span file that `make run` writes
 * (.data/traces.jsonl, under DATA_DIR when set; TRACE_FILE overrides): every span of every process,
 * indented under its parent, with its offset, duration and errors.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./layout.js";
import { printable, quietWhenOutputCloses } from "./printable.js";

interface SpanLine {
  trace_id: string;
  span_id: string;
  parent_id: string;
  service: string;
  name: string;
  kind: string;
  start_ms: number;
  duration_ms: number;
  error: string;
  attributes: Record<string, unknown>;
}

/**
 * Whether a parsed line is a span as platform/span-file.ts writes it. Any process may write the file,
 * and a torn or foreign line may parse: a `null` or a span without attributes ended the command in a
 * TypeError, a name that is no string in another.
 */
function isSpan(x: unknown): x is SpanLine {
  if (typeof x !== "object" || x === null) return false;
  const s = x as Record<string, unknown>;
  return (
    ["trace_id", "span_id", "parent_id", "service", "name", "error"].every((k) => typeof s[k] === "string") &&
    Number.isFinite(s.start_ms) &&
    // A negative duration (no span has one) put a later span's bar past the end: a RangeError.
    Number.isFinite(s.duration_ms) &&
    (s.duration_ms as number) >= 0 &&
    typeof s.attributes === "object" &&
    s.attributes !== null
  );
}

quietWhenOutputCloses();
// make run writes it under DATA_DIR: a run moved there (as make events and make dlq follow it) is read there.
const file = process.env.TRACE_FILE || join(process.env.DATA_DIR || join(ROOT, ".data"), "traces.jsonl");
const orderId = process.env.ORDER ?? "";
let traceId = process.env.TRACE ?? "";
if (!orderId && !traceId) {
  console.error("usage: make trace ORDER=<order id>   or   make trace TRACE=<trace id>");
  process.exit(2);
}
if (!existsSync(file)) {
  console.error(`no span file at ${file}: is \`make run\` running (it writes spans there)?`);
  process.exit(1);
}
// The file rotates at TRACE_FILE_MAX_BYTES: the previous generation is <file>.1.
let text = "";
try {
  text = [`${file}.1`, file].map((f) => (existsSync(f) ? readFileSync(f, "utf8") : "")).join("\n");
} catch (err) {
  // A directory, or a file this user may not read: said in a line, not a stack trace.
  console.error(`cannot read the span file ${file}: ${(err as Error).message}`);
  process.exit(1);
}
const spans: SpanLine[] = text
  .split("\n")
  .filter(Boolean)
  .flatMap((l) => {
    try {
      const span: unknown = JSON.parse(l);
      return isSpan(span) ? [span] : [];
    } catch {
      return []; // a line still being written
    }
  });
if (!traceId) {
  const hits = [...new Set(spans.filter((s) => s.attributes["order.id"] === orderId).map((s) => s.trace_id))];
  if (hits.length === 0) {
    console.error(
      `no spans for order ${printable(orderId)} in ${file}: one placed in the last half second is not written yet; ` +
        "otherwise it is not an order of this run's (or its trace was not sampled: TRACE_SAMPLE_RATIO)",
    );
    process.exit(1);
  }
  // The order's trace is the one that holds its PlaceOrder; others (e.g. later GetOrder calls) are listed.
  traceId = hits[0] as string;
  if (hits.length > 1)
    console.log(`order ${printable(orderId)} appears in ${hits.length} traces; showing ${printable(traceId)}\n`);
}
const mine = spans.filter((s) => s.trace_id === traceId).sort((a, b) => a.start_ms - b.start_ms);
if (mine.length === 0) {
  // An order id given as TRACE is an easy slip: said so, since the file knows it as one.
  const isOrder = spans.some((s) => s.attributes["order.id"] === traceId);
  const slip = isOrder ? `: ${printable(traceId)} is an order id — make trace ORDER=${printable(traceId)}` : "";
  console.error(`no spans for trace ${printable(traceId)} in ${file}${slip}`);
  process.exit(1);
}
const t0 = mine[0]?.start_ms ?? 0;
const end = Math.max(...mine.map((s) => s.start_ms + s.duration_ms));
const width = 40;
const ids = new Set(mine.map((s) => s.span_id));
const children = new Map<string, SpanLine[]>();
for (const s of mine) {
  const parent = ids.has(s.parent_id) ? s.parent_id : "";
  children.set(parent, [...(children.get(parent) ?? []), s]);
}
const tty = process.stdout.isTTY;
const red = (x: string) => (tty ? `\x1b[31m${x}\x1b[0m` : x);
console.log(`trace ${printable(traceId)}  ${mine.length} spans  ${(end - t0).toFixed(1)} ms\n`);
const print = (s: SpanLine, depth: number) => {
  const from = Math.floor(((s.start_ms - t0) / (end - t0 || 1)) * width);
  const len = Math.max(1, Math.round((s.duration_ms / (end - t0 || 1)) * width));
  const bar = `${" ".repeat(from)}${"█".repeat(Math.min(len, width - from))}`.padEnd(width);
  // Any process that writes the span file names its spans; an error may quote the event it failed on.
  const label = `${"  ".repeat(depth)}${printable(s.service)}: ${printable(s.name)}`;
  const timing = `+${(s.start_ms - t0).toFixed(1)}ms ${s.duration_ms.toFixed(1)}ms`;
  console.log(`${bar} ${label.padEnd(70)} ${timing}${s.error ? ` ${red(`✗ ${printable(s.error)}`)}` : ""}`);
  for (const c of children.get(s.span_id) ?? []) print(c, depth + 1);
};
for (const root of children.get("") ?? []) print(root, 0);
