/**
 * `make load` (scripts/load.ts) against a real system and gateway: it sends
 * the mix at the rate asked, prints a status line per 5 s and the totals,
 * every kind of call gets answered, and declined cards show up as orders
 * that end cancelled — not as failed calls.
 */
import { type AddressInfo, createServer, type Socket } from "node:net";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { GatewayApp } from "../gateway/app.js";
import { OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { built, runToEnd } from "./fixtures.js";
import { type System, startSystem, startTestGateway } from "./system.js";

let sys: System;
let gw: GatewayApp;
beforeAll(async () => {
  sys = await startSystem();
  gw = await startTestGateway(sys);
});
afterAll(async () => {
  await gw.stop();
  await sys[Symbol.asyncDispose]();
});

it("make load sends the mix through the gateway at the rate asked, and reports it", async () => {
  const { code, out } = await runToEnd(process.execPath, built("scripts/load.ts"), {
    env: { ...process.env, RATE: "30", DURATION_S: "6", GATEWAY_URL: gw.url },
  });
  expect(code, out).toBe(0);
  expect(out).toMatch(/^load: 30 calls\/s to http:\/\/127\.0\.0\.1:\d+/m);
  expect(out).toMatch(/^\d\d:\d\d:\d\d {2}\d+\/s sent; .*browse ok \d+/m);
  const total = /^total over \d+ s: (\d+)\/s sent; (.*); p50/m.exec(out);
  expect(total, out).not.toBeNull();
  expect(Number(total?.[1])).toBeGreaterThanOrEqual(25);
  for (const kind of ["browse ok", "order ok", "read ok"]) expect(total?.[2]).toContain(kind);
  expect(total?.[2]).not.toMatch(/failed|\b(4|5)\d\d\b/);
  // Orders confirmed, and declined cards were placed as orders that ended cancelled by compensation.
  const ended = [];
  for (const customer of ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]) {
    const { orders } = await sys.orders.listOrders({ pageSize: 100 }, sys.as(customer));
    ended.push(...(await Promise.all(orders.map((o) => sys.settle(o.id, customer)))));
  }
  expect(ended.some((o) => o.status === OrderStatus.CONFIRMED)).toBe(true);
  expect(ended.some((o) => o.status === OrderStatus.CANCELLED && /declined/.test(o.statusReason))).toBe(true);
}, 60_000);

it("against a gateway that accepts and never answers, holds at most two seconds' worth of calls and counts the rest as not sent", async () => {
  // Before: the calls past the agent's sockets queued with no timeout, for as long as the load ran.
  const held: Socket[] = [];
  const silent = createServer((s) => void held.push(s));
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  try {
    const { port } = silent.address() as AddressInfo;
    const { code, out } = await runToEnd(process.execPath, built("scripts/load.ts"), {
      env: { ...process.env, RATE: "100", DURATION_S: "4", GATEWAY_URL: `http://127.0.0.1:${port}` },
    });
    expect(code, out).toBe(0);
    const total = /^total over \d+ s: (\d+)\/s sent; (.*); p50/m.exec(out);
    expect(total, out).not.toBeNull();
    // 400 due, 200 held (two seconds at 100/s), the rest not sent.
    expect(Number(total?.[1]) * 4, out).toBeLessThanOrEqual(200);
    expect(Number(/not sent \(unanswered\) (\d+)/.exec(total?.[2] ?? "")?.[1]), out).toBeGreaterThanOrEqual(100);
  } finally {
    for (const s of held) s.destroy();
    silent.close();
  }
});
