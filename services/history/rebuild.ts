/**
 * Rebuilds the history read model from the event streams:
 *
 *     tsx services/history/rebuild.ts      (same env as the service: DB_PATH, NATS_URL, ...)
 *
 * Run it while the history service is stopped (it refuses while one runs). It builds a new view aside (rebuild-aside.ts: a sibling file
 * or schema), replaying ORDER, INVENTORY and PAYMENT from their first
 * message through the service's own handlers, each event in one IMMEDIATE
 * transaction with an inbox row under the live consumer's durable name, and
 * swaps it in whole once every stream is replayed: a rebuild stopped
 * part-way leaves the old view as it was. When the service starts again its
 * durable consumers resume where they were and skip whatever the rebuild
 * already applied (the inbox says so); a durable consumer that was deleted
 * meanwhile starts from the beginning and skips everything the same way.
 * It refuses to swap in a view that lacks orders the live one has (their
 * events aged out of the streams; ALLOW_LOSS=1 swaps anyway), and to start
 * while a history service or another rebuild holds the view's lock. Exits 0 after printing
 * events per stream, the total and the elapsed time; 1 on failure or
 * refusal; 78 on bad configuration.
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { JsMsg } from "@nats-io/jetstream";
import { EVENTS } from "../../contracts/events.js";
import {
  type Bus,
  busAuthOf,
  ConfigError,
  connectBus,
  createLogger,
  type DbLocation,
  decodeEvent,
  type EventHandler,
  Inbox,
  type Logger,
  locationOf,
  sayWhileRead,
  UNREADABLE,
  withoutPassword,
} from "../../platform/index.js";
import { loadConfig } from "./config.js";
import { UnusableEventError } from "./domain.js";
import { type HistoryConsumer, historyConsumers } from "./events.js";
import { asideOf, clearAside, lockRebuild, losses, type RebuildLock, RebuildRefused } from "./rebuild-aside.js";
import { HistoryStore } from "./store.js";

/** How one stream's replay went. */
export interface StreamReplay {
  readonly stream: string;
  /** The durable consumer whose inbox rows the replay wrote. */
  readonly durable: string;
  /** Messages read from the stream. */
  readonly events: number;
  /** Events applied to the view. */
  readonly applied: number;
  /** Events the inbox already held (only when the same event was stored twice). */
  readonly duplicates: number;
  /** Events the live consumer would dead-letter: not shopmesh events, undecodable, or unusable. */
  readonly skipped: number;
  readonly ms: number;
}

/** How a replay went. */
export interface ReplayReport {
  /** What the reset removed before the replay. */
  readonly cleared: { readonly views: number; readonly inbox: number };
  readonly streams: readonly StreamReplay[];
  /** Messages read, all streams. */
  readonly total: number;
  readonly ms: number;
}

/** Options of {@link replay}. */
export interface ReplayOptions {
  readonly store: HistoryStore;
  readonly bus: Bus;
  readonly log: Logger;
  /** Called every `progressEvery` messages and at the end of each stream. */
  readonly onProgress?: (p: StreamReplay, done: boolean) => void;
  readonly progressEvery?: number;
}

/** Longest wait for the next message before giving up on a stream, in ms. */
const IDLE_TIMEOUT_MS = 30_000;

/**
 * Empties the view and the inbox of `store`, then replays the ORDER,
 * INVENTORY and PAYMENT streams (every message retained when each stream's
 * replay starts) through the live consumers' handlers. Throws, leaving a
 * partial view for the next run to redo, when a handler fails for a reason
 * other than an unusable event or a stream cannot be read to its end.
 */
export async function replay(opts: ReplayOptions): Promise<ReplayReport> {
  const started = performance.now();
  const cleared = await opts.store.reset();
  opts.log.info(cleared, "history view and inbox emptied");
  const streams: StreamReplay[] = [];
  for (const consumer of historyConsumers(opts.store)) streams.push(await replayStream(consumer, opts));
  return { cleared, streams, total: streams.reduce((n, s) => n + s.events, 0), ms: performance.now() - started };
}

async function replayStream(consumer: HistoryConsumer, opts: ReplayOptions): Promise<StreamReplay> {
  const { bus, store, log } = opts;
  const { stream, durable } = consumer;
  const started = performance.now();
  const handlers = new Map(consumer.handlers);
  const inbox = new Inbox(store.db, durable);
  const counts = { events: 0, applied: 0, duplicates: 0, skipped: 0 };
  const report = (): StreamReplay => ({ stream, durable, ...counts, ms: performance.now() - started });
  const every = opts.progressEvery ?? 1_000;

  const { state } = await bus.jsm.streams.info(stream);
  if (state.messages === 0) {
    opts.onProgress?.(report(), true);
    return report();
  }
  const end = state.last_seq;
  // An ordered consumer: ephemeral, from the first retained message, no acks, nothing to clean up.
  const messages = await (await bus.js.consumers.get(stream)).consume({ max_messages: 256 });
  let lastSeq = 0;
  let complete = false;
  let lastAt = Date.now();
  const watchdog = setInterval(() => {
    if (Date.now() - lastAt > IDLE_TIMEOUT_MS) void messages.close();
  }, 250);
  try {
    for await (const m of messages) {
      lastAt = Date.now();
      lastSeq = m.seq;
      counts.events++;
      const outcome = await applyMessage(inbox, handlers, m);
      if (typeof outcome === "string") {
        counts.skipped++;
        log.warn({ stream, seq: m.seq, reason: outcome }, "event skipped");
      } else if (outcome) counts.applied++;
      else counts.duplicates++;
      if (counts.events % every === 0) opts.onProgress?.(report(), false);
      if (m.seq >= end || m.info.pending === 0) {
        complete = true;
        break;
      }
    }
  } finally {
    clearInterval(watchdog);
    await messages.close();
  }
  if (!complete) {
    throw new Error(
      `replay of ${stream} stopped at sequence ${lastSeq} of ${end} (no message for ${IDLE_TIMEOUT_MS} ms)`,
    );
  }
  opts.onProgress?.(report(), true);
  return report();
}

/**
 * Applies one stored message as the live consumer would (the same decoding,
 * the same once-only inbox): true when applied, false when the inbox already
 * held it, or why it was skipped.
 */
async function applyMessage(
  inbox: Inbox,
  handlers: ReadonlyMap<string, EventHandler>,
  m: JsMsg,
): Promise<boolean | string> {
  const decoded = decodeEvent(m, EVENTS);
  if ("unusable" in decoded) return decoded.unusable;
  if ("newer" in decoded) return `${decoded.newer} is not known to this version`;
  const { event, ctx } = decoded;
  const fn = handlers.get(ctx.type);
  if (!fn) return `${ctx.type} is not projected`;
  try {
    return await inbox.once(ctx.eventId, ctx.type, (tx) => fn(event as never, ctx, tx));
  } catch (err) {
    if (err instanceof UnusableEventError) return err.message;
    throw err;
  }
}

/** The service waits for NATS forever; a command run by hand should not. */
const CONNECT_TIMEOUT_MS = 15_000;

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

function summary(s: Omit<StreamReplay, "stream" | "durable">): string {
  return `${s.events} events (${s.applied} applied, ${s.duplicates} duplicates, ${s.skipped} skipped) in ${seconds(s.ms)}`;
}

/** The command line: config from env, replay, print, exit code. */
async function main(): Promise<number> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`${err.message}\n`);
    return 78;
  }
  if (config.NATS_URL === "off") {
    process.stderr.write("NATS_URL=off: the rebuild replays the event streams and needs the bus\n");
    return 78;
  }
  // Progress goes to stdout as plain lines; the log only speaks up for problems unless LOG_LEVEL asks for more.
  const log = await createLogger({
    service: "history-rebuild",
    level: process.env.LOG_LEVEL ? config.LOG_LEVEL : "warn",
    format: config.LOG_FORMAT,
  });
  // Its reader gone (make history-rebuild | head -1), the rebuild goes on unsaid: it died of EPIPE part-way.
  const print = sayWhileRead();
  const live = locationOf("history", config);
  const name = (l: DbLocation) => (l.engine === "sqlite" ? l.path : `schema ${l.schema}`);
  let lock: RebuildLock | undefined;
  let swapped = false;
  try {
    const aside = asideOf(live);
    lock = await lockRebuild(live);
    print(`rebuilding ${name(live)} from ${withoutPassword(config.NATS_URL)}, aside in ${name(aside)} until done`);
    const bus = await withTimeout(
      connectBus(config.NATS_URL, "history-rebuild", log, { streams: EVENTS.streams, ...busAuthOf(config) }),
      CONNECT_TIMEOUT_MS,
      `cannot reach NATS at ${withoutPassword(config.NATS_URL)} within ${CONNECT_TIMEOUT_MS} ms`,
    );
    try {
      await clearAside(aside);
      const store = await HistoryStore.open(aside);
      let report: ReplayReport;
      let orders: number;
      let lost: Awaited<ReturnType<typeof losses>>;
      try {
        report = await replay({
          store,
          bus,
          log,
          onProgress: (s, done) => {
            print(`${s.stream}: ${done ? "" : "... "}${summary(s)}`);
            if (config.FAULT_REBUILD_CRASH_AFTER > 0 && s.events >= config.FAULT_REBUILD_CRASH_AFTER) {
              process.kill(process.pid, "SIGKILL"); // chaos: a rebuild killed part-way (tests)
            }
          },
          progressEvery: config.FAULT_REBUILD_CRASH_AFTER || undefined,
        });
        orders = await store.count();
        lost = await lossesAgainstLive(live, store, print);
      } finally {
        await store.close();
      }
      if (lost.count > 0 && !config.ALLOW_LOSS) {
        await clearAside(aside);
        throw new RebuildRefused(
          `the rebuilt view lacks ${lost.count} of the view's orders, or what it knows of them (${lost.some.join(", ")}${lost.count > lost.some.length ? ", ..." : ""}): ` +
            "their events are no longer on the streams (aged out after 7 days, or a stream made again). The view is as it was; ALLOW_LOSS=1 rebuilds anyway",
        );
      }
      swapped = true; // from here on the outcome may be the new view (a flush after the rename failing)
      await lock.swapIn(aside);
      const sum = (k: "applied" | "duplicates" | "skipped") => report.streams.reduce((n, s) => n + s[k], 0);
      print(
        `total: ${summary({ events: report.total, applied: sum("applied"), duplicates: sum("duplicates"), skipped: sum("skipped"), ms: report.ms })}; ` +
          `${orders} orders in the view, now ${name(live)}${lost.count > 0 ? ` (${lost.count} of the old view's dropped or cut: ALLOW_LOSS=1)` : ""}`,
      );
    } finally {
      await bus.close();
    }
  } catch (err) {
    if (!(err instanceof RebuildRefused)) {
      const where = swapped ? "" : " (the view is as it was; what was built aside is redone next time)";
      throw new Error(`${(err as Error).message}${where}`);
    }
    process.stderr.write(`history rebuild refused: ${err.message}\n`);
    return 1;
  } finally {
    await lock?.release();
  }
  return 0;
}

/** What the view built in `rebuilt` would lose of the live one; none to measure when the live one is unreadable. */
async function lossesAgainstLive(live: DbLocation, rebuilt: HistoryStore, print: (line: string) => void) {
  let current: HistoryStore | undefined;
  try {
    current = await HistoryStore.open(live);
    return await losses(current, rebuilt);
  } catch (err) {
    const code = String((err as { code?: unknown }).code);
    if (!UNREADABLE.has(code)) throw err;
    print(`the view in ${live.engine === "sqlite" ? live.path : live.schema} cannot be read (${code}): replaced whole`);
    return { count: 0, some: [] };
  } finally {
    await current?.close();
  }
}

// Extensions aside: tsx also runs this file when asked for rebuild.js.
const withoutExt = (path: string) => path.replace(/\.[cm]?[jt]s$/, "");
const invokedDirectly =
  process.argv[1] !== undefined && withoutExt(resolve(process.argv[1])) === withoutExt(fileURLToPath(import.meta.url));
if (invokedDirectly) {
  try {
    process.exitCode = await main();
  } catch (err) {
    process.stderr.write(`history rebuild failed: ${(err as Error).message}\n`);
    // A connection attempt may still be pending and would keep the process alive.
    process.exit(1);
  }
}
