/**
 * Who may publish what on the bus (bus-access.ts), against a real nats-server
 * configured with the users `make run` gives it: nobody connects without a
 * user, each service publishes its own context's events only (a forged
 * OrderCancelled from anything but order is refused and never stored), no
 * service creates, changes or deletes a stream — a stream's `republish`
 * would let the server publish on any subject for it — and a service waits
 * for the administrator to provision the streams, then runs.
 */
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUS_USERS, EVENTS } from "../contracts/events.js";
import { startNats, type TestNats } from "../test/nats.js";
import { connectBus } from "./bus.js";
import { BUS_ADMIN, natsAuthorization, provisionBus } from "./bus-access.js";
import { silentLogger } from "./log.js";
import { openRegistry, REGISTRY_BUCKET, registerInstance } from "./registry.js";

const password = (user: string) => `test-${user}-password`;
let nats: TestNats;
beforeAll(async () => {
  nats = await startNats(natsAuthorization(BUS_USERS, password));
});
afterAll(() => nats[Symbol.asyncDispose]());

const as = (user: string) => connect({ servers: nats.url, user, pass: password(user) });

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
      const nc = await as(user);
      try {
        const js = jetstream(nc);
        for (const kind of EVENTS.kinds) {
          const ok = await js.publish(kind.subject, new Uint8Array([1])).then(
            () => true,
            (err: Error) => (/Permissions Violation/.test(err.message) ? false : Promise.reject(err)),
          );
          if (ok) outcome.push(`${user} ${kind.stream}`);
        }
      } finally {
        await nc.close();
      }
    }
    // Every service's user may publish on its own stream's subjects, none on another's.
    const expected = EVENTS.kinds
      .filter((k) => services.includes(k.stream.toLowerCase()))
      .map((k) => `${k.stream.toLowerCase()} ${k.stream}`);
    expect(outcome.sort()).toEqual(expected.sort());
  });

  it("a forged OrderCancelled from inventory's user is refused and never reaches the ORDER stream", async () => {
    const admin = await as(BUS_ADMIN);
    const nc = await as("inventory");
    try {
      const before = (await (await jetstreamManager(admin)).streams.info("ORDER")).state.last_seq;
      const subject = EVENTS.kinds.find((k) => k.typeName.endsWith("OrderCancelled"))?.subject ?? "";
      await expect(jetstream(nc).publish(subject, new Uint8Array([1]))).rejects.toThrow(/Permissions Violation/);
      // A plain publish, with no acknowledgement asked, is dropped by the server just the same.
      nc.publish(subject, new Uint8Array([1]));
      await nc.flush();
      await admin.flush();
      expect((await (await jetstreamManager(admin)).streams.info("ORDER")).state.last_seq).toBe(before);
    } finally {
      await nc.close();
      await admin.close();
    }
  });

  it("no service creates, changes, purges or deletes a stream: a republishing stream would forge for it", async () => {
    const nc = await as("inventory");
    try {
      const jsm = await jetstreamManager(nc);
      const refused = /Permissions Violation/;
      await expect(
        jsm.streams.add({ name: "SIDE", subjects: ["side.>"], republish: { src: ">", dest: "order.order.cancelled" } }),
      ).rejects.toThrow(refused);
      await expect(jsm.streams.update("INVENTORY", { subjects: ["inventory.>", "side.>"] })).rejects.toThrow(refused);
      await expect(jsm.streams.purge("ORDER")).rejects.toThrow(refused);
      await expect(jsm.streams.delete("ORDER")).rejects.toThrow(refused);
      await expect(jsm.streams.deleteMessage("ORDER", 1)).rejects.toThrow(refused);
      // What a consumer needs still works: reading a stream's state.
      expect((await jsm.streams.info("INVENTORY")).config.subjects).toEqual(["inventory.>"]);
    } finally {
      await nc.close();
    }
  });

  it("a service registers itself in the registry, never another service", async () => {
    const nc = await as("inventory");
    try {
      const reg = await registerInstance({ nc, service: "inventory", address: "127.0.0.1:1", log: silentLogger() });
      await reg.stop();
      const kv = await new Kvm(nc).open(REGISTRY_BUCKET);
      await expect(kv.put("payment.inst_forged", "{}")).rejects.toThrow(/Permissions Violation/);
      await expect(openRegistry(nc)).resolves.toBeDefined();
    } finally {
      await nc.close();
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
