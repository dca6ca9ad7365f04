/** HistoryService RPC handlers: identity, paging, the store, mapping to messages. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HistoryService, OrderHistoryEntrySchema } from "../../gen/shopmesh/history/v1/history_pb.js";
import { OrderStatus } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentStatus } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import { Pages, pageSize, requireIdentity, type ServiceImpl } from "../../platform/index.js";
import type { OrderView } from "./domain.js";
import type { HistoryStore } from "./store.js";

/** ListOrderHistory's pages: newest first. */
const PAGES = new Pages("shopmesh.history.v1.HistoryService/ListOrderHistory", { t: "integer", id: "string" });

/** Dependencies of the history API. */
export interface HistoryApiDeps {
  readonly store: HistoryStore;
}

function entryMessage(v: OrderView): MessageInitShape<typeof OrderHistoryEntrySchema> {
  return {
    orderId: v.orderId,
    customerId: v.customerId ?? "",
    status: v.status ? OrderStatus[v.status] : OrderStatus.UNSPECIFIED,
    items: v.items.map((l) => ({ productId: l.productId, quantity: l.quantity })),
    total: v.total ? { currencyCode: v.total.currency, amountMinor: BigInt(v.total.amountMinor) } : undefined,
    paymentStatus: v.paymentStatus ? PaymentStatus[v.paymentStatus] : PaymentStatus.UNSPECIFIED,
    reason: v.reason,
    refundPending: v.refund === "pending",
    lastEventAt: timestampFromMs(v.lastEventAt),
    lastEventType: v.lastEventType,
  };
}

/** Creates the HistoryService handlers. Answers from the local view only; never calls another service. */
export function createHistoryApi({ store }: HistoryApiDeps): ServiceImpl<typeof HistoryService> {
  return {
    async listOrderHistory(req, ctx) {
      // Everyone, admins included, lists only their own orders.
      const who = requireIdentity(ctx.metadata);
      const limit = pageSize(req.pageSize);
      const cursor = PAGES.cursor(req.pageToken);
      const rows = await store.listByCustomer(
        who.subject,
        cursor && { lastEventAt: cursor.t, orderId: cursor.id },
        limit + 1,
      );
      const { page, nextPageToken } = PAGES.of(rows, limit, (last) => ({ t: last.lastEventAt, id: last.orderId }));
      return { entries: page.map(entryMessage), nextPageToken };
    },
  };
}
