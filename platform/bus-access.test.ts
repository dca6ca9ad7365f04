/**
 * Who may publish what on the bus (bus-access.ts), against a real nats-server
 * configured with the users `make run` gives it: nobody connects without a
 * user; each service publishes its own context's events only (a forged
 * OrderCancelled from anything but order is refused and never stored); no
 * service creates, changes or deletes a stream (a stream's `republish` would
 * publish on any subject for it); and the ways three hostile rounds found
 * around that, holding one service's password, stay shut — the server's
 * answers sent to a reply subject of one's choosing (a direct read carrying
 * a stored forgery, junk written over a registry entry or under a key no
 * registration writes), a push consumer delivering into another stream,
 * another service's consumers, dead letters pre-empted by their ids, and
 * registry watches that were consumers anyone could change. Reading: a service
 * subscribes only to its own inboxes and the registry, so it reads no
 * other's events, nor the card token in an OrderPlaced. Last, a service
 * waits for the administrator to provision the streams, then runs.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { AckPolicy, DeliverPolicy, type JsMsg, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUS_USERS, EVENTS } from "../contracts/events.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { OrderCancelledSchema } from "../gen/shopmesh/order/v1/events_pb.js";
import { startNats, type TestNats } from "../test/nats.js";
import { connectBus, inboxPrefixOf } from "./bus.js";
import { BUS_ADMIN, durableOf, natsAuthorization, provisionBus, STREAMS_ACCOUNT } from "./bus-access.js";
import { type EventKind, eventSubject } from "./catalogue.js";
import { letterId } from "./dead-letter.js";
import { decodeEvent } from "./inbox.js";
import { silentLogger } from "./log.js";
import {
  MAX_ENTRY_BYTES,
  openRegistry,
  REGISTRY_BUCKET,
  REGISTRY_SUBJECT_PREFIX,
  registerInstance,
} from "./registry.js";
import { watchInstances } from "./registry-watch.js";

const password = (user: string) => `test-${user}-password`;
let nats: TestNats;
beforeAll(async () => {
  nats = await startNats(natsAuthorization(BUS_USERS, password));
});
afterAll(() => nats[Symbol.asyncDispose]());

/** A connection as `user` (with its inboxes, as connectBus makes it), closed when its scope ends (`await using`). */
const as = async (user: string) => {
  const inbox = user === BUS_ADMIN ? {} : { inboxPrefix: inboxPrefixOf(user) };
  const nc = await connect({ servers: nats.url, user, pass: password(user), ...inbox });
  return Object.assign(nc, { [Symbol.asyncDispose]: () => nc.close() });
};

const CANCELLED = EVENTS.kinds.find((k) => k.typeName.endsWith("OrderCancelled")) as EventKind;
const CANCELLED_SUBJECT = eventSubject(CANCELLED, SagaMode.CHOREOGRAPHY);
/** A well-formed OrderCancelled, as only order may publish it. */
const forged = {
  payload: toBinary(
    OrderCancelledSchema,
    create(OrderCancelledSchema, {
      meta: { eventId: "evt_forged1", orderId: "ord_forged1", sagaMode: SagaMode.CHOREOGRAPHY },
    }),
  ),
  headers() {
    const h = headers();
    h.set("ce-type", CANCELLED.typeName);
    h.set("ce-id", "evt_forged1");
    return h;
  },
};

/** Whether the server refuses `nc`'s user a publish on `subject` (it says so on the connection's status). */
async function refused(nc: NatsConnection, subject: string): Promise<boolean> {
  const said = (async () => {
    for await (const s of nc.status()) {
      if (s.type === "error" && String(s.error).includes(`Publish to "${subject}"`)) return true;
    }
    return false;
  })();
  nc.publish(subject, new Uint8Array([1]));
  await nc.flush();
  return Promise.race([said, new Promise<boolean>((r) => setTimeout(() => r(false), 1_000))]);
}

/** What `act` makes `stream` store next, read as a consumer reads it (with the administrator's rights). */
async function storedIn(nc: NatsConnection, stream: string, act: () => Promise<unknown>): Promise<JsMsg> {
  await using admin = await as(BUS_ADMIN);
  const jsm = await jetstreamManager(admin);
  const before = (await jsm.streams.info(stream)).state.last_seq;
  await act();
  await nc.flush();
  for (const deadline = Date.now() + 5_000; (await jsm.streams.info(stream)).state.last_seq === before; ) {
    if (Date.now() > deadline) throw new Error(`${stream} stored nothing`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const name = `reader-${before}`;
  await jsm.consumers.add(stream, {
    durable_name: name,
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: before + 1,
  });
  const m = await (await jetstream(admin).consumers.get(stream, name)).next({ expires: 5_000 });
  if (!m) throw new Error(`${stream}: nothing to read after ${before}`);
  return m;
}

describe("authentication", () => {
  it("refuses a connection without a user, or with a wrong password, at once and by name", async () => {
    await expect(connect({ servers: nats.url })).rejects.toThrow(/Authorization Violation/);
    await expect(
      connectBus(nats.url, "t", silentLogger(), { auth: { user: "order", pass: "not-its-password" } }),
    ).rejects.toThrow(/Authorization Violation/);
  });
});

describe("publishing", () => {
  beforeAll(() =>
    provisionBus(nats.url, EVENTS, silentLogger(), { auth: { user: BUS_ADMIN, pass: password(BUS_ADMIN) } }),
  );

  it("each service publishes the events of its own context and no other's", async () => {
    const services = BUS_USERS.filter((u) => u.user !== BUS_ADMIN).map((u) => u.user);
    expect(services).toEqual(expect.arrayContaining(["order", "inventory", "payment", "notification", "history"]));
    const outcome: string[] = [];
    for (const user of services) {
      await using nc = await as(user);
      const js = jetstream(nc);
      for (const kind of EVENTS.kinds) {
        const ok = await js.publish(kind.subject, new Uint8Array([1])).then(
          () => true,
          (err: Error) => (/Permissions Violation/.test(err.message) ? false : Promise.reject(err)),
        );
        if (ok) outcome.push(`${user} ${kind.stream}`);
      }
    }
    // Every service's user may publish on its own stream's subjects, none on another's.
    const expected = EVENTS.kinds
      .filter((k) => services.includes(k.stream.toLowerCase()))
      .map((k) => `${k.stream.toLowerCase()} ${k.stream}`);
    expect(outcome.sort()).toEqual(expected.sort());
  });

  it("a forged OrderCancelled from inventory's user is refused and never reaches the ORDER stream", async () => {
    await using admin = await as(BUS_ADMIN);
    await using nc = await as("inventory");
    const before = (await (await jetstreamManager(admin)).streams.info("ORDER")).state.last_seq;
    const subject = EVENTS.kinds.find((k) => k.typeName.endsWith("OrderCancelled"))?.subject ?? "";
    await expect(jetstream(nc).publish(subject, new Uint8Array([1]))).rejects.toThrow(/Permissions Violation/);
    // A plain publish, with no acknowledgement asked, is dropped by the server just the same.
    nc.publish(subject, new Uint8Array([1]));
    await nc.flush();
    await admin.flush();
    expect((await (await jetstreamManager(admin)).streams.info("ORDER")).state.last_seq).toBe(before);
  });

  it("no service creates, changes, purges or deletes a stream: a republishing stream would forge for it", async () => {
    await using nc = await as("inventory");
    const jsm = await jetstreamManager(nc);
    const refused = /Permissions Violation/;
    await expect(
      jsm.streams.add({ name: "SIDE", subjects: ["side.>"], republish: { src: ">", dest: CANCELLED_SUBJECT } }),
    ).rejects.toThrow(refused);
    await expect(jsm.streams.update("INVENTORY", { subjects: ["inventory.>", "side.>"] })).rejects.toThrow(refused);
    await expect(jsm.streams.purge("ORDER")).rejects.toThrow(refused);
    await expect(jsm.streams.delete("ORDER")).rejects.toThrow(refused);
    await expect(jsm.streams.deleteMessage("ORDER", 1)).rejects.toThrow(refused);
    // What a consumer needs still works: reading a stream's state.
    expect((await jsm.streams.info("INVENTORY")).config.subjects).toEqual(["inventory.>"]);
  });

  it("an event a consumer delivers into another stream's subjects keeps its publisher's subject, and is refused", async () => {
    // What publish rights cannot stop: a push consumer's deliveries are stored by any stream whose
    // subjects they go to, once something subscribes there. Inventory's user, which may consume ORDER,
    // has the server deliver order's OrderCancelled to payment.payment.refunded.choreography, which PAYMENT keeps.
    await using order = await as("order");
    await using nc = await as("inventory");
    await using admin = await as(BUS_ADMIN);
    const jsm = await jetstreamManager(nc);
    await jetstream(order).publish(CANCELLED_SUBJECT, forged.payload, { headers: forged.headers() });
    const durable = durableOf("inventory", "ORDER");
    const deliverInto = () =>
      jsm.consumers.add("ORDER", {
        name: durable,
        deliver_subject: "payment.payment.refunded.choreography",
        deliver_policy: DeliverPolicy.Last,
        ack_policy: AckPolicy.None,
      });
    // It may not subscribe there itself, and without interest the server delivers nothing.
    const interest = nc.subscribe("payment.payment.refunded.choreography");
    expect(String(await interest.closed)).toMatch(/Permissions Violation/);
    await expect(storedIn(nc, "PAYMENT", deliverInto)).rejects.toThrow(/stored nothing/);
    await (await jetstreamManager(admin)).consumers.delete("ORDER", durable);
    // Anyone else's interest serves (`make events` tails every subject as the administrator).
    const tail = admin.subscribe("payment.payment.refunded.choreography");
    const stored = await storedIn(nc, "PAYMENT", deliverInto);
    tail.unsubscribe();
    await (await jetstreamManager(admin)).consumers.delete("ORDER", durable);
    expect(stored.subject).toBe(CANCELLED_SUBJECT);
    expect(decodeEvent(stored, EVENTS)).toMatchObject({
      unusable: expect.stringContaining("is published on order.order.cancelled.<mode> (ORDER)"),
    });
  });

  it("no server answer carries a stored message to another's subject: no direct reads, and a copy is refused", async () => {
    await using nc = await as("inventory");
    await using admin = await as(BUS_ADMIN);
    // The server sends its answer to whatever reply subject the asker names, unchecked. A direct read
    // answers with a stored message, headers and all: the asker's own forgery, onto any subject.
    await expect(refused(nc, `$JS.API.DIRECT.GET.KV_${REGISTRY_BUCKET}`)).resolves.toBe(true);
    const registry = (await (await jetstreamManager(admin)).streams.info(`KV_${REGISTRY_BUCKET}`)).config;
    // Nor roll-ups, nor values larger than an entry (an answer sent there could be 200 KB).
    expect([registry.allow_direct, registry.allow_rollup_hdrs, registry.max_msg_size]).toEqual([
      false,
      false,
      MAX_ENTRY_BYTES,
    ]);
    // Nor can a service's own registry key roll the others up (purge them).
    const h = headers();
    h.set("Nats-Rollup", "all");
    await expect(
      jetstream(nc).publish(`$KV.${REGISTRY_BUCKET}.inventory.inst_x`, new Uint8Array([1]), { headers: h }),
    ).rejects.toThrow(/rollup/i);
    // What such a copy looks like — made here by the administrator, who may read directly — is refused.
    const jsm = await jetstreamManager(admin);
    await jsm.streams.add({ name: "SIDE", subjects: ["side.>"], allow_direct: true });
    await jetstream(admin).publish("side.forged", forged.payload, { headers: forged.headers() });
    const stored = await storedIn(admin, "ORDER", async () => {
      admin.publish("$JS.API.DIRECT.GET.SIDE", JSON.stringify({ last_by_subj: "side.forged" }), {
        reply: CANCELLED_SUBJECT,
      });
    });
    expect(stored.subject).toBe(CANCELLED_SUBJECT);
    expect(decodeEvent(stored, EVENTS)).toMatchObject({
      unusable: expect.stringContaining("a copy of a stored message"),
    });
  });

  it("no server answer a service names the subject of reaches the streams' API: nothing is purged or deleted", async () => {
    // nats-server sends a publish's acknowledgement, {"stream":…,"seq":N}, to the reply subject the
    // publisher named, and acts on it there: as a purge of everything below N, or a delete of message N.
    await using gateway = await as("gateway");
    await using admin = await as(BUS_ADMIN);
    const jsm = await jetstreamManager(admin);
    for (let i = 0; i < 3; i++) await jetstream(admin).publish("dlq.history-order", new Uint8Array([i]));
    const before = (await jsm.streams.info("DLQ")).state;
    // And it acted on the answers it sends — a publish's acknowledgement, a no-wait pull's "404 No
    // Messages" — at any API subject: the account's purge deleted every stream and consumer.
    await using notification = await as("notification");
    const durable = durableOf("notification", "ORDER");
    await (await jetstreamManager(notification)).consumers.add("ORDER", {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
    });
    await jsm.consumers.add("ORDER", { durable_name: "payment-order", ack_policy: AckPolicy.Explicit });
    const apis = [
      // An answer at another's pull or dead letters was forwarded as a request of its own.
      "$JS.API.CONSUMER.MSG.NEXT.ORDER.payment-order",
      "dlq.payment-order",
      "$JS.API.STREAM.PURGE.DLQ",
      "$JS.API.STREAM.MSG.DELETE.DLQ",
      "$JS.API.ACCOUNT.PURGE.$G",
      `$JS.API.ACCOUNT.PURGE.${STREAMS_ACCOUNT}`,
      "$JS.API.STREAM.DELETE.DLQ",
      `$JS.API.CONSUMER.DELETE.ORDER.${durable}`,
    ];
    for (const api of apis) {
      for (let i = 0; i < 3; i++) {
        gateway.publish(`$KV.${REGISTRY_BUCKET}.gateway.inst_x`, new Uint8Array([1]), { reply: api });
        notification.publish(`$JS.API.CONSUMER.MSG.NEXT.ORDER.${durable}`, '{"batch":1,"no_wait":true}', {
          reply: api,
        });
      }
    }
    await gateway.flush();
    await notification.flush();
    await new Promise((r) => setTimeout(r, 500));
    // Nor is an answer sent to an event's subject stored as one (it was, as noise every consumer dead-lettered).
    const orders = (await jsm.streams.info("ORDER")).state.last_seq;
    gateway.publish("$JS.API.INFO", new Uint8Array(), { reply: CANCELLED_SUBJECT });
    await gateway.flush();
    await new Promise((r) => setTimeout(r, 500));
    expect((await jsm.streams.info("ORDER")).state.last_seq).toBe(orders);
    const after = (await jsm.streams.info("DLQ")).state;
    expect([after.messages, after.first_seq]).toEqual([before.messages, before.first_seq]);
    await expect(jsm.consumers.info("ORDER", durable)).resolves.toMatchObject({ name: durable });
    expect((await jsm.consumers.info("ORDER", "payment-order")).num_waiting).toBe(0);
    for (const s of [...EVENTS.streams.map((x) => x.name), `KV_${REGISTRY_BUCKET}`]) {
      const c = (await jsm.streams.info(s)).config;
      expect([s, c.deny_purge, c.deny_delete]).toEqual([s, true, true]);
    }
  });

  it("a service consumes, acknowledges and dead-letters only as its own durable consumers", async () => {
    await using nc = await as("inventory");
    const jsm = await jetstreamManager(nc);
    await expect(jsm.consumers.add("ORDER", { durable_name: durableOf("inventory", "ORDER") })).resolves.toBeDefined();
    // Another service's consumer cannot be changed (made to drop events), deleted, acknowledged for,
    // or have its dead letters pre-empted (their message ids are predictable).
    await expect(jsm.consumers.add("ORDER", { durable_name: "payment-order", headers_only: true })).rejects.toThrow(
      /Permissions Violation/,
    );
    await expect(jsm.consumers.delete("ORDER", "payment-order")).rejects.toThrow(/Permissions Violation/);
    await expect(refused(nc, "$JS.ACK.ORDER.payment-order.1.1.1.1.0")).resolves.toBe(true);
    await expect(refused(nc, "dlq.payment-order")).resolves.toBe(true);
    await expect(refused(nc, `dlq.${durableOf("inventory", "ORDER")}`)).resolves.toBe(false);
  });

  it("a registry write's reply subject, which every watcher sees, says nothing of the writer's other inboxes", async () => {
    // The connection's inbox ids are sequential: from one, a watcher found the writer's pulls, and
    // a status the server sent there (a 400 for a malformed pull of its own) ended them.
    await using gateway = await as("gateway");
    await using nc = await as("inventory");
    const seen = gateway.subscribe(`${REGISTRY_SUBJECT_PREFIX}inventory.*`, { max: 1 });
    await gateway.flush();
    const reg = await registerInstance({ nc, service: "inventory", address: "127.0.0.1:1", log: silentLogger() });
    for await (const m of seen) expect(m.reply).toMatch(/^_INBOX_inventory\.registry\.[0-9a-f]{24}$/);
    await reg.stop();
  });

  it("a service registers itself in the registry, never another service", async () => {
    await using nc = await as("inventory");
    const reg = await registerInstance({ nc, service: "inventory", address: "127.0.0.1:1", log: silentLogger() });
    await reg.stop();
    const kv = await new Kvm(nc).open(REGISTRY_BUCKET);
    await expect(kv.put("payment.inst_forged", "{}")).rejects.toThrow(/Permissions Violation/);
    await expect(openRegistry(nc)).resolves.toBeDefined();
  });
});

it("a dead letter's message id names its message, and one seen says nothing of the next", () => {
  // The DLQ drops a letter whose id it already holds: an id worked out from a seen one could be
  // stored first (any service may subscribe to dlq.>) to have the real letter dropped.
  const [a, b] = [letterId("payment-order", 41), letterId("payment-order", 42)];
  expect(letterId("payment-order", 41)).toBe(a); // a retry is the same letter
  expect(a.startsWith("payment-order:41:") && b.startsWith("payment-order:42:")).toBe(true);
  expect(a.split(":")[2]).not.toBe(b.split(":")[2]);
});

describe("reading", () => {
  /** Whether the server refuses `nc`'s user a subscription to `subject`. */
  async function subscriptionRefused(nc: NatsConnection, subject: string): Promise<boolean> {
    const sub = nc.subscribe(subject);
    await nc.flush();
    const closed = await Promise.race([sub.closed, new Promise<"open">((r) => setTimeout(() => r("open"), 1_000))]);
    if (closed === "open") sub.unsubscribe();
    return closed instanceof Error && /Permissions Violation/.test(closed.message);
  }

  it("a service reads no other's events: not as they are published, not from the streams, not from others' inboxes", async () => {
    await using order = await as("order");
    await using notification = await as("notification");
    // OrderPlaced carries the card token: only a consumer the administrator made for it may read it.
    for (const subject of ["order.>", ">", "order.order.placed", "_INBOX.>", `${inboxPrefixOf("payment")}.>`]) {
      await expect(subscriptionRefused(notification, subject), subject).resolves.toBe(true);
    }
    await expect(refused(notification, "$JS.API.STREAM.MSG.GET.ORDER")).resolves.toBe(true);
    // Nor through a consumer named after a stream it consumes, on another: the 7-token create.
    await expect(refused(notification, "$JS.API.CONSUMER.CREATE.INVENTORY.ORDER.notification-order")).resolves.toBe(
      true,
    );
    // Nor through a consumer of its own on a stream it does not consume (the gateway consumes none).
    const consumerOn = async (user: string, stream: string) => {
      await using nc = await as(user);
      return await (await jetstreamManager(nc)).consumers.add(stream, { durable_name: durableOf(user, stream) });
    };
    await expect(consumerOn("gateway", "ORDER")).rejects.toThrow(/Permissions Violation/);
    await expect(consumerOn("notification", "INVENTORY")).rejects.toThrow(/Permissions Violation/);
    // What it does read: its own inboxes, its own consumers' deliveries, and the registry.
    await expect(subscriptionRefused(notification, `${inboxPrefixOf("notification")}.x`)).resolves.toBe(false);
    const placed = EVENTS.kinds.find((k) => k.typeName.endsWith("OrderPlaced")) as EventKind;
    const h = forged.headers();
    h.set("ce-type", placed.typeName);
    const jsm = await jetstreamManager(notification);
    const durable = durableOf("notification", "ORDER");
    await jsm.consumers.add("ORDER", { durable_name: durable, ack_policy: AckPolicy.Explicit });
    const seq = (await jetstream(order).publish(placed.subject, forged.payload, { headers: h })).seq;
    const consumer = await jetstream(notification).consumers.get("ORDER", durable);
    let m = await consumer.next({ expires: 5_000 });
    while (m && m.seq < seq) {
      m.ack();
      m = await consumer.next({ expires: 5_000 });
    }
    expect([m?.subject, m?.seq]).toEqual([placed.subject, seq]);
    m?.ack();
    await expect(openRegistry(notification)).resolves.toBeDefined();
  });
});

describe("the registry", () => {
  it("a key no registration writes, stored by a server answer, does not keep a new watcher from the instances", async () => {
    await using gateway = await as("gateway");
    await using inventory = await as("inventory");
    await using history = await as("history");
    await using admin = await as(BUS_ADMIN);
    const reg = await registerInstance({
      nc: inventory,
      service: "inventory",
      address: "127.0.0.1:1235",
      log: silentLogger(),
    });
    try {
      // kv.get refuses to read `inventory.x!y`: the whole snapshot failed, and a watcher starting
      // then saw no instance for as long as such a key was kept. A service once stored one there as a
      // server answer sent to it; answers no longer reach the streams' account (natsAuthorization),
      // so the administrator writes it here.
      const bad = `${REGISTRY_SUBJECT_PREFIX}inventory.x!y`;
      history.publish("$JS.API.INFO", new Uint8Array(), { reply: bad });
      await history.flush();
      await new Promise((r) => setTimeout(r, 300));
      const jsm = await jetstreamManager(admin);
      const kept = async () =>
        (await jsm.streams.info(`KV_${REGISTRY_BUCKET}`, { subjects_filter: bad })).state.subjects?.[bad] ?? 0;
      expect(await kept()).toBe(0);
      await jetstream(admin).publish(
        bad,
        new TextEncoder().encode('{"type":"io.nats.jetstream.api.v1.account_info_response"}'),
      );
      expect(await kept()).toBe(1);
      const seen = new Promise<readonly string[]>((resolve, reject) => {
        const w = watchInstances(gateway, "inventory", silentLogger(), {
          onChange: (a) => {
            w.stop();
            resolve(a);
          },
          onError: (e) => {
            w.stop();
            reject(new Error(e));
          },
        });
      });
      expect(await seen).toContain("127.0.0.1:1235");
    } finally {
      await reg.stop();
    }
  });

  it("is followed by subscription: no service may change another's watch, and a server answer written over an entry removes no instance", async () => {
    await using gateway = await as("gateway");
    await using inventory = await as("inventory");
    await using history = await as("history");
    // A watch that is a consumer on the bucket would be any service's to change or delete.
    await expect(
      (await jetstreamManager(history)).consumers.add(`KV_${REGISTRY_BUCKET}`, {
        name: "watch",
        ack_policy: AckPolicy.None,
      }),
    ).rejects.toThrow(/Permissions Violation/);
    const changes: string[][] = [];
    const watch = watchInstances(gateway, "inventory", silentLogger(), { onChange: (a) => changes.push([...a]) });
    const reg = await registerInstance({
      nc: inventory,
      service: "inventory",
      address: "127.0.0.1:1234",
      log: silentLogger(),
    });
    try {
      for (const deadline = Date.now() + 5_000; changes.at(-1)?.[0] !== "127.0.0.1:1234"; ) {
        if (Date.now() > deadline) throw new Error(`no instance seen: ${JSON.stringify(changes)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      // The server answers at any reply subject: here, over inventory's own entry (history may ask).
      const key = `${REGISTRY_SUBJECT_PREFIX}${reg.key}`;
      const stored = await storedIn(history, `KV_${REGISTRY_BUCKET}`, async () => {
        history.publish("$JS.API.INFO", new Uint8Array(), { reply: key });
      });
      expect(stored.subject).toBe(key);
      await new Promise((r) => setTimeout(r, 300));
      expect(changes.at(-1)).toEqual(["127.0.0.1:1234"]);
    } finally {
      watch.stop();
      await reg.stop();
    }
  });
});

it("a service waits, saying why, until the administrator has provisioned the streams, then runs", async () => {
  await using fresh = await startNats(natsAuthorization(BUS_USERS, password));
  const lines: { msg?: string }[] = [];
  const log = pino({ level: "warn" }, { write: (l: string) => lines.push(JSON.parse(l) as { msg?: string }) });
  let connected = false;
  const order = connectBus(fresh.url, "order", log, {
    streams: EVENTS.streams,
    auth: { user: "order", pass: password("order") },
  }).then((bus) => {
    connected = true;
    return bus;
  });
  const deadline = Date.now() + 10_000;
  while (!lines.some((l) => /may not create or change the streams/.test(String(l.msg))) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  expect(lines.map((l) => l.msg).join("\n")).toMatch(/NATS user order may not create or change the streams/);
  expect(connected).toBe(false);
  await provisionBus(fresh.url, EVENTS, silentLogger(), { auth: { user: BUS_ADMIN, pass: password(BUS_ADMIN) } });
  const bus = await order;
  try {
    // The service's own events go through; the streams are as the catalogue says.
    const placed = EVENTS.kinds.find((k) => k.typeName.endsWith("OrderPlaced"))?.subject ?? "";
    expect((await bus.js.publish(placed, new Uint8Array([1]))).stream).toBe("ORDER");
  } finally {
    await bus.close();
  }
});
