/**
 * API composition (seed 4-6): GetOrderDetails answers one client call from
 * four services, in parallel, under one deadline. The order is essential —
 * its failure fails the call. Payment, products and notifications are not:
 * when one fails, times out or its breaker is open, the answer carries the
 * rest and names the missing part, instead of failing.
 *
 * Payment and notifications are fetched by order id at once, alongside the
 * order; products need the order's items, so they start when it arrives —
 * each product once, one at a time (below).
 */
import type { MessageShape } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { GatewayService, MissingPartSchema } from "../gen/shopmesh/gateway/v1/gateway_pb.js";
import type { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import type { NotificationService } from "../gen/shopmesh/notification/v1/notification_pb.js";
import type { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import type { PaymentService } from "../gen/shopmesh/payment/v1/payment_pb.js";
import { earliestDeadline } from "../platform/deadline.js";
import { Code, RpcError } from "../platform/errors.js";
import type { Client } from "../platform/grpc-client.js";
import { requireId } from "../platform/validate.js";
import { toConnectError, upstreamOptions } from "./forward.js";

/** The upstream clients composition uses. */
export interface ComposeDeps {
  readonly order: Client<typeof OrderService>;
  readonly payment: Client<typeof PaymentService>;
  readonly inventory: Client<typeof InventoryService>;
  readonly notification: Client<typeof NotificationService>;
  /** Deadline of the whole composed call when the client set none (or a later one), in ms. */
  readonly timeoutMs: number;
}

type Missing = Omit<MessageShape<typeof MissingPartSchema>, "$typeName">;

function missing(part: string, err: unknown): Missing {
  // An answer with no status of the upstream's own is its internal error (forward.ts).
  const code = err instanceof RpcError ? (err.broken ? "INTERNAL" : err.codeName) : "UNKNOWN";
  return { part, code };
}

/**
 * `fetch` for each of `keys` in turn. A composed call then holds one place at most in the inventory
 * bulkhead, as any single call does: an order may have 50 lines, and fetched all at once, one
 * client's details calls, each within its rate limit, filled the bulkhead every client shares
 * and got another client's calls shed (429).
 */
async function oneAtATime<K, T>(keys: readonly K[], fetch: (key: K) => Promise<T>): Promise<PromiseSettledResult<T>[]> {
  const out: PromiseSettledResult<T>[] = [];
  for (const key of keys) out.push(...(await Promise.allSettled([fetch(key)])));
  return out;
}

/** The GatewayService implementation. */
export function createComposition(deps: ComposeDeps): ServiceImpl<typeof GatewayService> {
  return {
    async getOrderDetails(req, ctx: HandlerContext) {
      try {
        requireId(req.orderId, "order_id");
      } catch (err) {
        throw toConnectError(err, "gateway");
      }
      const base = upstreamOptions(ctx);
      const opts = { ...base, deadline: earliestDeadline(base.deadline, deps.timeoutMs) };
      const orderId = req.orderId;

      const orderP = deps.order.getOrder({ orderId }, opts);
      const paymentP = deps.payment.getPayment({ orderId }, opts);
      const notificationsP = deps.notification.listNotifications({ orderId, pageSize: 100 }, opts);
      // Settle the parallel parts even if the order fails, so no rejection goes unhandled.
      const settled = Promise.allSettled([paymentP, notificationsP]);

      let order: Awaited<typeof orderP>["order"];
      try {
        order = (await orderP).order;
      } catch (err) {
        await settled;
        throw toConnectError(err, "order", ctx.signal);
      }
      const products = await oneAtATime([...new Set((order?.items ?? []).map((it) => it.productId))], (productId) =>
        deps.inventory.getProduct({ productId }, opts),
      );
      const [payment, notifications] = await settled;

      const gaps: Missing[] = [];
      let paymentMsg: MessageShape<typeof PaymentService.method.getPayment.output> | undefined;
      if (payment.status === "fulfilled") paymentMsg = payment.value;
      // No payment yet (out of stock, still reserving) is an answer, not a gap.
      else if (!(payment.reason instanceof RpcError && payment.reason.code === Code.NOT_FOUND))
        gaps.push(missing("payment", payment.reason));
      const failedProduct = products.find((p) => p.status === "rejected");
      if (failedProduct) gaps.push(missing("products", failedProduct.reason));
      if (notifications.status === "rejected") gaps.push(missing("notifications", notifications.reason));

      return {
        order,
        payment: paymentMsg?.payment,
        products: products.flatMap((p) => (p.status === "fulfilled" && p.value.product ? [p.value.product] : [])),
        notifications: notifications.status === "fulfilled" ? notifications.value.notifications : [],
        missing: gaps,
      };
    },
  };
}
