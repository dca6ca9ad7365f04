/**
 * Wires the order service: store, resilient clients to inventory and
 * payment, the saga orchestrator, choreography consumers, API; resumes sagas
 * left in flight.
 */
import type * as grpc from "@grpc/grpc-js";
import { InventoryService } from "../../gen/shopmesh/inventory/v1/inventory_pb.js";
import { OrderService } from "../../gen/shopmesh/order/v1/order_pb.js";
import { PaymentService } from "../../gen/shopmesh/payment/v1/payment_pb.js";
import {
  bind,
  createResilientClient,
  type Host,
  type Logger,
  type Metrics,
  policyFrom,
  type ResilientClient,
  startHost,
  upstreamChannel,
} from "../../platform/index.js";
import { createOrderApi } from "./api.js";
import { Choreography } from "./choreography.js";
import type { OrderConfig } from "./config.js";
import { SagaOrchestrator } from "./saga.js";
import { OrderStore } from "./store.js";

/** A running order service. */
export interface OrderApp extends Host {
  readonly store: OrderStore;
  readonly saga: SagaOrchestrator;
  readonly inventory: ResilientClient<typeof InventoryService>;
  readonly payment: ResilientClient<typeof PaymentService>;
}

/** Saga metrics from the store's lifecycle events. */
function countSagas(store: OrderStore, m: Metrics): void {
  store.onPlaced((o) => m.sagasStarted.inc({ mode: o.sagaMode }));
  store.onTerminal((o) => {
    const outcome = o.status.toLowerCase();
    m.sagasFinished.inc({ mode: o.sagaMode, outcome });
    m.sagaDuration.observe({ mode: o.sagaMode, outcome }, (o.updatedAt - o.createdAt) / 1000);
    // Something was held or taken (or may have been) and had to be given back.
    if (o.status === "CANCELLED" && (o.stock !== "none" || o.payment !== "none")) {
      m.sagasCompensated.inc({ mode: o.sagaMode });
    }
  });
}

/** Opens the store, connects to inventory and payment, starts serving, and resumes unfinished sagas. */
export async function startOrder(config: OrderConfig, log: Logger): Promise<OrderApp> {
  const store = OrderStore.open(config.DB_PATH);
  const choreography = new Choreography(store);
  const channels: grpc.Client[] = [];
  let built: Pick<OrderApp, "saga" | "inventory" | "payment"> | undefined;
  const host = await startHost({
    name: "order",
    config,
    log,
    db: store.db,
    outbox: store.outbox,
    consumers: choreography.consumers(),
    services: ({ telemetry, bus }) => {
      const [inventoryChannel, paymentChannel] = [config.INVENTORY_TARGET, config.PAYMENT_TARGET].map((t) => {
        const ch = upstreamChannel(t, bus, log);
        channels.push(ch);
        return ch;
      }) as [grpc.Client, grpc.Client];
      const opts = { telemetry };
      const inventory = createResilientClient(
        "inventory",
        InventoryService,
        inventoryChannel,
        policyFrom("INVENTORY", config),
        log,
        opts,
      );
      const payment = createResilientClient(
        "payment",
        PaymentService,
        paymentChannel,
        policyFrom("PAYMENT", config),
        log,
        opts,
      );
      const saga = new SagaOrchestrator({
        store,
        inventory,
        payment,
        telemetry,
        log: log.child({ component: "saga" }),
        timing: {
          stepBudgetMs: config.SAGA_STEP_BUDGET_MS,
          retryBaseMs: config.SAGA_RETRY_BASE_MS,
          retryMaxMs: config.SAGA_RETRY_MAX_MS,
        },
      });
      built = { saga, inventory, payment };
      countSagas(store, telemetry.metrics);
      const advance = (orderId: string) => {
        if (store.get(orderId)?.sagaMode === "CHOREOGRAPHY") choreography.cancelRequested(orderId);
        else saga.kick(orderId);
      };
      return [bind(OrderService, createOrderApi({ store, advance, defaultMode: config.SAGA_DEFAULT_MODE }))];
    },
    stopApp: async () => {
      // Sagas stop after calls drained; they resume from the database on the next start.
      await built?.saga.stop();
      for (const ch of channels) ch.close();
    },
    close: () => store.close(),
  });
  const app = { ...host, store, ...(built as NonNullable<typeof built>) };
  app.saga.resumeAll();
  return app;
}
