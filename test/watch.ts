/**
 * A client's WatchOrder through the gateway, on each protocol it serves streams on, reduced to how the
 * watch ended: for the tests of what ends a stream (its token's expiry, its signing key's withdrawal).
 */
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { OrderService, OrderStatus } from "../gen/shopmesh/order/v1/order_pb.js";

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

/** Watches `orderId` with `bearer` over `transport` until the watch ends (or `timeoutMs`, or `signal`). */
export async function watch(
  name: string,
  transport: Transport,
  orderId: string,
  bearer: string,
  timeoutMs = 12_000,
  signal?: AbortSignal,
): Promise<Watched> {
  const started = Date.now();
  const states: string[] = [];
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

/** Watches `orderId` over REST (newline-delimited JSON) at `url` until the watch ends (or `timeoutMs`). */
export async function watchRest(url: string, orderId: string, bearer: string, timeoutMs = 12_000): Promise<Watched> {
  const started = Date.now();
  const res = await fetch(`${url}/v1/orders/${orderId}:watch`, {
    headers: { authorization: `Bearer ${bearer}` },
    signal: AbortSignal.timeout(timeoutMs),
  });
  const body = await res.text().catch(() => undefined);
  if (body === undefined) return { name: "REST", code: "still open", states: [], ms: Date.now() - started };
  const lines = body
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as { result?: { status?: string }; error?: { code?: number; message?: string } });
  const last = lines.at(-1)?.error;
  return {
    name: "REST",
    code: res.status !== 200 ? `HTTP ${res.status}` : last ? (Code[last.code ?? 0] ?? "?") : "OK",
    message: last?.message,
    states: lines.flatMap((l) => (l.result ? [String(l.result.status).replace("ORDER_STATUS_", "")] : [])),
    ms: Date.now() - started,
  };
}
