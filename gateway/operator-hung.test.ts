/**
 * The operator panel asking an instance that never answers: a TCP listener that accepts connections
 * and says nothing (a hung process, a black-holed port). The panel must still answer, within its
 * per-instance timeout, with that instance shown not serving — and stop at once when its own caller
 * goes away.
 */
import { getEventListeners } from "node:events";
import net from "node:net";
import { createContextValues, createHandlerContext } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OperatorService } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import { kIdentity } from "./context.js";
import { createOperator } from "./operator.js";
import { UPSTREAMS, type Upstream } from "./routes.js";

let silent: net.Server;
let address: string;
const sockets = new Set<net.Socket>();

beforeAll(async () => {
  silent = net.createServer((s) => {
    sockets.add(s);
    s.on("error", () => {});
  });
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
  address = `127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
});
afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise((r) => silent.close(r));
});

const state = (addresses: string[]) => ({
  state: () => ({
    breaker: "closed" as const,
    inFlight: 0,
    queued: 0,
    endpoints: addresses.map((a) => ({ address: a, breaker: "closed" as const })),
  }),
});

function operator(timeoutMs: number, inventoryInstances = 1) {
  const upstreams = Object.fromEntries(
    UPSTREAMS.map((u) => [u, state(u === "inventory" ? Array(inventoryInstances).fill(address) : [])]),
  ) as Record<Upstream, ReturnType<typeof state>>;
  return createOperator({ upstreams, faultsEnabled: false, timeoutMs });
}

function adminContext(signal?: AbortSignal) {
  return createHandlerContext({
    service: OperatorService,
    method: OperatorService.method.getSystemStatus,
    protocolName: "connect",
    requestMethod: "POST",
    url: "http://gateway/shopmesh.gateway.v1.OperatorService/GetSystemStatus",
    requestSignal: signal,
    contextValues: createContextValues().set(kIdentity, {
      subject: "ops",
      roles: ["admin"],
      expiresAt: Date.now() + 60_000,
    }),
  });
}

describe("operator panel, an instance that never answers", () => {
  it("answers within the per-instance timeout, the instance not serving with DEADLINE_EXCEEDED", async () => {
    const op = operator(400);
    const ctx = adminContext();
    const before = getEventListeners(ctx.signal, "abort").length;
    try {
      const started = performance.now();
      const status = await op.service.getSystemStatus({} as never, ctx);
      const ms = performance.now() - started;
      expect(ms).toBeGreaterThanOrEqual(350);
      expect(ms).toBeLessThan(3_000);
      const inventory = status.services?.find((s) => s.service === "inventory");
      expect(inventory?.serving).toBe(false);
      expect(inventory?.instances?.[0]).toMatchObject({ address, serving: false, detail: "DEADLINE_EXCEEDED" });
      // Its three calls took their listeners off the caller's signal when they ended.
      expect(getEventListeners(ctx.signal, "abort")).toHaveLength(before);
    } finally {
      op.close();
    }
  });

  it("asks many instances at once on the caller's one signal without a listener warning", async () => {
    // Six instances, three calls each, all following the caller's signal: 18 listeners at once is
    // the fan-out, not a leak (it printed MaxListenersExceededWarning in CI).
    const op = operator(300, 6);
    const warnings: Error[] = [];
    const onWarning = (w: Error) => void warnings.push(w);
    process.on("warning", onWarning);
    try {
      const status = await op.service.getSystemStatus({} as never, adminContext());
      expect(status.services?.find((s) => s.service === "inventory")?.instances).toHaveLength(6);
      await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
      expect(warnings.filter((w) => w.name === "MaxListenersExceededWarning")).toEqual([]);
    } finally {
      process.off("warning", onWarning);
      op.close();
    }
  });

  it("stops asking at once when its caller goes away", async () => {
    const op = operator(60_000);
    const caller = new AbortController();
    try {
      const started = performance.now();
      const pending = op.service.getSystemStatus({} as never, adminContext(caller.signal));
      setTimeout(() => caller.abort(), 200);
      const status = await pending;
      expect(performance.now() - started).toBeLessThan(3_000);
      expect(status.services?.find((s) => s.service === "inventory")?.instances?.[0]).toMatchObject({
        serving: false,
        detail: "CANCELLED",
      });
    } finally {
      op.close();
    }
  });
});
