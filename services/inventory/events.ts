/**
 * Inventory's part in the choreographed checkout: it reacts to order events
 * (its own events are written by the store, in the same transactions as the
 * stock changes they record).
 *
 * - OrderPlaced (choreography) -> reserve the order's stock -> StockReserved
 *   or StockRejected;
 * - OrderCancelled (choreography) -> release the reservation (StockReleased),
 *   or, when none was made yet, void the key so that a late OrderPlaced can
 *   never reserve (no event: nothing was held).
 *
 * The reservation key is `<order id>:reserve_stock`, the same key the
 * orchestrator uses, so one order can never be reserved twice whichever way
 * its saga runs.
 *
 * Orders share products, so a batch of them locks every product it will
 * change first, by id, as each reservation and release does (store.ts):
 * otherwise its first order's products stay locked while it waits for a
 * later order's, and a reservation call holding those can be waiting for the
 * first — a deadlock PostgreSQL breaks only after a second.
 */
import { create, isMessage } from "@bufbuild/protobuf";
import { choreographed, stepKey } from "../../contracts/saga.js";
import { SagaMode } from "../../gen/shopmesh/common/v1/common_pb.js";
import { StockRejectedSchema } from "../../gen/shopmesh/inventory/v1/events_pb.js";
import { ReserveStockRequestSchema } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderCancelledSchema, OrderPlacedSchema } from "../../gen/shopmesh/order/v1/events_pb.js";
import {
  type ConsumerSpec,
  on,
  requestFingerprint,
  ServiceError,
  UnprocessableEventError,
} from "../../platform/index.js";
import { validateReservation } from "./domain.js";
import type { InventoryStore } from "./store.js";

/** Inventory's consumers. */
export function inventoryConsumers(store: InventoryStore): ConsumerSpec[] {
  return [
    {
      stream: "ORDER",
      durable: "inventory-order",
      sagaMode: SagaMode.CHOREOGRAPHY,
      lockFirst: (tx, events) => {
        const placed = events.filter((e) => isMessage(e, OrderPlacedSchema));
        const cancelled = events.filter((e) => isMessage(e, OrderCancelledSchema));
        return store.lockForBatch(
          tx,
          placed.flatMap((e) => e.items.map((l) => l.productId)),
          cancelled.map((e) => stepKey(e.meta?.orderId ?? "", "reserve_stock")),
        );
      },
      handlers: [
        on(
          OrderPlacedSchema,
          async (e, _ctx, tx) => {
            const orderId = e.meta?.orderId ?? "";
            const req = create(ReserveStockRequestSchema, {
              idempotencyKey: stepKey(orderId, "reserve_stock"),
              orderId,
              items: e.items,
            });
            try {
              const lines = validateReservation(req);
              const r = await store.reserve(
                req.idempotencyKey,
                requestFingerprint(ReserveStockRequestSchema, req),
                orderId,
                lines,
                SagaMode.CHOREOGRAPHY,
                tx,
              );
              if (r.kind === "key-reused") {
                // Redelivered, it would be refused the same way: to the dead letters at once.
                throw new UnprocessableEventError(`reservation key of order ${orderId} reused with other items`);
              }
            } catch (err) {
              // A business refusal (unknown product, bad line) is an outcome the saga must hear about.
              if (!(err instanceof ServiceError)) throw err;
              await store.outbox.add(
                tx,
                StockRejectedSchema,
                { orderId, sagaMode: SagaMode.CHOREOGRAPHY },
                { reason: err.message, shortages: [] },
              );
            }
          },
          choreographed,
        ),
        on(
          OrderCancelledSchema,
          async (e, _ctx, tx) => {
            const orderId = e.meta?.orderId ?? "";
            await store.cancelByKey(stepKey(orderId, "reserve_stock"), orderId, tx);
          },
          choreographed,
        ),
      ],
    },
  ];
}
