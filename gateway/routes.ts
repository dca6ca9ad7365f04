/**
 * The routing table: which public RPCs the gateway exposes and which
 * upstream serves them. Everything not listed — ReserveStock, ReleaseStock,
 * ChargePayment, RefundPayment, the chaos service — is internal and simply
 * does not exist at the gateway (404 / UNIMPLEMENTED).
 */
import type { DescService } from "@bufbuild/protobuf";
import { HistoryService } from "../gen/shopmesh/history/v1/history_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { NotificationService } from "../gen/shopmesh/notification/v1/notification_pb.js";
import { OrderService } from "../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../gen/shopmesh/payment/v1/payment_pb.js";

/** An upstream service name (also its config prefix: ORDER_TARGET, ...). */
export type Upstream = "inventory" | "payment" | "order" | "notification" | "history";

/** One routed service. */
export interface Route {
  readonly service: DescService;
  readonly upstream: Upstream;
  /** Method names exposed publicly. */
  readonly methods: readonly string[];
  /** Methods that need the `admin` role. */
  readonly adminOnly?: readonly string[];
}

/** The public API. */
export const ROUTES: readonly Route[] = [
  {
    service: InventoryService,
    upstream: "inventory",
    methods: ["ListProducts", "GetProduct", "Restock"],
    adminOnly: ["Restock"],
  },
  { service: PaymentService, upstream: "payment", methods: ["GetPayment"] },
  {
    service: OrderService,
    upstream: "order",
    methods: ["PlaceOrder", "GetOrder", "CancelOrder", "ListOrders", "WatchOrder"],
  },
  { service: NotificationService, upstream: "notification", methods: ["ListNotifications"] },
  { service: HistoryService, upstream: "history", methods: ["ListOrderHistory"] },
];

/** The routed upstreams, in the order of {@link ROUTES} (the operator panel's). */
export const UPSTREAMS: readonly Upstream[] = ROUTES.map((r) => r.upstream);
