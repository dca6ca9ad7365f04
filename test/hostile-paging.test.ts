/**
 * A hostile reader of every List RPC (2026-12-06, helper hc): walks the pages a few rows at a time
 * while orders are placed, cancelled and settled beside it (real services, real events), and sends
 * page tokens that are not the walk's own. What must hold: no row that existed when the walk began
 * is skipped or seen twice (ListOrderHistory, a feed by last change, skips a row that changes
 * mid-walk, as docs/events.md says — but never shows one twice), and a token that is not a token is
 * INVALID_ARGUMENT naming page_token (HTTP 400 through the gateway), never another code or a hang.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { HistoryService } from "../gen/shopmesh/history/v1/history_pb.js";
import { NotificationService } from "../gen/shopmesh/notification/v1/notification_pb.js";
import { RpcError } from "../platform/errors.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { encodePageToken } from "../platform/paging.js";
import { type System, startSystem, startTestGateway } from "./system.js";

const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
let sys: System;
let gw: GatewayApp;
let history: ReturnType<typeof createClient<typeof HistoryService>>;
let notifications: ReturnType<typeof createClient<typeof NotificationService>>;
let aliceToken = "";

beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys);
  history = createClient(HistoryService, createChannel(sys.history.address));
  notifications = createClient(NotificationService, createChannel(sys.notification.address));
  aliceToken = await signDevToken(claims, "alice", ["customer"]);
}, 60_000);
afterAll(async () => {
  await gw?.stop();
  await sys?.[Symbol.asyncDispose]();
});

let n = 0;
const PRODUCTS = ["paper-filters", "ceramic-mug", "coffee-beans"];
async function place(who: string, settle = false): Promise<string> {
  const i = n++;
  const { order } = await sys.orders.placeOrder(
    {
      idempotencyKey: `hp-${i}`,
      items: [{ productId: PRODUCTS[i % PRODUCTS.length] as string, quantity: 1 }],
      cardToken: i % 5 === 0 ? "tok_decline" : "tok_visa",
      sagaMode: i % 2 === 0 ? SagaMode.ORCHESTRATION : SagaMode.CHOREOGRAPHY,
    },
    sys.as(who),
  );
  const id = order?.id ?? "";
  if (settle) await sys.settle(id, who, 30_000);
  return id;
}

/** Placing, cancelling and settling alice's and bob's orders until `stop` resolves. */
async function churn(stop: Promise<void>): Promise<string[]> {
  let done = false;
  void stop.then(() => (done = true));
  const placed: string[] = [];
  const worker = async (who: string) => {
    while (!done) {
      const id = await place(who);
      placed.push(id);
      if (n % 3 === 0) await sys.orders.cancelOrder({ orderId: id, reason: "churn" }, sys.as(who)).catch(() => {});
      await sys.settle(id, who, 30_000);
    }
  };
  await Promise.all([worker("alice"), worker("alice"), worker("bob"), worker("alice")]);
  return placed;
}

/** Every page of a list, `size(i)` rows at a time, with a pause between pages for the churn to land. */
async function walk<T>(
  page: (size: number, token: string) => Promise<{ rows: T[]; next: string }>,
  size: (i: number) => number,
): Promise<T[]> {
  const out: T[] = [];
  let token = "";
  for (let i = 0; ; i++) {
    const { rows, next } = await page(size(i), token);
    out.push(...rows);
    if (!next) return out;
    token = next;
    await new Promise((r) => setTimeout(r, 30));
  }
}

const dupes = (ids: readonly string[]) => ids.filter((id, i) => ids.indexOf(id) !== i);

describe("pages walked while the rows change beside them", () => {
  it("ListOrders, ListNotifications, ListProducts: every row there at the start once, none twice, in order", {
    timeout: 120_000,
  }, async () => {
    await Promise.all(Array.from({ length: 40 }, () => place("alice", true)));
    await expect
      .poll(
        async () => (await notifications.listNotifications({ pageSize: 100 }, sys.as("alice"))).notifications.length,
        { timeout: 20_000 },
      )
      .toBeGreaterThanOrEqual(30);
    const ordersBefore = await walk(
      async (pageSize, pageToken) => {
        const r = await sys.orders.listOrders({ pageSize, pageToken }, sys.as("alice"));
        return { rows: r.orders.map((o) => o.id), next: r.nextPageToken };
      },
      () => 100,
    );
    const notesBefore = await walk(
      async (pageSize, pageToken) => {
        const r = await notifications.listNotifications({ pageSize, pageToken }, sys.as("alice"));
        return { rows: r.notifications.map((x) => x.id), next: r.nextPageToken };
      },
      () => 100,
    );
    const productsBefore = (await sys.products.listProducts({ pageSize: 100 })).products.map((p) => p.id);

    let stop = () => {};
    const stopped = new Promise<void>((r) => (stop = r));
    const churned = churn(stopped);
    const sizes = (i: number) => 1 + (i % 3);
    const [orders, notes, products] = await Promise.all([
      walk(async (pageSize, pageToken) => {
        const r = await sys.orders.listOrders({ pageSize, pageToken }, sys.as("alice"));
        return {
          rows: r.orders.map((o) => ({
            id: o.id,
            at: Number(o.createdAt?.seconds) * 1e3 + (o.createdAt?.nanos ?? 0) / 1e6,
            who: o.customerId,
          })),
          next: r.nextPageToken,
        };
      }, sizes),
      walk(async (pageSize, pageToken) => {
        const r = await notifications.listNotifications({ pageSize, pageToken }, sys.as("alice"));
        return { rows: r.notifications.map((x) => x.id), next: r.nextPageToken };
      }, sizes),
      walk(
        async (pageSize, pageToken) => {
          const r = await sys.products.listProducts({ pageSize, pageToken });
          return { rows: r.products.map((p) => p.id), next: r.nextPageToken };
        },
        () => 1,
      ),
    ]);
    stop();
    const placedMeanwhile = await churned;
    expect(placedMeanwhile.length).toBeGreaterThan(5);

    const orderIds = orders.map((o) => o.id);
    expect(dupes(orderIds)).toEqual([]);
    expect(ordersBefore.filter((id) => !orderIds.includes(id))).toEqual([]);
    expect(orders.filter((o) => o.who !== "alice")).toEqual([]);
    const sorted = [...orders].sort((a, b) => b.at - a.at || (a.id < b.id ? 1 : -1));
    expect(orderIds).toEqual(sorted.map((o) => o.id));
    expect(dupes(notes)).toEqual([]);
    expect(notesBefore.filter((id) => !notes.includes(id))).toEqual([]);
    expect(products).toEqual(productsBefore);
  });

  it("ListOrderHistory: no entry twice, and every entry unchanged through the walk seen", {
    timeout: 120_000,
  }, async () => {
    const entries = async () =>
      walk(
        async (pageSize, pageToken) => {
          const r = await history.listOrderHistory({ pageSize, pageToken }, sys.as("alice"));
          return {
            rows: r.entries.map((e) => `${e.orderId} ${e.lastEventAt?.seconds}.${e.lastEventAt?.nanos}`),
            next: r.nextPageToken,
          };
        },
        () => 100,
      );
    const before = await entries();
    let stop = () => {};
    const stopped = new Promise<void>((r) => (stop = r));
    const churned = churn(stopped);
    const seen = await walk(
      async (pageSize, pageToken) => {
        const r = await history.listOrderHistory({ pageSize, pageToken }, sys.as("alice"));
        return { rows: r.entries.map((e) => e.orderId), next: r.nextPageToken };
      },
      (i) => 1 + (i % 2),
    );
    stop();
    await churned;
    const after = await entries();
    expect(dupes(seen)).toEqual([]);
    const unchanged = before.filter((e) => after.includes(e)).map((e) => e.split(" ")[0] as string);
    expect(unchanged.length).toBeGreaterThan(10);
    expect(unchanged.filter((id) => !seen.includes(id))).toEqual([]);
  });
});

describe("page tokens that are not the walk's own", () => {
  const code = async (f: () => Promise<unknown>) => {
    try {
      await f();
      return "OK";
    } catch (e) {
      return e instanceof RpcError ? e.codeName : String(e);
    }
  };

  it("over gRPC: 1 MB, a lone surrogate, a NUL, another List's or bytes of a real one altered are INVALID_ARGUMENT at once", async () => {
    const real = (await sys.orders.listOrders({ pageSize: 1 }, sys.as("alice"))).nextPageToken;
    expect(real).not.toBe("");
    const [body, sum] = real.split(".") as [string, string];
    const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === "A" ? "B" : "A") + s.slice(i + 1);
    const bad = [
      "x".repeat(1 << 20),
      `${body}\ud800.${sum}`,
      `${body}\u0000.${sum}`,
      encodePageToken("shopmesh.history.v1.HistoryService/ListOrderHistory", { t: 1, id: "a" }),
      `${flip(body, 3)}.${sum}`,
      `${body}.${flip(sum, 0)}`,
      `${body}\n.${sum}`,
      `${body}.${sum}.`,
      ".",
      "..",
    ];
    for (const pageToken of bad) {
      const started = Date.now();
      expect(await code(() => sys.orders.listOrders({ pageToken }, sys.as("alice"))), pageToken.slice(0, 40)).toBe(
        "INVALID_ARGUMENT",
      );
      expect(Date.now() - started).toBeLessThan(2_000);
    }
    // A real one is anyone's and stays good: another customer's, or after the list changed, lists only the caller's own.
    const bobs = await sys.orders.listOrders({ pageSize: 100, pageToken: real }, sys.as("bob"));
    expect(bobs.orders.filter((o) => o.customerId !== "bob")).toEqual([]);
  });

  it("through the gateway: REST and Connect say 400 naming page_token, and a notification filter takes a token of none", async () => {
    const auth = { authorization: `Bearer ${aliceToken}` };
    const real = (await sys.orders.listOrders({ pageSize: 1 }, sys.as("alice"))).nextPageToken;
    const [body, sum] = real.split(".") as [string, string];
    for (const t of [`${body}!.${sum}`, `${body}.${sum}x`, "%%", "\u0000"]) {
      const rest = await fetch(`${gw.url}/v1/orders?page_token=${encodeURIComponent(t)}`, { headers: auth });
      const restJson = (await rest.json()) as { code: number; details?: { fieldViolations?: { field: string }[] }[] };
      expect([rest.status, restJson.code, restJson.details?.[0]?.fieldViolations?.[0]?.field], t).toEqual([
        400,
        3,
        "page_token",
      ]);
      const connect = await fetch(`${gw.url}/shopmesh.order.v1.OrderService/ListOrders`, {
        method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ pageToken: t }),
      });
      expect([connect.status, ((await connect.json()) as { code: string }).code], t).toEqual([400, "invalid_argument"]);
    }
    const all = await notifications.listNotifications({ pageSize: 1 }, sys.as("alice"));
    const orderId = all.notifications[0]?.orderId ?? "";
    const filtered = await notifications.listNotifications(
      { orderId, pageToken: all.nextPageToken, pageSize: 100 },
      sys.as("alice"),
    );
    expect(filtered.notifications.filter((x) => x.orderId !== orderId || x.customerId !== "alice")).toEqual([]);
  });
});
