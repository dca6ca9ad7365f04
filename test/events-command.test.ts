/**
 * `make dlq` and `make events` as commands, against a real NATS with dead
 * letters made by a real history process: the dead-letter list ends after
 * what the stream holds (it used to wait forever); `--follow` keeps
 * watching; the event tail, with `--from-start`, shows what is stored and
 * then what comes; an unreachable NATS is said within seconds. Both, and
 * `make trace` and `make demo`, end quietly when what reads their output stops reading.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { sql } from "kysely";
import { afterEach, describe, expect, it } from "vitest";
import { BUS_USERS, EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderCancelledSchema, OrderPlacedSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { type Bus, connectBus } from "../platform/bus.js";
import { BUS_ADMIN, natsAuthorization } from "../platform/bus-access.js";
import { EXIT_REFUSED } from "../platform/config.js";
import { startConsumer } from "../platform/consumer.js";
import { migrations, openDatabase } from "../platform/db.js";
import { deadLettersWaiting, markSubject } from "../platform/dead-letters-waiting.js";
import {
  INBOX_FAILURES_MIGRATION,
  INBOX_MIGRATION,
  INBOX_PURGE_MIGRATION,
  Inbox,
  on,
  UnprocessableEventError,
} from "../platform/inbox.js";
import { silentLogger } from "../platform/log.js";
import { printable } from "../scripts/printable.js";
import { copyId, dismiss, redrive } from "../scripts/redrive.js";
import { TestDatabases } from "./db.js";
import { consumerSettled, event, publishEvents, until } from "./events.js";
import { built, exited, freePort, ROOT, spawnService, tempDir } from "./fixtures.js";
import { rawPublish, startNats, type TestNats } from "./nats.js";

const groups: ChildProcess[] = [];
afterEach(() => {
  // make's children outlive make: end each command's whole process group.
  for (const c of groups.splice(0)) {
    try {
      process.kill(-(c.pid ?? 0), "SIGKILL");
    } catch {}
  }
});

/** Starts `cmd args` in the repository with `env`, in a process group of its own; its output and exit. */
function command(cmd: string, args: readonly string[], env: Record<string, string>) {
  const child = spawn(cmd, args, {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  groups.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  return {
    child,
    out: () => stdout,
    err: () => stderr,
    /** Resolves once stdout contains `text` (rejects after `ms` with what it printed). */
    async printed(text: string, ms = 15_000): Promise<void> {
      const seen = await until(
        () => stdout.includes(text),
        (x) => x,
        ms,
      );
      if (!seen) throw new Error(`no "${text}" in ${ms} ms; stdout:\n${stdout}\nstderr:\n${stderr}`);
    },
    /** Exit code once it exits, or "still running" after `ms`. */
    exit: (ms: number) =>
      Promise.race([exited(child), new Promise<string>((r) => setTimeout(() => r("still running"), ms))]),
  };
}

/**
 * `make -s <args>` as documented, except that node_modules counts as installed: a make here must not
 * start `npm ci` under the suites running beside it.
 */
const make = (args: string[], env: Record<string, string>) =>
  command("make", ["-s", "-o", "node_modules/.package-lock.json", ...args], env);

const eventsTs = (args: string[], natsUrl: string, env: Record<string, string> = {}) =>
  command(process.execPath, [...built("scripts/events.ts"), ...args], { NATS_URL: natsUrl, ...env });

/** Publishes an undecodable OrderPlaced (with `time` as its ce-time): the history consumer dead-letters it at once. */
async function poison(bus: Bus, id: string, time?: string): Promise<void> {
  const h = natsHeaders();
  h.set("ce-type", OrderPlacedSchema.typeName);
  h.set("ce-id", id);
  if (time !== undefined) h.set("ce-time", `2026-01-01T${time}`);
  await bus.js.publish("order.order.placed.orchestration", new Uint8Array([0xff, 0xff, 0xff]), {
    headers: h,
    msgID: id,
  });
}

const dlqCount = async (bus: Bus) => (await bus.jsm.streams.info("DLQ")).state.messages;

/** The names of the consumers on the event streams (a tail's: one ordered consumer a stream). */
async function tailConsumers(bus: Bus): Promise<Set<string>> {
  const names = new Set<string>();
  for (const { name } of EVENTS.streams)
    for await (const c of bus.jsm.consumers.list(name)) names.add(`${name}/${c.name}`);
  return names;
}

describe("make dlq", () => {
  it("says there are none and exits; lists what there is and exits; follows with --follow", async () => {
    await using nats: TestNats = await startNats();
    const bus = await connectBus(nats.url, "events-command-test", silentLogger(), { streams: EVENTS.streams });
    using dir = tempDir();
    await using _history = await spawnService("history", {
      ...(await new TestDatabases(dir.path).env("history")),
      NATS_URL: nats.url,
    });
    try {
      const empty = make(["dlq"], { NATS_URL: nats.url });
      expect(await empty.exit(20_000), empty.err()).toBe(0);
      expect(empty.out()).toContain(`no dead letters on DLQ at ${nats.url}`);

      await poison(bus, "evt_poison_1");
      await poison(bus, "evt_poison_2");
      expect(
        await until(
          () => dlqCount(bus),
          (n) => n === 2,
        ),
      ).toBe(2);

      const listed = make(["dlq"], { NATS_URL: nats.url });
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      const reasons = listed.out().match(/reason: undecodable shopmesh\.order\.v1\.OrderPlaced payload/g) ?? [];
      expect(reasons, listed.out()).toHaveLength(2);
      expect(listed.out()).toContain("(consumer history-order, 1 deliveries)");
      expect(listed.out()).toContain("2 dead letter(s)");

      const follow = make(["dlq", "ARGS=--follow"], { NATS_URL: nats.url });
      await follow.printed("(Ctrl-C to stop)");
      await until(
        () => (follow.out().match(/reason:/g) ?? []).length,
        (n) => n === 2,
      );
      await poison(bus, "evt_poison_3");
      await until(
        () => (follow.out().match(/reason:/g) ?? []).length,
        (n) => n === 3,
      );
      expect((follow.out().match(/reason:/g) ?? []).length, follow.out()).toBe(3);
      expect(await follow.exit(500)).toBe("still running");

      // What a message says cannot drive the terminal.
      await poison(bus, "evt_poison_4", "\u202e\u001b]0;pwned\u0007\u001b[2J");
      await until(
        () => dlqCount(bus),
        (n) => n === 4,
      );
      const after = eventsTs(["--dlq"], nats.url);
      expect(await after.exit(20_000), after.err()).toBe(0);
      expect(after.out()).toContain("4 dead letter(s)");
      expect(after.out()).toContain("\\x1b]0;pwned");
      expect(after.out()).not.toContain("\u001b]0;");
      expect(after.out()).toContain("\\u{202e}\\x1b]0;"); // a direction override too, shown as itself
      expect(after.out()).not.toContain("\u202e");
    } finally {
      await bus.close();
    }
  }, 90_000);

  it("ends a listing with a letter deleted from the middle (a DLQ from before deletes were denied)", async () => {
    // nats-server 2.9 counts a deleted message as pending, and the listing waited for it for ever.
    // Streams deny deleting messages now (platform/bus.ts), but one made before may hold such gaps.
    await using nats = await startNats();
    const admin = await connectBus(nats.url, "events-command-test", silentLogger());
    try {
      await admin.jsm.streams.add({ name: "DLQ", subjects: ["dlq.>"] });
      for (const id of ["a", "b", "c"]) {
        const h = natsHeaders();
        h.set("x-dlq-reason", `undecodable letter ${id}`);
        await admin.js.publish("dlq.history-order", new Uint8Array([1]), { headers: h });
      }
      await admin.jsm.streams.deleteMessage("DLQ", 2);
      const listed = eventsTs(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain("2 dead letter(s)");
      // The listing's connection provisions the streams: the old DLQ now denies deletes too.
      expect((await admin.jsm.streams.info("DLQ")).config.deny_delete).toBe(true);
    } finally {
      await admin.close();
    }
  }, 30_000);

  it("says how many older dead letters the DLQ no longer holds (dropped past its age or size bound)", async () => {
    // Bounded like every stream (7 days, STREAM_MAX_BYTES: platform/bus.ts), the DLQ drops its oldest
    // letters, read or not; the listing showed what was left as if it were all. Here held to 2 letters.
    await using nats = await startNats();
    const admin = await connectBus(nats.url, "events-command-test", silentLogger());
    try {
      await admin.jsm.streams.add({
        name: "DLQ",
        subjects: ["dlq.>"],
        max_msgs: 2,
        deny_delete: true,
        deny_purge: true,
      });
      for (const id of ["a", "b", "c", "d", "e"]) {
        const h = natsHeaders();
        h.set("x-dlq-reason", `undecodable letter ${id}`);
        await admin.js.publish("dlq.history-order", new Uint8Array([1]), { headers: h });
      }
      const listed = eventsTs(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain("2 dead letter(s)");
      expect(listed.out()).toContain("3 older dead letter(s) or redrive mark(s) no longer held");
    } finally {
      await admin.close();
    }
  }, 30_000);

  it("keeps its columns aligned whatever the widths of the letters' sequences and times", async () => {
    // Letters 1, 10 and 100 (the rest deleted: a stream made before deletes were denied), 10 with no ce-time:
    // each letter's subject began one column further right per digit of its sequence.
    await using nats = await startNats();
    const admin = await connectBus(nats.url, "events-command-test", silentLogger());
    try {
      await admin.jsm.streams.add({ name: "DLQ", subjects: ["dlq.>"] });
      for (let seq = 1; seq <= 100; seq++) {
        const h = natsHeaders();
        h.set("x-dlq-reason", `undecodable letter ${seq}`);
        if (seq !== 10) h.set("ce-time", "2026-01-01T12:34:56.789Z");
        await admin.js.publish("dlq.history-order", new Uint8Array([1]), { headers: h });
      }
      for (let seq = 2; seq < 100; seq++) if (seq !== 10) await admin.jsm.streams.deleteMessage("DLQ", seq);
      const listed = make(["dlq"], { NATS_URL: nats.url });
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      const letters = listed
        .out()
        .split("\n")
        .filter((l) => l.startsWith("DLQ "));
      expect(
        letters.map((l) => l.slice(0, 8)),
        listed.out(),
      ).toEqual(["DLQ 1   ", "DLQ 10  ", "DLQ 100 "]);
      // Every column where the widest letter's is: its time's, its subject's, what it holds.
      const at = (l: string) => [l.indexOf("12:34:56.789"), l.indexOf("dlq.history-order"), l.indexOf("<1 bytes")];
      const widest = at(letters[2] ?? "");
      expect(
        letters.map((l) => at(l).slice(1)),
        listed.out(),
      ).toEqual(letters.map(() => widest.slice(1)));
      expect(at(letters[0] ?? "")[0]).toBe(widest[0]);
      expect(listed.out()).toContain("3 dead letter(s)");
    } finally {
      await admin.close();
    }
  }, 30_000);

  it("says within seconds that NATS does not answer, instead of waiting for it", async () => {
    const url = `nats://127.0.0.1:${await freePort()}`;
    const run = eventsTs(["--dlq"], url, { EVENTS_CONNECT_TIMEOUT_MS: "1500" });
    expect(await run.exit(20_000)).toBe(1);
    expect(run.err()).toContain(`cannot reach NATS at ${url} within 1.5 s`);
  }, 30_000);

  it("refuses an EVENTS_CONNECT_TIMEOUT_MS that is no number of milliseconds, naming it", async () => {
    for (const bad of ["abc", "0"]) {
      const run = eventsTs(["--dlq"], `nats://127.0.0.1:${await freePort()}`, { EVENTS_CONNECT_TIMEOUT_MS: bad });
      expect(await run.exit(20_000), bad).toBe(EXIT_REFUSED);
      expect(run.err(), bad).toContain("EVENTS_CONNECT_TIMEOUT_MS");
      expect(run.err(), bad).not.toContain("    at ");
    }
  }, 30_000);
});

describe("make events", () => {
  it("with --from-start shows what the streams hold, then keeps following", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "events-command-test", silentLogger(), { streams: EVENTS.streams });
    try {
      await publishEvents(bus, [event(OrderPlacedSchema, "ord-stored", { customerId: "lea", items: [] })]);
      const tail = eventsTs(["--from-start"], nats.url);
      await tail.printed("ord-stored");
      await publishEvents(bus, [event(OrderPlacedSchema, "ord-later", { customerId: "lea", items: [] })]);
      await tail.printed("ord-later");
      // A header block nats.js cannot read (it threw, and the tail exited 1): one line, and on.
      const hdr = "NATS/1.0\r\nce-type: shopmesh.order.v1.OrderPlaced\r\nBad Key: y\r\n\r\n";
      await rawPublish(nats.port, "order.order.placed.orchestration", hdr, new Uint8Array([1, 2, 3]));
      await tail.printed("<3 bytes with unreadable headers>");
      await publishEvents(bus, [event(OrderPlacedSchema, "ord-after-unreadable", { customerId: "lea", items: [] })]);
      await tail.printed("ord-after-unreadable");
      expect(tail.out()).toMatch(/order\.order\.placed\.choreography\s+ord-stored/);
      expect(await tail.exit(500)).toBe("still running");
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("shows only new events after NATS restarts under it (it showed what the streams held first)", async () => {
    await using nats = await startNats();
    let bus = await connectBus(nats.url, "events-command-test", silentLogger(), { streams: EVENTS.streams });
    try {
      await publishEvents(bus, [event(OrderPlacedSchema, "ord-before-tail", { customerId: "lea", items: [] })]);
      const tail = eventsTs([], nats.url);
      await tail.printed("new events on");
      const before = await tailConsumers(bus);
      expect(before.size).toBe(EVENTS.streams.length);
      await bus.close();
      await nats.stop("SIGKILL");
      await nats.start();
      bus = await connectBus(nats.url, "events-command-test", silentLogger(), { streams: EVENTS.streams });
      // The tail's consumer, remade after the reconnect, had seen nothing: it began again at the stream's
      // start. The event goes out once every stream's consumer is remade, the case described, waited
      // for as such rather than for a fixed 3 s.
      const remade = async (b: Bus) => [...(await tailConsumers(b))].filter((name) => !before.has(name)).length;
      expect(
        await until(
          () => remade(bus),
          (n) => n === EVENTS.streams.length,
          20_000,
        ),
      ).toBe(EVENTS.streams.length);
      await publishEvents(bus, [event(OrderPlacedSchema, "ord-after-restart", { customerId: "lea", items: [] })]);
      await tail.printed("ord-after-restart", 20_000);
      expect(tail.out()).not.toContain("ord-before-tail");
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("refuses an unknown argument with the usage", async () => {
    const run = eventsTs(["--form-start"], "nats://127.0.0.1:1");
    expect(await run.exit(15_000)).toBe(2);
    expect(run.err()).toContain("unknown argument --form-start");
    // What the user types, not the script make runs.
    expect(run.err()).toContain('usage: make events [ARGS=--from-start] | make dlq [ARGS=--follow] | make dlq ARGS="');
    expect(run.err()).not.toContain("events.ts");
  });
});

describe("a command whose reader stops reading (make events | head -1)", () => {
  // Its output goes nowhere from the first line: the pipe's reading end is closed before it writes.
  const unread = (c: ReturnType<typeof command>) => {
    c.child.stdout?.destroy();
    return c;
  };

  it("make events ends with 0 and says nothing, not an EPIPE stack trace", async () => {
    await using nats = await startNats();
    const tail = unread(eventsTs(["--from-start"], nats.url));
    expect(await tail.exit(20_000)).toBe(0);
    expect(tail.err()).toBe("");
  }, 30_000);

  it("make demo too (its first line comes before it calls the order service)", async () => {
    const closed = `127.0.0.1:${await freePort()}`;
    const demo = unread(
      command(process.execPath, built("scripts/demo.ts"), {
        ORDER_TARGET: closed,
        INVENTORY_TARGET: closed,
      }),
    );
    expect(await demo.exit(20_000)).toBe(0);
    expect(demo.err()).toBe("");
  }, 30_000);

  it("make trace too", async () => {
    using dir = tempDir();
    const file = join(dir.path, "traces.jsonl");
    const span = { trace_id: "t".repeat(32), span_id: "a", parent_id: "", service: "order", name: "PlaceOrder" };
    const attributes = { "order.id": "ord_piped" };
    writeFileSync(
      file,
      `${JSON.stringify({ ...span, kind: "SERVER", start_ms: 1, duration_ms: 2, error: "", attributes })}\n`,
    );
    const trace = unread(
      command(process.execPath, built("scripts/trace.ts"), { TRACE_FILE: file, ORDER: "ord_piped" }),
    );
    expect(await trace.exit(20_000)).toBe(0);
    expect(trace.err()).toBe("");
  }, 30_000);
});

describe("what the commands print of what others wrote (printable)", () => {
  it("escapes every character a service refuses in a text, and keeps an emoji, its selector and a flag", () => {
    const scotland = "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}";
    expect(printable(`ok \u2764\ufe0f ${scotland} family \u{1F468}\u200d\u{1F467}`)).toBe(
      `ok \u2764\ufe0f ${scotland} family \u{1F468}\u200d\u{1F467}`,
    );
    // A byte hidden in each variation selector past the emoji's, text in tags behind a black flag,
    // a terminal escape, a direction override, a braille blank.
    expect(printable("\u{1F600}\u{E0177}\u{E0169}")).toBe("\u{1F600}\\u{e0177}\\u{e0169}");
    expect(printable("\u{1F3F4}\u{E0069}\u{E007F}")).toBe("\u{1F3F4}\\u{e0069}\\u{e007f}");
    expect(printable("x\u{E00C8}\u{E00C9}")).toBe("x\\u{e00c8}\\u{e00c9}");
    expect(printable("\u001b[2J\u202e\u2800")).toBe("\\x1b[2J\\u{202e}\\u{2800}");
  });
});

describe("make dlq --redrive", () => {
  const password = (user: string) => `test-${user}-password`;
  const admin = { user: BUS_ADMIN, pass: password(BUS_ADMIN) };
  /** scripts/events.ts with `args` as `user` (the bus's administrator unless given). */
  const asUser = (args: string[], natsUrl: string, user = BUS_ADMIN) =>
    command(process.execPath, [...built("scripts/events.ts"), ...args], {
      NATS_URL: natsUrl,
      NATS_USER: user,
      NATS_PASSWORD: password(user),
    });

  /** A database with an inbox and an effects table, and a consumer of ORDER as `durable` recording each OrderPlaced. */
  async function recorder(bus: Bus, dir: string, durable: string, broken: Set<string>) {
    const db = await openDatabase(
      { engine: "sqlite", path: join(dir, `${durable}.db`) },
      migrations([
        INBOX_MIGRATION,
        INBOX_FAILURES_MIGRATION,
        INBOX_PURGE_MIGRATION,
        "CREATE TABLE effects (event_id TEXT NOT NULL);",
      ]),
    );
    const consumer = await startConsumer({
      catalogue: EVENTS,
      bus,
      db,
      log: silentLogger(),
      stream: "ORDER",
      durable,
      handlers: [
        on(OrderPlacedSchema, async (_e, ctx, tx) => {
          if (broken.has(ctx.eventId)) throw new UnprocessableEventError(`${durable} cannot take it yet`);
          await tx.run(sql`INSERT INTO effects (event_id) VALUES (${ctx.eventId})`);
        }),
      ],
    });
    const effects = async (eventId: string) =>
      (await db.one(sql<{ n: number }>`SELECT COUNT(*) AS n FROM effects WHERE event_id = ${eventId}`))?.n ?? 0;
    return {
      db,
      effects,
      settled: () => consumerSettled(bus, "ORDER", durable),
      [Symbol.asyncDispose]: async () => {
        await consumer.stop();
        await db.close();
      },
    };
  }

  /**
   * Publishes a well-formed OrderPlaced `eventId` on its subject, `pad` bytes of an unknown field added to
   * its payload, `time` its ce-time when given; its ORDER sequence.
   */
  async function placedEvent(bus: Bus, eventId: string, pad = 0, time?: string): Promise<number> {
    const meta = { eventId, orderId: `ord-${eventId}`, sagaMode: SagaMode.ORCHESTRATION };
    const body = toBinary(OrderPlacedSchema, create(OrderPlacedSchema, { meta, customerId: "lea" }));
    // Field 100, length-delimited: kept as unknown by the decoder.
    const unknown = pad > 0 ? Buffer.concat([Buffer.from([0xa2, 0x06]), varint(pad), Buffer.alloc(pad, 7)]) : [];
    const h = natsHeaders();
    h.set("ce-type", OrderPlacedSchema.typeName);
    h.set("ce-id", eventId);
    if (time) h.set("ce-time", time);
    const ack = await bus.js.publish("order.order.placed.orchestration", Buffer.concat([body, Buffer.from(unknown)]), {
      headers: h,
      msgID: eventId,
    });
    return ack.seq;
  }
  const varint = (n: number) => {
    const out: number[] = [];
    for (; n > 127; n = Math.floor(n / 128)) out.push((n % 128) | 128);
    out.push(n);
    return Buffer.from(out);
  };

  /** The DLQ's letters (not its redrive marks), by sequence. */
  async function letters(bus: Bus) {
    const { state } = await bus.jsm.streams.info("DLQ");
    const out = [];
    for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
      const m = await bus.jsm.streams.getMessage("DLQ", { seq }).catch(() => null);
      if (m && m.subject.split(".").length === 2) out.push(m);
    }
    return out;
  }
  const letterOf = async (bus: Bus, eventId: string) => {
    const all = await until(
      () => letters(bus),
      (ls) => ls.some((l) => l.header.get("ce-id") === eventId),
    );
    const l = all.find((x) => x.header.get("ce-id") === eventId);
    if (!l) throw new Error(`no dead letter of ${eventId}`);
    return l;
  };
  /** Publishes a letter with `headers` (and `data`) to dlq.`durable`, as a consumer would have; its DLQ sequence. */
  /**
   * `bus`, but each message it gets from a stream first waits for what `pending()` gives: a publish of
   * another command's, acknowledged before the command under test looks again (a race, made certain).
   */
  function awaitingFirst(bus: Bus, pending: () => Promise<unknown>): Bus {
    const streams = bus.jsm.streams;
    const getMessage: typeof streams.getMessage = async (stream, query) => {
      await pending();
      return streams.getMessage(stream, query);
    };
    const racing = new Proxy(streams, { get: (s, k) => (k === "getMessage" ? getMessage : Reflect.get(s, k)) });
    return { ...bus, jsm: new Proxy(bus.jsm, { get: (j, k) => (k === "streams" ? racing : Reflect.get(j, k)) }) };
  }

  async function addLetter(bus: Bus, durable: string, headers: Record<string, string>, data = new Uint8Array([1])) {
    const h = natsHeaders();
    for (const [k, v] of Object.entries(headers)) h.set(k, v);
    return (await bus.js.publish(`dlq.${durable}`, data, { headers: h })).seq;
  }

  it("gives a dead letter back to the consumer that lettered it, once; one that had handled it applies nothing twice", async () => {
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams, auth: admin });
    using dir = tempDir();
    const broken = new Set(["evt_redrive_1"]);
    try {
      await using lettering = await recorder(bus, dir.path, "history-order", broken);
      await using handled = await recorder(bus, dir.path, "notification-order", new Set());
      await placedEvent(bus, "evt_redrive_1");
      const letter = await letterOf(bus, "evt_redrive_1");
      await handled.settled();
      expect(await handled.effects("evt_redrive_1")).toBe(1);
      expect(await lettering.effects("evt_redrive_1")).toBe(0);

      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain(`DLQ ${letter.seq} `);

      const following = asUser(["--dlq", "--follow"], nats.url);
      await following.printed(`DLQ ${letter.seq} `);
      broken.clear(); // the handler is fixed
      const run = make(["dlq", `ARGS=--redrive ${letter.seq}`], {
        NATS_URL: nats.url,
        NATS_USER: BUS_ADMIN,
        NATS_PASSWORD: password(BUS_ADMIN),
      });
      expect(await run.exit(20_000), `${run.out()}\n${run.err()}`).toBe(0);
      expect(run.out()).toContain(`DLQ ${letter.seq} redriven to order.order.placed.orchestration`);
      expect(run.out()).toContain("1 redriven, 0 skipped");
      expect(
        await until(
          () => lettering.effects("evt_redrive_1"),
          (n) => n === 1,
        ),
      ).toBe(1);
      await lettering.settled();
      await handled.settled();
      expect(await lettering.effects("evt_redrive_1")).toBe(1);
      expect(await handled.effects("evt_redrive_1")).toBe(1);

      await following.printed(`DLQ ${letter.seq} redriven to ORDER 2`);
      // Gone from the listing; named again, it is no letter of the DLQ any more.
      const after = asUser(["--dlq"], nats.url);
      expect(await after.exit(20_000), after.err()).toBe(0);
      expect(after.out()).toContain("no dead letters on DLQ");
      const again = asUser(["--dlq", "--redrive", String(letter.seq)], nats.url);
      expect(await again.exit(20_000)).toBe(2);
      expect(again.err()).toContain(`DLQ ${letter.seq} was redriven or dismissed already`);

      // The same letter once more (a redrive killed between its publish and its mark, or lettered twice):
      // republished again, past the duplicate window's id, and applied by no one a second time.
      const headers: Record<string, string> = {};
      for (const [k, v] of letter.header) if (!/^nats-/i.test(k)) headers[k] = v[0] ?? "";
      const copy = await addLetter(bus, "history-order", headers, new Uint8Array(letter.data));
      const second = asUser(["--dlq", "--redrive", "all"], nats.url);
      expect(await second.exit(20_000), `${second.out()}\n${second.err()}`).toBe(0);
      expect(second.out()).toContain(`DLQ ${copy} redriven to order.order.placed.orchestration`);
      expect(second.out()).toContain("1 redriven, 0 skipped");
      const { state } = await bus.jsm.streams.info("ORDER");
      expect(state.messages).toBe(3); // the event, and each redrive's copy
      await until(
        async () => (await bus.jsm.consumers.info("ORDER", "history-order")).delivered.stream_seq,
        (s) => s === 3,
      );
      await lettering.settled();
      await handled.settled();
      expect(await lettering.effects("evt_redrive_1")).toBe(1);
      expect(await handled.effects("evt_redrive_1")).toBe(1);
      expect(await letters(bus)).toHaveLength(2); // the letters stay, marked redriven
    } finally {
      await bus.close();
    }
  }, 90_000);

  it("a copy is held a week past its redrive: a consumer made again after that applies it once, not twice", async () => {
    // The copy stays in its stream a week from the redrive, not from its event: up to two weeks after
    // its event was handled. An inbox that forgot the event a day past the stream's week applied the
    // copy again when its durable was made again (which replays the stream: see docs/events.md).
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    using dir = tempDir();
    const day = 86_400_000;
    const broken = new Set(["evt_late"]);
    try {
      let handled = await recorder(bus, dir.path, "notification-order", new Set());
      await using lettering = await recorder(bus, dir.path, "history-order", broken);
      // Redriven 6.9 days after it happened (the redrive takes an event up to the streams' 7)...
      await placedEvent(bus, "evt_late", 0, new Date(Date.now() - 6.9 * day).toISOString());
      const letter = await letterOf(bus, "evt_late");
      await handled.settled();
      // ... and handled by notification as it happened.
      await handled.db.run(sql`UPDATE inbox SET handled_at = handled_at - ${Math.round(6.9 * day)}`);
      broken.clear();
      const run = asUser(["--dlq", "--redrive", String(letter.seq)], nats.url);
      expect(await run.exit(20_000), `${run.out()}\n${run.err()}`).toBe(0);
      expect(
        await until(
          () => lettering.effects("evt_late"),
          (n) => n === 1,
        ),
      ).toBe(1);
      await handled.settled();
      expect(await handled.effects("evt_late")).toBe(1);

      // 1.2 days on: the original is past its stream's week and gone, the copy held for 5.8 days more;
      // notification's inbox purged as it is hourly, and its durable made again.
      const { config } = await bus.jsm.streams.info("ORDER");
      await bus.jsm.streams.update("ORDER", { ...config, max_msgs: 1 });
      expect((await bus.jsm.streams.info("ORDER")).state.first_seq).toBe(2);
      await handled.db.run(sql`UPDATE inbox SET handled_at = handled_at - ${Math.round(1.2 * day)}`);
      await new Inbox(handled.db, "notification-order").purge();
      await handled[Symbol.asyncDispose]();
      await bus.jsm.consumers.delete("ORDER", "notification-order");
      handled = await recorder(bus, dir.path, "notification-order", new Set());
      try {
        await handled.settled();
        expect(await handled.effects("evt_late")).toBe(1);
      } finally {
        await handled[Symbol.asyncDispose]();
      }
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("run again after one killed between its publish and its mark: the stream drops the repeat, the letter is marked", async () => {
    await using nats = await startNats();
    // As the command's user (a server without users takes any): the same key, the same message id.
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams, auth: admin });
    try {
      const seq = await placedEvent(bus, "evt_twice");
      const original = await bus.jsm.streams.getMessage("ORDER", { seq });
      const headers = { "ce-type": OrderPlacedSchema.typeName, "ce-id": "evt_twice" };
      const letter = await addLetter(
        bus,
        "history-order",
        { ...headers, "x-dlq-subject": "order.order.placed.orchestration", "x-dlq-stream-seq": String(seq) },
        new Uint8Array(original?.data ?? []),
      );
      // What the killed redrive had published, under its id.
      const h = natsHeaders();
      for (const [k, v] of Object.entries(headers)) h.set(k, v);
      await bus.js.publish("order.order.placed.orchestration", new Uint8Array(original?.data ?? []), {
        headers: h,
        msgID: copyId(bus.letterKey ?? Buffer.alloc(0), letter, "ORDER", seq),
      });
      const run = asUser(["--dlq", "--redrive", String(letter)], nats.url);
      expect(await run.exit(20_000), `${run.out()}\n${run.err()}`).toBe(0);
      expect(run.out()).toContain(
        `DLQ ${letter} redriven to order.order.placed.orchestration (evt_twice) from ORDER ${seq}: ORDER 2, a repeat the stream dropped`,
      );
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(2);
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain("no dead letters on DLQ");
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("SIGKILLed between its copy's acknowledgement and its mark, then run again: the letter marked, applied once", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    using dir = tempDir();
    const broken = new Set(["evt_killed"]);
    // Between the command and NATS: the command is SIGKILLed as it sends its mark, which NATS never gets.
    let victim: ChildProcess | undefined;
    const sockets = new Set<net.Socket>();
    const proxy = net.createServer((client) => {
      const server = net.connect(nats.port, "127.0.0.1");
      sockets.add(client).add(server);
      server.pipe(client);
      client.on("data", (chunk: Buffer) => {
        if (chunk.toString("latin1").includes("PUB dlq.redriven.")) {
          victim?.kill("SIGKILL");
          client.destroy();
          server.destroy();
          return;
        }
        server.write(chunk);
      });
      for (const s of [client, server]) s.on("error", () => {});
    });
    const port = await freePort();
    await new Promise<void>((r) => proxy.listen(port, "127.0.0.1", r));
    try {
      await using lettering = await recorder(bus, dir.path, "history-order", broken);
      await placedEvent(bus, "evt_killed");
      const letter = await letterOf(bus, "evt_killed");
      broken.clear();
      const killed = asUser(["--dlq", "--redrive", String(letter.seq)], `nats://127.0.0.1:${port}`);
      victim = killed.child;
      expect(await killed.exit(20_000), `${killed.out()}\n${killed.err()}`).toBe("SIGKILL");
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(2); // the copy is out
      expect(
        await until(
          () => lettering.effects("evt_killed"),
          (n) => n === 1,
        ),
      ).toBe(1);
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out(), "not marked: still listed").toContain(`DLQ ${letter.seq} `);

      const again = asUser(["--dlq", "--redrive", String(letter.seq)], nats.url);
      expect(await again.exit(20_000), `${again.out()}\n${again.err()}`).toBe(0);
      expect(again.out()).toContain(`DLQ ${letter.seq} redriven to order.order.placed.orchestration (evt_killed)`);
      expect(again.out()).toContain("ORDER 2, a repeat the stream dropped");
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(2);
      await lettering.settled();
      expect(await lettering.effects("evt_killed")).toBe(1);
      const after = asUser(["--dlq"], nats.url);
      expect(await after.exit(20_000), after.err()).toBe(0);
      expect(after.out()).toContain("no dead letters on DLQ");
      // A consumer made after: the stream replays the event and its copy to it, and it applies one.
      await using late = await recorder(bus, dir.path, "late-order", new Set());
      await late.settled();
      expect((await bus.jsm.consumers.info("ORDER", "late-order")).delivered.stream_seq).toBe(2);
      expect(await late.effects("evt_killed")).toBe(1);
    } finally {
      for (const s of sockets) s.destroy();
      proxy.close();
      await bus.close();
    }
  }, 60_000);

  it("sends one copy of an event however many letters name it; each consumer that lettered it applies it once", async () => {
    // Two consumers lettering one event is two letters; one copy reaches both. A service's letters (any
    // number, on its own dlq.<durable>) naming one event each had a copy published in its stream.
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    using dir = tempDir();
    const broken = new Set(["evt_shared"]);
    try {
      await using history = await recorder(bus, dir.path, "history-order", broken);
      await using notification = await recorder(bus, dir.path, "notification-order", broken);
      await placedEvent(bus, "evt_shared");
      await until(
        async () => (await letters(bus)).length,
        (n) => n === 2,
      );
      const [first, second] = await letters(bus);
      const forged = [];
      for (let i = 0; i < 3; i++) {
        const headers: Record<string, string> = {};
        for (const [k, v] of first?.header ?? []) if (!/^nats-/i.test(k)) headers[k] = v[0] ?? "";
        forged.push(await addLetter(bus, "history-order", headers));
      }
      broken.clear();
      const run = asUser(["--dlq", "--redrive", "all"], nats.url);
      expect(await run.exit(20_000), `${run.out()}\n${run.err()}`).toBe(0);
      expect(run.out()).toContain(
        `DLQ ${first?.seq} redriven to order.order.placed.orchestration (evt_shared) from ORDER 1: ORDER 2\n`,
      );
      for (const seq of [second?.seq, ...forged]) {
        expect(run.out()).toContain(
          `DLQ ${seq} redriven to order.order.placed.orchestration (evt_shared) from ORDER 1: ORDER 2, the copy sent for DLQ ${first?.seq}`,
        );
      }
      expect(run.out()).toContain("5 redriven, 0 skipped");
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(2);
      await history.settled();
      await notification.settled();
      expect(await history.effects("evt_shared")).toBe(1);
      expect(await notification.effects("evt_shared")).toBe(1);
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain("no dead letters on DLQ");
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("redrives a truncated letter from its original message in its stream", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    using dir = tempDir();
    const broken = new Set(["evt_big"]);
    try {
      await using lettering = await recorder(bus, dir.path, "history-order", broken);
      // Near max_payload: with the dead letter's headers it no longer fits, and the letter is cut.
      const original = await placedEvent(bus, "evt_big", (bus.nc.info?.max_payload ?? 0) - 200);
      const letter = await letterOf(bus, "evt_big");
      expect(letter.header.get("x-dlq-truncated")).not.toBe("");
      expect(letter.header.get("x-dlq-stream-seq")).toBe(String(original));
      broken.clear();
      const run = asUser(["--dlq", "--redrive", String(letter.seq)], nats.url);
      expect(await run.exit(20_000), `${run.out()}\n${run.err()}`).toBe(0);
      expect(run.out()).toContain(`from ORDER ${original} (the letter was cut)`);
      expect(
        await until(
          () => lettering.effects("evt_big"),
          (n) => n === 1,
        ),
      ).toBe(1);
      const copy = await bus.jsm.streams.getMessage("ORDER", { seq: original + 1 });
      const whole = await bus.jsm.streams.getMessage("ORDER", { seq: original });
      expect(copy?.data.byteLength).toBe(whole?.data.byteLength);
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("skips, and keeps, a letter it cannot redrive, says why, and exits 1", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const ok = await placedEvent(bus, "evt_fine");
      const older = await placedEvent(bus, "evt_old", 0, "2026-01-01T00:00:00.000Z");
      const base = { "ce-type": OrderPlacedSchema.typeName, "x-dlq-consumer": "history-order", "x-dlq-reason": "x" };
      const subject = "order.order.placed.orchestration";
      const gone = await addLetter(bus, "history-order", {
        ...base,
        "ce-id": "evt_gone",
        "x-dlq-subject": subject,
        "x-dlq-stream-seq": "999",
        "x-dlq-truncated": "2000000 bytes, at most 65536 kept; other headers left out",
      });
      const nowhere = await addLetter(bus, "history-order", {
        ...base,
        "ce-id": "evt_nowhere",
        "x-dlq-subject": "elsewhere.thing.happened.none",
        "x-dlq-stream-seq": "1",
      });
      const bare = await addLetter(bus, "history-order", { ...base, "ce-id": "evt_bare" });
      const old = await addLetter(bus, "history-order", {
        ...base,
        "ce-id": "evt_old",
        "x-dlq-subject": subject,
        "x-dlq-stream-seq": String(older),
      });
      const fine = await addLetter(bus, "history-order", {
        ...base,
        "ce-id": "evt_fine",
        "x-dlq-subject": subject,
        "x-dlq-stream-seq": String(ok),
      });
      const run = asUser(["--dlq", "--redrive", "all"], nats.url);
      expect(await run.exit(20_000), run.err()).toBe(1);
      const out = run.out();
      expect(out).toContain(`DLQ ${gone} skipped: its original (ORDER 999) is no longer held`);
      expect(out).toContain(`DLQ ${nowhere} skipped: its subject elsewhere.thing.happened.none is on no event stream`);
      expect(out).toContain(`DLQ ${bare} skipped: it has no x-dlq-subject`);
      expect(out).toContain(
        `DLQ ${old} skipped: its event is from 2026-01-01T00:00:00.000Z, over 7 days ago: the inboxes may have forgotten it`,
      );
      expect(out).toContain(`DLQ ${fine} redriven to ${subject} (evt_fine) from ORDER ${ok}: ORDER 3`);
      expect(out).toContain("1 redriven, 4 skipped");
      // In DLQ order.
      expect(out.indexOf(`DLQ ${gone} `)).toBeLessThan(out.indexOf(`DLQ ${fine} `));
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain("4 dead letter(s)");
      expect(listed.out()).not.toContain(`DLQ ${fine} `);
      // Letters written by hand say no delivery count: none is shown, rather than ",  deliveries".
      expect(listed.out()).toContain("reason: x (consumer history-order)");
      expect(listed.out()).not.toContain(",  deliveries");
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("--redrive does not send a letter --dismiss settled while it ran", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const base = { "ce-type": OrderPlacedSchema.typeName, "x-dlq-subject": "order.order.placed.orchestration" };
      const letters: number[] = [];
      for (const id of ["evt_race_1", "evt_race_2"]) {
        const seq = await placedEvent(bus, id);
        letters.push(await addLetter(bus, "history-order", { ...base, "ce-id": id, "x-dlq-stream-seq": String(seq) }));
      }
      const [first = 0, second = 0] = letters;
      const said: string[] = [];
      let dismissal: Promise<unknown> = Promise.resolve();
      const run = await redrive(
        awaitingFirst(bus, () => dismissal),
        EVENTS,
        "all",
        BUS_ADMIN,
        (line) => {
          said.push(line);
          // The operator's --dismiss of the second letter, its mark stored as the redrive sent the first.
          if (!line.startsWith(`DLQ ${first} redriven`)) return;
          const h = natsHeaders();
          h.set("x-dlq-dismissed", new Date().toISOString());
          dismissal = bus.js.publish(markSubject("history-order", second), new Uint8Array(0), { headers: h });
        },
      );
      expect(said.join("\n")).toContain(`DLQ ${second} settled since this redrive began: not sent`);
      expect(run).toEqual({ redriven: 1, skipped: 0 });
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(3); // the two events, the first's copy
      expect(await deadLettersWaiting(bus, "history-order")).toBe(0);
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("--dismiss does not say a letter a redrive sent while it ran was not sent", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const first = await addLetter(bus, "history-order", { "ce-id": "evt_a" });
      const second = await addLetter(bus, "history-order", { "ce-id": "evt_b" });
      const said: string[] = [];
      let redriving: Promise<unknown> = Promise.resolve();
      const n = await dismiss(
        awaitingFirst(bus, () => redriving),
        "all",
        (line) => {
          said.push(line);
          // A redrive run beside it sends the second letter and marks it, as the first is dismissed.
          if (!line.startsWith(`DLQ ${first} dismissed`)) return;
          const h = natsHeaders();
          h.set("x-dlq-redriven-to", "ORDER 9");
          redriving = bus.js.publish(markSubject("history-order", second), new Uint8Array(0), { headers: h });
        },
      );
      expect(said).toEqual([
        `DLQ ${first} dismissed: its event is not sent again`,
        `DLQ ${second} settled since this dismissal began: not marked dismissed`,
      ]);
      expect(n).toBe(1);
      const marks = await bus.jsm.streams.info("DLQ", { subjects_filter: `dlq.redriven.history-order.${second}` });
      expect(marks.state.subjects).toEqual({ [`dlq.redriven.history-order.${second}`]: 1 });
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("--dismiss settles a letter no redrive can send: out of the listing and the waiting count, nothing published", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const ok = await placedEvent(bus, "evt_fine");
      const base = { "ce-type": OrderPlacedSchema.typeName, "x-dlq-subject": "order.order.placed.orchestration" };
      const gone = await addLetter(bus, "history-order", { ...base, "ce-id": "evt_gone", "x-dlq-stream-seq": "999" });
      const fine = await addLetter(bus, "history-order", {
        ...base,
        "ce-id": "evt_fine",
        "x-dlq-stream-seq": String(ok),
      });
      expect(await deadLettersWaiting(bus, "history-order")).toBe(2);
      const following = asUser(["--dlq", "--follow"], nats.url);
      await following.printed(`DLQ ${fine} `);

      const run = asUser(["--dlq", "--dismiss", String(gone)], nats.url);
      expect(await run.exit(20_000), run.err()).toBe(0);
      expect(run.out()).toContain(`DLQ ${gone} dismissed: its event is not sent again`);
      expect(run.out()).toContain("1 dismissed");
      await following.printed(`DLQ ${gone} dismissed`);
      expect(await deadLettersWaiting(bus, "history-order")).toBe(1);
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).not.toContain(`DLQ ${gone} `);
      expect(listed.out()).toContain(`DLQ ${fine} `);

      // Settled once: named again it is refused; --redrive all no longer tries it, and sends the other.
      const again = asUser(["--dlq", "--dismiss", String(gone)], nats.url);
      expect(await again.exit(20_000)).toBe(2);
      expect(again.err()).toContain(`DLQ ${gone} was redriven or dismissed already`);
      expect(again.err()).toContain("nothing dismissed");
      const all = asUser(["--dlq", "--redrive", "all"], nats.url);
      expect(await all.exit(20_000), all.err()).toBe(0);
      expect(all.out()).not.toContain(`DLQ ${gone} `);
      expect(all.out()).toContain("1 redriven, 0 skipped");
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(2); // the event and its one copy
      expect(await deadLettersWaiting(bus, "history-order")).toBe(0);
      // Nothing left: --dismiss all dismisses nothing.
      const none = asUser(["--dlq", "--dismiss", "all"], nats.url);
      expect(await none.exit(20_000), none.err()).toBe(0);
      expect(none.out()).toContain("0 dismissed");
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("keeps a letter, unmarked, whose republish its stream refuses (no acknowledgement)", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const seq = await placedEvent(bus, "evt_refused");
      const letter = await addLetter(
        bus,
        "history-order",
        {
          "ce-type": OrderPlacedSchema.typeName,
          "ce-id": "evt_refused",
          "x-dlq-subject": "order.order.placed.orchestration",
          "x-dlq-stream-seq": String(seq),
        },
        new Uint8Array(64),
      );
      const { config } = await bus.jsm.streams.info("ORDER");
      await bus.jsm.streams.update("ORDER", { ...config, max_msg_size: 16 });
      const run = asUser(["--dlq", "--redrive", "all"], nats.url);
      expect(await run.exit(20_000), run.err()).toBe(1);
      expect(run.out()).toMatch(new RegExp(`DLQ ${letter} skipped: not republished: .*; left in the DLQ`));
      expect(run.out()).toContain("0 redriven, 1 skipped");
      await bus.jsm.streams.update("ORDER", { ...config, max_msg_size: -1 });
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain(`DLQ ${letter} `);
      const again = asUser(["--dlq", "--redrive", String(letter)], nats.url);
      expect(await again.exit(20_000), again.err()).toBe(0);
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("refuses malformed arguments and letters the DLQ does not hold, changing nothing", async () => {
    // Each refusal is its own process and none touches NATS: started at once, not one after another
    // (~1 s of node start each, 14 of them in a row).
    const malformed = [
      ["--dlq", "--redrive"],
      ["--dlq", "--redrive", "0"],
      ["--dlq", "--redrive", "1,x"],
      ["--dlq", "--redrive", "1,,2"],
      ["--dlq", "--redrive", "all,1"],
      ["--dlq", "--redrive", "99999999999999999999"],
      ["--dlq", "--redrive", "1", "--follow"],
      ["--dlq", "--redrive", "1", "--redrive", "2"],
      ["--redrive", "1"],
      ["--dlq", "--dismiss"],
      ["--dlq", "--dismiss", "1,x"],
      ["--dlq", "--redrive", "1", "--dismiss", "2"],
      ["--dlq", "--dismiss", "1", "--follow"],
      ["--dismiss", "1"],
    ];
    const runs = malformed.map((args) => ({ args, run: eventsTs(args, "nats://127.0.0.1:1") }));
    // 30 s, not 15: fourteen starting at once share the cores.
    const codes = await Promise.all(runs.map(({ run }) => run.exit(30_000)));
    for (const [i, { args, run }] of runs.entries()) {
      expect(codes[i], args.join(" ")).toBe(2);
      expect(run.err(), args.join(" ")).toContain("usage: make events");
    }
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const seq = await placedEvent(bus, "evt_kept");
      const kept = await addLetter(bus, "history-order", {
        "ce-id": "evt_kept",
        "x-dlq-subject": "order.order.placed.orchestration",
        "x-dlq-stream-seq": String(seq),
      });
      const run = eventsTs(["--dlq", "--redrive", `${kept},${kept + 5}`], nats.url);
      expect(await run.exit(20_000)).toBe(2);
      expect(run.err()).toContain(`no dead letter ${kept + 5} in DLQ`);
      expect(run.err()).toContain("nothing redriven: make dlq lists the letters it holds");
      expect(run.err()).not.toContain("usage:");
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(1);
      expect((await bus.jsm.streams.info("DLQ")).state.messages).toBe(1);
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("counts no letter it redrove among the older ones the DLQ no longer holds", async () => {
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const letter = async (id: string) =>
        addLetter(bus, "history-order", {
          "ce-type": OrderPlacedSchema.typeName,
          "ce-id": id,
          "x-dlq-subject": "order.order.placed.orchestration",
          "x-dlq-stream-seq": String(await placedEvent(bus, id)),
          "x-dlq-reason": "broken",
        });
      await letter("evt_a");
      await letter("evt_b");
      const run = asUser(["--dlq", "--redrive", "all"], nats.url);
      expect(await run.exit(20_000), run.err()).toBe(0);
      // Held to 3: letters 1 and 2 (both redriven) go, their marks (3, 4) stay.
      const { config } = await bus.jsm.streams.info("DLQ");
      await bus.jsm.streams.update("DLQ", { ...config, max_msgs: 3 });
      await letter("evt_c");
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain("1 dead letter(s)");
      expect(listed.out()).not.toContain("no longer held");
      // Mark 3 goes too: letter 1 (redriven, which no mark says any more) and mark 3.
      await letter("evt_d");
      const later = asUser(["--dlq"], nats.url);
      expect(await later.exit(20_000), later.err()).toBe(0);
      expect(later.out()).toContain("2 dead letter(s)");
      expect(later.out()).toContain("2 older dead letter(s) or redrive mark(s) no longer held");
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("--redrive all reads the letters, not every redrive mark the DLQ holds, one request each", async () => {
    // One request a DLQ message: with 120,000 marks held (as many letters redriven), --redrive all of 3
    // letters took 29 s. The letters are found by their subject, dlq.<durable> (two tokens; a mark three).
    await using nats = await startNats();
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams });
    try {
      const marks = [];
      for (let i = 0; i < 5_000; i++) marks.push(bus.js.publish(`dlq.redriven.${1_000_000 + i}`, new Uint8Array(0)));
      await Promise.all(marks);
      const seq = await placedEvent(bus, "evt_among_marks");
      const letter = await addLetter(bus, "history-order", {
        "ce-type": OrderPlacedSchema.typeName,
        "ce-id": "evt_among_marks",
        "x-dlq-subject": "order.order.placed.orchestration",
        "x-dlq-stream-seq": String(seq),
      });
      // What the command asks JetStream for DLQ messages, seen as any subscriber of the subject sees it.
      let reads = 0;
      const sub = bus.nc.subscribe("$JS.API.STREAM.MSG.GET.DLQ", {
        callback: () => {
          reads++;
        },
      });
      await bus.nc.flush();
      const run = asUser(["--dlq", "--redrive", "all"], nats.url);
      expect(await run.exit(30_000), run.err()).toBe(0);
      sub.unsubscribe();
      expect(run.out()).toContain(`DLQ ${letter} redriven`);
      expect(run.out()).toContain("1 redriven, 0 skipped");
      expect(reads).toBeLessThan(10);
    } finally {
      await bus.close();
    }
  }, 60_000);

  it("with a DLQ that never held a letter: --redrive all redrives nothing and exits 0; a sequence is no letter", async () => {
    await using nats = await startNats();
    const all = eventsTs(["--dlq", "--redrive", "all"], nats.url);
    expect(await all.exit(20_000), all.err()).toBe(0);
    expect(all.out()).toContain("0 redriven, 0 skipped");
    const one = eventsTs(["--dlq", "--redrive", "1"], nats.url);
    expect(await one.exit(20_000)).toBe(2);
    expect(one.err()).toContain("no dead letter 1 in DLQ (it holds none)");
  }, 60_000);

  it("never publishes what a letter says: a service's forged letter of another context's event is skipped", async () => {
    // A service's user may write any letter on its own dlq.<durable>; the redrive publishes as the bus's
    // administrator, on any context's subjects. Sent from the letter, history could have had an
    // OrderCancelled published, which only order may publish.
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams, auth: admin });
    const history = await connectBus(nats.url, "redrive-test-history", silentLogger(), {
      auth: { user: "history", pass: password("history") },
    });
    try {
      const placed = await placedEvent(bus, "evt_genuine");
      const meta = { eventId: "evt_forged", orderId: "ord-victim", sagaMode: SagaMode.CHOREOGRAPHY };
      const forged = toBinary(OrderCancelledSchema, create(OrderCancelledSchema, { meta, reason: "forged" }));
      const subject = "order.order.cancelled.choreography";
      const letters: number[] = [];
      for (const seq of ["999", String(placed)]) {
        const h = natsHeaders();
        h.set("ce-type", OrderCancelledSchema.typeName);
        h.set("ce-id", "evt_forged");
        h.set("x-dlq-subject", subject);
        h.set("x-dlq-stream-seq", seq);
        letters.push((await history.js.publish("dlq.history-order", forged, { headers: h })).seq);
      }
      const run = asUser(["--dlq", "--redrive", "all"], nats.url);
      expect(await run.exit(20_000), run.err()).toBe(1);
      expect(run.out()).toContain(`DLQ ${letters[0]} skipped: its original (ORDER 999) is no longer held`);
      expect(run.out()).toContain(`DLQ ${letters[1]} skipped: ORDER ${placed} holds another message than its original`);
      expect(run.out()).toContain("0 redriven, 2 skipped");
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(1);
      // Nor may a service mark a letter redriven, which would hide it from the listing.
      for (const mark of [`dlq.redriven.${letters[0]}`, `dlq.redriven.history-order.${letters[0]}`])
        await expect(history.js.publish(mark, new Uint8Array(0)), mark).rejects.toThrow(/Permissions Violation/);
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain("2 dead letter(s)");
    } finally {
      await history.close();
      await bus.close();
    }
  }, 60_000);

  it("redrives a letter whose redrive message id a service tried to take first: no service can work it out", async () => {
    // The id was redrive:<DLQ seq>, known before it is sent (a service may read the DLQ's state): order's
    // user, which may publish on order.>, stored a message under it first, and the redrive skipped the
    // letter ("a repeat of ORDER 3, which is another message"), again at every run 2 minutes apart.
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams, auth: admin });
    const order = await connectBus(nats.url, "redrive-test-order", silentLogger(), {
      auth: { user: "order", pass: password("order") },
    });
    try {
      const seq = await placedEvent(bus, "evt_squatted");
      const other = await placedEvent(bus, "evt_other");
      const letter = await addLetter(bus, "history-order", {
        "ce-type": OrderPlacedSchema.typeName,
        "ce-id": "evt_squatted",
        "x-dlq-subject": "order.order.placed.orchestration",
        "x-dlq-stream-seq": String(seq),
      });
      // Every id order could compute: the old one, and MACs under every key it knows or can guess (none,
      // an anonymous bus's, admin's without a password, its own user's), over the DLQ sequence alone or
      // with the original's place, and as the redrive makes them (its code is no secret).
      const guesses = [`redrive:${letter}`, `redriven:${letter}`];
      const noPassword = (user: string) => createHmac("sha256", "").update(`shopmesh dead letters of ${user}`).digest();
      for (const key of [Buffer.alloc(0), noPassword(""), noPassword(BUS_ADMIN), order.letterKey ?? Buffer.alloc(0)]) {
        guesses.push(copyId(key, letter, "ORDER", seq));
        for (const over of [
          `${letter}`,
          `redrive:${letter}`,
          `DLQ ${letter} ORDER ${seq}`,
          `DLQ:${letter}:ORDER:${seq}`,
        ]) {
          const mac = createHmac("sha256", key).update(over).digest();
          for (const text of [mac.toString("base64url"), mac.toString("hex")]) {
            for (const n of [16, 22, 32, text.length]) guesses.push(`redrive:${letter}:${text.slice(0, n)}`);
          }
        }
      }
      const decoy = await bus.jsm.streams.getMessage("ORDER", { seq: other });
      const h = natsHeaders();
      h.set("ce-type", OrderPlacedSchema.typeName);
      h.set("ce-id", "evt_other");
      for (const msgID of guesses) {
        await order.js.publish("order.order.placed.orchestration", new Uint8Array(decoy?.data ?? []), {
          headers: h,
          msgID,
        });
      }
      const held = (await bus.jsm.streams.info("ORDER")).state.messages;
      expect(held).toBe(2 + new Set(guesses).size);
      const run = asUser(["--dlq", "--redrive", String(letter)], nats.url);
      expect(await run.exit(20_000), run.out()).toBe(0);
      expect(run.out()).toContain(
        `DLQ ${letter} redriven to order.order.placed.orchestration (evt_squatted) from ORDER ${seq}: ORDER ${held + 1}\n`,
      );
      const copy = await bus.jsm.streams.getMessage("ORDER", { seq: held + 1 });
      expect(copy?.header.get("ce-id")).toBe("evt_squatted");
      // Under its first id (no guess took it), which shows on it once it is sent, as any message's does.
      expect(copy?.header.get("Nats-Msg-Id")).toBe(copyId(bus.letterKey ?? Buffer.alloc(0), letter, "ORDER", seq));
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).not.toContain(`DLQ ${letter} `);
    } finally {
      await order.close();
      await bus.close();
    }
  }, 60_000);

  it("redrives a letter whose id a service learnt and took first, under a second id; marks none whose copy was not sent", async () => {
    // A copy's id shows on it (Nats-Msg-Id): a redrive killed before its mark, a service that read the id
    // from its copy could store another message under it once the duplicate window was over, and have
    // every later redrive of the letter skipped ("a repeat of ..., which is another message"). The test
    // knows the administrator's key, as such a service would have learnt the id.
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams, auth: admin });
    const order = await connectBus(nats.url, "redrive-test-order", silentLogger(), {
      auth: { user: "order", pass: password("order") },
    });
    const key = bus.letterKey ?? Buffer.alloc(0);
    try {
      const taken = await placedEvent(bus, "evt_taken");
      const hidden = await placedEvent(bus, "evt_hidden");
      const other = await placedEvent(bus, "evt_other");
      const letterOfEvent = (eventId: string, seq: number) =>
        addLetter(bus, "history-order", {
          "ce-type": OrderPlacedSchema.typeName,
          "ce-id": eventId,
          "x-dlq-subject": "order.order.placed.orchestration",
          "x-dlq-stream-seq": String(seq),
        });
      const [first, second] = [await letterOfEvent("evt_taken", taken), await letterOfEvent("evt_hidden", hidden)];
      const decoy = await bus.jsm.streams.getMessage("ORDER", { seq: other });
      const h = natsHeaders();
      h.set("ce-type", OrderPlacedSchema.typeName);
      h.set("ce-id", "evt_other");
      const store = async (msgID: string) =>
        (
          await order.js.publish("order.order.placed.orchestration", new Uint8Array(decoy?.data ?? []), {
            headers: h,
            msgID,
          })
        ).seq;
      // The first letter's id taken: its copy goes under the second id, of the message stored there.
      const decoyOfFirst = await store(copyId(key, first, "ORDER", taken));
      const run = asUser(["--dlq", "--redrive", String(first)], nats.url);
      expect(await run.exit(20_000), run.out()).toBe(0);
      expect(run.out()).toContain(
        `DLQ ${first} redriven to order.order.placed.orchestration (evt_taken) from ORDER ${taken}: ORDER ${decoyOfFirst + 1}\n`,
      );
      expect((await bus.jsm.streams.getMessage("ORDER", { seq: decoyOfFirst + 1 }))?.header.get("ce-id")).toBe(
        "evt_taken",
      );
      // Both taken (which needs the key): the stream holds another message, and the letter is not marked.
      const decoyOfSecond = await store(copyId(key, second, "ORDER", hidden));
      const alsoTaken = await store(copyId(key, second, "ORDER", hidden, decoyOfSecond));
      const kept = asUser(["--dlq", "--redrive", String(second)], nats.url);
      expect(await kept.exit(20_000), kept.err()).toBe(1);
      expect(kept.out()).toContain(
        `DLQ ${second} skipped: not republished: ORDER dropped it as a repeat of ORDER ${alsoTaken}, which is another message`,
      );
      expect(kept.out()).toContain("0 redriven, 1 skipped");
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain(`DLQ ${second} `);
      expect(listed.out()).not.toContain(`DLQ ${first} `);
    } finally {
      await order.close();
      await bus.close();
    }
  }, 60_000);

  it("marks a letter redriven even when a service stored a letter under the mark's message id first", async () => {
    // Message ids are the DLQ's, not a subject's: a letter history writes with the id a mark would have
    // (redriven:<seq>, known from the DLQ's state) had that mark dropped as its duplicate. The redrive
    // said the letter redriven, and it stayed unmarked, listed, sent again at each --redrive all.
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams, auth: admin });
    const history = await connectBus(nats.url, "redrive-test-history", silentLogger(), {
      auth: { user: "history", pass: password("history") },
    });
    try {
      const seq = await placedEvent(bus, "evt_unmarked");
      const letter = await addLetter(bus, "history-order", {
        "ce-type": OrderPlacedSchema.typeName,
        "ce-id": "evt_unmarked",
        "x-dlq-subject": "order.order.placed.orchestration",
        "x-dlq-stream-seq": String(seq),
      });
      await history.js.publish("dlq.history-order", new Uint8Array([1]), { msgID: `redriven:${letter}` });
      const run = asUser(["--dlq", "--redrive", String(letter)], nats.url);
      expect(await run.exit(20_000), `${run.out()}\n${run.err()}`).toBe(0);
      expect(run.out()).toContain(`DLQ ${letter} redriven`);
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).not.toContain(`DLQ ${letter} `);
      const again = asUser(["--dlq", "--redrive", String(letter)], nats.url);
      expect(await again.exit(20_000)).toBe(2);
      expect(again.err()).toContain(`DLQ ${letter} was redriven or dismissed already`);
    } finally {
      await history.close();
      await bus.close();
    }
  }, 60_000);

  it("as a service's NATS user says it may not redrive, and keeps the letter", async () => {
    await using nats = await startNats(natsAuthorization(BUS_USERS, password));
    const bus = await connectBus(nats.url, "redrive-test", silentLogger(), { streams: EVENTS.streams, auth: admin });
    try {
      const seq = await placedEvent(bus, "evt_perm");
      const letter = await addLetter(bus, "history-order", {
        "ce-type": OrderPlacedSchema.typeName,
        "ce-id": "evt_perm",
        "x-dlq-subject": "order.order.placed.orchestration",
        "x-dlq-stream-seq": String(seq),
      });
      const run = asUser(["--dlq", "--redrive", String(letter)], nats.url, "history");
      expect(await run.exit(30_000)).toBe(1);
      expect(`${run.out()}${run.err()}`).toMatch(/NATS user history may not/);
      expect((await bus.jsm.streams.info("ORDER")).state.messages).toBe(1);
      const listed = asUser(["--dlq"], nats.url);
      expect(await listed.exit(20_000), listed.err()).toBe(0);
      expect(listed.out()).toContain(`DLQ ${letter} `);
    } finally {
      await bus.close();
    }
  }, 60_000);
});
