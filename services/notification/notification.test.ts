/**
 * The notification service against a real nats-server and a real
 * database: events published through an outbox relay, as services publish
 * them, come back as notifications over real gRPC.
 */

import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EVENTS } from "../../contracts/events.js";
import { StockReservedSchema } from "../../gen/shopmesh/inventory/v1/events_pb.js";
import {
  type Notification,
  NotificationKind,
  NotificationService,
} from "../../gen/shopmesh/notification/v1/notification_pb.js";
import {
  OrderCancelledSchema,
  OrderConfirmedSchema,
  OrderPlacedSchema,
} from "../../gen/shopmesh/order/v1/events_pb.js";
import { PaymentRefundedSchema, PaymentSucceededSchema } from "../../gen/shopmesh/payment/v1/events_pb.js";
import { type Bus, connectBus } from "../../platform/bus.js";
import { Code } from "../../platform/errors.js";
import type { Client } from "../../platform/grpc-client.js";
import { identityMetadata } from "../../platform/identity.js";
import type { Role } from "../../platform/identity-rule.js";
import { silentLogger } from "../../platform/log.js";
import { consumerSettled, event, publishEvents, republish, until } from "../../test/events.js";
import { startNats, type TestNats } from "../../test/nats.js";
import { notifiedFor } from "../../test/probes.js";
import { expectRpcError } from "../../test/rpc.js";
import { type ServiceUnderTest, startServiceUnderTest } from "../../test/system.js";
import { type NotificationApp, startNotification } from "./app.js";
import { loadConfig } from "./config.js";

const log = silentLogger();
let nats: TestNats;
let bus: Bus;
let sut: ServiceUnderTest<NotificationApp, typeof NotificationService>;
let app: NotificationApp;
let notifications: Client<typeof NotificationService>;

beforeAll(async () => {
  nats = await startNats();
  bus = await connectBus(nats.url, "notification-test", log, { streams: EVENTS.streams });
  sut = await startServiceUnderTest(
    "notification",
    NotificationService,
    (env) => startNotification(loadConfig(env), log),
    nats.url,
  );
  ({ app, client: notifications } = sut);
});

afterAll(async () => {
  // Whatever started: a failed start must not hide its error behind this one, nor leave NATS running.
  await sut?.[Symbol.asyncDispose]();
  await bus?.close();
  await nats?.[Symbol.asyncDispose]();
});

const as = (subject: string, roles: Role[] = ["customer"]) => ({ metadata: identityMetadata({ subject, roles }) });
const usd = (amountMinor: bigint) => ({ currencyCode: "USD", amountMinor });
let seq = 0;
/** A fresh id, so tests sharing the streams never see each other's orders or customers. */
const fresh = (prefix: string) => `${prefix}-${++seq}`;

/** Every notification of `subject` (optionally of one order), following page tokens. */
async function listAll(subject: string, orderId = "", pageSize = 0): Promise<Notification[]> {
  const all: Notification[] = [];
  let pageToken = "";
  do {
    const page = await notifications.listNotifications({ pageSize, pageToken, orderId }, as(subject));
    all.push(...page.notifications);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

/** Waits until `subject` has at least `count` notifications, then until both consumers are idle. */
async function settle(subject: string, count: number): Promise<Notification[]> {
  await until(
    () => listAll(subject),
    (n) => n.length >= count,
  );
  await consumerSettled(bus, "ORDER", "notification-order");
  await consumerSettled(bus, "PAYMENT", "notification-payment");
  return listAll(subject);
}

/** Rows of the notifications table caused by `eventId`, read from the service's database. */
async function rowsOf(eventId: string): Promise<number> {
  const r = await app.store.db.one(
    sql<{ n: number }>`SELECT COUNT(*) AS n FROM notifications WHERE event_id = ${eventId}`,
  );
  return r?.n ?? 0;
}

describe("notifying", () => {
  it("sends one notification per confirmed, cancelled and refunded event, to the event's customer", async () => {
    const alice = fresh("alice");
    const bob = fresh("bob");
    const [confirmedOrder, cancelledOrder] = [fresh("ord"), fresh("ord")];
    const ids = await publishEvents(bus, [
      // Events nobody is told about.
      event(OrderPlacedSchema, confirmedOrder, { customerId: alice, items: [{ productId: "p", quantity: 1 }] }),
      event(StockReservedSchema, confirmedOrder, { reservationId: "res_1", total: usd(1200n) }),
      event(PaymentSucceededSchema, confirmedOrder, { paymentId: "pay_1", customerId: alice, amount: usd(1200n) }),
      // Events that notify.
      event(OrderConfirmedSchema, confirmedOrder, { customerId: alice, total: usd(1200n), paymentId: "pay_1" }),
      event(OrderCancelledSchema, cancelledOrder, { customerId: bob, reason: "payment declined: card declined" }),
      event(PaymentRefundedSchema, cancelledOrder, {
        paymentId: "pay_2",
        customerId: bob,
        amount: usd(4250n),
        reason: "order cancelled",
      }),
    ]);
    const [confirmedId, cancelledId, refundedId] = ids.slice(3);

    const forAlice = await settle(alice, 1);
    expect(forAlice).toHaveLength(1);
    expect(forAlice[0]).toMatchObject({
      customerId: alice,
      orderId: confirmedOrder,
      kind: NotificationKind.ORDER_CONFIRMED,
      message: expect.stringContaining("USD 12.00"),
      eventId: confirmedId,
    });
    expect(forAlice[0]?.id).toMatch(/^ntf_/);
    expect(Math.abs(Number(forAlice[0]?.sentAt?.seconds ?? 0n) * 1000 - Date.now())).toBeLessThan(60_000);

    const forBob = await settle(bob, 2);
    expect(forBob).toHaveLength(2);
    const byKind = new Map(forBob.map((n) => [n.kind, n]));
    expect(byKind.get(NotificationKind.ORDER_CANCELLED)).toMatchObject({
      customerId: bob,
      orderId: cancelledOrder,
      message: expect.stringContaining("payment declined: card declined"),
      eventId: cancelledId,
    });
    expect(byKind.get(NotificationKind.PAYMENT_REFUNDED)).toMatchObject({
      customerId: bob,
      orderId: cancelledOrder,
      message: expect.stringContaining("USD 42.50"),
      eventId: refundedId,
    });
  });

  it("notifies once when the same event is delivered twice, on either stream", async () => {
    const dave = fresh("dave");
    const orderId = fresh("ord");
    const [confirmedId = "", refundedId = ""] = await publishEvents(bus, [
      event(OrderConfirmedSchema, orderId, { customerId: dave, total: usd(500n), paymentId: "pay_d" }),
      event(PaymentRefundedSchema, orderId, { paymentId: "pay_d", customerId: dave, amount: usd(500n) }),
    ]);
    await settle(dave, 2);

    // Same ce-id, another Nats-Msg-Id: JetStream stores and delivers it again; only the inbox can tell.
    const before = (await bus.jsm.consumers.info("ORDER", "notification-order")).delivered.stream_seq;
    const again = await republish(bus, "ORDER", confirmedId);
    await republish(bus, "PAYMENT", refundedId);
    await until(
      () => bus.jsm.consumers.info("ORDER", "notification-order"),
      (i) => i.delivered.stream_seq >= again,
    );
    expect(again).toBeGreaterThan(before);
    const after = await settle(dave, 2);

    expect(after.map((n) => n.eventId).sort()).toEqual([confirmedId, refundedId].sort());
    expect(await rowsOf(confirmedId)).toBe(1);
    expect(await rowsOf(refundedId)).toBe(1);
  });
});

describe("ListNotifications", () => {
  it("shows each customer only their own notifications, admins included, and needs an identity", async () => {
    const owner = fresh("owner");
    await publishEvents(bus, [event(OrderConfirmedSchema, fresh("ord"), { customerId: owner, total: usd(100n) })]);
    await settle(owner, 1);

    expect(await listAll(fresh("stranger"))).toEqual([]);
    expect(await listAll("ops")).toEqual([]);
    const admin = await notifications.listNotifications({}, as("ops", ["admin"]));
    expect(admin.notifications.filter((n) => n.customerId === owner)).toEqual([]);
    await expectRpcError(notifications.listNotifications({}), Code.UNAUTHENTICATED);
  });

  it("pages newest first without gaps or repeats, and filters by order", async () => {
    const gina = fresh("gina");
    const orders = [fresh("ord"), fresh("ord"), fresh("ord")] as const;
    const ids = await publishEvents(bus, [
      ...orders.map((o) => event(OrderConfirmedSchema, o, { customerId: gina, total: usd(300n) })),
      event(PaymentRefundedSchema, orders[0], { paymentId: "pay_g0", customerId: gina, amount: usd(300n) }),
      event(PaymentRefundedSchema, orders[1], { paymentId: "pay_g1", customerId: gina, amount: usd(300n) }),
    ]);
    const all = await settle(gina, 5);

    const paged = await listAll(gina, "", 2);
    expect(paged).toEqual(all);
    expect(paged.map((n) => n.eventId).sort()).toEqual([...ids].sort());
    const times = paged.map((n) => Number(n.sentAt?.seconds) * 1e9 + (n.sentAt?.nanos ?? 0));
    expect(times).toEqual([...times].sort((a, b) => b - a));
    const first = await notifications.listNotifications({ pageSize: 2 }, as(gina));
    expect(first.notifications).toHaveLength(2);
    expect(first.nextPageToken).not.toBe("");
    const exact = await notifications.listNotifications({ pageSize: 5 }, as(gina));
    expect(exact.nextPageToken).toBe("");

    const ofFirst = await listAll(gina, orders[0], 1);
    expect(ofFirst.map((n) => n.kind).sort()).toEqual(
      [NotificationKind.ORDER_CONFIRMED, NotificationKind.PAYMENT_REFUNDED].sort(),
    );
    expect(ofFirst.every((n) => n.orderId === orders[0])).toBe(true);
    expect(await listAll(gina, orders[2])).toHaveLength(1);
    expect(await listAll(gina, "ord-nobody-has")).toEqual([]);
  });

  it("rejects a bad page size, page token or order id as INVALID_ARGUMENT naming the field", async () => {
    const who = as("someone");
    await expectRpcError(notifications.listNotifications({ pageSize: 101 }, who), Code.INVALID_ARGUMENT, "page_size");
    await expectRpcError(notifications.listNotifications({ pageSize: -1 }, who), Code.INVALID_ARGUMENT, "page_size");
    await expectRpcError(
      notifications.listNotifications({ pageToken: "not-a-token" }, who),
      Code.INVALID_ARGUMENT,
      "page_token",
    );
    await expectRpcError(notifications.listNotifications({ orderId: "a b" }, who), Code.INVALID_ARGUMENT, "order_id");
    expect((await notifications.listNotifications({ pageSize: 100 }, who)).notifications).toEqual([]);
  });
});

describe("an unusable event", () => {
  it("is dead-lettered while the events after it are notified", async () => {
    // A server and service of its own: on nats-server < 2.10 a dead-lettered event stays
    // awaiting ack (the server ignores +TERM with a reason), so the shared consumers would never settle.
    await using ownNats = await startNats();
    const ownBus = await connectBus(ownNats.url, "notification-dlq-test", log, { streams: EVENTS.streams });
    const own = await startServiceUnderTest(
      "notification",
      NotificationService,
      (env) => startNotification(loadConfig(env), log),
      ownNats.url,
    );
    try {
      const erin = fresh("erin");
      const [bad = "", good = ""] = await publishEvents(ownBus, [
        event(OrderConfirmedSchema, fresh("ord"), { customerId: "", total: usd(100n) }),
        event(OrderConfirmedSchema, fresh("ord"), { customerId: erin, total: usd(100n) }),
      ]);
      const { client } = own;
      const listed = await until(
        () => client.listNotifications({}, as(erin)),
        (r) => r.notifications.length > 0,
      );
      expect(listed.notifications.map((n) => n.eventId)).toEqual([good]);
      const dlq = await until(
        () => ownBus.jsm.streams.getMessage("DLQ", { last_by_subj: "dlq.notification-order" }).catch(() => null),
        (m) => m?.header.get("ce-id") === bad,
      );
      expect(dlq?.header.get("x-dlq-reason")).toContain("names no customer");
      expect(await notifiedFor(own.app.store.db, bad)).toBe(false);
    } finally {
      await own[Symbol.asyncDispose]();
      await ownBus.close();
    }
  });
});
