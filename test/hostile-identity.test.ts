/**
 * The gateway sets a caller's identity itself and drops whatever identity headers the client wrote
 * (docs/security.md), checked for real (2026-12-06) on the calls the unary tests
 * (gateway/gateway.test.ts, hostile-fast, hostile-rest) do not make: a server stream, the composed
 * read and the operator panel, over Connect, gRPC and gRPC-Web on HTTP/2, against real services. The
 * mesh's half — that only the gateway's principal reaches a handler that believes identity metadata —
 * is test/mesh-identity.test.ts.
 */
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { signDevToken } from "../gateway/auth.js";
import { DEV_JWT_SECRET } from "../gateway/config.js";
import { GatewayService, OperatorService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { type System, startSystem, startTestGateway } from "./system.js";

const transports: Array<[string, (url: string) => Transport]> = [
  ["Connect", (baseUrl) => createConnectTransport({ baseUrl, httpVersion: "2" })],
  ["gRPC", (baseUrl) => createGrpcTransport({ baseUrl })],
  ["gRPC-Web", (baseUrl) => createGrpcWebTransport({ baseUrl, httpVersion: "2" })],
];

describe("the gateway drops a client's identity headers on streams, composed reads and the operator panel", () => {
  let sys: System;
  let gw: GatewayApp;
  const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };
  /** What a client may add to its request in the hope a layer behind the gateway believes it. */
  const spoof = { "x-shopmesh-subject": "alice", "x-shopmesh-roles": "admin" };
  let orderId = "";

  beforeAll(async () => {
    sys = await startSystem();
    gw = await startTestGateway(sys, { RATE_LIMIT_RPS: "100", RATE_LIMIT_BURST: "100" });
    const placed = await sys.orders.placeOrder(
      {
        idempotencyKey: "mesh-identity-1",
        items: [{ productId: "paper-filters", quantity: 1 }],
        cardToken: "tok_visa",
      },
      sys.as("alice"),
    );
    orderId = placed.order?.id ?? "";
    await sys.settle(orderId, "alice");
  });
  afterAll(async () => {
    await gw?.stop();
    await sys?.[Symbol.asyncDispose]();
  });

  const codeOf = async (p: Promise<unknown>) =>
    p.then(
      () => "OK",
      (e: unknown) => Code[ConnectError.from(e).code],
    );

  it.each(transports)("%s: mallory's token with alice's subject and admin written in", async (_name, transport) => {
    const t = transport(gw.url);
    const mallory = { authorization: `Bearer ${await signDevToken(claims, "mallory", ["customer"])}`, ...spoof };
    const alice = { authorization: `Bearer ${await signDevToken(claims, "alice", ["customer"])}`, ...spoof };
    const orders = createClient(OrderService, t);
    // Ended once read: a Connect or gRPC-Web stream left by a return from its loop stays open on the
    // gateway, whose stop then waited out its grace (10 s) for it.
    const watch = async (headers: Record<string, string>) => {
      const done = new AbortController();
      try {
        for await (const u of orders.watchOrder({ orderId }, { headers, timeoutMs: 5_000, signal: done.signal }))
          if (u.order) return "OK";
        return "EMPTY";
      } finally {
        done.abort();
      }
    };
    // Alice's order is not mallory's to watch, compose or see in the panel, whatever she writes in.
    expect(await codeOf(watch(mallory))).toBe("NotFound");
    expect(await codeOf(createClient(GatewayService, t).getOrderDetails({ orderId }, { headers: mallory }))).toBe(
      "NotFound",
    );
    expect(await codeOf(createClient(OperatorService, t).getSystemStatus({}, { headers: mallory }))).toBe(
      "PermissionDenied",
    );
    // No token: the headers alone are no identity.
    expect(await codeOf(watch(spoof))).toBe("Unauthenticated");
    // Alice herself watches it; the admin role she wrote in gives her no panel.
    expect(await codeOf(watch(alice))).toBe("OK");
    expect(await codeOf(createClient(OperatorService, t).getSystemStatus({}, { headers: alice }))).toBe(
      "PermissionDenied",
    );
  });
});

describe("a stream lasts no longer than the token that opened it", () => {
  let sys: System;
  let gw: GatewayApp;
  const claims = { JWT_SECRET: DEV_JWT_SECRET, JWT_ISSUER: "shopmesh-dev", JWT_AUDIENCE: "shopmesh" };

  beforeAll(async () => {
    sys = await startSystem();
    // No skew tolerated: the token is refused, and its stream ends, the second its exp passes.
    gw = await startTestGateway(sys, { JWT_CLOCK_SKEW_S: "0", RATE_LIMIT_RPS: "100", RATE_LIMIT_BURST: "100" });
  });
  afterAll(async () => {
    await gw?.stop();
    await sys?.[Symbol.asyncDispose]();
  });

  it("WatchOrder over Connect, gRPC, gRPC-Web and REST ends UNAUTHENTICATED when the token expires, not with the saga", async () => {
    // Payment answers in 20 s: the order stays PENDING, and a watch would last that long.
    await sys.paymentChaos.setFaults({ faults: { latencyMs: 20_000 } });
    try {
      const placed = await sys.orders.placeOrder(
        {
          idempotencyKey: "expiring-watch",
          items: [{ productId: "paper-filters", quantity: 1 }],
          cardToken: "tok_visa",
        },
        sys.as("erin"),
      );
      const orderId = placed.order?.id ?? "";
      const watches = transports.map(async ([name, transport]) => {
        const token = await signDevToken(claims, "erin", ["customer"], 3);
        const started = Date.now();
        let states = 0;
        try {
          const orders = createClient(OrderService, transport(gw.url));
          for await (const u of orders.watchOrder(
            { orderId },
            {
              headers: { authorization: `Bearer ${token}` },
              timeoutMs: 12_000, // the saga's own end is 20 s away
            },
          ))
            if (u.order) states++;
          return { name, code: "OK", states, ms: Date.now() - started };
        } catch (err) {
          const e = ConnectError.from(err);
          return { name, code: Code[e.code], message: e.rawMessage, states, ms: Date.now() - started };
        }
      });
      const rest = (async () => {
        const token = await signDevToken(claims, "erin", ["customer"], 3);
        const started = Date.now();
        const body = await fetch(`${gw.url}/v1/orders/${orderId}:watch`, {
          headers: { authorization: `Bearer ${token}` },
          signal: AbortSignal.timeout(12_000), // the saga's own end is 20 s away
        })
          .then((r) => r.text())
          .catch(() => undefined);
        if (body === undefined) return { name: "REST", code: "still open after 12 s", states: 0, ms: 12_000 };
        const lines = body
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l) as Record<string, { code?: number; message?: string }>);
        const last = lines.at(-1)?.error;
        return {
          name: "REST",
          code: last ? Code[last.code ?? 0] : "OK",
          message: last?.message,
          states: lines.filter((l) => l.result).length,
          ms: Date.now() - started,
        };
      })();
      for (const w of await Promise.all([...watches, rest])) {
        expect(w, w.name).toMatchObject({
          code: "Unauthenticated",
          message: "the bearer token expired: call again with a fresh one",
        });
        expect(w.states, w.name).toBeGreaterThanOrEqual(1); // the PENDING state, before the token ran out
        expect(w.ms, w.name).toBeGreaterThan(1_000); // open until the token ran out (2-3 s), not refused at once
        expect(w.ms, w.name).toBeLessThan(10_000);
      }
    } finally {
      await sys.paymentChaos.setFaults({ faults: {} });
    }
  }, 30_000);
});
