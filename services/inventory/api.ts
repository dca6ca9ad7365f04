/** InventoryService RPC handlers: validate, call the store, map to messages. */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import {
  type InventoryService,
  type ProductSchema,
  type ReservationSchema,
  ReservationStatus,
  ReserveStockRequestSchema,
  RestockRequestSchema,
} from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import {
  Code,
  IdempotencyKeyReusedError,
  NotFoundError,
  Pages,
  pageSize,
  requestFingerprint,
  requireId,
  requireIdempotencyKey,
  requireIdentity,
  requireQuantity,
  ServiceError,
  type ServiceImpl,
} from "../../platform/index.js";
import { OutOfStockError, OverCapacityError, type ProductRecord, validateReservation } from "./domain.js";
import type { ReservationRecord } from "./schema.js";
import type { InventoryStore } from "./store.js";

/** ListProducts' pages: by id. */
const PAGES = new Pages("shopmesh.inventory.v1.InventoryService/ListProducts", { after: "string" });

/** Dependencies of the inventory API. */
export interface InventoryApiDeps {
  readonly store: InventoryStore;
}

/** Largest quantity one Restock call may add. */
export const MAX_RESTOCK = 1_000_000;

function productMessage(p: ProductRecord): MessageInitShape<typeof ProductSchema> {
  return {
    id: p.id,
    name: p.name,
    unitPrice: { currencyCode: p.currency, amountMinor: BigInt(p.priceMinor) },
    available: p.available,
    reserved: p.reserved,
  };
}

function reservationMessage(r: ReservationRecord): MessageInitShape<typeof ReservationSchema> {
  return {
    id: r.id,
    orderId: r.orderId,
    items: r.items.map((l) => ({ productId: l.productId, quantity: l.quantity })),
    status: ReservationStatus[r.status],
    total: { currencyCode: r.currency, amountMinor: BigInt(r.totalMinor) },
    createdAt: timestampFromMs(r.createdAt),
  };
}

/** Creates the InventoryService handlers. */
export function createInventoryApi({ store }: InventoryApiDeps): ServiceImpl<typeof InventoryService> {
  return {
    async listProducts(req) {
      const limit = pageSize(req.pageSize);
      const after = PAGES.cursor(req.pageToken)?.after;
      const rows = await store.products(after ?? "", limit + 1);
      const { page, nextPageToken } = PAGES.of(rows, limit, (last) => ({ after: last.id }));
      return { products: page.map(productMessage), nextPageToken };
    },

    async getProduct(req) {
      requireId(req.productId, "product_id");
      const p = await store.product(req.productId);
      if (!p) throw new NotFoundError("product", req.productId);
      return { product: productMessage(p) };
    },

    async reserveStock(req) {
      const lines = validateReservation(req);
      const fingerprint = requestFingerprint(ReserveStockRequestSchema, req);
      const result = await store.reserve(req.idempotencyKey, fingerprint, req.orderId, lines);
      switch (result.kind) {
        case "key-reused":
          throw new IdempotencyKeyReusedError(req.idempotencyKey);
        case "rejected":
          throw new OutOfStockError(result.shortages);
        case "reserved":
          return { reservation: reservationMessage(result.reservation) };
      }
    },

    async releaseStock(req) {
      requireId(req.reservationId, "reservation_id");
      const released = await store.release(req.reservationId, SagaMode.ORCHESTRATION);
      if (released.kind === "not-found") throw new NotFoundError("reservation", req.reservationId);
      return { reservation: reservationMessage(released.reservation) };
    },

    async restock(req, ctx) {
      if (!requireIdentity(ctx.metadata).roles.includes("admin")) {
        throw new ServiceError(Code.PERMISSION_DENIED, "Restock needs the admin role");
      }
      requireIdempotencyKey(req.idempotencyKey);
      requireId(req.productId, "product_id");
      requireQuantity(req.quantity, "quantity", 1, MAX_RESTOCK);
      const result = await store.restock(
        req.idempotencyKey,
        requestFingerprint(RestockRequestSchema, req),
        req.productId,
        req.quantity,
      );
      switch (result.kind) {
        case "key-reused":
          throw new IdempotencyKeyReusedError(req.idempotencyKey);
        case "not-found":
          throw new NotFoundError("product", req.productId);
        case "over-capacity":
          throw new OverCapacityError(result.product, req.quantity);
        case "restocked":
          return { product: productMessage(result.product) };
      }
    },
  };
}
