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

/** One routed service. */
export interface Route<U extends string = Upstream> {
  readonly service: DescService;
  /** The upstream's name: its client's, its config variable's (`ORDER_TARGET`) and the operator panel's. */
  readonly upstream: U;
  /** Method names exposed publicly. */
  readonly methods: readonly string[];
  /** Methods that need the `admin` role. */
  readonly adminOnly?: readonly string[];
}

const TABLE = [
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
] as const satisfies readonly Route<string>[];

type Routed = (typeof TABLE)[number];

/** An upstream service name. */
export type Upstream = Routed["upstream"];

/**
 * The public API, and the one list of the gateway's upstreams: each gets a client (`app.ts`) and a
 * `*_TARGET` variable (`config.ts`, which does not compile without it).
 */
export const ROUTES: readonly Route[] = TABLE;

/** The routed upstreams, in the order of {@link ROUTES} (the operator panel's). */
export const UPSTREAMS: readonly Upstream[] = ROUTES.map((r) => r.upstream);

/** The service each upstream serves. */
export type UpstreamService<U extends Upstream> = Extract<Routed, { upstream: U }>["service"];
