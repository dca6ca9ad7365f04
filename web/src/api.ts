/**
 * The gateway's public API as typed clients: the generated service
 * descriptors from gen/ over the Connect protocol, on the page's own origin,
 * each call carrying the signed-in user's bearer token.
 */
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { GatewayService, OperatorService } from "../../gen/shopmesh/gateway/v1/gateway_pb.js";
import { HistoryService } from "../../gen/shopmesh/history/v1/history_pb.js";
import { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { NotificationService } from "../../gen/shopmesh/notification/v1/notification_pb.js";
import { OrderService } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";

/** How long the page waits for the answer to a call, in ms. */
export const CALL_TIMEOUT_MS = 30_000;

/** Every client the page uses. */
export interface Api {
  readonly inventory: Client<typeof InventoryService>;
  readonly orders: Client<typeof OrderService>;
  readonly payments: Client<typeof PaymentService>;
  readonly notifications: Client<typeof NotificationService>;
  readonly history: Client<typeof HistoryService>;
  readonly gateway: Client<typeof GatewayService>;
  readonly operator: Client<typeof OperatorService>;
}

/**
 * Clients on `baseUrl` (the page's origin). `token()` is read at each call;
 * `onUnauthenticated` runs when the gateway refuses the token (expired or
 * revoked) — a unary call refused, or a stream ended UNAUTHENTICATED, at its
 * start or later — so the page can send the user back to sign-in. The error
 * is still thrown to the caller.
 */
export function createApi(opts: {
  baseUrl: string;
  token: () => string | undefined;
  onUnauthenticated: () => void;
}): Api {
  const refused = (err: unknown): never => {
    if (err instanceof ConnectError && err.code === Code.Unauthenticated) opts.onUnauthenticated();
    throw err;
  };
  // A stream's end comes while its messages are read, after `next` has returned: the gateway ends a
  // WatchOrder UNAUTHENTICATED when the token that opened it expires (gateway/forward.ts).
  async function* watched<T>(messages: AsyncIterable<T>): AsyncIterable<T> {
    try {
      yield* messages;
    } catch (err) {
      refused(err);
    }
  }
  const auth: Interceptor = (next) => async (req) => {
    const token = opts.token();
    if (token) req.header.set("authorization", `Bearer ${token}`);
    const res = await next(req).catch(refused);
    return res.stream ? { ...res, message: watched(res.message) } : res;
  };
  // A call the gateway never answers (a frozen process, a half-open connection) ends DEADLINE_EXCEEDED
  // instead of holding its page, and every poll behind it, for good. Long past any answer the gateway
  // gives itself (its upstream calls have deadlines of seconds); a stream that waits for changes says
  // timeoutMs: 0.
  const transport = createConnectTransport({
    baseUrl: opts.baseUrl,
    interceptors: [auth],
    defaultTimeoutMs: CALL_TIMEOUT_MS,
  });
  return {
    inventory: createClient(InventoryService, transport),
    orders: createClient(OrderService, transport),
    payments: createClient(PaymentService, transport),
    notifications: createClient(NotificationService, transport),
    history: createClient(HistoryService, transport),
    gateway: createClient(GatewayService, transport),
    operator: createClient(OperatorService, transport),
  };
}
