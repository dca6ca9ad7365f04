/**
 * A client's WatchOrder through the gateway, on each protocol it serves streams on, reduced to how the
 * watch ended: for the tests of what ends a stream (its token's expiry, its signing key's withdrawal).
 */
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { expect } from "vitest";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import type { CallContext } from "../platform/grpc.js";
import { silentLogger } from "../platform/log.js";
import { bind, type RunningServer, startGrpcServer } from "../platform/server.js";

export const connect1 = (baseUrl: string) => createConnectTransport({ baseUrl, httpVersion: "1.1" });
export const grpc = (baseUrl: string) => createGrpcTransport({ baseUrl });
export const grpcWeb1 = (baseUrl: string) => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
/** The gateway's stream protocols but REST ({@link watchRest}), by name. */
export const transports: Array<[string, (url: string) => Transport]> = [
  ["Connect/1.1", connect1],
  ["gRPC", grpc],
  ["gRPC-Web/1.1", grpcWeb1],
];

/** How a watch ended: its code (`OK`, a Code name, `HTTP 401`, `still open`), message and the states it saw. */
export interface Watched {
  readonly name: string;
  readonly code: string;
  readonly message?: string | undefined;
  readonly states: string[];
  readonly ms: number;
}

/**
 * Watches `orderId` with `bearer` over `transport` until the watch ends (or `timeoutMs`, or `signal`).
 * Each state is pushed onto `states` as it arrives: a test waits for it to have one (the watch open)
 * before acting on the open watch, instead of a fixed sleep a loaded machine outlasts.
 */
export async function watch(
  name: string,
  transport: Transport,
  orderId: string,
  bearer: string,
  timeoutMs = 12_000,
  signal?: AbortSignal,
  states: string[] = [],
): Promise<Watched> {
  const started = Date.now();
  try {
    const orders = createClient(OrderService, transport);
    const headers = { authorization: `Bearer ${bearer}` };
    for await (const u of orders.watchOrder({ orderId }, { headers, timeoutMs, ...(signal ? { signal } : {}) }))
      states.push(OrderStatus[u.order?.status ?? 0] ?? "?");
    return { name, code: "OK", states, ms: Date.now() - started };
  } catch (err) {
    const e = ConnectError.from(err);
    return { name, code: Code[e.code], message: e.rawMessage, states, ms: Date.now() - started };
  }
}

/**
 * Watches `orderId` over REST (newline-delimited JSON) at `url` until the watch ends (or `timeoutMs`),
 * pushing each state onto `states` as its line arrives (as {@link watch} does).
 */
export async function watchRest(
  url: string,
  orderId: string,
  bearer: string,
  timeoutMs = 12_000,
  states: string[] = [],
): Promise<Watched> {
  const started = Date.now();
  const res = await fetch(`${url}/v1/orders/${orderId}:watch`, {
    headers: { authorization: `Bearer ${bearer}` },
    signal: AbortSignal.timeout(timeoutMs),
  });
  type Line = { result?: { status?: string }; error?: { code?: number; message?: string } };
  let last: Line["error"];
  const take = (line: string) => {
    const parsed = JSON.parse(line) as Line;
    if (parsed.result) states.push(String(parsed.result.status).replace("ORDER_STATUS_", ""));
    last = parsed.error;
  };
  const text = new TextDecoder();
  let partial = "";
  try {
    for await (const chunk of res.body ?? []) {
      const lines = (partial + text.decode(chunk, { stream: true })).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) if (line.trim()) take(line);
    }
  } catch (err) {
    if (err instanceof SyntaxError) throw err; // a line that is not JSON: the answer is wrong, not late
    return { name: "REST", code: "still open", states, ms: Date.now() - started };
  }
  if (partial.trim()) take(partial);
  return {
    name: "REST",
    code: res.status !== 200 ? `HTTP ${res.status}` : last ? (Code[last.code ?? 0] ?? "?") : "OK",
    message: last?.message,
    states,
    ms: Date.now() - started,
  };
}

/**
 * A `states` array for each of `n` watches (passed to {@link watch} or {@link watchRest}), and `open`,
 * which waits until every one has seen a state: each watch is then open, accepted and forwarded.
 */
export function seen(n: number) {
  const states = Array.from({ length: n }, (): string[] => []);
  const open = () => expect.poll(() => states.filter((s) => s.length > 0).length, { timeout: 10_000 }).toBe(n);
  return { states, open };
}

/**
 * An order service whose every watch sends its order at once, then again every `everyMs` until its
 * watcher leaves; `left()` counts the watches left so far.
 */
export async function tickingOrders(everyMs: number): Promise<{ server: RunningServer; left(): number }> {
  let left = 0;
  const server = await startGrpcServer({
    host: "127.0.0.1",
    port: 0,
    log: silentLogger(),
    services: [
      bind(OrderService, {
        placeOrder: async () => ({}),
        getOrder: async () => ({}),
        cancelOrder: async () => ({}),
        listOrders: async () => ({}),
        async *watchOrder(req, ctx: CallContext) {
          ctx.signal.addEventListener("abort", () => left++);
          while (!ctx.signal.aborted) {
            yield { order: { id: req.orderId } };
            await new Promise((resolve) => setTimeout(resolve, everyMs));
          }
        },
      }),
    ],
  });
  return { server, left: () => left };
}
